"""GPU benchmark: gradstep's fused CUDA backend against torch.optim, every elementwise algorithm.

Two parameter sets, float32: about 1B parameters in GPT-style shapes (embeddings, attention and
MLP matrices, biases, norms), and about 5000 small tensors. For each algorithm it times one
``optimizer.step()`` (median of repeats, host wall time between device synchronisations, so
launch and Python overheads count) for gradstep (default flags, and ``fused=True`` where torch
has it) and torch.optim (default, ``foreach=True``, ``fused=True`` where it exists), and reports
gradstep's bytes moved per second as a fraction of the device's measured copy bandwidth.

    gradstep bench --device cuda [--quick] [--json out.json]
    python benchmarks/bench_cuda.py [--params 1e9] [--small 5000] [--sweep] [--json out.json]

Medians from one process and one run: compare ratios, and absolute numbers only on the same card.
The implementations of an algorithm are timed interleaved: all are built on the same parameters,
and each round steps every one of them once, in a rotating order, so a drift of the device
touches them alike. Where their states do not fit side by side (out of memory), they are
timed one after another instead (``interleaved: false`` in the JSON).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time

import torch

import gradstep
from gradstep import _native
from gradstep.algorithms._elementwise import ElementwiseOptimizer


def gpt_shapes(target: float = 1e9, d: int = 2048, vocab: int = 50304, ctx: int = 2048):
    """Shapes of a GPT-2-style decoder with width ``d``, layers added until ``target`` params."""
    shapes = [(vocab, d), (ctx, d)]
    layer = [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    per_layer = sum(torch.Size(s).numel() for s in layer)
    total = sum(torch.Size(s).numel() for s in shapes) + 2 * d
    while total + per_layer <= target * 1.02:
        shapes += layer
        total += per_layer
    return shapes + [(d,), (d,)]


def small_shapes(count: int = 5000, seed: int = 0):
    """Many small tensors (vectors and small matrices, 64 to 4096 elements)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        n = int(torch.randint(64, 4097, (), generator=gen))
        out.append((n,) if i % 3 else (n // 16 or 1, 16))
    return out


def make_set(shapes, device):
    params = [torch.nn.Parameter(torch.randn(s, device=device) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def copy_bandwidth(device, nbytes: int = 2 << 30, repeats: int = 20) -> float:
    """Measured device-to-device copy bandwidth, bytes read + written per second."""
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    return 2 * nbytes / statistics.median(times[3:])


def time_interleaved(opts: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median step time of each optimizer (all on the same parameters), stepping them in turn
    in a rotating order, so that a drift of the device (clocks, temperature, other work)
    touches every implementation alike and their ratios stay fair."""
    for opt in opts.values():
        for _ in range(warmup):
            opt.step()
    torch.cuda.synchronize()
    labels = list(opts)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(repeats):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            t0 = time.perf_counter()
            opts[label].step()
            torch.cuda.synchronize()
            times[label].append(time.perf_counter() - t0)
    return {label: statistics.median(v) for label, v in times.items()}


def time_steps(opt, repeats: int, warmup: int = 2) -> float:
    opt.step()  # state creation, kernel compilation
    for _ in range(warmup):
        opt.step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def algorithms(names=None):
    found = sorted((c for c in vars(gradstep).values()
                    if isinstance(c, type) and issubclass(c, ElementwiseOptimizer)),
                   key=lambda c: c.__name__)
    return [c for c in found if names is None or c.__name__ in names]


def _accepts(cls, key) -> bool:
    import inspect

    return key in inspect.signature(cls.__init__).parameters


def bytes_per_step(opt, numel: int, elem: int = 4) -> int | None:
    """Bytes gradstep's kernel reads and writes per step: from the traced rule of group 0."""
    from gradstep.backends.cuda import runner
    from gradstep.backends.cuda.codegen import KernelSpec, _Printer

    group = opt.param_groups[0]
    cfg = opt._config(group)
    for (rule, c, names, n_states), graph in runner._GRAPHS.items():
        if rule is type(opt).rule and c == cfg:
            pr = _Printer(graph, KernelSpec(("float32",) * graph.n_inputs, ()))
            return (len(pr._used_inputs()) + len(pr.stored_inputs())) * elem * numel
    return None


def implementations(cls):
    """(label, factory) pairs: gradstep default and fused, torch default, foreach, fused."""
    torch_cls = getattr(torch.optim, cls.__name__)
    lr = dict(lr=1e-3)
    out = [("gradstep", lambda ps: cls(ps, **lr))]
    if _accepts(cls, "fused"):
        out.append(("gradstep fused", lambda ps: cls(ps, fused=True, **lr)))
    out.append(("torch default", lambda ps: torch_cls(ps, **lr)))
    out.append(("torch foreach", lambda ps: torch_cls(ps, foreach=True, **lr)))
    if _accepts(torch_cls, "fused"):
        out.append(("torch fused", lambda ps: torch_cls(ps, fused=True, **lr)))
    return out


def _release() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def _time_row(row: dict, params, cls, repeats: int) -> dict:
    """Step times of every implementation of ``cls`` into ``row``: interleaved (all optimizers
    alive at once), or one after another where their states do not fit side by side."""
    opts = {}
    try:
        for label, make in implementations(cls):
            try:
                opts[label] = make(params)
                opts[label].step()  # state creation, kernel compilation
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. torch's fused Adagrad is CPU-only
                opts.pop(label, None)
                row[label + " error"] = f"{type(exc).__name__}: {exc}"[:200]
        row.update(time_interleaved(opts, repeats))
        row["interleaved"] = True
        return row
    except torch.cuda.OutOfMemoryError:
        pass
    finally:
        opts.clear()
        _release()
    row["interleaved"] = False
    for label, make in implementations(cls):
        if label + " error" in row:
            continue
        try:
            row[label] = time_steps(make(params), repeats)
        except Exception as exc:  # noqa: BLE001
            row[label + " error"] = f"{type(exc).__name__}: {exc}"[:200]
        _release()
    return row


def run_set(name, params, classes, repeats, copy_bw, on_row=lambda row: None):
    numel = sum(p.numel() for p in params)
    rows = []
    for cls in classes:
        row = {"set": name, "algorithm": cls.__name__, "params": numel, "tensors": len(params)}
        _time_row(row, params, cls, repeats)
        _release()
        moved = bytes_per_step(cls(params, lr=1e-3), numel)  # (the traced rule of those runs)
        if moved:
            row["bytes"] = moved
            for label, key in (("gradstep", "fraction_of_copy"), ("gradstep fused", "fraction_of_copy_fused")):
                if label in row:
                    row[key] = moved / row[label] / copy_bw
            if "gradstep" in row:
                row["bandwidth"] = moved / row["gradstep"]
        rows.append(row)
        on_row(row)
        print(format_row(row), flush=True)
    return rows


def format_row(row) -> str:
    def ms(key):
        return f"{row[key] * 1e3:8.3f}" if key in row else "       -"

    def ratio(a, b):
        return f"{row[a] / row[b]:6.2f}" if a in row and b in row else "     -"

    best = "gradstep fused" if "gradstep fused" in row else "gradstep"
    frac = "/".join(f"{row[k] * 100:5.1f}%" for k in ("fraction_of_copy", "fraction_of_copy_fused") if k in row) or "    -"
    return (f"{row['set']:6} {row['algorithm']:9} gs {ms('gradstep')} gs-fused {ms('gradstep fused')} "
            f"t-def {ms('torch default')} t-fe {ms('torch foreach')} t-fused {ms('torch fused')} ms | "
            f"fused/t-fused {ratio(best, 'torch fused')} t-def/gs {ratio('torch default', 'gradstep')} "
            f"t-fe/gs {ratio('torch foreach', 'gradstep')} | copy-bw {frac}")


#: (BLOCK, PER_PROGRAM, num_warps, streaming cache hints); the first is the default
SWEEP = ((1024, 2, 4, False), (1024, 2, 4, True), (512, 1, 2, False), (512, 1, 2, True),
         (512, 1, 4, False), (1024, 1, 8, True), (1024, 4, 4, True), (2048, 1, 8, True))


def sweep(params, repeats, copy_bw, configs=SWEEP):
    """Adam on the large set with several launch shapes and cache hints; the fastest is kept
    for the rest of the run. The default shape runs first and again last, so a drift of the
    machine during the sweep shows."""
    from gradstep.backends.cuda import runner

    numel = sum(p.numel() for p in params)
    out = []
    for block, per, warps, stream in (*configs, configs[0]):
        runner.BLOCK, runner.PER_PROGRAM, runner.NUM_WARPS, runner.STREAM = block, per, warps, stream
        opt = gradstep.Adam(params, fused=True)
        t = time_steps(opt, repeats)
        moved = bytes_per_step(opt, numel)
        out.append({"block": block, "per_program": per, "warps": warps, "stream": stream,
                    "seconds": t, "fraction_of_copy": moved / t / copy_bw})
        print(f"sweep BLOCK={block:5} PER_PROGRAM={per} warps={warps} stream={stream:d}: "
              f"{t * 1e3:.3f} ms, {moved / t / copy_bw * 100:.1f}% of copy bandwidth", flush=True)
        del opt
        gc.collect()
    best = min(out, key=lambda r: r["seconds"])
    runner.BLOCK, runner.PER_PROGRAM, runner.NUM_WARPS, runner.STREAM = (
        best["block"], best["per_program"], best["warps"], best["stream"])
    print(f"using BLOCK={runner.BLOCK} PER_PROGRAM={runner.PER_PROGRAM} warps={runner.NUM_WARPS} "
          f"stream={runner.STREAM:d}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_cuda", description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=1e9, help="size of the large set (default 1e9)")
    ap.add_argument("--small", type=int, default=5000, help="tensors in the small set (default 5000)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--algorithms", nargs="*", default=None)
    ap.add_argument("--sets", default="large,small")
    ap.add_argument("--sweep", action="store_true", help="also try several launch shapes (Adam)")
    ap.add_argument("--json", default=None, help="write all numbers here")
    return run(ap.parse_args(argv))


def main_with_args(args: argparse.Namespace) -> int:
    """``gradstep bench --device cuda``: the CLI's options (--quick, --sets, --repeats,
    --algorithms, --json) mapped onto this benchmark."""
    quick = getattr(args, "quick", False)
    ns = argparse.Namespace(
        params=1e8 if quick else 1e9, small=1000 if quick else 5000,
        repeats=args.repeats or (3 if quick else 10), algorithms=args.algorithms,
        sets=",".join(args.sets) if args.sets else "large,small", sweep=False, json=args.json,
    )
    return run(ns)


def run(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    copy_bw = copy_bandwidth(device)
    if _native.wait() is None:  # steady steps, as a long training run has
        print("note: the native helpers could not be built; their Python versions run")
    import triton

    from gradstep.backends.cuda import runner

    result = {
        "device": props.name, "torch": torch.__version__, "triton": triton.__version__,
        "copy_bandwidth_bytes_per_s": copy_bw, "rows": [],
    }
    print(f"{props.name}, torch {torch.__version__}, triton {triton.__version__}; "
          f"device-to-device copy {copy_bw / 1e12:.2f} TB/s (read + write)", flush=True)
    classes = algorithms(args.algorithms)

    def save(row=None):
        if row is not None:
            result["rows"].append(row)
        result["launch_shape"] = dict(block=runner.BLOCK, per_program=runner.PER_PROGRAM,
                                      warps=runner.NUM_WARPS, stream=runner.STREAM)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)

    wanted = args.sets.split(",")
    for name in [n for n in ("large", "small") if any(w in n for w in wanted)]:
        shapes = gpt_shapes(args.params) if name == "large" else small_shapes(args.small)
        params = make_set(shapes, device)
        if name == "large" and args.sweep:
            result["sweep"] = sweep(params, args.repeats, copy_bw)
            save()
        run_set(name, params, classes, args.repeats, copy_bw, save)
        del params
        gc.collect()
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
