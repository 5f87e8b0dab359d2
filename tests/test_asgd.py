"""ASGD parity with torch.optim across options, dtypes, backends and groups."""

import copy
import itertools

import pytest
import torch
from optim_checks import (
    assert_differentiable,
    assert_same_api,
    assert_same_error,
    assert_sparse_gradient_rejected,
    assert_traced_rule_matches,
)
from parity import assert_parity

import gradstep
from gradstep.algorithms.asgd import ASGDConfig, asgd_rule

# t0=5 starts the averaging (mu < 1) within the run; lambd=0 keeps the parameter unshrunk.
OPTIONS = [
    dict(zip(("maximize", "weight_decay", "lambd", "t0"), combo))
    for combo in itertools.product([False, True], [0, 0.1], [0, 0.05], [1e6, 5])
]
BACKENDS = [dict(foreach=False), dict(foreach=True), dict()]


def parity(kwargs, **kw):
    return assert_parity(gradstep.ASGD, torch.optim.ASGD, kwargs, **kw)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_parity_float32(options, backend):
    parity(dict(lr=0.05, **options, **backend))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.complex64])
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_parity_dtypes(dtype, backend):
    # The default lambd: a shrink factor 1 - lambd * eta within half a bf16 ulp of 1 is rounded
    # away by torch's bf16 arithmetic but not by backends that compute in fp32 (fused); see
    # test_bf16_rounding_as_torch for the explicit backends, which round as torch does.
    parity(dict(lr=0.05, t0=5, weight_decay=0.05, **backend), dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS[:2], ids=str)
def test_bf16_rounding_as_torch(backend):
    parity(dict(lr=0.05, lambd=0.05, t0=5, weight_decay=0.05, **backend), dtype=torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_groups_skipped_grads_and_cross_load(dtype, backend):
    parity(
        dict(lr=0.01, **backend),
        groups=[
            dict(lr=0.1, t0=3, maximize=True),
            dict(lambd=0.1, alpha=0.5, weight_decay=0.2, t0=10, foreach=False),
        ],
        skip_every=3,
        cross_load_at=12,
        steps=35,
        dtype=dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_tensor_lr(dtype, backend):
    parity(dict(lr=torch.tensor(0.05), lambd=0.05, t0=5, **backend), dtype=dtype)


def set_lr_at(step_no, lr):
    def before_step(step, *optimizers):
        if step == step_no:
            for opt in optimizers:
                opt.param_groups[0]["lr"] = lr

    return before_step


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_lr_changed_mid_run(backend):
    """eta is recomputed from the group's current lr each step, as in torch."""
    parity(dict(lr=0.05, lambd=0.1, **backend), before_step=set_lr_at(7, 0.2), dtype=torch.float64)


def test_state_under_default_float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        oa, _ = parity(dict(lr=0.05, t0=2), dtype=torch.float32, steps=4)
        state = next(iter(oa.state.values()))
        assert state["step"].dtype == state["eta"].dtype == state["mu"].dtype == torch.float64
    finally:
        torch.set_default_dtype(old)


def test_checkpoint_with_number_eta_and_mu_loads():
    """Old checkpoints hold step, eta and mu as Python numbers; both libraries accept them."""
    oa, _ = parity(dict(lr=0.05, t0=2), steps=4)
    sd = oa.state_dict()
    for st in sd["state"].values():
        for key in ("step", "eta", "mu"):
            st[key] = st[key].item()
    for cls in (gradstep.ASGD, torch.optim.ASGD):
        p = torch.nn.Parameter(torch.randn(5, 3))
        opt = cls([p, torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(2, 3, 2))])
        opt.load_state_dict(sd)
        p.grad = torch.randn(5, 3)
        opt.step()
        assert all(torch.is_tensor(opt.state[p][k]) for k in ("step", "eta", "mu"))


def test_api_matches_torch():
    assert_same_api(gradstep.ASGD, torch.optim.ASGD)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lr=-1), ValueError, "Invalid learning rate: -1"),
        (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element"),
        (dict(weight_decay=-0.5), ValueError, "Invalid weight_decay value: -0.5"),
    ],
)
def test_errors_match_torch(kwargs, error, match):
    assert_same_error(gradstep.ASGD, torch.optim.ASGD, kwargs, error, match)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(capturable=True), AssertionError, "params, mus, etas, and state_steps must be on"),
        (dict(foreach=True, differentiable=True), AssertionError, "_foreach ops don't support"),
    ],
)
def test_step_errors_match_torch(kwargs, error, match):
    assert_same_error(gradstep.ASGD, torch.optim.ASGD, kwargs, error, match, step=True)


def test_sparse_gradient_rejected():
    assert_sparse_gradient_rejected(gradstep.ASGD)


@pytest.mark.parametrize(
    "kwargs", [dict(lr=0.9), dict(lr=0.9, t0=2, weight_decay=0.1, maximize=True)], ids=str
)
def test_differentiable(kwargs):
    # As torch's test-suite: step, eta and mu are not continuous, ax is.
    f64 = dict(dtype=torch.float64)
    state = dict(
        step=torch.tensor(10.0, **f64),
        eta=torch.tensor(0.9, **f64),
        mu=torch.tensor(1.0, **f64),
        ax=torch.rand(10, **f64).requires_grad_(),
    )
    assert_differentiable(gradstep.ASGD, torch.optim.ASGD, state, kwargs)


@pytest.mark.parametrize("cfg", [ASGDConfig(*c) for c in itertools.product([False, True], repeat=4)])
@pytest.mark.parametrize("mu", [1.0, 0.25])
def test_traced_rule_matches(cfg, mu):
    scalars = dict(eta=0.1, mu=mu, lambd=0.01, weight_decay=0.1)
    assert_traced_rule_matches(asgd_rule, cfg, 1, scalars)


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_eta_and_mu_come_from_the_host_mirror(backend, monkeypatch):
    """A steady loop reads no eta/mu back from their tensors (a device sync per parameter on a
    GPU); a checkpoint load or an outside write is noticed, and the numbers stay torch's."""
    from gradstep.algorithms import _host_mirror

    monkeypatch.setattr(_host_mirror, "NATIVE_CPU", False)  # CPU tensors stand in for GPU ones
    reads = []
    real_read = _host_mirror.read_device
    monkeypatch.setattr(_host_mirror, "read_device", lambda ts: reads.append(len(ts)) or real_read(ts))
    ps = [torch.randn(4, requires_grad=True) for _ in range(3)]
    tps = [p.detach().clone().requires_grad_() for p in ps]
    opt = gradstep.ASGD(ps, lr=0.05, t0=3, **backend)
    topt = torch.optim.ASGD(tps, lr=0.05, t0=3, **backend)

    def step(i):
        for p, tp in zip(ps, tps):
            p.grad = torch.full_like(p, 0.1 * i + 0.3)
            tp.grad = p.grad.clone()
        opt.step()
        topt.step()
        for p, tp in zip(ps, tps):
            torch.testing.assert_close(p, tp, rtol=1e-5, atol=1e-6)

    step(0)
    first = len(reads)
    for i in range(1, 6):
        step(i)
    assert len(reads) == first  # steady: nothing read back
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # new state tensors: read once more
    step(6)
    assert len(reads) > first
    again = len(reads)
    opt.state[ps[1]]["eta"].fill_(0.01)  # an outside write bumps the version: read again
    topt.state[tps[1]]["eta"].fill_(0.01)
    step(7)
    assert len(reads) > again
    for p, tp in zip(ps, tps):
        for key in ("eta", "mu", "step"):
            torch.testing.assert_close(opt.state[p][key], topt.state[tp][key])
