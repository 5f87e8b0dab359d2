"""SparseAdam parity with torch.optim.SparseAdam on sparse gradients; its errors."""

import itertools

import pytest
import torch

import gradstep
from direct_parity import assert_same_signature, run_parity, sparse_grads

# torch warns once that sparse invariant checks are off; not what these tests are about
pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks")

SHAPES = ((6, 3), (5,), (4, 2, 2))
OPTIONS = [
    dict(zip(("maximize", "betas", "eps"), combo))
    for combo in itertools.product([False, True], [(0.9, 0.999), (0.8, 0.9)], [1e-8, 1e-3])
]


def test_signature_and_defaults():
    assert_same_signature(gradstep.SparseAdam, torch.optim.SparseAdam)
    p = torch.nn.Parameter(torch.randn(2, 3))
    assert gradstep.SparseAdam([p]).defaults == torch.optim.SparseAdam([p]).defaults


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parity(options, dtype):
    run_parity(
        gradstep.SparseAdam,
        torch.optim.SparseAdam,
        dict(lr=0.05, **options),
        dtype=dtype,
        shapes=SHAPES,
        make_grads=sparse_grads,
        steps=15,
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_parity_low_precision(dtype):
    run_parity(
        gradstep.SparseAdam,
        torch.optim.SparseAdam,
        dict(lr=0.05, maximize=True),
        dtype=dtype,
        shapes=SHAPES,
        make_grads=sparse_grads,
    )


def test_groups_skipped_grads_and_cross_load():
    oa, _ = run_parity(
        gradstep.SparseAdam,
        torch.optim.SparseAdam,
        dict(lr=0.01),
        shapes=SHAPES,
        groups=[dict(lr=0.1, maximize=True), dict(betas=(0.5, 0.9), eps=1e-4)],
        skip_every=3,
        cross_load_at=12,
        steps=35,
        make_grads=sparse_grads,
    )
    steps = [st["step"] for st in oa.state.values()]
    assert all(type(s) is int for s in steps)  # torch.optim keeps a Python int here


def test_tensor_lr():
    run_parity(
        gradstep.SparseAdam,
        torch.optim.SparseAdam,
        dict(lr=torch.tensor(0.05)),
        shapes=SHAPES,
        make_grads=sparse_grads,
    )


def test_embedding_sparse_grads_end_to_end():
    torch.manual_seed(0)
    emb_a = torch.nn.Embedding(10, 4, sparse=True)
    emb_b = torch.nn.Embedding(10, 4, sparse=True)
    emb_b.load_state_dict(emb_a.state_dict())
    oa, ob = gradstep.SparseAdam(emb_a.parameters(), lr=0.1), torch.optim.SparseAdam(emb_b.parameters(), lr=0.1)
    for _ in range(5):
        idx = torch.randint(0, 10, (6,))
        for emb, opt in ((emb_a, oa), (emb_b, ob)):
            opt.zero_grad()
            emb(idx).pow(2).sum().backward()
            opt.step()
    torch.testing.assert_close(emb_a.weight, emb_b.weight, rtol=1e-5, atol=1e-6)


def test_closure_and_no_grad():
    p, q = torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(3, 2))
    opt = gradstep.SparseAdam([p, q])
    p.grad = torch.randn(3, 2).to_sparse()
    assert opt.step(lambda: 2.5) == 2.5
    assert q not in opt.state


CONSTRUCTOR_ERRORS = [
    (dict(lr=-1), ValueError, "Invalid learning rate: -1"),
    (dict(lr=torch.tensor(-1.0)), ValueError, "Invalid learning rate: -1.0"),
    (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element"),
    (dict(eps=-1), ValueError, "Invalid epsilon value: -1"),
    (dict(eps=0.0), ValueError, "Invalid epsilon value: 0.0"),
    (dict(lr=1e-2, betas=(1.0, 0.0)), ValueError, "Invalid beta parameter at index 0: 1.0"),
    (dict(betas=(0.9, 1.0)), ValueError, "Invalid beta parameter at index 1: 1.0"),
    (dict(betas=(-0.1, 0.9)), ValueError, "Invalid beta parameter at index 0: -0.1"),
    (dict(lr=-1, eps=-1), ValueError, "Invalid learning rate"),
    (dict(eps=-1, betas=(1.0, 1.0)), ValueError, "Invalid epsilon value"),
    (dict(foreach=True), TypeError, "unexpected keyword argument 'foreach'"),
]


@pytest.mark.parametrize("kwargs, error, match", CONSTRUCTOR_ERRORS, ids=str)
def test_constructor_errors_match_torch(kwargs, error, match):
    for cls in (gradstep.SparseAdam, torch.optim.SparseAdam):
        with pytest.raises(error, match=match):
            cls([torch.nn.Parameter(torch.randn(2, 3))], **kwargs)


def _sparse_param():
    return torch.zeros(3, layout=torch.sparse_coo)


def _dense():
    return torch.nn.Parameter(torch.randn(3))


@pytest.mark.parametrize(
    "params, match",
    [
        (lambda: [_sparse_param()], r"Sparse params at indices \[\[0, 0\]\]: SparseAdam requires dense parameter tensors"),
        (lambda: [{"params": [_sparse_param()]}], r"Sparse params at indices \[\[0, 0\]\]: SparseAdam requires dense"),
        (
            lambda: [{"params": [_dense(), _sparse_param()]}, {"params": [_sparse_param(), _dense(), _sparse_param()]}],
            r"Sparse params at indices \[\[0, 1\], \[1, 0\], \[1, 2\]\]: SparseAdam requires dense",
        ),
        (lambda: [torch.rand(2, 3, dtype=torch.complex64)], r"Complex params at indices \[\[0, 0\]\]: SparseAdam does not support complex parameters"),
        (
            lambda: [{"params": [_dense(), torch.rand(3, dtype=torch.complex64)]}, {"params": [torch.rand(3, dtype=torch.complex64)]}],
            r"Complex params at indices \[\[0, 1\], \[1, 0\]\]: SparseAdam does not support complex",
        ),
        # sparse is checked before complex
        (lambda: [torch.rand(2, 3, dtype=torch.complex64), _sparse_param()], r"Sparse params at indices \[\[0, 1\]\]"),
        (lambda: [("w", _sparse_param())], r"Sparse params at indices \[\[0, 0\]\]"),
    ],
)
def test_param_errors_match_torch(params, match):
    for cls in (gradstep.SparseAdam, torch.optim.SparseAdam):
        with pytest.raises(ValueError, match=match):
            cls(params())


def test_dense_gradient_rejected_like_torch():
    for cls in (gradstep.SparseAdam, torch.optim.SparseAdam):
        p = torch.nn.Parameter(torch.randn(2, 3))
        p.grad = torch.randn(2, 3)
        with pytest.raises(RuntimeError, match="SparseAdam does not support dense gradients, please consider Adam instead"):
            cls([p]).step()


def test_param_list_type_errors_come_first():
    for cls in (gradstep.SparseAdam, torch.optim.SparseAdam):
        with pytest.raises(TypeError, match="params argument given to the optimizer should be an iterable"):
            cls(_sparse_param())
        with pytest.raises(ValueError, match="optimizer got an empty parameter list"):
            cls([])


def test_no_warning_under_warnings_as_errors_like_torch():
    """torch.optim's SparseAdam runs silently under ``-W error``; so must ours. (Fresh
    processes: torch's sparse-invariant warning fires once per process.)"""
    import subprocess
    import sys

    code = (
        "import sys, torch, gradstep\n"
        "cls = getattr(torch.optim if sys.argv[1] == 'torch' else gradstep, 'SparseAdam')\n"
        "p = torch.nn.Parameter(torch.randn(4, 3))\n"
        "opt = cls([p])\n"
        "for _ in range(2):\n"
        "    p.grad = torch.randn(4, 3).to_sparse()\n"
        "    opt.step()\n"
    )
    for which in ("torch", "gradstep"):
        run = subprocess.run(
            [sys.executable, "-W", "error", "-c", code, which], capture_output=True, text=True
        )
        assert run.returncode == 0, (which, run.stderr[-500:])
