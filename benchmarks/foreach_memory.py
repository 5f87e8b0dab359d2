"""Temporary memory and step time of ``foreach=True``: gradstep against torch.optim.

    python benchmarks/foreach_memory.py [--time] [--json PATH]

Memory: one ``optimizer.step()`` (after one warm-up step, so the state exists) runs under a
``TorchDispatchMode`` that sees every ATen op of the step, gradstep's and torch.optim's alike.
Every tensor an op returns whose storage is new (not an input's, i.e. not an in-place result
or a view) is a temporary: its storage's bytes count as live from the op until the last Python
tensor on that storage is freed (``weakref.finalize``). The peak of live temporary bytes during
the step is reported as a multiple of the parameters' total bytes. It is the CPU allocator's
view of the same ops a CUDA step runs (the CUDA peak itself is not measured here).

Time (``--time``): median step time of gradstep and torch.optim with ``foreach=True`` on the same
parameters, interleaved in rounds; the ratio is the median over rounds of torch / gradstep.
Results and method: docs/performance.md ("Foreach backend: temporary memory").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import gradstep

# name -> (class name, options); torch's defaults otherwise.
CONFIGS: dict[str, tuple[str, dict]] = {
    "Adam": ("Adam", {}),
    "AdamW": ("AdamW", {}),
    "Adam amsgrad": ("Adam", {"amsgrad": True}),
    "SGD momentum": ("SGD", {"lr": 1e-3, "momentum": 0.9}),
    "SGD nesterov": ("SGD", {"lr": 1e-3, "momentum": 0.9, "nesterov": True}),
    "Adagrad": ("Adagrad", {}),
    "Adadelta": ("Adadelta", {}),
    "Adamax": ("Adamax", {}),
    "ASGD": ("ASGD", {}),
    "NAdam": ("NAdam", {}),
    "RAdam": ("RAdam", {}),
    "RMSprop centered+momentum": ("RMSprop", {"centered": True, "momentum": 0.9}),
    "Rprop": ("Rprop", {}),
}

# Options that take other branches of the rules (the regression test runs these too).
EXTRA_CONFIGS: dict[str, tuple[str, dict]] = {
    "Adam wd maximize": ("Adam", {"weight_decay": 0.1, "maximize": True}),
    "AdamW amsgrad maximize": ("AdamW", {"amsgrad": True, "maximize": True}),
    "SGD wd dampening maximize": ("SGD", {"lr": 1e-3, "momentum": 0.9, "dampening": 0.1,
                                          "weight_decay": 0.1, "maximize": True}),
    "SGD plain": ("SGD", {"lr": 1e-3}),
    "Adagrad wd lr_decay": ("Adagrad", {"weight_decay": 0.1, "lr_decay": 0.01}),
    "Adadelta wd maximize": ("Adadelta", {"weight_decay": 0.1, "maximize": True}),
    "Adamax wd": ("Adamax", {"weight_decay": 0.1}),
    "ASGD averaging wd": ("ASGD", {"t0": 0, "weight_decay": 0.1}),
    "NAdam decoupled": ("NAdam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    "RAdam wd": ("RAdam", {"weight_decay": 0.1}),
    "RAdam decoupled": ("RAdam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    "RMSprop plain": ("RMSprop", {}),
    "RMSprop wd centered": ("RMSprop", {"weight_decay": 0.1, "centered": True}),
    "Rprop maximize": ("Rprop", {"maximize": True}),
}

SHAPES = ((64, 64), (1000,), (257,), (32, 33))


class TemporaryBytes(TorchDispatchMode):
    """Peak bytes held by tensors that ops allocate while the mode is active."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._holders: dict[int, list[int]] = {}  # storage ptr -> [nbytes, live tensors]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t, inputs)
        return out

    def _track(self, t: torch.Tensor, inputs: set[int]) -> None:
        storage = t.untyped_storage()
        key, nbytes = storage.data_ptr(), storage.nbytes()
        holder = self._holders.get(key)
        if holder is None:
            if key in inputs or nbytes == 0:
                return  # an in-place result or a view of something older than the step
            holder = self._holders[key] = [nbytes, 0]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        holder[1] += 1  # a view of a temporary keeps it alive too
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        holder = self._holders[key]
        holder[1] -= 1
        if holder[1] == 0:
            del self._holders[key]
            self.live -= holder[0]


def make_params(shapes=SHAPES, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype) for s in shapes]


def _optimizer(module, cls_name: str, options: dict, tensors, grads):
    params = [torch.nn.Parameter(t.clone()) for t in tensors]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params, getattr(module, cls_name)(params, foreach=True, **options)


def peak_temporaries(module, cls_name: str, options: dict, shapes=SHAPES) -> float:
    """Peak live temporary bytes of one foreach step (the second), / the params' bytes."""
    tensors = make_params(shapes)
    grads = make_params(shapes, seed=1)
    params, opt = _optimizer(module, cls_name, options, tensors, grads)
    opt.step()
    mode = TemporaryBytes()
    with mode:
        opt.step()
    return mode.peak / sum(p.nbytes for p in params)


def memory_table(configs=CONFIGS) -> dict[str, dict[str, float]]:
    return {
        name: {
            "gradstep": peak_temporaries(gradstep, cls, opts),
            "torch": peak_temporaries(torch.optim, cls, opts),
        }
        for name, (cls, opts) in configs.items()
    }


def time_steps(cls_name: str, options: dict, shapes, rounds: int = 15, calls: int = 5) -> dict:
    """Median foreach step time (us) of gradstep and torch.optim, interleaved in rounds."""
    tensors = make_params(shapes)
    grads = make_params(shapes, seed=1)
    runs = {
        "gradstep": _optimizer(gradstep, cls_name, options, tensors, grads)[1],
        "torch": _optimizer(torch.optim, cls_name, options, tensors, grads)[1],
    }
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for opt in runs.values():
        opt.step()
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for k in order:
            t0 = time.perf_counter()
            for _ in range(calls):
                runs[k].step()
            samples[k].append((time.perf_counter() - t0) / calls * 1e6)
    ratios = [t / g for t, g in zip(samples["torch"], samples["gradstep"])]
    return {
        "gradstep_us": statistics.median(samples["gradstep"]),
        "torch_us": statistics.median(samples["torch"]),
        "torch_over_gradstep": statistics.median(ratios),
    }


TIMING_SETS = {
    "20 x 64K": ((1 << 16,),) * 20,
    "200 x 1K": ((1 << 10,),) * 200,
}
TIMING_CONFIGS = ("Adam", "AdamW", "SGD momentum", "RMSprop centered+momentum", "Rprop")


def timing_table(rounds: int = 15) -> dict[str, dict]:
    out = {}
    for set_name, shapes in TIMING_SETS.items():
        for name in TIMING_CONFIGS:
            cls, opts = CONFIGS[name]
            out[f"{name} / {set_name}"] = time_steps(cls, opts, shapes, rounds=rounds)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", action="store_true", help="also time foreach steps")
    parser.add_argument("--extra", action="store_true", help="also the extra option sets")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    configs = {**CONFIGS, **EXTRA_CONFIGS} if args.extra else CONFIGS
    mem = memory_table(configs)
    total = sum(torch.Size(s).numel() for s in SHAPES)
    print(f"peak temporaries of one foreach step, x params' bytes ({total} fp32 params in "
          f"{len(SHAPES)} tensors)")
    print(f"{'algorithm':28} {'gradstep':>9} {'torch':>7}")
    for name, row in mem.items():
        print(f"{name:28} {row['gradstep']:9.2f} {row['torch']:7.2f}")
    result = {"memory": mem}
    if args.time:
        result["time"] = timing_table()
        print(f"\n{'foreach step time':42} {'gradstep us':>11} {'torch us':>9} {'torch/gs':>8}")
        for name, row in result["time"].items():
            print(f"{name:42} {row['gradstep_us']:11.0f} {row['torch_us']:9.0f} "
                  f"{row['torch_over_gradstep']:8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
