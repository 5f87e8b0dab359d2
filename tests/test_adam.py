"""Adam and AdamW parity with torch.optim across options, dtypes, backends and groups."""

import itertools

import pytest
import torch
from optim_checks import assert_capturable_bitwise

import gradstep
from parity import assert_parity

OPTIONS = [
    dict(zip(("amsgrad", "maximize", "weight_decay"), combo))
    for combo in itertools.product([False, True], [False, True], [0, 0.1])
]
BACKENDS = [dict(foreach=False), dict(foreach=True), dict()]


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_parity_float32(name, options, backend):
    assert_parity(
        getattr(gradstep, name), getattr(torch.optim, name), dict(lr=0.01, **options, **backend)
    )


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.complex64])
@pytest.mark.parametrize("backend", BACKENDS, ids=str)
def test_parity_dtypes(name, dtype, backend):
    assert_parity(
        getattr(gradstep, name),
        getattr(torch.optim, name),
        dict(lr=0.01, amsgrad=True, weight_decay=0.05, **backend),
        dtype=dtype,
    )


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_groups_skipped_grads_and_cross_load(name):
    assert_parity(
        getattr(gradstep, name),
        getattr(torch.optim, name),
        dict(lr=0.01),
        groups=[dict(lr=0.1, amsgrad=True), dict(betas=(0.8, 0.99), weight_decay=0.2, foreach=False)],
        skip_every=3,
        cross_load_at=12,
        steps=35,
    )


def test_decoupled_weight_decay_flag_matches_adamw():
    assert_parity(gradstep.Adam, torch.optim.Adam, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True))


def test_tensor_lr():
    assert_parity(gradstep.Adam, torch.optim.Adam, dict(lr=torch.tensor(0.01)))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lr=-1), ValueError, "Invalid learning rate: -1"),
        (dict(eps=-1), ValueError, "Invalid epsilon value: -1"),
        (dict(betas=(1.0, 0.9)), ValueError, "Invalid beta parameter at index 0: 1.0"),
        (dict(betas=(0.9, 1.0)), ValueError, "Invalid beta parameter at index 1: 1.0"),
        (dict(weight_decay=-1), ValueError, "Invalid weight_decay value: -1"),
        (dict(lr=torch.tensor(0.001), foreach=True), ValueError, "lr as a Tensor is not supported"),
        (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element"),
        (dict(betas=(0.9, torch.tensor(0.99))), ValueError, "betas must be either both floats or both Tensors"),
        (dict(fused=True, foreach=True), RuntimeError, "`fused` and `foreach` cannot be `True` together"),
        (dict(fused=True, differentiable=True), RuntimeError, "`fused` does not support `differentiable`"),
    ],
)
def test_errors_match_torch(kwargs, error, match):
    for cls in (gradstep.Adam, torch.optim.Adam):
        with pytest.raises(error, match=match):
            cls([torch.nn.Parameter(torch.randn(2))], **kwargs)


def test_sparse_gradient_rejected():
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        gradstep.Adam([p]).step()


def _meta_step(module, name, kwargs, tensor_hypers, steps=3):
    """A few differentiable steps, then the meta-gradient of the last loss (meta-learning)."""
    torch.manual_seed(0)
    p0 = torch.rand(10, dtype=torch.float64, requires_grad=True)
    p = p0.clone()
    hypers = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in tensor_hypers.items()}
    kw = dict(kwargs, differentiable=True, **{k: v for k, v in hypers.items() if k not in ("beta1", "beta2")})
    if "beta1" in hypers:
        kw["betas"] = (hypers["beta1"], hypers["beta2"])
    opt = getattr(module, name)([p], **kw)
    for _ in range(steps):
        loss = (p.sum() - 2.0).square()
        loss.backward(inputs=(p,), create_graph=True)
        opt.step()
        opt.zero_grad()
    inputs = [p0, *hypers.values()]
    return [p.detach(), *torch.autograd.grad(loss, inputs)]


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize(
    "tensor_hypers",
    [{}, {"lr": 0.01}, {"weight_decay": 0.1}, {"beta1": 0.9, "beta2": 0.999},
     {"lr": 0.01, "weight_decay": 0.5, "beta1": 0.8, "beta2": 0.99}],
    ids=str,
)
def test_differentiable_matches_torch(name, tensor_hypers):
    """differentiable=True: torch's numbers (its tensor-scalar form, bitwise) and gradients
    reaching tensor lr, weight_decay and betas, as meta-learning code expects.

    (amsgrad is left out: torch's own backward fails there after several steps.)
    """
    ours = _meta_step(gradstep, name, dict(lr=0.01), tensor_hypers)
    theirs = _meta_step(torch.optim, name, dict(lr=0.01), tensor_hypers)
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=0)
    for a, b in zip(ours[1:], theirs[1:]):  # backward graphs differ in shape: rounding only
        torch.testing.assert_close(a, b, rtol=1e-9, atol=0)


@pytest.mark.parametrize("cls", [gradstep.Adam, gradstep.AdamW])
def test_float16_default_follows_torchs_default_arithmetic(cls):
    """With no backend flag, float16 parameters get torch.optim's own per-op float16 arithmetic
    (where eps=1e-8 underflows and a zero second moment gives inf), not the float32 fused math."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(64, generator=gen, dtype=torch.float64).half()
    grads = [torch.randn(64, generator=gen, dtype=torch.float64).half() * 1e-3 for _ in range(6)]
    grads[0][:8] = 0
    got, want = [torch.nn.Parameter(base.clone()) for _ in range(2)]
    opts = cls([got]), getattr(torch.optim, cls.__name__)([want])
    for g in grads:
        for p, opt in zip((got, want), opts):
            p.grad = g.clone()
            opt.step()
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("cls", [gradstep.Adam, gradstep.AdamW])
@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("kwargs", [{}, dict(amsgrad=True, weight_decay=0.1), dict(lr=torch.tensor(0.01))], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_capturable_math_bitwise_as_torch(cls, foreach, kwargs, dtype):
    """capturable=True: the step-size scalars and the update take the form of torch's path
    (foreach: the denominator divided by 1 / ((beta1**t - 1) / lr); for-loop: its own form), so
    float64 runs agree to the last bit, not only to float32's rounding of those scalars."""
    assert_capturable_bitwise(cls, getattr(torch.optim, cls.__name__),
                              dict(kwargs, foreach=foreach), dtype)
