"""``gradstep demo``: train a small MLP on scikit-learn's digits with gradstep and torch.optim.

Both runs start from the same weights and see the same batches, so their curves should lie on
top of each other; the report shows how far apart the final parameters ended up and how long
each optimizer's ``step()`` took.  The demo's dependencies (scikit-learn, tqdm, matplotlib) are
the ``demo`` extra and are imported only when a demo runs, so ``gradstep --help`` works without.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import gradstep

SCHEDULERS = ("none", "cosine", "onecycle", "step")
DEFAULT_OUTPUT = "gradstep-demo.png"
HIDDEN = 128

DEFAULT_BATCH_SIZE = 64

# Learning rates that reach ~97% test accuracy in the default 10 epochs (measured with
# torch.optim); algorithms not listed use their own default lr.
DEFAULT_LR = {
    "Adadelta": 1.0,
    "Adafactor": 3e-2,
    "Adagrad": 3e-2,
    "Adam": 1e-2,
    "Adamax": 3e-2,
    "AdamW": 1e-2,
    "ASGD": 0.1,
    "LBFGS": 1.0,
    "NAdam": 1e-2,
    "RAdam": 1e-2,
    "RMSprop": 3e-3,
    "Rprop": 1e-2,
    "SGD": 0.1,
}

# Full-batch methods: minibatch noise makes them diverge, so by default they see the whole
# training set every step.
FULL_BATCH = frozenset({"LBFGS", "Rprop"})

# Optimizers that cannot train this dense MLP, and why.
EXCLUDED = {
    "SparseAdam": "it needs sparse gradients (e.g. nn.Embedding(sparse=True)); the demo's MLP has dense ones",
    "Muon": "it only optimizes 2-D weight matrices; the demo's MLP also has 1-D biases",
}

# Optimizers whose step() re-evaluates the loss through a closure.
NEEDS_CLOSURE = frozenset({"LBFGS"})


class DemoError(Exception):
    """A problem the user can fix (missing dependency, unavailable feature); no traceback."""


@dataclass
class RunResult:
    """One optimizer's training run."""

    name: str  # e.g. "gradstep.AdamW"
    final_train_loss: float  # on the whole training set, after training
    test_accuracy: float  # fraction in [0, 1]
    mean_step_time_s: float  # mean wall time of optimizer.step() after the first (warm-up) step
    losses: list[float] = field(default_factory=list)  # minibatch loss of every step
    final_state: dict[str, torch.Tensor] = field(default_factory=dict)  # the model's state_dict


@dataclass
class DemoResult:
    """Everything the demo measured; ``max_param_diff`` is None without a torch.optim run."""

    optimizer: str
    lr: float
    scheduler: str
    epochs: int
    batch_size: int
    seed: int
    n_train: int
    n_test: int
    runs: list[RunResult]
    max_param_diff: float | None
    output: Path
    notes: list[str] = field(default_factory=list)


# --- which optimizers and schedulers exist --------------------------------------------------


def available_optimizers() -> dict[str, type]:
    """gradstep's optimizer classes present at run time, by name (excluded ones included)."""
    found = {}
    for name in getattr(gradstep, "__all__", dir(gradstep)):
        obj = getattr(gradstep, name, None)
        if inspect.isclass(obj) and issubclass(obj, gradstep.Optimizer) and obj is not gradstep.Optimizer:
            found[name] = obj
    return found


def demo_optimizers() -> list[str]:
    """Names the demo can train with, sorted case-insensitively."""
    return sorted((n for n in available_optimizers() if n not in EXCLUDED), key=str.lower)


def resolve_optimizer(name: str) -> str:
    """The exact class name for ``name`` (case-insensitive); ValueError says what is possible."""
    by_lower = {n.lower(): n for n in available_optimizers()}
    exact = by_lower.get(name.lower())
    if exact in EXCLUDED:
        raise ValueError(f"{exact} cannot run in the demo: {EXCLUDED[exact]}")
    if exact is None:
        raise ValueError(f"unknown optimizer {name!r}; available: {', '.join(demo_optimizers())}")
    return exact


def default_lr(name: str) -> float:
    """A learning rate that suits the demo, else the optimizer's own default."""
    if name in DEFAULT_LR:
        return DEFAULT_LR[name]
    param = inspect.signature(available_optimizers()[name]).parameters.get("lr")
    if param is not None and isinstance(param.default, (int, float)):
        return float(param.default)
    return 1e-3


def scheduler_module():
    """gradstep.lr_scheduler, or DemoError when this build does not have it."""
    try:
        return importlib.import_module("gradstep.lr_scheduler")
    except ImportError as e:
        if e.name != "gradstep.lr_scheduler":
            raise
        raise DemoError(
            "learning-rate schedulers are unavailable: this gradstep has no gradstep.lr_scheduler yet; "
            "use --scheduler none"
        ) from None


def make_scheduler(module, kind: str, optimizer, lr: float, total_steps: int):
    """The scheduler ``kind`` from ``module`` (gradstep's or torch's), stepped once per batch."""
    names = {"cosine": "CosineAnnealingLR", "onecycle": "OneCycleLR", "step": "StepLR"}
    cls = getattr(module, names[kind], None)
    if cls is None:
        raise DemoError(f"--scheduler {kind} is unavailable: {module.__name__} has no {names[kind]}")
    if kind == "cosine":
        return cls(optimizer, T_max=total_steps)
    if kind == "onecycle":
        cycle = "momentum" in optimizer.defaults or "betas" in optimizer.defaults
        return cls(optimizer, max_lr=lr, total_steps=total_steps, cycle_momentum=cycle)
    return cls(optimizer, step_size=max(1, total_steps // 3), gamma=0.1)


# --- the demo -------------------------------------------------------------------------------


def _import_demo_deps():
    """scikit-learn's loader, tqdm and matplotlib's Figure, or DemoError naming the extra."""
    try:
        from matplotlib.figure import Figure
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from tqdm.auto import tqdm
    except ImportError as e:
        missing = (e.name or "a dependency").split(".")[0]
        raise DemoError(
            f"the demo needs scikit-learn, tqdm and matplotlib ({missing} is missing): "
            "pip install 'gradstep[demo]'"
        ) from None
    return load_digits, train_test_split, tqdm, Figure


def _load_digits(seed: int, load_digits, train_test_split):
    """8x8 digit images bundled with scikit-learn (no download), standardized per pixel."""
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    x_tr, x_te = torch.tensor(x_tr), torch.tensor(x_te)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1.0  # +1: some border pixels are always 0
    as_x = lambda a: ((a - mean) / std).float()  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return as_x(x_tr), as_y(y_tr), as_x(x_te), as_y(y_te)


class _Run:
    """A model, its optimizer and scheduler, and what it recorded."""

    def __init__(self, name, model, optimizer, scheduler, closure_step):
        self.name, self.model, self.optimizer, self.scheduler = name, model, optimizer, scheduler
        self.closure_step = closure_step
        self.losses: list[float] = []
        self.step_times: list[float] = []

    def train_step(self, xb, yb, loss_fn) -> float:
        opt, model = self.optimizer, self.model
        if self.closure_step:

            def closure():
                opt.zero_grad()
                loss = loss_fn(model(xb), yb)
                loss.backward()
                return loss

            t0 = time.perf_counter()
            loss = opt.step(closure)
            self.step_times.append(time.perf_counter() - t0)
        else:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            t0 = time.perf_counter()
            opt.step()
            self.step_times.append(time.perf_counter() - t0)
        if self.scheduler is not None:
            self.scheduler.step()
        self.losses.append(float(loss.detach()))
        return self.losses[-1]

    @torch.no_grad()
    def result(self, x_tr, y_tr, x_te, y_te, loss_fn) -> RunResult:
        train_loss = float(loss_fn(self.model(x_tr), y_tr))
        accuracy = float((self.model(x_te).argmax(1) == y_te).float().mean())
        times = self.step_times[1:] or self.step_times  # the first step allocates state
        mean_step = sum(times) / len(times)
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return RunResult(self.name, train_loss, accuracy, mean_step, self.losses, state)


def _plot(runs: list[_Run], title: str, output: Path, Figure) -> None:
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    styles = [dict(lw=2.2, alpha=0.8), dict(lw=1.2, ls="--", color="black")]
    for run, style in zip(runs, styles):
        ax.plot(range(1, len(run.losses) + 1), run.losses, label=run.name, **style)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("minibatch cross-entropy")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run with torch on ``n`` CPU threads (None: unchanged), restoring the count afterwards."""
    saved = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _train(runs: list[_Run], x, y, epochs: int, batch_size: int, seed: int, bar) -> None:
    """Step every run on the same shuffled batches, alternating which one steps first."""
    loss_fn = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            turn = runs if bar.n % 2 == 0 else runs[::-1]  # neither always finds the caches warm
            for run in turn:
                run.train_step(x[idx], y[idx], loss_fn)
            bar.set_postfix(epoch=epoch, loss=f"{runs[0].losses[-1]:.4f}", refresh=False)
            bar.update()


def run_demo(
    optimizer: str = "AdamW",
    lr: float | None = None,
    scheduler: str = "none",
    epochs: int = 10,
    batch_size: int | None = None,
    seed: int = 0,
    output: str | Path = DEFAULT_OUTPUT,
    compare: bool = True,
    progress: bool = True,
    num_threads: int | None = 1,
) -> DemoResult:
    """Train the MLP with gradstep.<optimizer> (and torch.optim's twin); plot and return results.

    ``batch_size=None`` means 64, or the whole training set for full-batch methods. A model this
    small trains fastest, and times most steadily, on one CPU thread (``num_threads``); torch's
    thread count is restored afterwards.
    """
    name = resolve_optimizer(optimizer)
    lr = default_lr(name) if lr is None else float(lr)
    if not lr >= 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if epochs < 1 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"epochs and batch_size must be at least 1, got {epochs} and {batch_size}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose from {', '.join(SCHEDULERS)}")
    gs_sched_mod = scheduler_module() if scheduler != "none" else None
    load_digits, train_test_split, tqdm, Figure = _import_demo_deps()
    notes = []
    torch_cls = getattr(torch.optim, name, None) if compare else None
    if compare and torch_cls is None:
        notes.append(f"torch.optim has no {name}: ran gradstep only")

    x_tr, y_tr, x_te, y_te = _load_digits(seed, load_digits, train_test_split)
    if batch_size is None:
        batch_size = len(x_tr) if name in FULL_BATCH else DEFAULT_BATCH_SIZE
    batch_size = min(batch_size, len(x_tr))
    total = epochs * -(-len(x_tr) // batch_size)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x_tr.shape[1], HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))

    def new_run(label, cls, sched_mod, net):
        opt = cls(net.parameters(), lr=lr)
        sched = make_scheduler(sched_mod, scheduler, opt, lr, total) if sched_mod else None
        return _Run(label, net, opt, sched, closure_step=name in NEEDS_CLOSURE)

    with _torch_threads(num_threads):
        runs = [new_run(f"gradstep.{name}", available_optimizers()[name], gs_sched_mod, model)]
        if torch_cls is not None:
            torch_sched_mod = torch.optim.lr_scheduler if gs_sched_mod else None
            twin = copy.deepcopy(model)
            runs.append(new_run(f"torch.optim.{name}", torch_cls, torch_sched_mod, twin))
        desc = f"{name}: gradstep" + (" vs torch.optim" if len(runs) > 1 else "")
        with tqdm(total=total, desc=desc, unit="step", disable=not progress) as bar:
            _train(runs, x_tr, y_tr, epochs, batch_size, seed, bar)
        results = [run.result(x_tr, y_tr, x_te, y_te, nn.CrossEntropyLoss()) for run in runs]

    max_diff = None
    if len(results) > 1:
        a, b = results[0].final_state, results[1].final_state
        max_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    output = Path(output)
    _plot(runs, f"{name}, lr={lr:g}, scheduler={scheduler}: MLP on digits", output, Figure)
    return DemoResult(
        optimizer=name,
        lr=lr,
        scheduler=scheduler,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        n_train=len(x_tr),
        n_test=len(x_te),
        runs=results,
        max_param_diff=max_diff,
        output=output,
        notes=notes,
    )


def _format_seconds(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def format_report(result: DemoResult) -> str:
    """The demo's table of results as text."""
    lines = [
        f"{result.optimizer} (lr={result.lr:g}, scheduler={result.scheduler}) on digits: "
        f"MLP 64-{HIDDEN}-10, {result.n_train} train / {result.n_test} test images, "
        f"{result.epochs} epochs, batch {result.batch_size}, seed {result.seed}",
        "",
        f"{'optimizer':<24}{'final train loss':>18}{'test accuracy':>16}{'mean step time':>17}",
    ]
    for r in result.runs:
        lines.append(
            f"{r.name:<24}{r.final_train_loss:>18.6f}{r.test_accuracy:>16.2%}"
            f"{_format_seconds(r.mean_step_time_s):>17}"
        )
    lines.append("")
    if result.max_param_diff is not None:
        lines.append(f"max |parameter difference|, gradstep vs torch.optim: {result.max_param_diff:.3g}")
    step_note = "wall time of optimizer.step(), first (warm-up) step excluded"
    if result.optimizer in NEEDS_CLOSURE:
        step_note += f"; {result.optimizer}'s includes its closure's forward and backward passes"
    lines.append(f"mean step time: {step_note}")
    lines.extend(result.notes)
    lines.append(f"loss curves: {result.output}")
    return "\n".join(lines)
