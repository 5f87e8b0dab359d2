"""SGD parity with torch.optim: options, dtypes, backends, groups, sparse grads, errors, autograd."""

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
from gradstep.algorithms.sgd import SGDConfig, sgd_rule
from parity import assert_parity


def _options():
    names = ("maximize", "weight_decay", "momentum", "dampening", "nesterov")
    for combo in itertools.product([False, True], [0, 0.1], [0, 0.9], [0, 0.3], [False, True]):
        opts = dict(zip(names, combo))
        if opts["nesterov"] and (opts["momentum"] == 0 or opts["dampening"] != 0):
            continue  # rejected by the constructor (see the error tests)
        yield opts


OPTIONS = list(_options())
BACKENDS = [dict(foreach=False), dict(foreach=True), dict(), dict(fused=True)]


@pytest.mark.parametrize("backend", BACKENDS, ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_parity_float32(options, backend):
    assert_parity(gradstep.SGD, torch.optim.SGD, dict(lr=0.05, **options, **backend))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.complex64], ids=str)
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_parity_dtypes(dtype, backend):
    if dtype == torch.complex64 and "fused" in backend:
        pytest.skip("fused takes real floating-point params only (tested in the errors)")
    options = dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.05, maximize=True)
    oracle = forloop_oracle(torch.optim.SGD) if dtype == torch.bfloat16 else torch.optim.SGD
    assert_parity(gradstep.SGD, oracle, dict(options, **backend), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nesterov_dtypes(dtype):
    kwargs = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)
    assert_parity(gradstep.SGD, torch.optim.SGD, kwargs, dtype=dtype)


def test_groups_skipped_grads_and_cross_load():
    assert_parity(
        gradstep.SGD,
        torch.optim.SGD,
        dict(lr=0.01),
        groups=[
            dict(momentum=0.9, nesterov=True),
            dict(lr=0.1, weight_decay=0.2, foreach=False),
            dict(momentum=0.5, dampening=0.5, maximize=True, foreach=True),
        ],
        skip_every=3,
        cross_load_at=12,
        steps=35,
    )


def test_momentum_buffer_created_when_a_param_first_gets_a_grad():
    # skip_every gives some params their first gradient only after others took steps.
    assert_parity(
        gradstep.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.5), skip_every=2
    )


def test_no_state_without_momentum():
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    opt = gradstep.SGD([p], lr=0.1)
    opt.step()
    assert len(opt.state) == 0 and opt.state_dict()["state"] == {}


def test_momentum_buffer_is_the_first_gradient():
    p = torch.nn.Parameter(torch.randn(4))
    p.grad = torch.randn(4)
    opt = gradstep.SGD([p], lr=0.1, momentum=0.9, dampening=0.7)
    opt.step()
    buf = opt.state[p]["momentum_buffer"]
    assert torch.equal(buf, p.grad) and buf.data_ptr() != p.grad.data_ptr()


@pytest.mark.parametrize("backend", [dict(foreach=False), dict(foreach=True)], ids=str)
def test_tensor_lr_and_weight_decay(backend):
    kwargs = dict(lr=torch.tensor(0.01), weight_decay=torch.tensor(0.1), momentum=0.9, **backend)
    assert_parity(gradstep.SGD, torch.optim.SGD, kwargs)


@pytest.mark.parametrize("kwargs", [dict(), dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
                                    dict(momentum=0.9, dampening=0.5, maximize=True)], ids=str)
def test_sparse_gradients(kwargs):
    assert_sparse_parity(gradstep.SGD, torch.optim.SGD, dict(lr=0.1, **kwargs))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lr=-1), ValueError, "Invalid learning rate: -1"),
        (dict(lr=torch.tensor(-1.0)), ValueError, "Invalid learning rate: -1.0"),
        (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element"),
        (dict(momentum=-0.5), ValueError, "Invalid momentum value: -0.5"),
        (dict(weight_decay=-1), ValueError, "Invalid weight_decay value: -1"),
        (dict(weight_decay=torch.tensor(-0.5)), ValueError, "Invalid weight_decay value: -0.5"),
        (dict(momentum=-1, weight_decay=-1), ValueError, "Invalid momentum value"),
        (dict(nesterov=True), ValueError, "Nesterov momentum requires a momentum and zero dampening"),
        (dict(nesterov=True, momentum=0.9, dampening=0.1), ValueError, "Nesterov momentum requires"),
        (dict(nesterov=True, fused=True, foreach=True), ValueError, "Nesterov momentum requires"),
        (dict(fused=True, foreach=True), RuntimeError, "`fused` and `foreach` cannot be `True` together"),
        (dict(fused=True, differentiable=True), RuntimeError, "`fused` does not support `differentiable`"),
    ],
    ids=str,
)
def test_errors_match_torch(kwargs, error, match):
    assert_same_error(gradstep.SGD, torch.optim.SGD, kwargs, error, match)


def test_step_errors_match_torch():
    for cls in (gradstep.SGD, torch.optim.SGD):
        p = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
        p.grad = torch.randn_like(p)
        with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating"):
            cls([p], fused=True).step()
        p = torch.nn.Parameter(torch.randn(3))
        p.grad = torch.randn(3).to_sparse()
        with pytest.raises(RuntimeError, match="does not support sparse gradients"):
            cls([p], fused=True).step()
        with pytest.raises(RuntimeError, match=r"add\(sparse, dense\) is not supported"):
            cls([p], weight_decay=0.1).step()


def test_signature_matches_torch():
    assert_same_api(gradstep.SGD, torch.optim.SGD)


@pytest.mark.parametrize("kwargs", [dict(), dict(momentum=0.9, weight_decay=0.1),
                                    dict(momentum=0.9, nesterov=True, maximize=True),
                                    dict(momentum=0.9, dampening=0.5)], ids=str)
def test_differentiable(kwargs):
    assert_differentiable_step(gradstep.SGD, torch.optim.SGD, dict(lr=0.1, **kwargs))


@pytest.mark.parametrize("momentum", [0, 0.9])
def test_differentiable_wrt_tensor_lr_and_weight_decay(momentum):
    """Meta-gradients through two steps with respect to tensor lr and weight_decay (the
    scenario of torch's test_differentiable_lr / _weight_decay)."""

    def run(cls, lr, wd):
        gen = torch.Generator().manual_seed(5)
        p = torch.rand(10, generator=gen, dtype=torch.float64, requires_grad=True).clone()
        p.grad = torch.rand(10, generator=gen, dtype=torch.float64, requires_grad=True)
        opt = cls([p], lr=lr, weight_decay=wd, momentum=momentum, differentiable=True)
        buf = torch.rand(10, generator=gen, dtype=torch.float64, requires_grad=True)
        opt.state[p]["momentum_buffer"] = buf.clone()
        for _ in range(2):
            loss = torch.nn.functional.mse_loss(torch.ones(1, dtype=torch.float64) * torch.sum(p),
                                                torch.full((1,), 2.0, dtype=torch.float64))
            loss.backward(inputs=(p,), create_graph=True)
            opt.step()
            opt.zero_grad()
        return loss

    def inputs():
        return (torch.tensor(0.01, dtype=torch.float64, requires_grad=True),
                torch.tensor(0.9, dtype=torch.float64, requires_grad=True))

    lr, wd = inputs()
    ours = torch.autograd.grad(run(gradstep.SGD, lr, wd), (lr, wd))
    if momentum == 0:  # torch's in-place momentum update breaks this graph
        lr, wd = inputs()
        theirs = torch.autograd.grad(run(torch.optim.SGD, lr, wd), (lr, wd))
        torch.testing.assert_close(ours, theirs)
    torch.autograd.gradcheck(lambda a, b: run(gradstep.SGD, a, b), inputs())


def test_traced_rule_matches():
    scalars = dict(lr=0.1, weight_decay=0.1, momentum=0.9, one_minus_dampening=0.7)
    assert_traced_rule_matches(sgd_rule, SGDConfig, lambda c: int(c.momentum), scalars)


@pytest.mark.parametrize("nesterov, weight_decay, maximize", [(False, 0.0, False), (True, 0.1, False), (False, 0.1, True)])
def test_differentiable_hypergradients_match_torch(nesterov, weight_decay, maximize):
    """torch.optim starts the momentum buffer from a detached copy of the first gradient, so
    gradients through two differentiable steps see only the second step's buffer."""

    def hypergrads(module):
        p0 = torch.tensor([1.0, 2.0, -0.5], requires_grad=True)
        g0 = torch.tensor([0.5, -1.0, 0.25], requires_grad=True)
        x = p0.clone()
        opt = module.SGD([x], lr=0.1, momentum=0.9, dampening=0.0, nesterov=nesterov,
                         weight_decay=weight_decay, maximize=maximize, differentiable=True)
        for scale in (2.0, 3.0, -1.0):
            x.grad = g0 * scale
            opt.step()
        (x * torch.tensor([1.0, -2.0, 3.0])).sum().backward()
        return p0.grad, g0.grad

    for got, want in zip(hypergrads(gradstep), hypergrads(torch.optim)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
