"""LBFGS parity with torch.optim.LBFGS: whole closure-driven runs, state, checkpoints, errors.

Every evaluation, line-search trial and stopping test has to agree for the runs to agree, so
each run is compared step by step: returned loss, parameters, and the full state (history
lists, the step ``t`` with its Python type, counters).
"""

import copy
import itertools

import pytest
import torch

import gradstep
from direct_parity import assert_same_signature, assert_states_close, assert_value_close
from parity import _roundtrip, assert_close_tol


def _rosenbrock(dtype):
    """The Rosenbrock valley from the classic start (-1.5, 2): curved, badly conditioned."""
    x0 = [torch.tensor([-1.5, 2.0], dtype=dtype)]

    def loss(ps):
        x = ps[0]
        return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2

    return x0, loss


def _regression(dtype):
    """Least squares of a small linear layer (weight and bias), plus a quartic penalty."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(16, 4, generator=gen, dtype=torch.float64).to(dtype)
    Y = torch.randn(16, 3, generator=gen, dtype=torch.float64).to(dtype)
    x0 = [torch.randn(3, 4, generator=gen, dtype=torch.float64).to(dtype) * 0.1, torch.zeros(3, dtype=dtype)]

    def loss(ps):
        W, b = ps
        return ((X @ W.T + b - Y) ** 2).mean() + 0.05 * (W**4).sum()

    return x0, loss


def _complex_regression(dtype):
    """Complex least squares; LBFGS optimizes complex params as pairs of reals."""
    gen = torch.Generator().manual_seed(1)
    real = torch.float32 if dtype == torch.complex64 else torch.float64
    A = torch.complex(torch.randn(12, 4, generator=gen, dtype=real), torch.randn(12, 4, generator=gen, dtype=real))
    y = torch.complex(torch.randn(12, generator=gen, dtype=real), torch.randn(12, generator=gen, dtype=real))
    x0 = [torch.zeros(4, dtype=dtype), torch.zeros((), dtype=dtype)]

    def loss(ps):
        w, c = ps
        return ((A @ w + c - y).abs() ** 2).mean()

    return x0, loss


PROBLEMS = {"rosenbrock": _rosenbrock, "regression": _regression}


def run_lbfgs(kwargs, problem, dtype, steps=5, cross_load_at=None):
    """Run gradstep and torch.optim LBFGS side by side and compare after every step."""
    x0, objective = problem(dtype)
    pa = [torch.nn.Parameter(x.clone()) for x in x0]
    pb = [torch.nn.Parameter(x.clone()) for x in x0]
    oa, ob = gradstep.LBFGS(pa, **kwargs), torch.optim.LBFGS(pb, **kwargs)

    def closure(opt, ps):
        def f():
            opt.zero_grad()
            loss = objective(ps)
            loss.backward()
            return loss

        return f

    for step in range(steps):
        la, lb = oa.step(closure(oa, pa)), ob.step(closure(ob, pb))
        assert_value_close(la.detach(), lb.detach(), dtype, f"loss at step {step}")
        for i, (x, y) in enumerate(zip(pa, pb)):
            assert_close_tol(x.detach(), y.detach(), dtype, f"step {step} param {i}")
        assert_states_close(oa, ob, dtype, f"step {step}")
        if step == cross_load_at:
            sa, sb = _roundtrip(copy.deepcopy(oa.state_dict())), _roundtrip(copy.deepcopy(ob.state_dict()))
            oa, ob = gradstep.LBFGS(pa, **kwargs), torch.optim.LBFGS(pb, **kwargs)
            oa.load_state_dict(sb)  # torch checkpoint into gradstep
            ob.load_state_dict(sa)  # gradstep checkpoint into torch
            assert_states_close(oa, ob, dtype, f"after cross-load at {step}")
    return oa, ob


OPTIONS = [
    dict(zip(("line_search_fn", "history_size", "lr", "max_iter"), combo))
    for combo in itertools.product([None, "strong_wolfe"], [2, 100], [1, 0.5], [4, 20])
]


def test_signature_and_defaults():
    assert_same_signature(gradstep.LBFGS, torch.optim.LBFGS)
    p = torch.nn.Parameter(torch.randn(2, 3))
    assert gradstep.LBFGS([p]).defaults == torch.optim.LBFGS([p]).defaults
    assert gradstep.LBFGS([p], max_iter=7).defaults["max_eval"] == 8  # max_iter * 5 // 4


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parity(options, problem, dtype):
    run_lbfgs(options, PROBLEMS[problem], dtype)


@pytest.mark.parametrize(
    "options",
    [
        dict(tolerance_grad=1e-3),
        dict(tolerance_change=1e-4),
        dict(tolerance_change=1e-4, line_search_fn="strong_wolfe"),
        dict(max_eval=6, line_search_fn="strong_wolfe"),  # the line search gets the rest of the budget
        dict(max_iter=3, lr=100, line_search_fn="strong_wolfe"),  # long brackets, zoom
        dict(max_iter=3, max_eval=40, lr=10, line_search_fn="strong_wolfe"),
        dict(history_size=1, max_iter=10),
        dict(max_iter=1),
        dict(max_iter=0),
    ],
    ids=str,
)
@pytest.mark.parametrize("problem", PROBLEMS)
def test_stopping_rules_and_line_search(options, problem):
    run_lbfgs(options, PROBLEMS[problem], torch.float64, steps=4)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
@pytest.mark.parametrize("problem", PROBLEMS)
def test_cross_load_mid_run(line_search_fn, problem):
    run_lbfgs(dict(line_search_fn=line_search_fn, max_iter=5, history_size=4), PROBLEMS[problem], torch.float32, steps=6, cross_load_at=2)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tensor_lr(line_search_fn, dtype):
    # the step t becomes a tensor (or stays a number) exactly where torch's does
    run_lbfgs(dict(lr=torch.tensor(0.8), line_search_fn=line_search_fn), _regression, dtype)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_params(line_search_fn, dtype):
    oa, _ = run_lbfgs(dict(line_search_fn=line_search_fn, max_iter=6), _complex_regression, dtype, steps=3)
    assert oa.state_dict()["state"][0]["d"].numel() == 2 * (4 + 1)  # real and imaginary parts


def test_sparse_gradients_in_closure():
    torch.manual_seed(0)
    emb_a = torch.nn.Embedding(6, 3, sparse=True)
    emb_b = torch.nn.Embedding(6, 3, sparse=True)
    emb_b.load_state_dict(emb_a.state_dict())
    idx = torch.tensor([0, 2, 2, 5])
    runs = []
    for emb, cls in ((emb_a, gradstep.LBFGS), (emb_b, torch.optim.LBFGS)):
        opt = cls(emb.parameters(), max_iter=5)

        def closure(emb=emb, opt=opt):
            opt.zero_grad()
            loss = (emb(idx) - 1).pow(2).sum()
            loss.backward()
            return loss

        runs.append((opt, [opt.step(closure) for _ in range(2)]))
    torch.testing.assert_close(emb_a.weight, emb_b.weight, rtol=0, atol=0)
    assert_states_close(runs[0][0], runs[1][0], torch.float32)


def test_returns_first_loss_and_stops_at_a_stationary_point():
    for cls in (gradstep.LBFGS, torch.optim.LBFGS):
        p = torch.nn.Parameter(torch.zeros(3))
        opt = cls([p])
        assert opt.step(lambda: 1.5) == 1.5  # no gradient at all: already optimal
        assert dict(opt.state[p]) == {"func_evals": 1, "n_iter": 0}


def test_state_lives_under_the_first_param_only():
    oa, ob = run_lbfgs({}, _regression, torch.float32, steps=1)
    assert list(oa.state_dict()["state"]) == list(ob.state_dict()["state"]) == [0]
    keys = list(oa.state_dict()["state"][0])
    assert keys == list(ob.state_dict()["state"][0])


CONSTRUCTOR_ERRORS = [
    (dict(lr=-1), ValueError, "Invalid learning rate: -1"),
    (dict(lr=torch.tensor(-1.0)), ValueError, "Invalid learning rate: -1.0"),
    (dict(lr=torch.tensor([0.001, 0.001])), ValueError, "Tensor lr must be 1-element"),
    (dict(foreach=True), TypeError, "unexpected keyword argument 'foreach'"),
]


@pytest.mark.parametrize("kwargs, error, match", CONSTRUCTOR_ERRORS, ids=str)
def test_constructor_errors_match_torch(kwargs, error, match):
    for cls in (gradstep.LBFGS, torch.optim.LBFGS):
        with pytest.raises(error, match=match):
            cls([torch.nn.Parameter(torch.randn(2))], **kwargs)


def test_single_param_group_only():
    for cls in (gradstep.LBFGS, torch.optim.LBFGS):
        groups = [{"params": [torch.nn.Parameter(torch.randn(2))]}, {"params": [torch.nn.Parameter(torch.randn(2))]}]
        with pytest.raises(ValueError, match=r"LBFGS doesn't support per-parameter options \(parameter groups\)"):
            cls(groups)
        opt = cls([torch.nn.Parameter(torch.randn(2))])
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))]})
        with pytest.raises(AssertionError, match="Expected exactly one param_group, but got 2"):
            opt.step(lambda: 1.0)


def test_step_errors_match_torch():
    for cls in (gradstep.LBFGS, torch.optim.LBFGS):
        p = torch.nn.Parameter(torch.randn(3))
        opt = cls([p])
        with pytest.raises(TypeError, match=r"step\(\) missing 1 required positional argument: 'closure'"):
            opt.step()
        with pytest.raises(TypeError, match="'NoneType' object is not callable"):
            opt.step(None)
        opt = cls([p], line_search_fn="foo")

        def closure():
            opt.zero_grad()
            loss = (p**2).sum()
            loss.backward()
            return loss

        with pytest.raises(RuntimeError, match="only 'strong_wolfe' is supported"):
            opt.step(closure)
