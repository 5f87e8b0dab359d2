"""RAdam parity with torch.optim across options, dtypes, backends and groups."""

import itertools

import pytest
import torch
from optim_checks import (
    assert_capturable_bitwise,
    assert_differentiable,
    assert_same_api,
    assert_same_error,
    assert_sparse_gradient_rejected,
    assert_traced_rule_matches,
)
from parity import assert_parity

import gradstep
from gradstep.algorithms.radam import RAdamConfig, radam_rule

# 30 steps cover both regimes: plain momentum steps while rho_t <= 5 (the first five), then
# rectified adaptive steps.
OPTIONS = [
    dict(zip(("maximize", "weight_decay", "decoupled_weight_decay"), combo))
    for combo in itertools.product([False, True], [0, 0.1], [False, True])
]
BACKENDS = [dict(foreach=False), dict(foreach=True), dict()]


def parity(kwargs, **kw):
    return assert_parity(gradstep.RAdam, torch.optim.RAdam, kwargs, **kw)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_parity_float32(options, backend):
    parity(dict(lr=0.01, **options, **backend))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.complex64])
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_parity_dtypes(dtype, backend):
    parity(dict(lr=0.01, weight_decay=0.05, **backend), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_groups_skipped_grads_and_cross_load(dtype, backend):
    parity(
        dict(lr=0.01, **backend),
        groups=[
            dict(lr=0.1, betas=(0.8, 0.9), eps=1e-6, maximize=True),
            dict(betas=(0.8, 0.99), weight_decay=0.2, decoupled_weight_decay=True, foreach=False),
        ],
        skip_every=3,
        cross_load_at=12,
        steps=35,
        dtype=dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("decoupled", [False, True])
def test_tensor_lr(dtype, backend, decoupled):
    kwargs = dict(lr=torch.tensor(0.01), weight_decay=0.1, decoupled_weight_decay=decoupled)
    parity(dict(kwargs, **backend), dtype=dtype)


def test_state_under_default_float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        oa, _ = parity(dict(lr=0.01), dtype=torch.float32, steps=4)
        assert next(iter(oa.state.values()))["step"].dtype == torch.float64
    finally:
        torch.set_default_dtype(old)


def test_api_matches_torch():
    assert_same_api(gradstep.RAdam, torch.optim.RAdam)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lr=-1), ValueError, "Invalid learning rate: -1"),
        (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element"),
        (dict(eps=-1), ValueError, "Invalid epsilon value: -1"),
        (dict(betas=(1.0, 0.0)), ValueError, "Invalid beta parameter at index 0: 1.0"),
        (dict(betas=(0.9, 1.0)), ValueError, "Invalid beta parameter at index 1: 1.0"),
        (dict(weight_decay=-1), ValueError, "Invalid weight_decay value: -1"),
    ],
)
def test_errors_match_torch(kwargs, error, match):
    assert_same_error(gradstep.RAdam, torch.optim.RAdam, kwargs, error, match)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(capturable=True), AssertionError, "params and state_steps must be on"),
        (dict(foreach=True, differentiable=True), AssertionError, "_foreach ops don't support"),
    ],
)
def test_step_errors_match_torch(kwargs, error, match):
    assert_same_error(gradstep.RAdam, torch.optim.RAdam, kwargs, error, match, step=True)


def test_sparse_gradient_rejected():
    assert_sparse_gradient_rejected(gradstep.RAdam)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=0.9),
        dict(lr=0.9, weight_decay=0.1, decoupled_weight_decay=True),
        dict(lr=0.9, weight_decay=0.1, maximize=True),
    ],
    ids=str,
)
@pytest.mark.parametrize("step", [1.0, 10.0], ids=["plain", "rectified"])
def test_differentiable(kwargs, step):
    f64 = dict(dtype=torch.float64)
    state = dict(
        step=torch.tensor(step, **f64),
        exp_avg=torch.rand(10, **f64).requires_grad_(),
        exp_avg_sq=torch.rand(10, **f64).requires_grad_(),
    )
    assert_differentiable(gradstep.RAdam, torch.optim.RAdam, state, kwargs)


@pytest.mark.parametrize("cfg", [RAdamConfig(*c, phase) for c in itertools.product([False, True], repeat=3)
                                 for phase in ("both", "plain", "rectified")]
                         + [RAdamConfig(False, True, False, "both", torch_foreach=True)])
@pytest.mark.parametrize("steps", [(-0.02, 0.0), (0.0, -0.05)], ids=["rectified", "plain"])
def test_traced_rule_matches(cfg, steps):
    rect_step, plain_step = steps
    scalars = dict(
        beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, param_decay=0.99,
        rect_step=rect_step, plain_step=plain_step,
    )
    assert_traced_rule_matches(radam_rule, cfg, 2, scalars)


@pytest.mark.parametrize("backend", [dict(foreach=False), dict(foreach=True), dict()], ids=str)
@pytest.mark.parametrize("eps", [1e-8, 0.0])
def test_zero_second_moment_in_the_plain_phase(backend, eps):
    """The first steps use no denominator, so a zero exp_avg_sq (a gradient of exactly 0, or
    one whose square underflows, or eps=0) leaves the parameter finite, as in torch.optim."""
    base = torch.tensor([1.0, -2.0, 0.5, 3.0])
    grads = [torch.tensor([0.0, 1e-3, 0.0, -0.5]), torch.tensor([0.0, 0.0, 0.25, 1.0])] * 4
    got, want = [torch.nn.Parameter(base.clone()) for _ in range(2)]
    opts = gradstep.RAdam([got], eps=eps, **backend), torch.optim.RAdam([want], eps=eps, **backend)
    for g in grads:
        for p, opt in zip((got, want), opts):
            p.grad = g.clone()
            opt.step()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert torch.isfinite(got).all() == torch.isfinite(want).all()


def test_float16_underflowing_second_moment_matches_torch():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(7, generator=gen, dtype=torch.float64).half()
    grads = [torch.randn(7, generator=gen, dtype=torch.float64).half() * 1e-2 for _ in range(8)]
    got, want = [torch.nn.Parameter(base.clone()) for _ in range(2)]
    opts = gradstep.RAdam([got], foreach=False), torch.optim.RAdam([want], foreach=False)
    for g in grads:
        for p, opt in zip((got, want), opts):
            p.grad = g.clone()
            opt.step()
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3, equal_nan=True)


@pytest.mark.parametrize("kwargs", [{}, dict(lr=torch.tensor(0.01)), dict(weight_decay=0.1, maximize=True),
                                    dict(weight_decay=0.1, decoupled_weight_decay=True)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_capturable_foreach_math_bitwise_as_torch(kwargs, dtype):
    """capturable=True on torch's foreach path (its default on GPUs): the step sizes rounded in
    its order and its reciprocal form of the update, through both phases (10 steps)."""
    assert_capturable_bitwise(gradstep.RAdam, torch.optim.RAdam,
                              dict(kwargs, foreach=True), dtype)


def test_differentiable_tensor_lr_gets_its_gradient():
    """differentiable=True with a tensor lr that requires grad: autograd reaches lr through
    both phases' step sizes, as in torch.optim."""

    def run(module):
        lr = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
        x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True).clone()
        opt = module.RAdam([x], lr=lr, differentiable=True)
        for i in range(8):  # plain phase, then rectified from step 6
            x.grad = torch.tensor([0.3, -0.1, 0.2], dtype=torch.float64) * (i + 1)
            opt.step()
        x.sum().backward()
        return x.detach(), lr.grad

    got, want = run(gradstep), run(torch.optim)
    assert got[1] is not None
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
