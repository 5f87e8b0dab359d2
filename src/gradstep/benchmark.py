"""Step-time benchmark: gradstep's default backend against torch.optim, every elementwise algorithm.

For each parameter set and algorithm it times one ``optimizer.step()`` of

- gradstep with no backend flag (on the CPU: the fused, generated-C backend),
- torch.optim's for-loop (``foreach=False``), ``foreach=True``, ``fused=True`` where torch has a
  fused kernel for the device, and its default (no flag),
- the *roofline*: an ideal kernel that reads and writes exactly the tensors the algorithm's
  update reads and writes (``x + 0 * (sum of inputs)``, same threading and vectorisation as
  gradstep's kernels), i.e. the fastest any implementation moving those bytes can be,

interleaved (one step of each in turn, ``repeats`` times) so that every ratio comes from the
same moments of a noisy machine; medians are reported. The machine's memory bandwidth is
measured the same way, with an ideal in-place ``x += y`` over arrays far larger than the caches.

Bytes per parameter (the traffic model) come from the traced rule: every tensor the update
reads (parameter, gradient, states) counts once, every tensor it writes counts once, each at
its storage dtype's size. Effective bandwidth = bytes per parameter x parameters / step time.

The logic lives in the package (not in benchmarks/) so that ``gradstep bench`` works from an
installed wheel; ``benchmarks/bench.py`` is a thin script around :func:`main`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

import gradstep
from gradstep import _native
from gradstep.algorithms._elementwise import ElementwiseOptimizer

#: algorithm -> constructor options used for both gradstep and torch.optim (else defaults)
ALGORITHMS: dict[str, dict[str, Any]] = {
    "Adam": {},
    "AdamW": {},
    "SGD": {"lr": 1e-3, "momentum": 0.9},
    "Adagrad": {},
    "Adadelta": {},
    "Adamax": {},
    "ASGD": {},
    "NAdam": {},
    "RAdam": {},
    "RMSprop": {},
    "Rprop": {},
}

IMPLS = ("gradstep", "roofline", "torch for-loop", "torch foreach", "torch fused", "torch default")
TORCH_FLAGS = {
    "torch for-loop": {"foreach": False},
    "torch foreach": {"foreach": True},
    "torch fused": {"fused": True},
    "torch default": {},
}


# ------------------------------------------------------------------------------ parameter sets


def gpt2_like_shapes(d: int = 768, layers: int = 4, vocab: int = 50257, ctx: int = 1024) -> list[tuple]:
    """A GPT-2-style decoder's tensors: embeddings, per layer two norms, attention and MLP
    matrices with biases, a final norm (d=768, 4 layers: ~68M parameters in 52 tensors)."""
    shapes: list[tuple] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,)]
        shapes += [(d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return shapes + [(d,), (d,)]


def small_shapes(count: int = 2000, total: int = 5_000_000, seed: int = 0) -> list[tuple]:
    """``count`` small tensors (log-uniform sizes, vectors and matrices) of about ``total``
    parameters in all."""
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.exp(torch.empty(count).uniform_(math.log(64), math.log(8192), generator=gen))
    sizes = (sizes * (total / float(sizes.sum()))).round().clamp(min=1).long().tolist()
    return [(n,) if i % 3 else (max(n // 16, 1), 16) for i, n in enumerate(sizes)]


@dataclass(frozen=True)
class ParamSet:
    name: str
    shapes: list
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)


def param_sets(quick: bool) -> list[ParamSet]:
    if quick:
        gpt = gpt2_like_shapes(d=128, layers=2, vocab=2048, ctx=256)
        return [
            ParamSet("gpt2-like fp32", gpt, torch.float32),
            ParamSet("small tensors fp32", small_shapes(100, 100_000), torch.float32),
            ParamSet("gpt2-like bf16", gpt, torch.bfloat16),
            ParamSet("overhead (1-element tensors)", [(1,)] * 100, torch.float32),
        ]
    gpt = gpt2_like_shapes()
    return [
        ParamSet("gpt2-like fp32", gpt, torch.float32),
        ParamSet("small tensors fp32", small_shapes(), torch.float32),
        ParamSet("gpt2-like bf16", gpt, torch.bfloat16),
        ParamSet("overhead (1-element tensors)", [(1,)] * 2000, torch.float32),
    ]


def make_params(pset: ParamSet, device: str, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in pset.shapes:
        p = torch.nn.Parameter((torch.randn(shape, generator=gen) * 0.02).to(device, pset.dtype))
        p.grad = (torch.randn(shape, generator=gen) * 1e-3).to(device, pset.dtype)
        params.append(p)
    return params


# ------------------------------------------------------------------------------ timing


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, device: str,
                     min_sample: float = 0.01) -> dict[str, list[float]]:
    """Seconds per call of each function, calling them in turn ``repeats`` times.

    After one warm-up call each, a function that takes less than ``min_sample`` seconds is
    called several times per sample (timer resolution and scheduling noise), the same number of
    times in every sample. The order of the functions rotates from round to round.
    """
    number = {}
    for name, fn in fns.items():
        fn()  # warm-up: state creation, kernel compilation or loading
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        number[name] = max(1, min(1000, int(min_sample / max(time.perf_counter() - t0, 1e-7))))
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        # rotate the order, so that no implementation always runs right after the same one
        # (a step that frees large temporaries slows whatever runs next)
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = fns[name]
            k = number[name]
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - t0) / k)
    return times


# ------------------------------------------------------------------------------ traffic model


@contextlib.contextmanager
def _recording_kernels():
    """The (rule, cfg, scalar names, n_states, dtypes) of every fused CPU kernel looked up."""
    from gradstep.backends.cpu import runner

    calls: list[tuple] = []
    real = runner.get_kernel

    def record(*spec):
        calls.append(spec)
        return real(*spec)

    runner.get_kernel = record
    try:
        yield calls
    finally:
        runner.get_kernel = real


def kernel_spec(name: str, dtype: torch.dtype) -> tuple:
    """The fused kernel spec gradstep's default backend uses for ``name`` in steady state."""
    cls = getattr(gradstep, name)
    p = torch.nn.Parameter(torch.zeros(4, dtype=dtype))
    opt = cls([p], **ALGORITHMS[name])
    with _recording_kernels() as calls:
        for _ in range(2):  # the second step is the steady state (SGD's first differs)
            p.grad = torch.ones_like(p)
            opt.step()
    if not calls:
        raise RuntimeError("the fused CPU backend did not run (no compiler?)")
    return calls[-1]


def traffic(spec: tuple) -> dict[str, Any]:
    """Which tensors the update reads and writes, and the bytes per parameter that makes."""
    from gradstep.backends.graph import Node, trace

    rule, cfg, names, n_states, dtypes = spec
    graph = trace(rule, cfg, names, n_states)
    inputs = {n.args[0]: n for n in graph.nodes if n.op == "input"}
    used = {a.index for n in graph.nodes for a in n.args if isinstance(a, Node)}
    reads = [i for i in range(graph.n_inputs) if inputs[i].index in used]
    writable = [0] + list(range(2, graph.n_inputs))
    writes = [pos for k, pos in enumerate(writable) if graph.output_changes(k)]
    size = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}
    nbytes = sum(size[dtypes[i]] for i in reads) + sum(size[dtypes[i]] for i in writes)
    return {"reads": reads, "writes": writes, "bytes_per_param": nbytes, "dtypes": dtypes}


def _ideal_rule(ops, cfg, s, p, g, *states):
    """Reads the roles in ``cfg[0]``, writes those in ``cfg[1]``: out = in + 0 * sum(reads)."""
    reads, writes = cfg
    vals = [p, g, *states]
    acc = None
    for i in reads:
        acc = vals[i] if acc is None else acc + vals[i]
    outs = []
    for pos in [0] + list(range(2, len(vals))):
        if pos in writes:
            outs.append(vals[pos] + s.zero * acc if pos in reads else s.zero * acc)
        else:
            outs.append(vals[pos])
    return tuple(outs)


class IdealKernel:
    """An ideal in-place kernel over its own buffers, shaped like a parameter set."""

    def __init__(self, reads, writes, dtypes, shapes, device: str):
        from gradstep.backends.cpu.codegen import generate
        from gradstep.backends.cpu.compiler import load
        from gradstep.backends.graph import trace

        n_states = len(dtypes) - 2
        graph = trace(_ideal_rule, (tuple(reads), tuple(writes)), ("zero",), n_states)
        self.fn = load(generate(graph, tuple(dtypes)))
        tdt = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
               "float16": torch.float16}
        self.tensors = [
            [torch.full(s, 0.5, dtype=tdt[dt], device=device) for s in shapes] for dt in dtypes
        ]
        self.ptrs = array("Q", [t.data_ptr() for lst in self.tensors for t in lst])
        offsets = [0]
        for s in shapes:
            offsets.append(offsets[-1] + math.prod(s))
        self.offsets = array("q", offsets)
        self.scalars = array("d", [0.0])
        self.n = len(shapes)

    def __call__(self) -> None:
        self.fn(self.ptrs.buffer_info()[0], self.offsets.buffer_info()[0], self.n,
                self.scalars.buffer_info()[0], 0, torch.get_num_threads())


def machine_bandwidth(device: str, numel: int, repeats: int) -> dict[str, float]:
    """Bytes per second of an ideal in-place ``x += y`` (float32) over ``numel`` elements."""
    kernel = IdealKernel((0, 1), (0,), ("float32", "float32"), [(numel,)], device)
    times = time_interleaved({"bw": kernel}, repeats, device)["bw"]
    del kernel
    gc.collect()
    return {"best_gbs": 12 * numel / min(times) / 1e9, "median_gbs": 12 * numel / statistics.median(times) / 1e9}


# ------------------------------------------------------------------------------ the run


@dataclass
class Row:
    param_set: str
    algorithm: str
    impl: str
    n_params: int
    n_tensors: int
    median_s: float
    times_s: list[float] = field(default_factory=list)
    bytes_per_param: int | None = None
    effective_gbs: float | None = None
    frac_roofline: float | None = None
    frac_machine: float | None = None
    #: median over samples of (this impl's time / gradstep's time in the same round): robust to
    #: the machine's speed drifting between rounds
    vs_gradstep: float | None = None


def _paired(num: list[float], den: list[float]) -> float:
    """Median over rounds of num[i] / den[i] (both timed in round i)."""
    return statistics.median(a / b for a, b in zip(num, den))


def _torch_impls(name: str, device: str, quick: bool = False) -> dict[str, dict]:
    """torch.optim's implementations to time; ``quick`` leaves out its default where that is
    its for-loop (on the CPU torch.optim defaults to foreach only for CUDA-like devices)."""
    import inspect

    cls = getattr(torch.optim, name)
    out = {}
    for impl, flags in TORCH_FLAGS.items():
        if "fused" in flags and "fused" not in inspect.signature(cls).parameters:
            continue
        if quick and impl == "torch default" and device == "cpu":
            continue
        out[impl] = flags
    return out


def run_set(pset: ParamSet, algorithms: list[str], repeats: int, device: str, machine_gbs: float,
            log: Callable[[str], None] = print, quick: bool = False) -> list[Row]:
    params = make_params(pset, device)
    rows: list[Row] = []
    for name in algorithms:
        spec = kernel_spec(name, pset.dtype) if device == "cpu" else None
        model = traffic(spec) if spec else None
        fns: dict[str, Callable] = {}
        opts = []
        gs = getattr(gradstep, name)(params, **ALGORITHMS[name])
        opts.append(gs)
        fns["gradstep"] = gs.step
        if model is not None:
            fns["roofline"] = IdealKernel(model["reads"], model["writes"], model["dtypes"], pset.shapes, device)
        for impl, flags in _torch_impls(name, device, quick).items():
            try:
                opt = getattr(torch.optim, name)(params, **ALGORITHMS[name], **flags)
                opt.step()
            except (RuntimeError, ValueError) as e:  # e.g. no fused kernel for this dtype/device
                log(f"  {name} {impl}: skipped ({e})")
                continue
            opts.append(opt)
            fns[impl] = opt.step
        times = time_interleaved(fns, repeats, device, min_sample=0.003 if quick else 0.01)
        roof = times.get("roofline")
        for impl, ts in times.items():
            med = statistics.median(ts)
            row = Row(pset.name, name, impl, pset.numel, len(pset.shapes), med, ts)
            row.vs_gradstep = _paired(ts, times["gradstep"])
            if model is not None:
                row.bytes_per_param = model["bytes_per_param"]
                row.effective_gbs = model["bytes_per_param"] * pset.numel / med / 1e9
                row.frac_roofline = _paired(roof, ts) if roof else None
                row.frac_machine = row.effective_gbs / machine_gbs if machine_gbs else None
            rows.append(row)
        log(_format_algorithm(rows[-len(times):]))
        del fns, opts
        if not quick:  # free the large sets' states now (a full collection costs ~0.1 s)
            gc.collect()
    return rows


# ------------------------------------------------------------------------------ reporting


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:9.2f}"


def _format_algorithm(rows: list[Row]) -> str:
    by = {r.impl: r for r in rows}
    gs = by["gradstep"]
    parts = [f"  {gs.algorithm:9s} gradstep {_ms(gs.median_s)} ms"]
    if gs.frac_roofline is not None:
        parts.append(f"{gs.frac_roofline:6.1%} of roofline, {gs.effective_gbs:6.2f} GB/s")
    for impl in IMPLS[2:]:
        if impl in by:
            parts.append(f"{impl.replace('torch ', '')} {by[impl].vs_gradstep:5.2f}x")
    return " | ".join(parts)


def format_table(result: dict) -> str:
    """One table per parameter set: median step times and torch / gradstep time ratios."""
    lines = []
    m = result["machine"]
    lines.append(
        f"{m['cpu']} | {m['threads']} threads | torch {m['torch']} | measured bandwidth "
        f"{m['bandwidth_gbs']:.2f} GB/s (in-place x += y, best of repeats)"
    )
    rows = [Row(**r) for r in result["rows"]]
    for pset in dict.fromkeys(r.param_set for r in rows):
        sub = [r for r in rows if r.param_set == pset]
        n_params, n_tensors = sub[0].n_params, sub[0].n_tensors
        lines.append("")
        lines.append(f"== {pset}: {n_params / 1e6:.2f}M parameters in {n_tensors} tensors "
                     f"(median step time, ms; %roof and torch columns: medians of per-round ratios)")
        head = f"{'algorithm':10s}{'B/param':>8s}{'gradstep':>10s}{'roofline':>10s}{'%roof':>7s}{'GB/s':>7s}{'%bw':>6s}"
        head += "".join(f"{c:>10s}" for c in ("for-loop", "foreach", "fused", "default"))
        if pset.startswith("overhead"):
            head += f"{'us/tensor':>11s}"
        lines.append(head)
        for alg in dict.fromkeys(r.algorithm for r in sub):
            by = {r.impl: r for r in sub if r.algorithm == alg}
            gs = by["gradstep"]
            roof = by.get("roofline")
            line = f"{alg:10s}{gs.bytes_per_param or 0:8d}{_ms(gs.median_s):>10s}{_ms(roof.median_s if roof else None):>10s}"
            line += f"{gs.frac_roofline:7.0%}" if gs.frac_roofline is not None else f"{'-':>7s}"
            line += f"{gs.effective_gbs:7.2f}" if gs.effective_gbs is not None else f"{'-':>7s}"
            line += f"{gs.frac_machine:6.0%}" if gs.frac_machine is not None else f"{'-':>6s}"
            for impl in IMPLS[2:]:
                r = by.get(impl)
                line += f"{r.vs_gradstep:9.2f}x" if r else f"{'-':>10s}"
            if pset.startswith("overhead"):
                line += f"{gs.median_s / n_tensors * 1e6:11.2f}"
            lines.append(line)
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(quick: bool = False, device: str = "cpu", algorithms: list[str] | None = None,
        repeats: int | None = None, sets: list[str] | None = None,
        log: Callable[[str], None] = print) -> dict:
    """Run the benchmark and return its results (see the module docstring)."""
    if device != "cpu":
        raise ValueError(f"device {device!r} is not supported by this benchmark yet (cpu only)")
    names = [
        n for n in (algorithms or ALGORITHMS)
        if isinstance(getattr(gradstep, n, None), type) and issubclass(getattr(gradstep, n), ElementwiseOptimizer)
    ]
    repeats = repeats or (3 if quick else 11)
    psets = [p for p in param_sets(quick) if not sets or any(s in p.name for s in sets)]
    if not quick and _native.wait() is None:  # steady steps, as a long training run has
        log("note: the native helpers could not be built; their Python versions run")
    bw = machine_bandwidth(device, (16 if quick else 64) << 20, repeats=5 if quick else 10)
    log(f"machine bandwidth: {bw['best_gbs']:.2f} GB/s best, {bw['median_gbs']:.2f} GB/s median")
    rows: list[Row] = []
    for pset in psets:
        log(f"{pset.name}: {pset.numel / 1e6:.2f}M parameters in {len(pset.shapes)} tensors")
        rows += run_set(pset, names, repeats, device, bw["best_gbs"], log, quick)
        gc.collect()
    return {
        "machine": {
            "cpu": _cpu_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "gradstep": gradstep.__version__,
            "python": platform.python_version(),
            "bandwidth_gbs": bw["best_gbs"],
            "bandwidth_median_gbs": bw["median_gbs"],
        },
        "config": {"quick": quick, "device": device, "repeats": repeats, "algorithms": names,
                   "options": {n: ALGORITHMS[n] for n in names},
                   "time": time.strftime("%Y-%m-%d %H:%M:%S")},
        "rows": [asdict(r) for r in rows],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="small parameter sets, 3 repeats (under a minute)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--device", default="cpu", help="device to benchmark (default: cpu)")
    parser.add_argument("--algorithms", nargs="+", metavar="NAME", help="only these algorithms")
    parser.add_argument("--sets", nargs="+", metavar="NAME",
                        help="only parameter sets whose name contains one of these (e.g. bf16 small)")
    parser.add_argument("--repeats", type=int, help="timed samples per implementation (default 11, quick 3)")


def main_with_args(args: argparse.Namespace) -> int:
    if args.device.startswith("cuda"):  # the GPU benchmark: gradstep.benchmark_cuda
        from .benchmark_cuda import main_with_args as cuda_main

        return cuda_main(args)
    if args.device != "cpu":
        print(f"gradstep bench: error: device {args.device!r} is not supported (cpu, cuda)", file=sys.stderr)
        return 2
    result = run(quick=args.quick, device=args.device, algorithms=args.algorithms,
                 repeats=args.repeats, sets=args.sets, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_table(result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradstep bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return main_with_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
