"""The ``gradstep`` command: parses arguments and dispatches to a subcommand.

A subcommand is one ``add_<name>(subparsers)`` function that defines its options and sets
``func`` (called with the parsed arguments, returns an exit code), listed in SUBCOMMANDS.
The work itself lives in its own module (demo.py for ``demo``); bad options are argparse
errors (exit 2), problems found while running are a message on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


# --- demo -----------------------------------------------------------------------------------


def _optimizer_name(text: str) -> str:
    from . import demo

    try:
        return demo.resolve_optimizer(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_demo(subparsers) -> None:
    from . import demo

    names = ", ".join(demo.demo_optimizers())
    lrs = ", ".join(f"{n} {demo.default_lr(n):g}" for n in demo.demo_optimizers())
    p = subparsers.add_parser(
        "demo",
        help="train a small MLP on scikit-learn's digits with gradstep and torch.optim side by side",
        description=(
            "Train a small MLP on scikit-learn's bundled digits dataset (no download) with a gradstep "
            "optimizer and with torch.optim's same optimizer, from the same seed and batches. Prints "
            "final train loss, test accuracy and mean step time for each, the largest difference "
            "between their final parameters, and writes both loss curves to a PNG. "
            "Needs the demo extra: pip install 'gradstep[demo]'."
        ),
    )
    p.add_argument(
        "--optimizer", type=_optimizer_name, default="AdamW", metavar="NAME",
        help=f"gradstep algorithm, case-insensitive (default: AdamW); one of: {names}",
    )
    p.add_argument(
        "--lr", type=_nonnegative_float, default=None,
        help=f"learning rate, >= 0 (default per optimizer: {lrs})",
    )
    p.add_argument(
        "--scheduler", choices=demo.SCHEDULERS, default="none",
        help="learning-rate schedule over the whole run, stepped every batch "
        "(cosine annealing, one-cycle, or 10x decay at 1/3 and 2/3), from gradstep.lr_scheduler "
        "(default: none)",
    )
    p.add_argument(
        "--epochs", type=_positive_int, default=10, help="passes over the training set (default: 10)"
    )
    full = " and ".join(sorted(demo.FULL_BATCH))
    p.add_argument(
        "--batch-size", type=_positive_int, default=None,
        help=f"images per step (default: {demo.DEFAULT_BATCH_SIZE}; the whole training set for {full})",
    )
    p.add_argument(
        "--seed", type=int, default=0,
        help="seed for the data split, the initial weights and the batch order (default: 0)",
    )
    p.add_argument(
        "--output", default=demo.DEFAULT_OUTPUT, metavar="PNG",
        help=f"where to write the loss curves (default: {demo.DEFAULT_OUTPUT})",
    )
    p.add_argument(
        "--no-compare", action="store_true", help="train with gradstep only, without torch.optim"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    from . import demo

    try:
        result = demo.run_demo(
            optimizer=args.optimizer,
            lr=args.lr,
            scheduler=args.scheduler,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            output=args.output,
            compare=not args.no_compare,
            progress=not args.no_progress,
        )
    except demo.DemoError as e:  # a missing extra or feature: a message, not a traceback
        print(f"gradstep demo: error: {e}", file=sys.stderr)
        return 1
    print(demo.format_report(result))
    return 0


# --- bench ----------------------------------------------------------------------------------


def add_bench(subparsers) -> None:
    from . import benchmark

    p = subparsers.add_parser(
        "bench",
        help="time optimizer steps of gradstep against torch.optim (every elementwise algorithm)",
        description=benchmark.__doc__.split("\n\n")[0]
        + " Prints a table; --json writes every measurement. See docs/performance.md.",
    )
    benchmark.add_arguments(p)
    p.set_defaults(func=benchmark.main_with_args)


# --- registration ---------------------------------------------------------------------------

SUBCOMMANDS = [add_demo, add_bench]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="gradstep",
        description="gradstep: an independent, faster implementation of torch.optim.",
    )
    parser.add_argument("--version", action="version", version=f"gradstep {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradstep`` console script and ``python -m gradstep``."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
