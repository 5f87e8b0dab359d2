"""The CUDA backend: generated Triton kernels against the reference backend and torch.optim.

Without a GPU (CI) the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``) on CPU
tensors, for every elementwise algorithm with a representative set of options, in float32 and
bfloat16. With a GPU the same kernels run compiled: the full option matrix against torch.optim,
CUDA-graph capture and replay, and the device errors. Tests are skipped, with the reason, when
Triton or a GPU is missing.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import stat
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (pip install 'gradstep[cuda]')")

import gradstep  # noqa: E402
from gradstep.algorithms import _elementwise, _host_mirror, _steps  # noqa: E402
from gradstep.algorithms._elementwise import ElementwiseOptimizer  # noqa: E402
from gradstep.algorithms.adam import AdamConfig, adam_rule  # noqa: E402
from gradstep.backends import _by_device_and_dtype, _fused, select_backend  # noqa: E402
from gradstep.backends import cuda as cuda_backend  # noqa: E402
from gradstep.backends.cuda import loader, runner, tables  # noqa: E402
from gradstep.backends.reference import run_reference  # noqa: E402
from parity import assert_close_tol, clone_params, grads_for, make_params  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

#: every elementwise algorithm gradstep exports, found at test time
ALGORITHMS = sorted(
    (c for c in vars(gradstep).values()
     if isinstance(c, type) and issubclass(c, ElementwiseOptimizer)),
    key=lambda c: c.__name__,
)

#: representative options per algorithm (each set is checked on every backend it names);
#: an algorithm missing here gets its defaults and, where accepted, maximize and weight decay
OPTIONS = {
    "Adam": [{}, dict(amsgrad=True, maximize=True, weight_decay=0.1),
             dict(decoupled_weight_decay=True, weight_decay=0.1, betas=(0.8, 0.9))],
    "AdamW": [{}, dict(amsgrad=True, maximize=True, weight_decay=0.05)],
    "SGD": [dict(lr=0.1), dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
            dict(lr=0.1, momentum=0.9, dampening=0.2, maximize=True)],
    "Adagrad": [{}, dict(lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.2,
                         maximize=True)],
    "Adadelta": [{}, dict(rho=0.8, weight_decay=0.1, maximize=True)],
    "Adamax": [{}, dict(weight_decay=0.1, maximize=True)],
    "RMSprop": [{}, dict(centered=True, momentum=0.9, weight_decay=0.1),
                dict(momentum=0.5, maximize=True)],
    "ASGD": [{}, dict(t0=2, weight_decay=0.1, maximize=True)],
    "NAdam": [{}, dict(decoupled_weight_decay=True, weight_decay=0.1),
              dict(momentum_decay=0.01, weight_decay=0.1, maximize=True)],
    "RAdam": [{}, dict(decoupled_weight_decay=True, weight_decay=0.1),
              dict(weight_decay=0.1, maximize=True)],
    "Rprop": [{}, dict(etas=(0.4, 1.3), step_sizes=(1e-5, 1.0), maximize=True)],
}


def _accepts(cls, kwargs) -> bool:
    params = inspect.signature(cls.__init__).parameters
    return all(k in params for k in kwargs)


def options_for(cls) -> list[dict]:
    sets = OPTIONS.get(cls.__name__)
    if sets is None:
        sets = [{}, {k: v for k, v in dict(maximize=True, weight_decay=0.1).items()
                     if _accepts(cls, {k: v})}]
    return [kw for kw in sets if _accepts(cls, kw)]


def _case_id(cls, kw) -> str:
    return cls.__name__ + ("-" + "-".join(f"{k}={v}" for k, v in kw.items()) if kw else "")


CASES = [pytest.param(cls, kw, id=_case_id(cls, kw)) for cls in ALGORITHMS for kw in options_for(cls)]

# shapes with several blocks, tails and an empty tensor when BLOCK is 16
SHAPES = ((5, 3), (40,), (2, 3, 2), (33,), (0,))


@pytest.fixture
def interpret(monkeypatch, tmp_path):
    """Run generated kernels in Triton's interpreter with small blocks and a private cache."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("GRADSTEP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(runner, "BLOCK", 16)
    monkeypatch.setattr(runner, "PER_PROGRAM", 2)  # the in-program loop, tails mid-chunk
    yield


@contextlib.contextmanager
def backend(run):
    """Make every elementwise optimizer use ``run`` (whatever its flags and device)."""
    original = _elementwise.select_backend
    _elementwise.select_backend = lambda group, params: run
    try:
        yield
    finally:
        _elementwise.select_backend = original


def _round_to(opt, params, dtype):
    """Round params and param-shaped states to ``dtype`` in place (a float32 twin's storage)."""
    with torch.no_grad():
        for p in params:
            p.copy_(p.to(dtype))
            for v in opt.state.get(p, {}).values():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.is_floating_point():
                    v.copy_(v.to(dtype))


def _compare(opt, twin, params, twin_params, dtype, where):
    for i, (x, y) in enumerate(zip(params, twin_params)):
        assert_close_tol(x.detach(), y.detach().to(dtype), dtype, f"{where}: param {i}")
    for x, y in zip(params, twin_params):
        sx, sy = opt.state.get(x, {}), twin.state.get(y, {})
        assert sx.keys() == sy.keys(), where
        for k in sx:
            a, b = sx[k], sy[k]
            if isinstance(a, torch.Tensor) and a.shape == x.shape and a.is_floating_point():
                assert a.dtype == x.dtype, (where, k)
                assert_close_tol(a, b.to(a.dtype), dtype, f"{where}: state {k}")


def run_against_twin(cls, kwargs, dtype, *, device="cpu", steps=6, fused_run=None,
                     twin_cls=None, twin_kwargs=None, twin_run=run_reference, shapes=SHAPES):
    """Step ``cls(**kwargs)`` on the fused backend and a twin on the same gradients.

    The fused kernels keep bf16/fp16 tensors in storage but compute in float32, so for those
    dtypes the twin runs in float32 and is rounded to ``dtype`` after each step, the same
    arithmetic. ``fused_run`` forces a runner (CPU tensors in the interpreter); ``twin_run``
    forces the twin's (None: its flags decide, e.g. a torch.optim twin).
    """
    base = make_params(dtype, shapes, device=device)
    low = dtype in (torch.bfloat16, torch.float16)
    pa = clone_params(base)
    pb = clone_params([t.float() for t in base] if low else base)
    oa = cls(pa, **kwargs)
    ob = (twin_cls or cls)(pb, **(kwargs if twin_kwargs is None else twin_kwargs))
    for step in range(steps):
        grads = grads_for(base, step, skip_every=4)
        for x, y, g in zip(pa, pb, grads):
            x.grad = None if g is None else g.to(device)
            y.grad = None if g is None else g.to(device=device, dtype=y.dtype)
        with backend(fused_run) if fused_run else contextlib.nullcontext():
            oa.step()
        with backend(twin_run) if twin_run else contextlib.nullcontext():
            ob.step()
        if low:
            _round_to(ob, pb, dtype)
        _compare(oa, ob, pa, pb, dtype, f"step {step}")
    return oa, ob


_triton = _by_device_and_dtype(runner.run_triton)


# --------------------------------------------------------------------- interpreter (CPU, CI)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cls, kwargs", CASES)
def test_interpreted_kernel_matches_reference(interpret, cls, kwargs, dtype):
    run_against_twin(cls, kwargs, dtype, fused_run=_triton)


def test_every_algorithm_has_cases():
    names = {c.__name__ for c in ALGORITHMS}
    assert {"Adam", "AdamW"} <= names
    assert all(options_for(c) for c in ALGORITHMS)


def test_interpreted_complex_and_float64(interpret):
    run_against_twin(gradstep.Adam, dict(weight_decay=0.1), torch.complex64, fused_run=_triton)
    run_against_twin(gradstep.Adam, dict(amsgrad=True), torch.float64, fused_run=_triton)
    run_against_twin(gradstep.SGD, dict(lr=0.1, momentum=0.9), torch.float16, fused_run=_triton)


NAMES = ("lr", "beta1", "beta2", "eps", "weight_decay", "step_size", "bias_correction2_sqrt")


def _adam_rows(n, seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(17,), (3, 5), (1,), (40,)][:n]
    rows = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(2)]
    rows += [[torch.rand(s, generator=gen) for s in shapes] for _ in range(2)]
    return rows


def _assert_triton_matches_reference(cfg, scalars, lists):
    """Adam's rule over ``lists`` by the Triton runner (in place) and over a copy by the
    reference backend agree."""
    expected = [[t.clone() for t in lst] for lst in lists]
    run_reference(adam_rule, cfg, scalars, expected)
    runner.run_triton(adam_rule, cfg, scalars, lists)
    for x, y in zip(expected, lists):
        for u, v in zip(x, y):
            torch.testing.assert_close(v, u, rtol=1e-5, atol=1e-6)


def test_interpreted_tensor_scalars(interpret):
    """capturable-style scalars: a shared 0-d lr (by pointer) and per-tensor step scalars."""
    cfg = AdamConfig(maximize=False, weight_decay=True, decoupled=True, amsgrad=False)
    lr = torch.tensor(0.01)
    scalars = []
    for step in (1.0, 2.0, 5.0, 3.0):
        t = torch.tensor(step)
        scalars.append(SimpleNamespace(
            lr=lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1,
            step_size=lr / (1 - 0.9**t), bias_correction2_sqrt=(1 - 0.999**t).sqrt(),
        ))
    _assert_triton_matches_reference(cfg, scalars, _adam_rows(4, 0))
    modes = runner._modes(scalars, NAMES, torch.device("cpu"))
    assert dict((n, m) for n, m, _ in modes) == dict(
        lr="s", beta1="f", beta2="f", eps="f", weight_decay="f", step_size="v",
        bias_correction2_sqrt="v")


def test_streaming_cache_hints_keep_the_numbers(interpret, monkeypatch):
    """The launch-shape sweep's cache-hint variant prints the hints and computes the same."""
    monkeypatch.setattr(runner, "STREAM", True)
    cfg = AdamConfig(maximize=False, weight_decay=True, decoupled=True, amsgrad=True)
    scalars = [SimpleNamespace(lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1,
                               step_size=0.2, bias_correction2_sqrt=0.5)] * 4
    _assert_triton_matches_reference(
        cfg, scalars, _adam_rows(4, 5) + [[torch.rand(t.shape) for t in _adam_rows(4, 6)[0]]])
    spec = runner.KernelSpec(("float32",) * 5, tuple((n, "f", "float64") for n in NAMES), True, True)
    source = runner.kernel_source(adam_rule, cfg, NAMES, 3, spec)
    assert source.count('eviction_policy="evict_first"') == 2 * 5  # full and masked blocks
    assert source.count('cache_modifier=".cs"') == 2 * 4


def test_interpreted_unaligned_noncontiguous_and_partitions(interpret):
    """Unaligned rows get their own launch, non-contiguous rows fall back to foreach, and rows
    with different numeric scalars run as separate partitions; all match the reference."""
    cfg = AdamConfig(maximize=True, weight_decay=True, decoupled=False, amsgrad=True)
    gen = torch.Generator().manual_seed(3)
    big = torch.randn(64, generator=gen)
    params = [big[1:30], torch.randn(6, 4, generator=gen).t(), torch.randn(21, generator=gen)]
    lists = [params]
    lists += [[torch.randn(p.shape, generator=gen).contiguous() for p in params]]
    lists += [[torch.rand(p.shape, generator=gen).contiguous() for p in params] for _ in range(3)]
    scalars = [SimpleNamespace(lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1,
                               step_size=0.1 / (1 - 0.9**k), bias_correction2_sqrt=(1 - 0.99**k) ** 0.5)
               for k in (1, 1, 4)]
    layout = runner._check(lists)
    assert layout.ok == [0, 2] and layout.bad == [1]
    tables.clear()
    launches = _launches(lists, [0, 2], runner.BLOCK)
    assert sorted(launch.aligned for launch in launches) == [False, True]
    _assert_triton_matches_reference(cfg, scalars, lists)


def _launches(lists, rows, chunk):
    ptrs = [[t.data_ptr() for t in lst] for lst in lists]
    return tables.launches(lists[0][rows[0]].device, len(lists), rows, chunk, ptrs,
                           [t.numel() for t in lists[0]])


def test_tables_are_cached_per_layout(interpret):
    tables.clear()
    lists = _adam_rows(3, 1)
    first = _launches(lists, [0, 1, 2], 16)
    assert _launches(lists, [0, 1, 2], 16) is first
    (launch,) = first
    n, meta = launch.n_tensors, launch.meta.tolist()
    roles = len(lists)
    for r, lst in enumerate(lists):
        assert meta[r * n:(r + 1) * n] == [lst[i].data_ptr() for i in launch.rows]
    assert meta[roles * n:(roles + 1) * n] == [lists[0][i].numel() for i in launch.rows]
    pairs = meta[(roles + 1) * n:]
    assert len(pairs) == 2 * launch.n_blocks == 2 * (2 + 1 + 1)  # 17, 15 and 1 elements
    assert pairs[0::2] == [0, 0, 1, 2] and pairs[1::2] == [0, 1, 0, 0]
    lists[1][0] = lists[1][0].clone()  # a new gradient tensor: new pointer, new table
    assert _launches(lists, [0, 1, 2], 16) is not first


def test_cached_layouts_follow_a_shrink_in_place(interpret):
    """Tensors shrunk in place (``t.data = t.data[:k]``: same objects, same addresses) are
    updated over their new size only, although every cache key but the sizes is unchanged."""
    cfg = AdamConfig(maximize=False, weight_decay=False, decoupled=False, amsgrad=False)
    scalars = [SimpleNamespace(lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0,
                               step_size=0.1, bias_correction2_sqrt=1.0)] * 3
    lists = _adam_rows(3, 2)
    runner.run_triton(adam_rule, cfg, scalars, lists)
    whole = [lst[0].data for lst in lists]
    for lst in lists:
        lst[0].data = lst[0].data[:5]
    before = [t.clone() for t in whole]
    _assert_triton_matches_reference(cfg, scalars, lists)
    for w, b in zip(whole, before):
        assert torch.equal(w[5:], b[5:])  # beyond the new size: untouched


@pytest.mark.parametrize("cls, kwargs", [
    (gradstep.Adam, dict(lr=0.05, weight_decay=0.1)),
    (gradstep.SGD, dict(lr=0.1, momentum=0.9)),
    (gradstep.ASGD, dict(lr=0.05, t0=3)),
    (gradstep.NAdam, dict(lr=0.05, weight_decay=0.1)),
    (gradstep.RAdam, dict(lr=0.05)),  # plain phase, then rectified from step 6
], ids=lambda x: getattr(x, "__name__", ""))
def test_steady_plan_on_triton_matches_torch_and_sees_changes(interpret, monkeypatch, cls, kwargs, steady_check):
    """Groups of CUDA tensors take the steady path (_steady.py) to the Triton runner, exercised
    here on CPU tensors: same numbers as torch through an lr change, a replaced state tensor, a
    parameter whose storage moved, and a parameter and its states shrunk in place (same
    addresses, fewer elements: the kernel must not walk the old sizes)."""
    from gradstep.algorithms import _steady

    monkeypatch.setattr(_steady, "_runs_triton", lambda params: True)
    monkeypatch.setattr(cuda_backend, "_runner", runner.run_triton)
    steady, planned = [], []
    real = _steady._execute_triton
    monkeypatch.setattr(_steady, "_execute_triton", lambda *a: steady.append(1) or real(*a))
    real_planned = runner.run_planned
    monkeypatch.setattr(runner, "run_planned", lambda *a: planned.append(1) or real_planned(*a))
    base = make_params()
    pa, pb = clone_params(base), clone_params(base)
    oa, ob = cls(pa, **kwargs), _torch_twin(cls)(pb, **kwargs)
    state_key = {"SGD": "momentum_buffer", "ASGD": "ax"}.get(cls.__name__, "exp_avg")
    for step in range(11):
        if step == 8:
            for o, p in ((oa, pa[2]), (ob, pb[2])):
                keep = p.numel() // 2
                for t in [p, *(v for v in o.state[p].values() if v.shape == p.shape)]:
                    t.data = t.data.view(-1)[:keep]
            base[2] = base[2].reshape(-1)[:pa[2].numel()]
        for x, y, g in zip(pa, pb, grads_for(base, step)):
            x.grad, y.grad = g.clone(), g.clone()
        if step == 4:
            for o in (oa, ob):
                o.param_groups[0]["lr"] *= 0.5
        if step == 5:
            for o, p in ((oa, pa[0]), (ob, pb[0])):
                o.state[p][state_key] = o.state[p][state_key].clone()
        if step == 6:
            for p in (pa[1], pb[1]):
                p.data = p.data.clone()
        with backend(_triton):
            oa.step()
        ob.step()
        _compare(oa, ob, pa, pb, torch.float32, f"step {step}")
    assert len(steady) >= 6 and len(planned) >= 6


def test_gpu_benchmark_sweep_runs(interpret, monkeypatch):
    """The launch-shape sweep of ``gradstep bench --device cuda`` (run in the interpreter on CPU
    tensors, as its only other chance to run is a GPU session): every shape and cache-hint
    variant steps, the default is timed again last, and the fastest is kept."""
    from gradstep import benchmark_cuda
    from gradstep.algorithms import _steady

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(cuda_backend, "_runner", runner.run_triton)
    monkeypatch.setattr(_steady, "_runs_triton", lambda params: True)
    for name in ("BLOCK", "PER_PROGRAM", "NUM_WARPS", "STREAM"):
        monkeypatch.setattr(runner, name, getattr(runner, name))  # restored after the sweep
    params = benchmark_cuda.make_set([(300,), (17, 5), (64,)], "cpu")
    configs = ((64, 2, 4, False), (32, 1, 2, True))
    with backend(runner.run_triton):
        out = benchmark_cuda.sweep(params, repeats=1, copy_bw=1e9, configs=configs)
    assert [(r["block"], r["per_program"], r["warps"], r["stream"]) for r in out] == [*configs, configs[0]]
    assert all(r["seconds"] > 0 and r["fraction_of_copy"] > 0 for r in out)
    best = min(out, key=lambda r: r["seconds"])
    assert (runner.BLOCK, runner.STREAM) == (best["block"], best["stream"])


def test_gpu_benchmark_rows_interleave_and_fall_back(interpret, monkeypatch):
    """``gradstep bench --device cuda`` times an algorithm's implementations interleaved, and one
    after another when their states do not fit side by side (run here through the
    interpreter, on CPU tensors)."""
    from gradstep import benchmark_cuda
    from gradstep.algorithms import _steady

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda *a, **k: None)
    monkeypatch.setattr(cuda_backend, "_runner", runner.run_triton)
    monkeypatch.setattr(_steady, "_runs_triton", lambda params: True)
    params = benchmark_cuda.make_set([(300,), (17, 5)], "cpu")
    labels = ["gradstep", "gradstep fused", "torch default", "torch foreach", "torch fused"]
    with backend(runner.run_triton):
        (row,) = benchmark_cuda.run_set("small", params, [gradstep.Adam], 2, 1e9)
        assert row["interleaved"] and all(row[label] > 0 for label in labels)
        assert 0 < row["fraction_of_copy"] and 0 < row["fraction_of_copy_fused"]

        def out_of_memory(*args, **kwargs):
            raise torch.cuda.OutOfMemoryError("states do not fit side by side")

        monkeypatch.setattr(benchmark_cuda, "time_interleaved", out_of_memory)
        (row,) = benchmark_cuda.run_set("small", params, [gradstep.Adam], 2, 1e9)
        assert not row["interleaved"] and all(row[label] > 0 for label in labels)


def test_steady_plan_on_triton_skips_a_frozen_param(interpret, monkeypatch, steady_check):
    """A group with a parameter that never has a gradient takes the planned launches over the
    others, with torch's numbers."""
    from gradstep.algorithms import _steady

    monkeypatch.setattr(_steady, "_runs_triton", lambda params: True)
    monkeypatch.setattr(cuda_backend, "_runner", runner.run_triton)
    planned = []
    real_planned = runner.run_planned
    monkeypatch.setattr(runner, "run_planned", lambda *a: planned.append(1) or real_planned(*a))
    base = make_params()
    pa, pb = clone_params(base), clone_params(base)
    oa, ob = gradstep.Adam(pa, lr=0.05), torch.optim.Adam(pb, lr=0.05)
    for step in range(6):
        for i, (x, y, g) in enumerate(zip(pa, pb, grads_for(base, step))):
            x.grad, y.grad = (None, None) if i == 1 else (g.clone(), g.clone())
        with backend(_triton):
            oa.step()
        ob.step()
        _compare(oa, ob, pa, pb, torch.float32, f"step {step}")
    assert len(planned) >= 4 and all(p is not pa[1] for p in oa.state)


def test_scalar_changes_do_not_regenerate(interpret):
    """A new lr or step count is a kernel argument: the same kernel object runs."""
    opt = gradstep.Adam(clone_params(make_params()), lr=0.1)
    for step in range(3):
        for p, g in zip(opt.param_groups[0]["params"], grads_for(make_params(), step)):
            p.grad = g
        opt.param_groups[0]["lr"] = 0.1 / (step + 1)
        with backend(_triton):
            opt.step()
        if step == 0:
            kernels = dict(runner._KERNELS)
    assert runner._KERNELS == kernels


def test_generated_source_is_cached_privately(interpret, tmp_path):
    cfg = AdamConfig(False, False, False, False)
    spec = runner.KernelSpec(("float32",) * 4, tuple((n, "f", "float64") for n in NAMES), True)
    source = runner.kernel_source(adam_rule, cfg, NAMES, 2, spec) + f"# {tmp_path.name}\n"
    module = loader.load_source(source)
    path = loader.cache_dir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    files = list(path.glob("gradstep_triton_*.py"))
    assert any(f.read_text() == source for f in files)
    assert loader.load_source(source) is module
    # a tampered cache file is never executed: the module runs from the generated source
    target = next(f for f in files if f.read_text() == source)
    target.write_text("raise SystemExit('tampered')\n")
    del sys.modules[module.__name__]
    again = loader.load_source(source)
    assert hasattr(again, "step_kernel")
    assert target.read_text() == source


def test_lerp_follows_torch_formula(interpret):
    """Weights on both sides of 0.5 take torch's two formulas (exact at the ends)."""
    def rule(ops, cfg, s, p, g):
        return (ops.lerp(p, g, s.w),)

    gen = torch.Generator().manual_seed(0)
    for w in (0.0, 0.3, 0.5, 0.9, 1.0):
        p, g = torch.randn(37, generator=gen), torch.randn(37, generator=gen)
        lists = [[p.clone()], [g]]
        runner.run_triton(rule, None, [SimpleNamespace(w=w)], lists)
        if w in (0.0, 1.0):  # exact at the ends
            assert torch.equal(lists[0][0], p if w == 0.0 else g)
        # torch's CPU kernel may fuse a multiply-add: equal up to one rounding
        torch.testing.assert_close(lists[0][0], torch.lerp(p, g, w), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------- dispatch and fallbacks


def _fake(device_type, dtype=torch.float32):
    return SimpleNamespace(device=SimpleNamespace(type=device_type), dtype=dtype)


def test_cuda_params_default_to_fused():
    group = dict(foreach=None, fused=None, differentiable=False)
    assert select_backend(group, [_fake("cuda")]) is _fused
    assert select_backend(dict(group, fused=True), [_fake("cuda")]) is _fused
    assert select_backend(dict(group, foreach=True), [_fake("cuda")]) is not _fused
    # float16: torch's own default path (see backends/__init__.py), unless fused=True
    assert select_backend(group, [_fake("cuda", torch.float16)]) is not _fused
    assert select_backend(dict(group, fused=True), [_fake("cuda", torch.float16)]) is _fused
    assert select_backend(dict(group, fused=False), [_fake("cuda")]) is not _fused


def test_missing_triton_warns_once_and_uses_foreach(monkeypatch):
    monkeypatch.setattr(cuda_backend, "_runner", cuda_backend._UNRESOLVED)
    monkeypatch.setattr(cuda_backend, "triton_available", lambda: False)
    with pytest.warns(UserWarning, match="Triton is not installed.*foreach"):
        assert cuda_backend.cuda_runner() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cuda_backend.cuda_runner() is None


def test_step_mirror_reads_device_only_when_needed(monkeypatch):
    """The host mirror of device step counters (exercised here on CPU counters)."""
    monkeypatch.setattr(_steps, "_reads_are_cheap", lambda steps: False)
    monkeypatch.setattr(_host_mirror, "NATIVE_CPU", False)
    reads = []
    real_read = _host_mirror.read_device
    monkeypatch.setattr(_host_mirror, "read_device", lambda ts: reads.append(len(ts)) or real_read(ts))
    steps = [torch.zeros(()) for _ in range(3)]
    assert _steps.increment(steps) == [1.0, 1.0, 1.0] and reads == [3]
    assert _steps.increment(steps) == [2.0, 2.0, 2.0] and reads == [3]
    assert _steps.increment(steps) == [3.0, 3.0, 3.0] and reads == [3]
    steps[1].fill_(10.0)  # someone else wrote a counter: read the group again
    assert _steps.increment(steps) == [4.0, 11.0, 4.0] and reads == [3, 3]
    steps[2] = torch.tensor(7.0)  # a new counter object (load_state_dict)
    assert _steps.increment(steps) == [5.0, 12.0, 8.0] and reads == [3, 3, 3]
    assert _steps.increment(steps) == [6.0, 13.0, 9.0] and reads == [3, 3, 3]
    big = [torch.tensor(2.0**24 - 2)]  # past float32's exact integers: always read
    assert _steps.increment(big) == [2.0**24 - 1] and _steps.increment(big) == [2.0**24]
    assert reads[-2:] == [1, 1]


# --------------------------------------------------------------------- on a GPU


def _torch_twin(cls):
    return getattr(torch.optim, cls.__name__)


def _fused_kwargs(cls):
    return dict(fused=True) if _accepts(cls, dict(fused=True)) else {}


def _bool_matrix(cls):
    """Every combination of the algorithm's boolean and zero/non-zero options."""
    name = cls.__name__
    if name in ("Adam", "AdamW"):
        keys = dict(amsgrad=[False, True], maximize=[False, True], weight_decay=[0.0, 0.1])
        if name == "Adam":
            keys["decoupled_weight_decay"] = [False, True]
    elif name == "SGD":
        keys = dict(momentum=[0.0, 0.9], dampening=[0.0, 0.3], nesterov=[False, True],
                    maximize=[False, True], weight_decay=[0.0, 0.1])
    else:
        return options_for(cls)
    out = []
    for values in itertools.product(*keys.values()):
        kw = dict(zip(keys, values))
        if kw.get("nesterov") and (kw["momentum"] == 0 or kw["dampening"] != 0):
            continue
        out.append(dict(kw, lr=0.1) if name == "SGD" else kw)
    return out


GPU_CASES = [pytest.param(cls, kw, id=_case_id(cls, kw)) for cls in ALGORITHMS for kw in _bool_matrix(cls)]


@needs_gpu
@pytest.mark.parametrize("cls, kwargs", GPU_CASES)
def test_gpu_matches_torch(cls, kwargs):
    """gradstep's fused CUDA backend against torch.optim's for-loop on the same GPU."""
    torch_cls = _torch_twin(cls)
    kw = dict(kwargs, **_fused_kwargs(cls))
    run_against_twin(cls, kw, torch.float32, device="cuda", steps=8, twin_cls=torch_cls,
                     twin_kwargs=dict(kwargs, foreach=False), twin_run=None)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cls, kwargs", CASES)
def test_gpu_low_precision(cls, kwargs, dtype):
    """bf16/fp16 storage with float32 math: against the reference run in float32 and rounded."""
    run_against_twin(cls, dict(kwargs, **_fused_kwargs(cls)), dtype, device="cuda", steps=6)


@needs_gpu
@pytest.mark.parametrize("cls", [c for c in ALGORITHMS if _accepts(c, dict(fused=True))],
                         ids=lambda c: c.__name__)
def test_gpu_fused_state_matches_torch_fused(cls):
    """fused=True: torch's fused state (step counters on the device) and numbers, compared with
    torch's fused optimizer where torch has one on CUDA, else with gradstep's reference."""
    kwargs = dict(lr=0.1) if cls.__name__ == "SGD" else {}
    kwargs.update(fused=True)
    torch_cls = _torch_twin(cls)
    torch_has_fused = _accepts(torch_cls, dict(fused=True))
    if torch_has_fused:
        oa, ob = run_against_twin(cls, kwargs, torch.float32, device="cuda", twin_cls=torch_cls,
                                  twin_run=None, steps=5)
    else:
        oa, ob = run_against_twin(cls, kwargs, torch.float32, device="cuda", steps=5)
    sa, sb = oa.state_dict(), ob.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for k, st in sb["state"].items():
        for name, v in st.items():
            assert sa["state"][k][name].device == v.device, name
            assert sa["state"][k][name].dtype == v.dtype, name
        if "step" in st:
            assert sa["state"][k]["step"].device.type == "cuda"


@needs_gpu
def test_gpu_default_uses_triton(monkeypatch):
    calls = []
    real = runner.run_triton
    monkeypatch.setattr(cuda_backend, "_runner", lambda *a: calls.append(1) or real(*a))
    p = torch.nn.Parameter(torch.randn(10, device="cuda"))
    p.grad = torch.randn_like(p)
    gradstep.AdamW([p]).step()
    assert calls


@needs_gpu
@pytest.mark.parametrize("cls", ALGORITHMS, ids=lambda c: c.__name__)
def test_gpu_steady_plan_matches_torch(monkeypatch, cls, steady_check):
    """Default flags on CUDA, every parameter with a gradient each step: after the first step
    the group runs from its steady plan (_steady.py), checked in C++ or in Python, and still
    gives torch's numbers."""
    from gradstep.algorithms import _steady

    steady = []
    real = _steady._execute_triton
    monkeypatch.setattr(_steady, "_execute_triton", lambda *a: steady.append(1) or real(*a))
    base = make_params(torch.float32, ((64, 33), (1000,), (7,)), device="cuda")
    pa, pb = clone_params(base), clone_params(base)
    kwargs = dict(lr=0.01) if cls.__name__ != "SGD" else dict(lr=0.01, momentum=0.9)
    oa, ob = cls(pa, **kwargs), _torch_twin(cls)(pb, **kwargs)
    for step in range(8):
        for x, y, g in zip(pa, pb, grads_for(base, step)):
            x.grad, y.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
        _compare(oa, ob, pa, pb, torch.float32, f"step {step}")
    assert len(steady) >= 6


@needs_gpu
@pytest.mark.parametrize("cls", [c for c in ALGORITHMS if _accepts(c, dict(capturable=True))],
                         ids=lambda c: c.__name__)
def test_gpu_cuda_graph_replay_matches_eager(cls):
    """A whole captured step replays to the same parameters and state as eager steps."""
    kwargs = dict(capturable=True)
    if cls.__name__ == "SGD":
        kwargs["lr"] = 0.1
    base = make_params(torch.float32, ((64, 33), (1000,), (7,)), device="cuda")
    pa, pb = clone_params(base), clone_params(base)
    oa, ob = cls(pa, **kwargs), cls(pb, **kwargs)
    static = [torch.zeros_like(p) for p in pa]
    for p, g in zip(pa, static):
        p.grad = g

    def feed(step):
        for g, p, new in zip(static, pb, grads_for(base, step)):
            g.copy_(new)
            p.grad = new.to("cuda").clone()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "capturable=True ... without CUDA graph capture"
        for step in range(3):
            feed(step)
            oa.step()
            ob.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        oa.step()
    for step in range(3, 9):
        feed(step)
        graph.replay()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ob.step()
        torch.cuda.synchronize()
        for i, (x, y) in enumerate(zip(pa, pb)):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7, msg=f"step {step} param {i}")
    for x, y in zip(pa, pb):
        for k, v in ob.state[y].items():
            torch.testing.assert_close(oa.state[x][k], v, rtol=1e-6, atol=1e-7)


@needs_gpu
def test_gpu_mixed_devices():
    """Mixed CPU/CUDA params: capturable raises torch's error; fused runs each device like torch."""
    def build(lib, **kw):
        gen = torch.Generator().manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(4, generator=gen)),
              torch.nn.Parameter(torch.randn(4, generator=gen).cuda())]
        for p in ps:
            p.grad = torch.full_like(p, 0.5)
        return ps, getattr(lib, "Adam")(ps, **kw)

    for lib in (gradstep, torch.optim):
        _, opt = build(lib, capturable=True)
        with pytest.raises(AssertionError, match="capturable=True"):
            opt.step()
    outcomes = []
    for lib in (gradstep, torch.optim):
        ps, opt = build(lib, fused=True)
        try:
            opt.step()
            outcomes.append([p.detach().cpu() for p in ps])
        except Exception as exc:  # noqa: BLE001 - compare with torch's outcome
            outcomes.append(type(exc))
    if isinstance(outcomes[1], type):
        assert outcomes[0] is outcomes[1]
    else:
        for a, b in zip(*outcomes):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def _compiled_kernels() -> int:
    """How many binaries Triton holds for our kernels (its per-device caches)."""
    n = 0
    for fn in runner._KERNELS.values():
        for entry in getattr(fn, "device_caches", {}).values():
            n += len(entry[0])
    return n


@needs_gpu
def test_gpu_lr_and_step_changes_do_not_recompile():
    p = torch.nn.Parameter(torch.randn(1000, device="cuda"))
    opt = gradstep.Adam([p], lr=0.1, fused=True)
    for step in range(4):
        p.grad = torch.randn_like(p)
        opt.param_groups[0]["lr"] = 0.1 / (step + 1)
        opt.step()
        if step == 0:
            specs, binaries = set(runner._KERNELS), _compiled_kernels()
    assert set(runner._KERNELS) == specs
    assert _compiled_kernels() == binaries
