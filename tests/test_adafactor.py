"""Adafactor parity with torch.optim.Adafactor: options, both code paths, dtypes, checkpoints."""

import itertools

import pytest
import torch

import gradstep
from direct_parity import assert_same_signature, run_parity
from parity import assert_parity, assert_close_tol, make_params, clone_params, grads_for

# 2-D and 3-D params get factored row/col moments, 1-D and 0-D a full variance.
SHAPES = ((5, 3), (4,), (2, 3, 2), ())
OPTIONS = [
    dict(zip(("maximize", "weight_decay", "d", "beta2_decay", "eps"), combo))
    for combo in itertools.product(
        [False, True], [0.0, 0.1], [1.0, 1.5], [-0.8, -1.0], [(None, 1e-3), (1e-3, 1e-2)]
    )
]
BACKENDS = [dict(foreach=False), dict(foreach=True), dict()]


def test_signature_and_defaults():
    assert_same_signature(gradstep.Adafactor, torch.optim.Adafactor)
    p = torch.nn.Parameter(torch.randn(2, 3))
    assert gradstep.Adafactor([p]).defaults == torch.optim.Adafactor([p]).defaults


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_parity_float32(options, backend):
    # lr=0.5 makes rho_t = min(lr, 1/sqrt(t)) switch branch at t=4
    assert_parity(
        gradstep.Adafactor,
        torch.optim.Adafactor,
        dict(lr=0.5, **options, **backend),
        shapes=SHAPES,
        steps=12,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_parity_dtypes(dtype, backend):
    run_parity(
        gradstep.Adafactor,
        torch.optim.Adafactor,
        dict(lr=0.5, weight_decay=0.1, **backend),
        dtype=dtype,
        shapes=SHAPES,
    )


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_groups_skipped_grads_and_cross_load(backend):
    run_parity(
        gradstep.Adafactor,
        torch.optim.Adafactor,
        dict(backend),
        shapes=SHAPES,
        groups=[dict(lr=0.3, maximize=True), dict(beta2_decay=-0.5, d=2.0, weight_decay=0.05, foreach=True)],
        skip_every=3,
        cross_load_at=12,
        steps=35,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_tensor_lr(dtype, backend):
    run_parity(
        gradstep.Adafactor,
        torch.optim.Adafactor,
        dict(lr=torch.tensor(0.3), weight_decay=0.2, **backend),
        dtype=dtype,
        shapes=SHAPES,
        steps=20,
    )


def test_tensor_lr_foreach_with_unequal_steps():
    """With a tensor lr, rho_t is a tensor until 1/sqrt(t) < lr and a number after; when the
    params' steps differ, torch.optim's foreach path fails on the mixed list (TypeError). gradstep
    handles it and agrees with its for-loop path (and so with torch.optim's for-loop)."""
    run_parity(
        gradstep.Adafactor,
        torch.optim.Adafactor,
        dict(lr=torch.tensor(0.3), weight_decay=0.2, foreach=False),
        shapes=SHAPES,
        skip_every=4,
        steps=20,
    )
    base = make_params(torch.float32, SHAPES)
    pa, pb = clone_params(base), clone_params(base)
    oa = gradstep.Adafactor(pa, lr=torch.tensor(0.3), foreach=False)
    ob = gradstep.Adafactor(pb, lr=torch.tensor(0.3), foreach=True)
    for step in range(20):
        for x, y, g in zip(pa, pb, grads_for(base, step, skip_every=4)):
            x.grad = None if g is None else g.clone()
            y.grad = None if g is None else g.clone()
        oa.step()
        ob.step()
    for x, y in zip(pa, pb):
        assert_close_tol(x.detach(), y.detach(), torch.float32, "param")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_foreach_and_for_loop_agree(dtype):
    """gradstep's two code paths give the same numbers (to the dtype's tolerance)."""
    base = make_params(dtype, SHAPES)
    pa, pb = clone_params(base), clone_params(base)
    oa = gradstep.Adafactor(pa, lr=0.5, weight_decay=0.1, foreach=False)
    ob = gradstep.Adafactor(pb, lr=0.5, weight_decay=0.1, foreach=True)
    for step in range(20):
        for x, y, g in zip(pa, pb, grads_for(base, step, skip_every=5)):
            x.grad = None if g is None else g.clone()
            y.grad = None if g is None else g.clone()
        oa.step()
        ob.step()
    for x, y in zip(pa, pb):
        assert_close_tol(x.detach(), y.detach(), dtype, "param")
    for x, y in zip(pa, pb):
        for key, value in oa.state[x].items():
            assert_close_tol(value, ob.state[y][key], dtype, key)


def test_state_layout():
    p2, p1 = torch.nn.Parameter(torch.randn(2, 3, 4)), torch.nn.Parameter(torch.randn(5))
    opt = gradstep.Adafactor([p2, p1])
    p2.grad, p1.grad = torch.randn(2, 3, 4), torch.randn(5)
    opt.step()
    assert list(opt.state[p2]) == ["step", "row_var", "col_var"]
    assert opt.state[p2]["row_var"].shape == (2, 3, 1) and opt.state[p2]["col_var"].shape == (2, 1, 4)
    assert list(opt.state[p1]) == ["step", "variance"]
    assert opt.state[p1]["step"].dtype == torch.float32 and opt.state[p1]["step"].device.type == "cpu"


def test_step_dtype_follows_default_dtype():
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        run_parity(gradstep.Adafactor, torch.optim.Adafactor, {}, dtype=torch.float64, steps=3)
    finally:
        torch.set_default_dtype(prev)


CONSTRUCTOR_ERRORS = [
    (dict(lr=-1), ValueError, "Learning rate should be >= 0 but is: -1"),
    (dict(lr=torch.tensor(-1.0)), ValueError, "Learning rate should be >= 0 but is: -1.0"),
    (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element"),
    (dict(beta2_decay=0.8), ValueError, "beta2_decay should be <= 0 but is: 0.8"),
    (dict(eps=(-1e-30, 1e-3)), ValueError, "epsilon1 should be >= 0 but is: -1e-30"),
    (dict(eps=(None, -1)), ValueError, "epsilon2 should be >= 0 but is: -1"),
    (dict(d=0.0), ValueError, "Clipping threshold d should be >= 1 but is: 0.0"),
    (dict(weight_decay=-1), ValueError, "weight_decay should be >= 0 but is: -1"),
    # the order of the checks
    (dict(lr=-1, d=0.0), ValueError, "Learning rate"),
    (dict(d=0.0, beta2_decay=1, eps=(-1, 1), weight_decay=-1), ValueError, "beta2_decay"),
    (dict(eps=(-1, 1), weight_decay=-1), ValueError, "epsilon1"),
    (dict(eps=(0, -1), d=0.0), ValueError, "epsilon2"),
    (dict(d=0.0, weight_decay=-1), ValueError, "Clipping threshold"),
    (dict(differentiable=True), TypeError, "unexpected keyword argument 'differentiable'"),
    (dict(capturable=True), TypeError, "unexpected keyword argument 'capturable'"),
]


@pytest.mark.parametrize("kwargs, error, match", CONSTRUCTOR_ERRORS, ids=str)
def test_constructor_errors_match_torch(kwargs, error, match):
    for cls in (gradstep.Adafactor, torch.optim.Adafactor):
        with pytest.raises(error, match=match):
            cls([torch.nn.Parameter(torch.randn(2, 3))], **kwargs)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize(
    "dtype, sparse, match",
    [
        (torch.complex64, False, "Adafactor does not support complex parameters"),
        (torch.float32, True, "Adafactor does not support sparse gradients"),
    ],
)
def test_step_errors_match_torch(backend, dtype, sparse, match):
    for cls in (gradstep.Adafactor, torch.optim.Adafactor):
        p = torch.nn.Parameter(torch.randn(2, 3, dtype=dtype))
        g = torch.randn(2, 3, dtype=dtype)
        p.grad = g.to_sparse() if sparse else g
        with pytest.raises(RuntimeError, match=match):
            cls([p], **backend).step()


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_load_state_dict_with_number_steps_matches_torch(backend):
    """Older checkpoints store steps as Python numbers; torch turns them back into tensors."""
    results = []
    for cls in (gradstep.Adafactor, torch.optim.Adafactor):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(2, 3)), torch.nn.Parameter(torch.randn(4))]
        opt = cls(params, **backend)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
        sd = opt.state_dict()
        for st in sd["state"].values():
            st["step"] = st["step"].item()
        opt.load_state_dict(sd)
        step = opt.state[params[0]]["step"]
        assert torch.is_tensor(step) and step.dtype == torch.float32
        opt.step()
        results.append([p.detach().clone() for p in params] + [opt.state[params[0]]["step"]])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
