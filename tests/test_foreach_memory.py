"""foreach=True: temporary memory at torch.optim's foreach, with unchanged numbers.

The foreach backend writes an op's result over an operand nothing reads later
(backends/foreach.py). These tests hold it to torch.optim's peak of temporaries (measured by
benchmarks/foreach_memory.py: every allocation an ATen op makes during one step), and hold the
in-place evaluation to the bits of the plain out-of-place one.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

import gradstep
from gradstep.algorithms import _elementwise
from gradstep.backends import foreach, foreach_values

_spec = importlib.util.spec_from_file_location(
    "foreach_memory", Path(__file__).parents[1] / "benchmarks" / "foreach_memory.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

CONFIGS = {**bench.CONFIGS, **bench.EXTRA_CONFIGS}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("name", CONFIGS)
def test_peak_temporaries_at_most_torch_plus_one_param_list(name):
    """torch's test_peak_memory_foreach allows about one param-sized intermediate more."""
    cls, options = CONFIGS[name]
    ours = bench.peak_temporaries(gradstep, cls, options)
    theirs = bench.peak_temporaries(torch.optim, cls, options)
    assert ours <= theirs + 1.0 + 1e-9, (name, ours, theirs)


def test_measurement_sees_temporaries():
    """The instrumentation counts what an op allocates, until its last tensor is freed."""
    xs = [torch.ones(1000) for _ in range(3)]
    mode = bench.TemporaryBytes()
    with mode:
        a = torch._foreach_mul(xs, 2.0)
        b = torch._foreach_add(a, 1.0)
        del a
        torch._foreach_mul_(b, 3.0)  # in place: nothing new
        view = b[0].view(10, 100)
        del b
        assert mode.live == 4000  # the view keeps one tensor alive
        del view
    assert mode.peak == 24000 and mode.live == 0


def _run(cls, options, dtype, device, steps=7):
    gen = torch.Generator().manual_seed(0)
    shapes = ((7, 5), (33,), (2, 3, 4), (1,))
    params = [
        torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).to(device))
        for s in shapes
    ]
    opt = getattr(gradstep, cls)(params, foreach=True, **options)
    for k in range(steps):
        grads = []
        for i, p in enumerate(params):
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if k == 3 and i == 1:
                g[0], g[-1] = float("nan"), float("inf")
            if (k + i) % 4 == 0 and k:
                g = None  # a parameter a step behind: two partitions
            grads.append(None if g is None else g.to(dtype).to(device))
        for p, g in zip(params, grads):
            p.grad = g
        kept = [g.clone() if g is not None else None for g in grads]
        keys = opt._state_keys(opt.param_groups[0])
        states = {id(p): {key: opt.state[p].get(key) for key in keys} for p in params}
        ptrs = [p.data_ptr() for p in params]
        opt.step()
        for g, k_ in zip(grads, kept):  # the caller's gradients are never written
            assert g is None or _bits(g).equal(_bits(k_))
        assert [p.data_ptr() for p in params] == ptrs
        for p in params:  # state tensors keep their identity (updated in place)
            for key, v in states[id(p)].items():
                assert v is None or opt.state[p][key] is v, key
    out = [p.detach() for p in params]
    for p in params:
        out += [v for v in opt.state[p].values() if isinstance(v, torch.Tensor)]
    return [_bits(t) for t in out]


def _bits(t):
    t = torch.view_as_real(t) if t.is_complex() else t
    return t.detach().reshape(-1).contiguous().view(torch.uint8).cpu()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64,
                                   torch.complex64], ids=str)
@pytest.mark.parametrize("name", CONFIGS)
def test_in_place_evaluation_gives_the_same_bits(name, dtype, device, monkeypatch):
    cls, options = CONFIGS[name]
    reused = _run(cls, options, dtype, device)
    monkeypatch.setattr(foreach, "REUSE_BUFFERS", False)
    plain = _run(cls, options, dtype, device)
    assert len(reused) == len(plain)
    for i, (a, b) in enumerate(zip(reused, plain)):
        assert a.equal(b), (name, i)


CAPTURABLE = [n for n, (cls, _) in CONFIGS.items() if cls not in ("SGD", "Adagrad")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", CAPTURABLE)
def test_in_place_evaluation_with_tensor_scalars(name, dtype, monkeypatch):
    """capturable=True: the per-step scalars are 0-d tensors (lists of them on this backend).
    The device check is lifted so the CPU can run the CUDA path's foreach math."""
    monkeypatch.setattr(_elementwise, "_CAPTURABLE_DEVICES",
                        (*_elementwise._CAPTURABLE_DEVICES, "cpu"))
    cls, options = CONFIGS[name]
    options = dict(options, capturable=True)
    reused = _run(cls, options, dtype, "cpu")
    monkeypatch.setattr(foreach, "REUSE_BUFFERS", False)
    assert all(a.equal(b) for a, b in zip(reused, _run(cls, options, dtype, "cpu")))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64],
                         ids=str)
def test_in_place_ops_round_as_out_of_place(dtype, device):
    """The premise, op by op, for the forms the backend runs in place (sizes with a vector
    tail and a multi-threaded one)."""
    for size in (37, 70001):
        gen = torch.Generator().manual_seed(size)
        x, y, z = (
            [torch.randn(size, generator=gen).to(dtype).to(device) for _ in range(3)]
            for _ in range(3)
        )
        z = [t.abs() + 0.5 for t in z]
        ops = foreach.ForeachOps
        graph = []
        X, Y, Z, POS, NEG = (
            foreach.TensorList.given(ts, graph, None)
            for ts in (x, y, z, [t > 0 for t in y], [t < 0 for t in y])
        )
        w = torch.tensor(0.3, device=device)
        zero_d = [torch.tensor(0.7, device=device)] * 3
        S = foreach.TensorList.given(zero_d, graph, None, "scalar")
        exprs = [X * 0.37, X * 3, X * Y, X + Y, X + 0.5, X - Y, X / 1.7, X / Z, 2.0 - X,
                 0.5 / Z, foreach._record(foreach_values._RECIPROCAL, Z), -X, X ** 2.0, ops.sqrt(Z),
                 ops.abs(X), ops.sign(X), ops.exp(X),
                 ops.maximum(X, Y), ops.minimum(X, Y), ops.lerp(X, Y, 0.1), ops.lerp(X, Y, w),
                 ops.clamp(X, -0.5, 0.5), ops.add(X, Y, -0.01), ops.addcmul(X, Y, Z, 0.001),
                 ops.addcdiv(X, Y, Z, -0.01), ops.where(POS, 1.2, X),
                 ops.where(NEG, X, 0.0), ops.where(POS, X, Z), ops.where(POS, 1, X),
                 ops.where(POS, X, S), ops.where(NEG, S, X),
                 ops.where(POS, X, float("-inf")), X * S, S * X, ops.lerp(X, Y, S)]
        big = ops.where(POS, 1e300, X)  # masked_fill_ rejects what where rounds: out of place
        assert big.op.allows(2, big) == (dtype is torch.float64)
        checked = 0
        for node in exprs:
            args = [a.ts if isinstance(a, foreach.TensorList) else a for a in node.args]
            if any(isinstance(a, foreach.TensorList) and a.op is not None for a in node.args):
                continue  # a composite (2.0 - X, 0.5 / Z): its last op is checked on its own
            want = node.op.out(args, node.kw)
            for t in node.op.targets:
                if not isinstance(node.args[t], foreach.TensorList):
                    continue
                node.args[t].last = node.index
                if not foreach._fits(node, t):
                    continue
                copy = list(args)
                copy[t] = [v.clone() for v in args[t]]
                got = node.op.into(t, copy, node.kw)
                assert all(a.equal(b) for a, b in zip(got, want)), (node.op, t, size)
                checked += 1
        assert checked >= 30
