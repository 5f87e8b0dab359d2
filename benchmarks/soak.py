"""Long-run soak: many steps of a small model with gradstep and torch.optim side by side.

Checks what a unit test can't afford: that memory stays flat over a long run and that the two
libraries do not drift apart beyond float32 rounding. Not part of CI (minutes of run time).

    python benchmarks/soak.py --steps 100000 --optimizer AdamW
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import time

import torch

import gradstep


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def soak(steps: int, optimizer: str, lr: float, check_every: int, backend: dict) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))
    twin = copy.deepcopy(model)
    ours = getattr(gradstep, optimizer)(model.parameters(), lr=lr, **backend)
    theirs = getattr(torch.optim, optimizer)(twin.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1)
    w_true = torch.randn(32, 8, generator=gen)
    samples = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        x = torch.randn(64, 32, generator=gen)
        y = x @ w_true
        for m, opt in ((model, ours), (twin, theirs)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            opt.step()
        if step % check_every == 0 or step == steps:
            # Difference relative to each tensor's scale: elementwise relative errors blow up
            # on entries near zero, which says nothing about drift.
            diff = max(
                ((a - b).abs().max() / b.abs().max()).item()
                for a, b in zip(model.parameters(), twin.parameters())
            )
            samples.append({"step": step, "rss_mib": round(_rss_mib(), 2), "max_rel_diff": diff})
            print(json.dumps(samples[-1]), flush=True)
    rss = [s["rss_mib"] for s in samples]
    settled = rss[len(rss) // 4 :] or rss
    return {
        "optimizer": optimizer,
        "backend": backend or "default",
        "steps": steps,
        "seconds": round(time.perf_counter() - start, 1),
        "rss_growth_after_warmup_mib": round(max(settled) - min(settled), 2),
        "max_rel_diff": max(s["max_rel_diff"] for s in samples),
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--optimizer", default="AdamW")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--check-every", type=int, default=5_000)
    parser.add_argument("--backend", choices=["default", "foreach", "forloop"], default="default")
    parser.add_argument("--json", help="write the summary here")
    args = parser.parse_args()
    backend = {"default": {}, "foreach": {"foreach": True}, "forloop": {"foreach": False}}[args.backend]
    result = soak(args.steps, args.optimizer, args.lr, args.check_every, backend)
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
