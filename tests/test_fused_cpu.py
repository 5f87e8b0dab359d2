"""The fused CPU backend (generated C) against the reference backend, and its kernel cache.

Every elementwise algorithm, every option combination (float32), every storage dtype (with all
options on): 50 steps of ``fused=True`` against ``foreach=False``. bfloat16/float16 are compared
with the reference run in float32 and rounded to the storage dtype after every step, which is
what the fused kernel computes (load, float32 math, store). Also: bitwise identical results
across runs and thread counts, layouts the kernel cannot walk, the on-disk cache (hits, a second
process, tampering, unsafe directories) and the fallback to foreach without a compiler.

Kernels are cached on disk and shared by all tests, so a warm run mostly runs Python.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import warnings

import pytest
import torch

import gradstep
from gradstep.algorithms._elementwise import ElementwiseOptimizer
from gradstep.backends.cpu import available, compiler, runner, steps
from parity import TOLERANCES, clone_params, grads_for, make_params

pytestmark = pytest.mark.skipif(not available(), reason="no C compiler")

# Per algorithm: the options whose combinations select every specialised kernel (booleans and
# zero/non-zero values), plus fixed non-default hyperparameters so every scalar matters.
GRID = {
    "Adam": dict(maximize=[False, True], weight_decay=[0, 0.1], amsgrad=[False, True]),
    "AdamW": dict(maximize=[False, True], weight_decay=[0, 0.1], amsgrad=[False, True]),
    "SGD": dict(maximize=[False, True], weight_decay=[0, 0.1], momentum=[0, 0.9],
                nesterov=[False, True], dampening=[0, 0.3]),
    "Adagrad": dict(maximize=[False, True], weight_decay=[0, 0.1], lr_decay=[0, 0.01],
                    initial_accumulator_value=[0, 0.1]),
    "Adadelta": dict(maximize=[False, True], weight_decay=[0, 0.1]),
    "Adamax": dict(maximize=[False, True], weight_decay=[0, 0.1]),
    "ASGD": dict(maximize=[False, True], weight_decay=[0, 0.1], t0=[1e6, 5]),
    "NAdam": dict(maximize=[False, True], weight_decay=[0, 0.1], decoupled_weight_decay=[False, True]),
    "RAdam": dict(maximize=[False, True], weight_decay=[0, 0.1], decoupled_weight_decay=[False, True]),
    "RMSprop": dict(maximize=[False, True], weight_decay=[0, 0.1], momentum=[0, 0.9],
                    centered=[False, True]),
    "Rprop": dict(maximize=[False, True]),
}
FIXED = {
    "Adam": dict(lr=0.01, betas=(0.8, 0.95)),
    "AdamW": dict(lr=0.01),
    "SGD": dict(lr=0.01),
    "Adagrad": dict(lr=0.05),
    "Adadelta": dict(lr=0.5, rho=0.8),
    "Adamax": dict(lr=0.01),
    "ASGD": dict(lr=0.01, lambd=1e-3),
    "NAdam": dict(lr=0.01),
    "RAdam": dict(lr=0.01),
    "RMSprop": dict(lr=0.01, alpha=0.9),
    "Rprop": dict(lr=0.01, etas=(0.4, 1.3)),
}
ALGOS = [
    name for name in GRID
    if isinstance(getattr(gradstep, name, None), type) and issubclass(getattr(gradstep, name), ElementwiseOptimizer)
]
SHAPES = ((5, 3), (4,), (2, 3, 2), (333,), (1,), (0,), (7, 1, 9))
STEPS = 50


def _options(name):
    keys = list(GRID[name])
    for combo in itertools.product(*(GRID[name][k] for k in keys)):
        opts = dict(zip(keys, combo))
        if opts.get("nesterov") and (not opts.get("momentum") or opts.get("dampening")):
            continue  # torch rejects nesterov without momentum or with dampening
        yield {**FIXED[name], **opts}


def _all_on(name):
    return {**FIXED[name], **{k: v[-1] for k, v in GRID[name].items() if k != "dampening"}}


CASES = [(name, opts) for name in ALGOS for opts in _options(name)]


def _fused(name, kwargs):
    """``kwargs`` selecting the fused backend: ``fused=True`` where the class takes it, else
    the default, which is fused on the CPU."""
    import inspect

    takes = "fused" in inspect.signature(getattr(gradstep, name)).parameters
    return dict(kwargs, fused=True) if takes else dict(kwargs)


def _param_keys(opt):
    return opt._param_shaped_state_keys()


def _round(opt, params, dtype):
    """Store params and param-shaped states in ``dtype`` (what a fused kernel's stores do)."""
    keys = _param_keys(opt)
    with torch.no_grad():
        for p in params:
            p.copy_(p.to(dtype))
            for k, v in opt.state.get(p, {}).items():
                if k in keys and torch.is_tensor(v) and v.is_floating_point():
                    v.copy_(v.to(dtype))


def _run(name, kwargs, dtype, *, shapes=SHAPES, steps=STEPS, skip_every=0, math_dtype=None, seed=0):
    """``steps`` steps of gradstep ``name``; with ``math_dtype`` the params are kept in that
    dtype and rounded to ``dtype`` after every step (the float32-math oracle)."""
    base = make_params(dtype, shapes, seed=seed)
    params = clone_params([b.to(math_dtype) for b in base] if math_dtype else base)
    opt = getattr(gradstep, name)(params, **kwargs)
    for step in range(steps):
        for p, g in zip(params, grads_for(base, step, skip_every=skip_every)):
            p.grad = None if g is None else g.to(p.dtype)
        opt.step()
        if math_dtype:
            _round(opt, params, dtype)
    return params, opt


def _snapshot(params, opt):
    out = [p.detach().clone() for p in params]
    for p in params:
        for k in sorted(opt.state.get(p, {})):
            v = opt.state[p][k]
            if torch.is_tensor(v):
                out.append(v.detach().clone())
    return out


def _assert_close(got, want, dtype):
    rtol, atol = TOLERANCES[dtype]
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        b = b.to(a.dtype) if a.is_floating_point() and b.dtype != a.dtype and a.dim() else b
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"tensor {i}: {m}")


def _assert_equal(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name, kwargs", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_fused_matches_reference_float32(name, kwargs):
    got = _snapshot(*_run(name, _fused(name, kwargs), torch.float32))
    want = _snapshot(*_run(name, dict(kwargs, foreach=False), torch.float32))
    _assert_close(got, want, torch.float32)


@pytest.mark.parametrize("name", ALGOS)
def test_default_on_cpu_is_fused(name, monkeypatch):
    calls = []
    real = runner.get_kernel
    monkeypatch.setattr(runner, "get_kernel", lambda *a: calls.append(a) or real(*a))
    _run(name, _all_on(name), torch.float32, steps=2)
    assert calls, "the default CPU backend did not run the fused kernel"


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", ALGOS)
def test_fused_storage_dtypes(name, dtype):
    kwargs = _all_on(name)
    got = _snapshot(*_run(name, _fused(name, kwargs), dtype))
    if dtype == torch.float64:
        want = _snapshot(*_run(name, dict(kwargs, foreach=False), dtype))
    else:  # upcast, run the reference in float32, round to the storage dtype after each step
        want = _snapshot(*_run(name, dict(kwargs, foreach=False), dtype, math_dtype=torch.float32))
    _assert_close(got, want, dtype)


@pytest.mark.parametrize("name", ALGOS)
def test_per_tensor_step_counts(name):
    """Params that miss gradients fall behind in step count: per-tensor scalars in one call."""
    kwargs = _all_on(name)
    got = _snapshot(*_run(name, _fused(name, kwargs), torch.float32, skip_every=3, steps=20))
    want = _snapshot(*_run(name, dict(kwargs, foreach=False), torch.float32, skip_every=3, steps=20))
    _assert_close(got, want, torch.float32)


BIG = ((300, 301), (70001,), (3,), (129, 257))  # > 2 * codegen.GRAIN elements: threads split it


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ALGOS)
def test_bitwise_across_runs_and_thread_counts(name, dtype):
    kwargs = _fused(name, _all_on(name))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _snapshot(*_run(name, kwargs, dtype, shapes=BIG, steps=5))
        torch.set_num_threads(2)
        two = _snapshot(*_run(name, kwargs, dtype, shapes=BIG, steps=5))
        again = _snapshot(*_run(name, kwargs, dtype, shapes=BIG, steps=5))
    finally:
        torch.set_num_threads(threads)
    _assert_equal(two, one)
    _assert_equal(again, two)


def test_layouts_the_kernel_cannot_walk_take_foreach():
    """Non-contiguous, channels_last and mismatched layouts give the reference's numbers."""

    def run(kwargs):
        gen = torch.Generator().manual_seed(0)
        params = [
            torch.nn.Parameter(torch.randn(6, 5, generator=gen).t()),  # transposed
            torch.nn.Parameter(torch.randn(2, 3, 4, 5, generator=gen).to(memory_format=torch.channels_last)),
            torch.nn.Parameter(torch.randn(40, generator=gen)),
            torch.nn.Parameter(torch.randn(8, 8, generator=gen)),
        ]
        opt = gradstep.Adam(params, lr=0.01, weight_decay=0.1, **kwargs)
        for step in range(10):
            g = torch.Generator().manual_seed(step)
            for i, p in enumerate(params):
                grad = torch.randn(p.shape, generator=g)
                if i == 1 and step % 2:
                    grad = grad.contiguous()  # a contiguous grad for a channels_last param
                if i == 3:
                    grad = torch.randn(8, 8, generator=g).t()  # a transposed grad
                p.grad = grad
            opt.step()
        return _snapshot(params, opt)

    _assert_close(run(dict(fused=True)), run(dict(foreach=False)), torch.float32)


def test_generated_source_is_specialised():
    from gradstep.algorithms.adam import AdamConfig, adam_rule

    names = ("lr", "beta1", "beta2", "eps", "weight_decay", "step_size", "bias_correction2_sqrt")
    plain = runner.kernel_source(adam_rule, AdamConfig(False, False, False, False), names, 2, ("float32",) * 4)
    ams = runner.kernel_source(adam_rule, AdamConfig(False, False, False, True), names, 3, ("bfloat16",) * 5)
    assert "#pragma omp parallel" in plain and "fmaf" in plain and "gs_bf16" not in plain.split("*/", 2)[-1]
    assert "gs_bf16_store" in ams.split("/* graph:")[1]


# ----------------------------------------------------------------------------- the cache


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache directory and no in-process memo."""
    monkeypatch.setenv("GRADSTEP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(compiler, "_loaded", {})
    monkeypatch.setattr(runner, "_kernels", {})
    return tmp_path / "cache"


SOURCE = "double gs_probe(void) { return 42.0; }\n"


def _probe(name="gs_probe"):
    import ctypes

    fn = compiler.load(SOURCE, name, ())
    fn.restype = ctypes.c_double
    return fn


def test_cache_hit_in_process_and_on_disk(fresh_cache, monkeypatch):
    builds = []
    real = compiler._compile
    monkeypatch.setattr(compiler, "_compile", lambda *a: builds.append(a) or real(*a))
    assert _probe()() == 42.0
    assert _probe()() == 42.0  # memo
    monkeypatch.setattr(compiler, "_loaded", {})
    assert _probe()() == 42.0  # disk
    assert len(builds) == 1
    assert oct(fresh_cache.stat().st_mode & 0o777) == "0o700"
    assert sorted(p.suffix for p in fresh_cache.iterdir()) == [".c", ".ref", ".so"]


def test_second_process_hits_the_cache(fresh_cache):
    code = (
        "from gradstep.backends.cpu import compiler\n"
        "builds = []\nreal = compiler._compile\n"
        "compiler._compile = lambda *a: builds.append(1) or real(*a)\n"
        "import ctypes\n"
        f"fn = compiler.load({SOURCE!r}, 'gs_probe', ())\n"
        "fn.restype = ctypes.c_double\n"
        "print(len(builds), fn())\n"
    )
    env = dict(os.environ, GRADSTEP_CACHE_DIR=str(fresh_cache))
    outs = [
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    assert outs == ["1 42.0\n", "0 42.0\n"]


@pytest.mark.parametrize("what", ["library", "source", "index"])
def test_tampered_cache_entry_is_not_loaded(fresh_cache, monkeypatch, what):
    _probe()
    (ref,) = fresh_cache.glob("*.ref")
    key = ref.stem
    (lib,) = fresh_cache.glob(f"{key}-*.so")
    # (replace files rather than rewrite them: the library is mapped into this process)
    target, data = {
        "library": (lib, lib.read_bytes() + b"\0"),
        "source": (fresh_cache / f"{key}.c", SOURCE.replace("42.0", "13.0").encode()),
        "index": (ref, b"0" * 64),
    }[what]
    tmp = fresh_cache / "tampered"
    tmp.write_bytes(data)
    os.replace(tmp, target)
    monkeypatch.setattr(compiler, "_loaded", {})
    assert compiler._verified_library(fresh_cache, key, compiler.compiler()) is None
    builds = []
    real = compiler._compile
    monkeypatch.setattr(compiler, "_compile", lambda *a: builds.append(a) or real(*a))
    assert _probe()() == 42.0
    assert len(builds) == 1  # rebuilt, not loaded
    assert compiler._verified_library(fresh_cache, key, compiler.compiler()) is not None


def test_unsafe_cache_directory_is_not_used(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("GRADSTEP_CACHE_DIR", str(shared))
    monkeypatch.setattr(compiler, "_loaded", {})
    assert compiler.cache_dir() is None
    assert _probe()() == 42.0  # built in a private temporary directory instead
    assert list(shared.iterdir()) == []


def test_a_build_removes_stale_build_directories(fresh_cache, monkeypatch):
    """A process that exits mid-build leaves its build directory; the next build removes
    those over an hour old (and leaves a concurrent build's alone)."""
    monkeypatch.setattr(compiler, "_loaded", {})
    stale, busy = fresh_cache / ".build-stale", fresh_cache / ".build-busy"
    for d in (stale, busy):
        d.mkdir(parents=True)
        (d / "kernel.c").write_text("")
    os.utime(stale, (1e9, 1e9))
    assert _probe()() == 42.0
    assert not stale.exists() and busy.exists()


def test_missing_compiler_warns_once_and_uses_foreach(fresh_cache, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr(runner, "_warned", set())
    monkeypatch.setattr(steps, "_fns", {})
    monkeypatch.setattr(steps, "_failed", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _snapshot(*_run("Adam", dict(lr=0.01, fused=True), torch.float32, steps=5))
        _run("Adam", dict(lr=0.01, amsgrad=True), torch.float32, steps=5)  # another config: no new warning
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1, messages
    assert "foreach" in messages[0] and "no C compiler" in messages[0]
    monkeypatch.setattr(steps, "_failed", False)
    want = _snapshot(*_run("Adam", dict(lr=0.01, foreach=True), torch.float32, steps=5))
    _assert_equal(got, want)


# ----------------------------------------------------------------------------- the fused flag


@pytest.mark.parametrize("name", ALGOS)
def test_fused_flag_validated_like_torch(name):
    """``fused=True`` is accepted everywhere; with foreach or differentiable it is torch's
    error; unused, it leaves the param_group keys exactly torch's."""
    cls = getattr(gradstep, name)
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(RuntimeError, match="`fused` and `foreach` cannot be `True` together."):
        cls([p], fused=True, foreach=True)
    with pytest.raises(RuntimeError, match="`fused` does not support `differentiable`"):
        cls([p], fused=True, differentiable=True)
    assert cls([p], fused=True).param_groups[0]["fused"] is True
    assert list(cls([p]).param_groups[0]) == list(getattr(torch.optim, name)([p]).param_groups[0])


# ----------------------------------------------------------------------------- steady state


def _steady_run(kwargs, steps=8, mutate=None, name="Adam"):
    """``steps`` steps; ``mutate(step, opt, params)`` runs before each step."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in ((4, 3), (5,), (2, 2, 2))]
    opt = getattr(gradstep, name)(params, **kwargs)
    for step in range(steps):
        g = torch.Generator().manual_seed(100 + step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        if mutate:
            mutate(step, opt, params)
        opt.step()
    return _snapshot(params, opt)


def test_steady_state_path_is_taken_and_bitwise_equal_to_the_generic_path(monkeypatch, steady_check):
    from gradstep.algorithms import _steady

    taken = []
    real = _steady.prepare
    monkeypatch.setattr(_steady, "prepare", lambda o, g: taken.append(real(o, g)) or taken[-1])
    for name in ALGOS:
        taken.clear()
        fast = _steady_run(_all_on(name), name=name)
        assert sum(f is not None for f in taken) >= 6, name
        monkeypatch.setattr(_steady, "prepare", lambda o, g: None)
        generic = _steady_run(_all_on(name), name=name)
        monkeypatch.setattr(_steady, "prepare", lambda o, g: taken.append(real(o, g)) or taken[-1])
        _assert_equal(fast, generic)


def _replace_state(step, opt, params):
    if step == 4:
        st = opt.state[params[0]]
        st["exp_avg"] = st["exp_avg"].clone() * 0.5  # a new tensor object
        opt.state[params[1]] = dict(opt.state[params[1]])  # a new dict, same tensors
        opt.state[params[2]]["exp_avg_sq"].data = opt.state[params[2]]["exp_avg_sq"].data * 2  # new storage


def _swap_param_data(step, opt, params):
    if step == 3:
        params[1].data = params[1].data.clone() + 1


def _change_options(step, opt, params):
    group = opt.param_groups[0]
    group["lr"] = 0.01 / (step + 1)  # a scheduler
    if step == 5:
        group["weight_decay"] = 0.2  # a new config: another kernel


def _drop_grads(step, opt, params):
    if step % 3 == 1:
        params[2].grad = None  # fewer params with grads; step counts diverge


def _frozen_then_thawed(step, opt, params):
    if step == 0:
        params[1].requires_grad_(False)
    if step < 5:
        params[1].grad = None  # frozen: never a gradient, the others step from the plan
    if step == 5:
        params[1].requires_grad_(True)  # and back: its first step, the others' sixth


def _noncontiguous_grad(step, opt, params):
    if step == 4:
        params[0].grad = torch.randn(3, 4, generator=torch.Generator().manual_seed(7)).t()


@pytest.mark.parametrize("mutate", [_replace_state, _swap_param_data, _change_options, _drop_grads,
                                    _frozen_then_thawed, _noncontiguous_grad])
def test_steady_state_notices_changes(mutate, steady_check):
    got = _steady_run(dict(lr=0.01), mutate=mutate)
    want = _steady_run(dict(lr=0.01, foreach=False), mutate=mutate)
    _assert_close(got, want, torch.float32)


def test_steady_path_skips_params_without_gradients(steady_check, monkeypatch):
    """A group with a frozen parameter (never a gradient) still takes the steady path, with the
    generic path's numbers."""
    from gradstep.algorithms import _steady

    taken = []
    real = _steady.prepare
    monkeypatch.setattr(_steady, "prepare", lambda o, g: taken.append(real(o, g)) or taken[-1])

    def freeze(step, opt, params):
        params[2].grad = None

    fast = _steady_run(dict(lr=0.01), mutate=freeze)
    assert sum(f is not None for f in taken) >= 6
    monkeypatch.setattr(_steady, "prepare", lambda o, g: None)
    _assert_equal(fast, _steady_run(dict(lr=0.01), mutate=freeze))


def test_steady_path_holds_no_references(steady_check):
    """Once the optimizer is gone, so is its state: the steady path keeps no reference to
    state dicts or tensors across steps."""
    import gc
    import weakref

    params = [torch.nn.Parameter(torch.randn(4)) for _ in range(3)]
    opt = gradstep.Adam(params, lr=0.1)
    for _ in range(6):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    refs = [weakref.ref(t) for st in opt.state.values() for t in st.values()]
    del opt
    gc.collect()
    assert len(refs) == 9 and all(r() is None for r in refs)


def test_steady_state_checks_before_updating_anything(steady_check):
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(6, 3))]
    opt = gradstep.Adam([{"params": [params[0]]}, {"params": [params[1]]}], lr=0.1)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    before = [p.detach().clone() for p in params]
    params[1].grad = torch.sparse_coo_tensor([[0, 2]], torch.randn(2, 3), (6, 3))
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    _assert_equal([p.detach() for p in params], before)


def _shrink(opt, params):
    p = params[0]
    for t in [p, *(v for v in opt.state[p].values() if v.shape == p.shape)]:
        t.data = t.data.view(-1)[:3]
    p.grad = torch.zeros(3)


def _new_state_dict_same_tensors(opt, params):
    opt.state[params[1]] = dict(opt.state[params[1]])


def _sparse_grad(opt, params):
    params[1].grad = torch.sparse_coo_tensor([[0, 2]], torch.ones(2), (4,))


# each: (what changes, whether the group is still steady)
CHECK_CASES = [
    (lambda opt, ps: None, True),
    (lambda opt, ps: [setattr(p, "grad", p.grad.clone()) for p in ps], True),  # new gradients
    (_new_state_dict_same_tensors, True),
    (lambda opt, ps: setattr(opt, "state", type(opt.state)(dict, opt.state)), True),
    (lambda opt, ps: opt.param_groups[0].__setitem__("params", tuple(ps)), False),
    (lambda opt, ps: setattr(ps[2], "grad", None), False),
    (lambda opt, ps: setattr(ps[0], "grad", ps[0].grad.to_sparse()), False),
    (lambda opt, ps: setattr(ps[0], "grad", torch.zeros(5, 3).t()), False),
    (_sparse_grad, False),
    (lambda opt, ps: opt.state[ps[1]].__setitem__("exp_avg", opt.state[ps[1]]["exp_avg"].clone()), False),
    (lambda opt, ps: opt.state[ps[2]].__setitem__("step", opt.state[ps[2]]["step"].clone()), False),
    (lambda opt, ps: setattr(opt.state[ps[1]]["exp_avg_sq"], "data", torch.zeros(4)), False),
    (lambda opt, ps: setattr(ps[1], "data", ps[1].data.clone()), False),
    (_shrink, False),
    (lambda opt, ps: opt.state.pop(ps[2]), False),
    (lambda opt, ps: opt.state[ps[0]].pop("exp_avg"), False),
]


# with a parameter that never had a gradient: (what changes, whether still steady)
FROZEN_CASES = [
    (lambda opt, ps: None, True),
    (lambda opt, ps: setattr(ps[1], "grad", torch.zeros(4)), False),  # it gets one
    (lambda opt, ps: setattr(ps[0], "grad", None), False),  # another loses its own
]


@pytest.mark.parametrize("case", [("all", i) for i in range(len(CHECK_CASES))]
                         + [("frozen", i) for i in range(len(FROZEN_CASES))])
def test_native_and_python_checks_agree(case, monkeypatch, native_helpers):
    """The steady path's per-step check gives the same answer in C++ and in Python: the same
    state dicts, step counters and gradient addresses, or both "changed"."""
    from gradstep import _native
    from gradstep.algorithms import _steady

    frozen = case[0] == "frozen"
    mutate, steady = (FROZEN_CASES if frozen else CHECK_CASES)[case[1]]
    params = [torch.nn.Parameter(torch.randn(s)) for s in ((3, 5), (4,), (2, 2))]
    opt = gradstep.Adam(params, lr=0.1)
    for _ in range(2):
        for p in params:
            p.grad = None if frozen and p is params[1] else torch.randn_like(p)
        opt.step()
    group = opt.param_groups[0]
    plan = opt._gradstep_plans[id(group)]
    mutate(opt, params)
    got = _steady._check(opt, group, plan)
    got = got and (got[0], got[1], list(got[2]))  # the address buffer is reused by the next check
    monkeypatch.setattr(_native, "ready", lambda n_tensors=0: None)
    want = _steady._check(opt, group, plan)
    assert (got is not None) == (want is not None) == steady
    if steady:
        assert all(map(lambda a, b: a is b, got[0], want[0]))
        assert all(map(lambda a, b: a is b, got[1], want[1]))
        stepped = [p for p in params if p.grad is not None]
        assert got[2] == list(want[2]) == [p.grad.data_ptr() for p in stepped]


@pytest.mark.parametrize("case", ["float32", "float64", "mixed", "two elements", "int",
                                  "a number", "a view", "empty"])
def test_native_and_python_scalar_addresses_agree(case, monkeypatch, native_helpers):
    """The 0-d state helpers (``steps``) accept the same tensors with the C++ check as with the
    Python one, and read and write the same values."""
    from gradstep import _native

    ts = [torch.tensor(float(i)) for i in range(5)]
    if case == "float64":
        ts = [t.double() for t in ts]
    elif case == "mixed":
        ts[3] = ts[3].double()
    elif case == "two elements":
        ts[1] = torch.ones(2)
    elif case == "int":
        ts[2] = torch.tensor(2)
    elif case == "a number":
        ts[4] = 4.0
    elif case == "a view":
        ts[0] = torch.arange(3.0)[1:2]  # one element, not at its storage's start
    elif case == "empty":
        ts[0] = torch.zeros(0)
    got = steps.load_cpu(ts)
    monkeypatch.setattr(_native, "ready", lambda n_tensors=0: None)
    want = None if case == "a number" else steps.load_cpu(ts)  # (Python: not even a tensor)
    assert got == want
    if got is not None:
        assert got == [t.item() for t in ts]
        monkeypatch.undo()
        assert steps.store_cpu(ts, [v + 0.5 for v in got])
        assert [t.item() for t in ts] == [v + 0.5 for v in got]


_NATIVE_PROBE = """
import torch, gradstep
from gradstep import _native
ps = [torch.nn.Parameter(torch.full((3,), float(i))) for i in range(80)]
opt = gradstep.Adam(ps, lr=0.1)
for step in range(6):
    for i, p in enumerate(ps):
        p.grad = torch.full((3,), 0.1 * (i + step))
    opt.step()
total = sum(float(p.detach().sum()) for p in ps)
"""


@pytest.mark.parametrize("env", [dict(GRADSTEP_NATIVE="0"), dict(CXX="/nonexistent/c++")])
def test_without_native_helpers_steps_stay_the_same(env, fresh_cache, monkeypatch):
    """Turned off, or with no C++ compiler, the native helpers are not built, nothing fails,
    and a run of steady steps gives the numbers it gives here (checked in Python: no build is
    started in this process)."""
    from gradstep import _native

    monkeypatch.setattr(_native, "ready", lambda n_tensors=0: None)
    script = _NATIVE_PROBE + "print(_native.wait(timeout=120) is not None, total)\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, GRADSTEP_CACHE_DIR=str(fresh_cache), **env))
    assert out.returncode == 0, out.stderr
    built, total = out.stdout.split()
    here = {}
    exec(_NATIVE_PROBE, here)
    assert built == "False" and float(total) == here["total"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_forgets_the_parents_build(monkeypatch):
    """A child forked while the parent builds (and holds its lock) can start its own build:
    the parent's build thread does not exist in the child."""
    import threading
    import time

    from gradstep import _native

    if _native.ready() is not None:
        monkeypatch.setattr(_native, "_module", None)
    running = threading.Thread(target=time.sleep, args=(0.5,))
    running.start()
    monkeypatch.setattr(_native, "_builder", running)
    monkeypatch.setattr(_native, "_lock", threading.Lock())
    _native._lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # the child
            os._exit(0 if _native._builder is None and _native._lock.acquire(timeout=2) else 1)
    finally:
        _native._lock.release()
    _, status = os.waitpid(pid, 0)
    running.join()
    assert os.waitstatus_to_exitcode(status) == 0


def test_native_builds_take_turns_across_processes(fresh_cache):
    """Processes sharing the cache (the ranks of one job) build the native helpers one at a
    time: a build waits while another process holds the build lock."""
    import time

    from gradstep import _native

    if _native.fcntl is None:
        pytest.skip("no fcntl: builds are not serialised here")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from gradstep import _native\n"
         "with _native._one_build_at_a_time():\n"
         "    print('locked', flush=True); time.sleep(1.5)"],
        stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, GRADSTEP_CACHE_DIR=str(fresh_cache)),
    )
    assert holder.stdout.readline().strip() == "locked"
    start = time.perf_counter()
    with _native._one_build_at_a_time():
        waited = time.perf_counter() - start
    holder.wait(timeout=60)
    assert waited > 0.5


def test_bf16_fp16_conversions_match_torch():
    """The generated loads/stores round exactly as torch converts (round to nearest even,
    subnormals, infinities, NaN), checked on every 16-bit pattern and on random floats."""
    import ctypes

    from gradstep.backends.cpu.codegen import _PRELUDE

    source = _PRELUDE + "".join(
        f"void {name}_load(const uint16_t *h, float *o, long n) {{ for (long i = 0; i < n; i++) o[i] = gs_{name}_load(h[i]); }}\n"
        f"void {name}_store(const float *f, uint16_t *o, long n) {{ for (long i = 0; i < n; i++) o[i] = gs_{name}_store(f[i]); }}\n"
        for name in ("bf16", "f16")
    )
    args = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long)
    gen = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2**31), 2**31 - 1, (1 << 20,), generator=gen, dtype=torch.int64).to(torch.int32)
    floats = torch.cat([
        bits.view(torch.float32), torch.randn(1 << 18, generator=gen) * 1e-6, torch.randn(1 << 18, generator=gen) * 6e4,
        torch.tensor([0.0, -0.0, 65504.0, 65519.0, 65520.0, 2.98e-8, 6.1e-5, float("inf"), float("-inf"), float("nan")]),
    ])
    patterns = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16)
    for name, dtype in (("bf16", torch.bfloat16), ("f16", torch.float16)):
        load = compiler.load(source, f"{name}_load", args)
        store = compiler.load(source, f"{name}_store", args)
        halves = patterns.view(dtype).clone()
        out = torch.empty(halves.numel())
        load(halves.data_ptr(), out.data_ptr(), halves.numel())
        torch.testing.assert_close(out, halves.float(), rtol=0, atol=0, equal_nan=True)
        got = torch.empty(floats.numel(), dtype=torch.int16)
        store(floats.data_ptr(), got.data_ptr(), floats.numel())
        want = floats.to(dtype)
        same = (got == want.view(torch.int16)) | (got.view(dtype).isnan() & want.isnan())
        assert bool(same.all()), f"{name}: {(~same).sum().item()} stores differ"


@pytest.mark.parametrize("name", ALGOS)
def test_fused_rejects_complex_params_like_torch(name):
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    p.grad = torch.randn_like(p)
    with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating point"):
        getattr(gradstep, name)([p], fused=True).step()


def test_native_scalar_load_and_store():
    """0-d CPU state (ASGD's eta/mu) is read and written in one native call, with float32
    rounding as a copy_ into the tensor would do; other tensors are left to torch ops."""
    from gradstep.backends.cpu.steps import load_cpu, store_cpu

    ts = [torch.zeros(()) for _ in range(3)]
    assert store_cpu(ts, [0.1, 2.5, -3.0])
    assert [t.item() for t in ts] == [torch.tensor(0.1).item(), 2.5, -3.0]
    assert load_cpu(ts) == [t.item() for t in ts]
    doubles = [torch.zeros((), dtype=torch.float64)]
    assert store_cpu(doubles, [0.1]) and doubles[0].item() == 0.1
    mixed = [torch.zeros(()), torch.zeros((), dtype=torch.float64)]
    assert not store_cpu(mixed, [1.0, 1.0]) and load_cpu(mixed) is None
    assert not store_cpu([torch.zeros(2)], [1.0]) and load_cpu([torch.zeros(2)]) is None
