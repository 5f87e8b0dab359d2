"""Adagrad parity with torch.optim: options, dtypes, backends, groups, eager state, sparse
grads, errors, autograd."""

import itertools

import pytest
import torch

import gradstep
from optim_checks import (
    assert_differentiable_step,
    assert_same_error,
    assert_same_api,
    assert_sparse_parity,
    assert_traced_rule_matches,
    forloop_oracle,
)
from gradstep.algorithms.adagrad import AdagradConfig, adagrad_rule
from parity import assert_parity, assert_state_close

NAMES = ("maximize", "weight_decay", "lr_decay", "initial_accumulator_value")
OPTIONS = [dict(zip(NAMES, c)) for c in itertools.product([False, True], [0, 0.1], [0, 0.1], [0, 0.2])]
BACKENDS = [dict(foreach=False), dict(foreach=True), dict(), dict(fused=True)]


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_parity_float32(options, backend):
    assert_parity(gradstep.Adagrad, torch.optim.Adagrad, dict(lr=0.1, **options, **backend))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.complex64], ids=str)
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_parity_dtypes(dtype, backend):
    if dtype == torch.complex64 and "fused" in backend:
        pytest.skip("fused takes real floating-point params only (tested in the errors)")
    options = dict(lr=0.1, lr_decay=0.05, weight_decay=0.05, initial_accumulator_value=0.1,
                   maximize=True)
    oracle = forloop_oracle(torch.optim.Adagrad) if dtype == torch.bfloat16 else torch.optim.Adagrad
    assert_parity(gradstep.Adagrad, oracle, dict(options, **backend), dtype=dtype)


def test_groups_skipped_grads_and_cross_load():
    assert_parity(
        gradstep.Adagrad,
        torch.optim.Adagrad,
        dict(lr=0.05),
        groups=[
            dict(lr_decay=0.1, initial_accumulator_value=0.5),
            dict(lr=0.1, weight_decay=0.2, foreach=False),
            dict(eps=1e-3, maximize=True, foreach=True),
        ],
        skip_every=3,
        cross_load_at=12,
        steps=35,
    )


@pytest.mark.parametrize("backend", [dict(foreach=False), dict(foreach=True)], ids=str)
def test_tensor_lr(backend):
    assert_parity(gradstep.Adagrad, torch.optim.Adagrad, dict(lr=torch.tensor(0.1), **backend))


@pytest.mark.parametrize(
    "dtype, options",
    [(torch.float32, dict()), (torch.complex64, dict(initial_accumulator_value=0.3)),
     (torch.bfloat16, dict(fused=True, initial_accumulator_value=0.3))],
    ids=str,
)
def test_state_is_created_with_the_optimizer(dtype, options):
    params = [torch.nn.Parameter(torch.randn(3, 2).to(dtype)) for _ in range(2)]
    ours, theirs = gradstep.Adagrad(params, **options), torch.optim.Adagrad(params, **options)
    assert_state_close(ours, theirs, dtype, "after construction")


def test_params_added_later_get_state_at_their_first_step():
    p, q = (torch.nn.Parameter(torch.randn(3)) for _ in range(2))
    opt = gradstep.Adagrad([p], initial_accumulator_value=0.5)
    opt.add_param_group({"params": [q]})
    assert q not in opt.state
    p.grad, q.grad = torch.randn(3), torch.randn(3)
    opt.step()
    assert opt.state[q]["step"] == 1 and opt.state[q]["sum"].shape == (3,)


def test_share_memory():
    p = torch.nn.Parameter(torch.randn(3))
    opt = gradstep.Adagrad([p])
    opt.share_memory()
    assert opt.state[p]["sum"].is_shared()


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(maximize=True, lr_decay=0.1), dict(initial_accumulator_value=0.5, eps=0.0),
     dict(foreach=True)],
    ids=str,
)
def test_sparse_gradients(kwargs):
    assert_sparse_parity(gradstep.Adagrad, torch.optim.Adagrad, dict(lr=0.1, **kwargs), steps=10)


def test_sparse_matches_dense():
    """A sparse gradient updates exactly what its dense twin updates (torch's rosenbrock test)."""
    base = torch.randn(6, 3, dtype=torch.float64)
    ps, pd = torch.nn.Parameter(base.clone()), torch.nn.Parameter(base.clone())
    os_, od = gradstep.Adagrad([ps], lr=0.1), gradstep.Adagrad([pd], lr=0.1)
    for step in range(5):
        idx = torch.tensor([[step % 6, (step + 2) % 6, step % 6]])
        g = torch.sparse_coo_tensor(idx, torch.randn(3, 3, dtype=torch.float64), (6, 3))
        ps.grad, pd.grad = g, g.to_dense()
        os_.step()
        od.step()
    torch.testing.assert_close(ps, pd, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lr=-1), ValueError, "Invalid learning rate: -1"),
        (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element"),
        (dict(lr_decay=-0.5), ValueError, "Invalid lr_decay value: -0.5"),
        (dict(weight_decay=-1), ValueError, "Invalid weight_decay value: -1"),
        (dict(initial_accumulator_value=-1), ValueError, "Invalid initial_accumulator_value value: -1"),
        (dict(eps=-1), ValueError, "Invalid epsilon value: -1"),
        (dict(eps=-1, weight_decay=-1, lr_decay=-1, initial_accumulator_value=-1), ValueError,
         "Invalid lr_decay value"),
        (dict(eps=-1, weight_decay=-1, initial_accumulator_value=-1), ValueError,
         "Invalid weight_decay value"),
        (dict(eps=-1, initial_accumulator_value=-1), ValueError, "Invalid initial_accumulator_value"),
        (dict(fused=True, foreach=True), RuntimeError, "`fused` and `foreach` cannot be `True` together"),
        (dict(fused=True, differentiable=True), RuntimeError, "`fused` does not support `differentiable`"),
    ],
    ids=str,
)
def test_errors_match_torch(kwargs, error, match):
    assert_same_error(gradstep.Adagrad, torch.optim.Adagrad, kwargs, error, match)


def test_step_errors_match_torch():
    for cls in (gradstep.Adagrad, torch.optim.Adagrad):
        p = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
        p.grad = torch.randn_like(p)
        with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating"):
            cls([p], fused=True).step()
        p = torch.nn.Parameter(torch.randn(3))
        p.grad = torch.randn(3).to_sparse()
        with pytest.raises(RuntimeError, match="`fused` does not support sparse grad or complex"):
            cls([p], fused=True).step()
        with pytest.raises(RuntimeError, match="weight_decay option is not compatible with sparse"):
            cls([p], weight_decay=0.1).step()


def test_signature_matches_torch():
    assert_same_api(gradstep.Adagrad, torch.optim.Adagrad)


@pytest.mark.parametrize("kwargs", [dict(), dict(weight_decay=0.1, maximize=True),
                                    dict(lr_decay=0.5, initial_accumulator_value=0.1)], ids=str)
def test_differentiable(kwargs):
    assert_differentiable_step(gradstep.Adagrad, torch.optim.Adagrad, dict(lr=0.1, **kwargs))


def test_traced_rule_matches():
    scalars = dict(clr=0.1, weight_decay=0.1, eps=1e-10)
    assert_traced_rule_matches(adagrad_rule, AdagradConfig, lambda c: 1, scalars)
