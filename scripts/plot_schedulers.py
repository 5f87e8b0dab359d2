"""Plot the learning-rate curve of every gradstep scheduler at typical settings.

    python scripts/plot_schedulers.py [--output docs/lr_schedulers.png]

Each panel drives a gradstep scheduler on a torch.optim.SGD optimizer (lr 0.1,
momentum 0.9) for 100 steps, and checks on the way that torch.optim's scheduler
of the same name produces the same lrs.  Dotted lines show cycled momentum.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.optim.lr_scheduler as torch_sched  # noqa: E402
import torch.optim.swa_utils as torch_swa  # noqa: E402

import gradstep.lr_scheduler as sched  # noqa: E402
import gradstep.swa_utils as swa  # noqa: E402

STEPS = 100
LR = 0.1


def plateau_metric(epoch: int) -> float:
    """A validation loss that improves, then stalls (so ReduceLROnPlateau acts)."""
    return max(1.0 / (1 + epoch), 0.05) + 0.01 * math.sin(epoch)


# name -> (builder(module, swa_module, optimizer), one-line description)
PANELS = {
    "LambdaLR": (lambda m, s, o: m.LambdaLR(o, lambda e: 0.97**e), "lr0 * 0.97^epoch"),
    "MultiplicativeLR": (
        lambda m, s, o: m.MultiplicativeLR(o, lambda e: 0.95 if e % 10 else 1.2),
        "x0.95 each epoch, x1.2 every 10th",
    ),
    "StepLR": (lambda m, s, o: m.StepLR(o, step_size=30, gamma=0.5), "step_size=30, gamma=0.5"),
    "MultiStepLR": (lambda m, s, o: m.MultiStepLR(o, [30, 60, 80], gamma=0.3), "milestones 30/60/80"),
    "ConstantLR": (lambda m, s, o: m.ConstantLR(o, factor=0.5, total_iters=40), "factor=0.5 for 40"),
    "LinearLR": (lambda m, s, o: m.LinearLR(o, 0.05, 1.0, total_iters=40), "0.05 -> 1 over 40"),
    "ExponentialLR": (lambda m, s, o: m.ExponentialLR(o, gamma=0.96), "gamma=0.96"),
    "PolynomialLR": (lambda m, s, o: m.PolynomialLR(o, total_iters=80, power=2.0), "total 80, power 2"),
    "CosineAnnealingLR": (lambda m, s, o: m.CosineAnnealingLR(o, T_max=50, eta_min=0.005), "T_max=50"),
    "CosineAnnealingWarmRestarts": (
        lambda m, s, o: m.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2, eta_min=0.005),
        "T_0=10, T_mult=2",
    ),
    "CyclicLR": (
        lambda m, s, o: m.CyclicLR(o, 0.01, 0.1, step_size_up=15, mode="triangular2"),
        "triangular2, 15 up / 15 down",
    ),
    "OneCycleLR": (lambda m, s, o: m.OneCycleLR(o, max_lr=0.1, total_steps=STEPS), "max_lr=0.1, cos"),
    "ReduceLROnPlateau": (lambda m, s, o: m.ReduceLROnPlateau(o, factor=0.5, patience=5), "patience=5"),
    "ChainedScheduler": (
        lambda m, s, o: m.ChainedScheduler([m.LinearLR(o, 0.1, 1.0, 10), m.ExponentialLR(o, 0.97)]),
        "LinearLR + ExponentialLR",
    ),
    "SequentialLR": (
        lambda m, s, o: m.SequentialLR(
            o, [m.LinearLR(o, 0.05, 1.0, 10), m.CosineAnnealingLR(o, T_max=90)], milestones=[10]
        ),
        "10 warmup, then cosine",
    ),
    "SWALR": (lambda m, s, o: s.SWALR(o, swa_lr=0.02, anneal_epochs=20), "swa_lr=0.02, cos over 20"),
}


def curve(builder, module, swa_module):
    """(lrs, momenta) over STEPS steps of the scheduler built by ``builder``."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR, momentum=0.9)
    scheduler = builder(module, swa_module, opt)
    lrs, momenta = [], []
    for epoch in range(STEPS):
        lrs.append(opt.param_groups[0]["lr"])
        momenta.append(opt.param_groups[0]["momentum"])
        opt.step()
        if isinstance(scheduler, torch_sched.ReduceLROnPlateau):
            scheduler.step(plateau_metric(epoch))
        else:
            scheduler.step()
    return lrs, momenta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(Path(__file__).parents[1] / "docs" / "lr_schedulers.png"))
    args = parser.parse_args()

    warnings.simplefilter("ignore")
    fig, axes = plt.subplots(4, 4, figsize=(16, 12.5), sharex=True)
    for ax, (name, (builder, note)) in zip(axes.flat, PANELS.items()):
        lrs, momenta = curve(builder, sched, swa)
        reference, _ = curve(builder, torch_sched, torch_swa)
        assert lrs == reference, f"{name}: gradstep and torch.optim differ"
        ax.plot(range(STEPS), lrs, color="tab:blue", lw=1.8)
        ax.set_title(name, fontsize=11, fontweight="bold")
        ax.text(0.98, 0.95, note, transform=ax.transAxes, ha="right", va="top", fontsize=8, color="0.3")
        ax.set_ylim(0, max(lrs) * 1.15)
        ax.grid(alpha=0.3)
        if len(set(momenta)) > 1:
            twin = ax.twinx()
            twin.plot(range(STEPS), momenta, color="tab:orange", ls=":", lw=1.4)
            twin.set_ylim(0.75, 1.0)
            twin.tick_params(labelsize=7, colors="tab:orange")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("lr")
    fig.suptitle(
        "gradstep.lr_scheduler / swa_utils at typical settings (SGD lr=0.1, momentum=0.9; "
        "dotted: momentum) -- identical to torch.optim",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(args.output, dpi=90)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
