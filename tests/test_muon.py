"""Muon parity with torch.optim.Muon: options, dtypes, groups, checkpoints and errors."""

import itertools

import pytest
import torch

import gradstep
from direct_parity import assert_same_signature, assert_states_close, run_parity
from parity import assert_parity

SHAPES = ((5, 3), (3, 4))  # tall and wide; Newton-Schulz runs in bf16 matmuls, slow on CPU
OPTIONS = [
    dict(zip(("nesterov", "momentum", "weight_decay", "adjust_lr_fn"), combo))
    for combo in itertools.product(
        [True, False], [0.95, 0.0], [0.1, 0.0], ["original", "match_rms_adamw"]
    )
]


def test_signature_and_defaults():
    assert_same_signature(gradstep.Muon, torch.optim.Muon)
    p = torch.nn.Parameter(torch.randn(2, 3))
    assert gradstep.Muon([p]).defaults == torch.optim.Muon([p]).defaults


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_parity_float32(options):
    assert_parity(gradstep.Muon, torch.optim.Muon, dict(lr=0.02, **options), shapes=SHAPES, steps=12)


def test_default_adjust_lr_fn_is_original():
    assert_parity(gradstep.Muon, torch.optim.Muon, dict(lr=0.02), shapes=SHAPES, steps=12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("nesterov", [True, False])
def test_parity_dtypes(dtype, nesterov):
    # bfloat16 without nesterov also checks torch's in-place normalization of the momentum
    # buffer (the Newton-Schulz input aliases it); gradstep keeps that behaviour for parity.
    run_parity(
        gradstep.Muon,
        torch.optim.Muon,
        dict(lr=0.02, nesterov=nesterov),
        dtype=dtype,
        shapes=SHAPES,
        steps=12,
    )


@pytest.mark.parametrize(
    "options",
    [dict(ns_steps=6), dict(ns_steps=0), dict(ns_coefficients=(3.4, -4.7, 2.0)), dict(eps=1.0)],
    ids=str,
)
def test_newton_schulz_options(options):
    assert_parity(gradstep.Muon, torch.optim.Muon, dict(lr=0.02, **options), shapes=SHAPES, steps=10)


def test_groups_skipped_grads_and_cross_load():
    run_parity(
        gradstep.Muon,
        torch.optim.Muon,
        dict(lr=0.02),
        shapes=SHAPES,
        groups=[dict(lr=0.05, nesterov=False), dict(momentum=0.8, adjust_lr_fn="match_rms_adamw")],
        skip_every=3,
        cross_load_at=8,
        steps=16,
    )


def test_tensor_lr():
    run_parity(gradstep.Muon, torch.optim.Muon, dict(lr=torch.tensor(0.02)), shapes=SHAPES, steps=10)


def test_closure_returns_loss_and_no_grad_is_skipped():
    p = torch.nn.Parameter(torch.randn(3, 4))
    q = torch.nn.Parameter(torch.randn(3, 4))
    opt = gradstep.Muon([p, q])
    p.grad = torch.randn(3, 4)
    before = q.detach().clone()
    assert opt.step(lambda: 3.0) == 3.0
    assert torch.equal(q, before) and q not in opt.state
    assert set(opt.state[p]) == {"momentum_buffer"}


def test_checkpoint_roundtrip_then_continue():
    def run(cls):
        p = torch.nn.Parameter(torch.ones(3, 4))
        opt = cls([p], lr=0.1)
        for i in range(3):
            p.grad = torch.full((3, 4), float(i + 1)).tril()
            opt.step()
        return opt, p

    oa, _ = run(gradstep.Muon)
    ob, _ = run(torch.optim.Muon)
    assert_states_close(oa, ob, torch.float32)


CONSTRUCTOR_ERRORS = [
    (dict(lr=-1), ValueError, "Learning rate should be >= 0 but is: -1"),
    (dict(lr=torch.tensor(-1.0)), ValueError, "Learning rate should be >= 0 but is: -1.0"),
    (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element"),
    (dict(momentum=-1), ValueError, "momentum should be >= 0 but is: -1"),
    (dict(weight_decay=-1), ValueError, "weight decay should be >= 0 but is: -1"),
    (dict(lr=-1, weight_decay=-1), ValueError, "Learning rate"),
    (dict(weight_decay=-1, momentum=-1), ValueError, "momentum"),
    (dict(adjust_lr_fn="arbitrary"), ValueError, "Adjust learning rate function arbitrary is not supported"),
    (dict(foreach=True), TypeError, "unexpected keyword argument 'foreach'"),
    (dict(maximize=True), TypeError, "unexpected keyword argument 'maximize'"),
]


@pytest.mark.parametrize("kwargs, error, match", CONSTRUCTOR_ERRORS, ids=str)
def test_constructor_errors_match_torch(kwargs, error, match):
    for cls in (gradstep.Muon, torch.optim.Muon):
        with pytest.raises(error, match=match):
            cls([torch.nn.Parameter(torch.randn(2, 3))], **kwargs)


@pytest.mark.parametrize(
    "params",
    [
        lambda: [torch.nn.Parameter(torch.randn(3))],
        lambda: [torch.nn.Parameter(torch.randn(2, 3, 4))],
        lambda: [{"params": [torch.nn.Parameter(torch.randn(2, 3))]}, {"params": [torch.randn(2)]}],
    ],
)
def test_only_2d_params(params):
    for cls in (gradstep.Muon, torch.optim.Muon):
        with pytest.raises(ValueError, match="Muon only supports 2D parameters whereas we found a parameter with size: torch.Size"):
            cls(params())


def _param_with_grad(dtype=torch.float32, shape=(2, 3), sparse=False):
    p = torch.nn.Parameter(torch.randn(shape, dtype=dtype))
    g = torch.randn(shape, dtype=dtype)
    p.grad = g.to_sparse() if sparse else g
    return p


STEP_ERRORS = [
    (lambda: [_param_with_grad(torch.complex64)], {}, RuntimeError, "Muon does not support complex parameters"),
    (lambda: [_param_with_grad(sparse=True)], {}, RuntimeError, "Muon does not support sparse gradients"),
    (lambda: [_param_with_grad()], dict(ns_steps=100), ValueError, "Number of steps must be less than 100"),
    (lambda: [_param_with_grad()], dict(ns_coefficients=(1.0, 2.0)), ValueError, "Coefficients must be a tuple of exactly 3 values"),
    (lambda: [_param_with_grad()], dict(ns_steps=100, ns_coefficients=(1.0,)), ValueError, "Number of steps"),
]


@pytest.mark.parametrize("params, kwargs, error, match", STEP_ERRORS)
def test_step_errors_match_torch(params, kwargs, error, match):
    for cls in (gradstep.Muon, torch.optim.Muon):
        opt = cls(params(), **kwargs)
        with pytest.raises(error, match=match):
            opt.step()


def test_non_2d_param_added_later_fails_at_step():
    for cls in (gradstep.Muon, torch.optim.Muon):
        opt = cls([torch.nn.Parameter(torch.randn(2, 3))])
        opt.add_param_group({"params": [_param_with_grad(shape=(3,))]})
        with pytest.raises(ValueError, match="Param gradient must be a 2D matrix"):
            opt.step()
