"""Parity of gradstep.lr_scheduler with torch.optim.lr_scheduler, the oracle.

The harness builds the same scheduler twice, once from ``torch.optim.lr_scheduler``
and once from ``gradstep.lr_scheduler``, each on its own fresh torch.optim
optimizer, applies the same operations and compares after every operation:
every param group (lr, momentum/betas, initial_lr, ...), ``get_last_lr()``,
the full ``state_dict()``, any exception and every warning.  Floats must agree
to ``REL`` (in practice they are bit-identical).

Other scheduler test files import the harness from here.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from typing import Any

import pytest
import torch
import torch.optim.lr_scheduler as T
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradstep.lr_scheduler as G

REL = 1e-12
MODULES = {"torch": T, "gradstep": G}

# Modest example counts keep the whole scheduler suite well under a minute on 2 cores.
FAST = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))


# --------------------------------------------------------------------------- harness


def make_optimizer(kind: str = "sgd", lrs=(0.1, 0.05), tensor_lr=None):
    """A torch.optim optimizer with one param group per lr (params never get grads)."""
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in lrs]
    groups = [
        {"params": [p], "lr": lr if tensor_lr is None else torch.tensor(lr, dtype=tensor_lr)}
        for p, lr in zip(params, lrs)
    ]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=0.1)
    if kind == "adagrad":  # neither momentum nor betas
        return torch.optim.Adagrad(groups, lr=0.1)
    raise ValueError(kind)


_PLAIN = (float, int, str, bool, type(None))


def snapshot(value: Any) -> Any:
    """A frozen, comparable copy: tensors become (dtype, values), callables their type."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype), value.tolist())
    if isinstance(value, Counter):
        return ("Counter", sorted(value.items()))
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    if callable(value):
        return ("callable", type(value).__name__)
    return value


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Structural equality; floats to REL relative tolerance, types must match."""
    if isinstance(a, float) and isinstance(b, float):
        ok = a == b or math.isclose(a, b, rel_tol=REL, abs_tol=0.0) or (a != a and b != b)
        assert ok, f"{path}: {a!r} != {b!r}"
        return
    assert type(a) is type(b), f"{path}: type {type(a).__name__} != {type(b).__name__} ({a!r} vs {b!r})"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: len {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def observe(opt, scheds) -> dict:
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return snapshot(
        {
            "groups": groups,
            "last_lr": [s.get_last_lr() for s in scheds],
            "state": [s.state_dict() for s in scheds],
        }
    )


def apply_op(op, opt, scheds) -> Any:
    """One operation; returns anything worth comparing (get_lr's result)."""
    if op == "opt":
        opt.step()
    elif op == "step":
        for s in scheds:
            s.step()
    elif op == "get_lr":
        return [s.get_lr() for s in scheds]
    elif op[0] == "epoch":
        for s in scheds:
            s.step(op[1])
    elif op[0] == "metric":
        for s in scheds:
            s.step(op[1])
    else:
        raise ValueError(op)
    return None


class Ops(list):
    """A list of operations with a compact repr (hypothesis prints failing examples)."""

    def __repr__(self):
        # Pair each optimizer step with the scheduler op after it, then run-length encode.
        items, i = [], 0
        while i < len(self):
            if self[i] == "opt" and i + 1 < len(self):
                items.append(f"opt+{self[i + 1]!r}")
                i += 2
            else:
                items.append(repr(self[i]))
                i += 1
        out, prev, count = [], None, 0
        for item in [*items, None]:
            if item == prev:
                count += 1
                continue
            if prev is not None:
                out.append(f"{prev} x{count}" if count > 1 else prev)
            prev, count = item, 1
        return f"Ops[{', '.join(out)}]"

    def __getitem__(self, item):
        got = super().__getitem__(item)
        return Ops(got) if isinstance(item, slice) else got

    def __mul__(self, n):
        return Ops(list(self) * n)


def steps(n):
    """n iterations of optimizer.step() then scheduler.step()."""
    return Ops(["opt", "step"] * n)


def as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def run(module, build, ops, opt_spec, *, resume_at=None, resume_module=None):
    """Trace of observations (and the final exception and warnings) for one module.

    With ``resume_at=k`` the run is checkpointed after ``k`` ops: optimizer and
    scheduler state dicts are saved, a fresh optimizer and a fresh scheduler
    (from ``resume_module``) are built, the optimizer state is loaded, then the
    scheduler state, and the remaining ops run on the restored pair.
    """
    import warnings

    trace: list = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            opt = make_optimizer(*opt_spec)
            scheds = as_list(build(module, opt))
            trace.append(observe(opt, scheds))
            for i, op in enumerate(ops):
                if resume_at is not None and i == resume_at:
                    n_warnings = len(caught)
                    opt, scheds = checkpoint_and_restore(
                        opt, scheds, build, resume_module, opt_spec
                    )
                    del caught[n_warnings:]  # building the fresh scheduler may warn; not compared
                    trace.append(("resumed", observe(opt, scheds)))
                out = apply_op(op, opt, scheds)
                if op != "opt":  # the optimizer never has grads here: nothing to observe
                    trace.append(observe(opt, scheds) if out is None else snapshot(out))
        except Exception as exc:  # compare exceptions too (type and message)
            trace.append(("raised", type(exc).__name__, str(exc)))
    trace.append([(w.category.__name__, str(w.message)) for w in caught])
    return trace


def checkpoint_and_restore(opt, scheds, build, module, opt_spec):
    opt_state = copy.deepcopy(opt.state_dict())
    sched_states = [copy.deepcopy(s.state_dict()) for s in scheds]
    new_opt = make_optimizer(*opt_spec)
    new_scheds = as_list(build(module, new_opt))
    new_opt.load_state_dict(opt_state)
    for s, state in zip(new_scheds, sched_states):
        s.load_state_dict(state)
    return new_opt, new_scheds


def raised(trace) -> bool:
    return isinstance(trace[-2], tuple) and trace[-2][0] == "raised"


def assert_twin(build, ops, opt_spec=("sgd",), *, oracle=T, ours=G, may_raise=False):
    """gradstep's trace equals torch's (``oracle``/``ours``: the modules builds draw from).

    Unless ``may_raise``, the run must also complete: a configuration both sides
    reject would otherwise compare equal without testing anything.
    """
    expected = run(oracle, build, ops, opt_spec)
    actual = run(ours, build, ops, opt_spec)
    assert_same(actual, expected)
    assert may_raise or not raised(expected), f"the oracle raised: {expected[-2]}"
    return expected


def assert_resume_parity(build, ops, opt_spec, k, *, oracle=T, ours=G, may_raise=False):
    """Checkpoint after k ops and resume, across modules in both directions.

    The resumed runs must continue exactly like an uninterrupted torch run.
    """
    reference = run(oracle, build, ops, opt_spec)
    assert may_raise or not raised(reference), f"the oracle raised: {reference[-2]}"
    for src, dst in ((oracle, ours), (ours, oracle), (ours, ours)):
        resumed = run(src, build, ops, opt_spec, resume_at=k, resume_module=dst)
        at = 1 + sum(op != "opt" for op in ops[:k])  # where the restore shows in the trace
        if len(resumed) > at + 1 and resumed[at][0] == "resumed":
            marker = resumed.pop(at)
            # Right after restoring, lrs and states equal the source's before the restore.
            assert_same(marker[1]["groups"], reference[at - 1]["groups"], "restored groups")
            assert_same(marker[1]["state"], reference[at - 1]["state"], "restored state")
        assert_same(resumed, reference, f"{src.__name__}->{dst.__name__}")


# --------------------------------------------------------------------------- building blocks


def exp_decay(epoch):
    return 0.95**epoch


def inverse_time(epoch):
    return 1.0 / (1.0 + 0.1 * epoch)


def constant_shrink(epoch):
    return 0.97


def wobble(epoch):
    return 1.05 if epoch % 3 == 0 else 0.93


def half_life(x):
    return 0.5 ** (x / 10.0)


class Warmup:
    """A callable object: its __dict__ goes into state dicts (functions do not)."""

    def __init__(self, n):
        self.n = n

    def __call__(self, epoch):
        return min(1.0, (epoch + 1) / self.n)

    def __repr__(self):
        return f"Warmup({self.n})"


class Damp:
    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return 1.0 / (1.0 + self.k * x)

    def __repr__(self):
        return f"Damp({self.k})"


class Spec:
    """A scheduler to build: name, args and kwargs, with a readable repr for hypothesis."""

    def __init__(self, name, *args, **kwargs):
        self.name, self.args, self.kwargs = name, args, kwargs

    def __call__(self, module, opt):
        return getattr(module, self.name)(opt, *self.args, **self.kwargs)

    def __repr__(self):
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}(opt, {', '.join(parts)})"


gammas = st.floats(0.05, 1.0)
factors = st.floats(0.01, 1.0)
small_ints = st.integers(1, 25)


def per_group(n, strategy):
    """A scalar, or a list with one value per group."""
    return st.one_of(strategy, st.lists(strategy, min_size=n, max_size=n))


def spec_strategy(name: str, n: int) -> st.SearchStrategy[Spec]:
    """Random but valid constructor arguments for scheduler ``name`` with n groups."""
    b = st.builds
    if name == "LambdaLR":
        fns = st.sampled_from([exp_decay, inverse_time, Warmup(5), Warmup(11)])
        return b(Spec, st.just(name), st.one_of(fns, st.lists(fns, min_size=n, max_size=n)))
    if name == "MultiplicativeLR":
        fns = st.sampled_from([constant_shrink, wobble, Warmup(3)])
        return b(Spec, st.just(name), st.one_of(fns, st.lists(fns, min_size=n, max_size=n)))
    if name == "StepLR":
        return b(Spec, st.just(name), step_size=small_ints, gamma=gammas)
    if name == "MultiStepLR":
        milestones = st.lists(st.integers(0, 120), max_size=6)
        return b(Spec, st.just(name), milestones=milestones, gamma=gammas)
    if name == "ConstantLR":
        return b(Spec, st.just(name), factor=factors, total_iters=st.integers(0, 40))
    if name == "LinearLR":
        return b(
            Spec,
            st.just(name),
            start_factor=factors,
            end_factor=st.floats(0.0, 1.0),
            total_iters=st.integers(1, 60),
        )
    if name == "ExponentialLR":
        return b(Spec, st.just(name), gamma=st.floats(0.8, 1.0))
    if name == "PolynomialLR":
        return b(Spec, st.just(name), total_iters=st.integers(1, 80), power=st.floats(0.1, 3.0))
    if name == "CosineAnnealingLR":
        return b(
            Spec,
            st.just(name),
            T_max=st.integers(1, 60),
            eta_min=st.sampled_from([0.0, 1e-4, 0.003]),
        )
    if name == "CosineAnnealingWarmRestarts":
        return b(
            Spec,
            st.just(name),
            T_0=st.integers(1, 20),
            T_mult=st.integers(1, 3),
            eta_min=st.sampled_from([0.0, 1e-4, 0.003]),
        )
    if name == "CyclicLR":
        return b(
            Spec,
            st.just(name),
            base_lr=per_group(n, st.floats(1e-4, 0.01)),
            max_lr=per_group(n, st.floats(0.01, 1.0)),
            step_size_up=st.integers(1, 30),
            step_size_down=st.one_of(st.none(), st.integers(1, 30)),
            mode=st.sampled_from(["triangular", "triangular2", "exp_range"]),
            gamma=st.floats(0.9, 1.0),
            scale_fn=st.sampled_from([None, None, half_life, Damp(0.3)]),
            scale_mode=st.sampled_from(["cycle", "iterations"]),
            cycle_momentum=st.booleans(),
            base_momentum=per_group(n, st.floats(0.5, 0.85)),
            max_momentum=per_group(n, st.floats(0.85, 0.99)),
        )
    if name == "OneCycleLR":
        return b(
            Spec,
            st.just(name),
            max_lr=per_group(n, st.floats(0.01, 1.0)),
            total_steps=st.integers(2, 260),
            pct_start=st.floats(0.05, 0.95),
            anneal_strategy=st.sampled_from(["cos", "linear"]),
            cycle_momentum=st.booleans(),
            base_momentum=per_group(n, st.floats(0.5, 0.85)),
            max_momentum=per_group(n, st.floats(0.85, 0.99)),
            div_factor=st.floats(2.0, 100.0),
            final_div_factor=st.floats(10.0, 1e5),
            three_phase=st.booleans(),
        )
    raise ValueError(name)


CHAINABLE = [
    "MultiplicativeLR",
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "PolynomialLR",
    "CosineAnnealingLR",
]
# Every scheduler that is neither a composite nor ReduceLROnPlateau.
BASIC_SCHEDULERS = ["LambdaLR", *CHAINABLE, "CosineAnnealingWarmRestarts", "CyclicLR", "OneCycleLR"]
NEEDS_MOMENTUM = {"CyclicLR", "OneCycleLR"}


@st.composite
def opt_specs(draw, kinds=("sgd", "adam")):
    n = draw(st.integers(1, 3))
    lrs = tuple(draw(st.lists(st.floats(1e-3, 1.0), min_size=n, max_size=n)))
    tensor_lr = draw(st.sampled_from([None, None, torch.float64, torch.float32]))
    return (draw(st.sampled_from(kinds)), lrs, tensor_lr)


@st.composite
def scenarios(draw, names, epochs=False, min_steps=150, max_steps=260):
    """(spec, ops, opt_spec): one scheduler and a few hundred optimizer+scheduler steps."""
    opt_spec = draw(opt_specs())
    name = draw(st.sampled_from(names))
    spec = draw(spec_strategy(name, len(opt_spec[1])))
    n_steps = draw(st.integers(min_steps, max_steps))
    ops = Ops()
    for _ in range(n_steps):
        ops.append("opt")
        if epochs and draw(st.integers(0, 9)) == 0:
            if name == "CosineAnnealingWarmRestarts":
                ops.append(("epoch", draw(st.floats(0.0, 150.0))))
            else:
                ops.append(("epoch", draw(st.integers(0, 150))))
        else:
            ops.append("step")
    return spec, ops, opt_spec


# --------------------------------------------------------------------------- per-scheduler parity


@pytest.mark.parametrize("name", BASIC_SCHEDULERS)
@FAST
@given(data=st.data())
def test_lr_sequence_matches_torch(name, data):
    """Hundreds of steps of a random configuration: lrs, momenta, states all equal torch's."""
    spec, ops, opt_spec = data.draw(scenarios([name]))
    assert_twin(spec, ops, opt_spec, may_raise=name == "OneCycleLR")  # stepped past its end


@pytest.mark.parametrize("name", BASIC_SCHEDULERS)
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_deprecated_epoch_argument_matches_torch(name, data):
    """step(epoch) jumps (closed form where torch has one), interleaved with step()."""
    spec, ops, opt_spec = data.draw(scenarios([name], epochs=True, min_steps=60, max_steps=120))
    assert_twin(spec, ops, opt_spec, may_raise=name == "OneCycleLR")


@pytest.mark.parametrize("name", BASIC_SCHEDULERS)
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_state_dict_resume_and_cross_load(name, data):
    """Checkpoint mid-run; resume into torch or gradstep; the schedule continues unchanged."""
    spec, ops, opt_spec = data.draw(scenarios([name], min_steps=40, max_steps=120))
    k = 2 * data.draw(st.integers(0, len(ops) // 2 - 1))  # between iterations
    assert_resume_parity(spec, ops, opt_spec, k, may_raise=name == "OneCycleLR")


@pytest.mark.parametrize("name", BASIC_SCHEDULERS)
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_resume_with_last_epoch(name, data):
    """Construction with last_epoch >= 0 (initial_lr already in the groups, lr elsewhere)."""
    opt_spec = data.draw(opt_specs())
    spec = data.draw(spec_strategy(name, len(opt_spec[1])))
    last_epoch = data.draw(st.integers(0, 40))
    if name == "OneCycleLR":
        spec.kwargs["total_steps"] = max(spec.kwargs["total_steps"], last_epoch + 80)

    resumed = Spec(spec.name, *spec.args, last_epoch=last_epoch, **spec.kwargs)

    def build(module, opt):
        for i, group in enumerate(opt.param_groups):
            group["initial_lr"] = 0.5 / (i + 1)
            if name in NEEDS_MOMENTUM:  # what a first (fresh) run would have recorded
                group.update(max_momentum=0.95, base_momentum=0.85, max_lr=0.9, min_lr=1e-4)
        return resumed(module, opt)

    assert_twin(build, steps(60), opt_spec)


@pytest.mark.parametrize("name", BASIC_SCHEDULERS)
def test_get_lr_called_directly(name):
    """get_lr() outside step() warns and returns the same values (and side effects) as torch."""
    spec = typical_spec(name)
    ops = ["opt", "step", "get_lr", "opt", "step", "get_lr", "get_lr", "opt", "step"]
    assert_twin(spec, ops, ("sgd", (0.1, 0.02), torch.float64))
    assert_twin(spec, ops, ("adam", (0.1, 0.3), None))


def typical_spec(name):
    """A fixed, typical configuration of each scheduler."""
    return {
        "LambdaLR": Spec("LambdaLR", [exp_decay, Warmup(4)]),
        "MultiplicativeLR": Spec("MultiplicativeLR", wobble),
        "StepLR": Spec("StepLR", 3, 0.5),
        "MultiStepLR": Spec("MultiStepLR", [2, 5, 5], 0.5),
        "ConstantLR": Spec("ConstantLR", 0.5, 4),
        "LinearLR": Spec("LinearLR", 0.2, 1.0, 6),
        "ExponentialLR": Spec("ExponentialLR", 0.9),
        "PolynomialLR": Spec("PolynomialLR", 8, 2.0),
        "CosineAnnealingLR": Spec("CosineAnnealingLR", 5, 0.001),
        "CosineAnnealingWarmRestarts": Spec("CosineAnnealingWarmRestarts", 3, 2, 0.001),
        "CyclicLR": Spec("CyclicLR", 0.01, [0.1, 0.3], 3, 2, mode="triangular2"),
        "OneCycleLR": Spec("OneCycleLR", 0.5, 20),
    }[name]


# --------------------------------------------------------------------------- targeted sequences


def test_cosine_annealing_past_t_max_and_restart_point():
    """The recursive cosine goes back up after T_max; the 0/0 point is special-cased."""
    for t_max in (1, 2, 3, 10):
        spec = Spec("CosineAnnealingLR", t_max, 0.01)
        assert_twin(spec, steps(6 * t_max + 5), ("sgd", (0.1, 0.3), None))


def test_warm_restarts_fractional_epochs_per_batch():
    """The documented per-batch usage: step(epoch + i / iters), including T_mult > 1."""
    for t_mult in (1, 2, 3):
        ops = []
        for epoch in range(30):
            for i in range(7):
                ops += ["opt", ("epoch", epoch + i / 7)]
        ops += ["opt", "step", "opt", ("epoch", 26), "opt", "step"]  # interleaved, as documented
        assert_twin(Spec("CosineAnnealingWarmRestarts", 3, t_mult, 1e-3), ops)


def test_warm_restarts_negative_epoch_is_an_error():
    trace = assert_twin(Spec("CosineAnnealingWarmRestarts", 3), ["opt", ("epoch", -1)], may_raise=True)
    assert trace[-2] == ("raised", "ValueError", "Expected non-negative epoch, but got -1")


def test_one_cycle_past_the_end_raises():
    """Stepping past total_steps raises ValueError with torch's message."""
    trace = assert_twin(Spec("OneCycleLR", 0.1, total_steps=10), steps(14), may_raise=True)
    assert trace[-2] == (
        "raised",
        "ValueError",
        "Tried to step 11 times. The specified number of total steps is 10",
    )


def test_one_cycle_epochs_times_steps_per_epoch_and_momentum_kinds():
    for kind in ("sgd", "adam"):
        for three_phase in (False, True):
            spec = Spec(
                "OneCycleLR",
                [0.3, 0.1],
                epochs=5,
                steps_per_epoch=9,
                three_phase=three_phase,
                base_momentum=[0.8, 0.7],
            )
            assert_twin(spec, steps(44), (kind, (0.1, 0.2), None))


def test_cyclic_momentum_with_sgd_and_adam_betas():
    for kind in ("sgd", "adam"):
        for mode in ("triangular", "triangular2", "exp_range"):
            spec = Spec("CyclicLR", 0.001, 0.1, 4, 7, mode=mode, gamma=0.97, max_momentum=0.95)
            assert_twin(spec, steps(60), (kind, (0.1,), None))


def test_cyclic_custom_scale_fn_state_dict_keeps_callable_object_state():
    """A callable-object scale_fn's __dict__ is saved and restored; functions are not saved."""
    for fn in (Damp(0.2), half_life):
        spec = Spec("CyclicLR", 0.01, 0.1, 3, scale_fn=fn, scale_mode="iterations")
        assert_resume_parity(spec, steps(30), ("sgd", (0.1,), None), 22)
    states = {}
    for key, module in MODULES.items():
        opt = make_optimizer("sgd", (0.1,))
        states[key] = module.CyclicLR(opt, 0.01, 0.1, scale_fn=Damp(0.25)).state_dict()
    assert states["gradstep"]["_scale_fn_custom"] == {"k": 0.25}
    assert_same(snapshot(states["gradstep"]), snapshot(states["torch"]))


def test_lambda_state_dict_saves_callable_objects_only():
    states = {}
    for key, module in MODULES.items():
        opt = make_optimizer("sgd", (0.1, 0.2))
        states[key] = module.LambdaLR(opt, [exp_decay, Warmup(7)]).state_dict()
    assert states["gradstep"]["lr_lambdas"] == [None, {"n": 7}]
    assert_same(snapshot(states["gradstep"]), snapshot(states["torch"]))
    # Loading puts the saved attributes back into our callable object.
    opt = make_optimizer("sgd", (0.1, 0.2))
    warm = Warmup(2)
    G.LambdaLR(opt, [exp_decay, warm]).load_state_dict(states["torch"])
    assert warm.n == 7


# --------------------------------------------------------------------------- composition


@st.composite
def chain_scenarios(draw):
    opt_spec = draw(opt_specs(kinds=("sgd",)))
    n = len(opt_spec[1])
    names = draw(st.lists(st.sampled_from(CHAINABLE + ["LambdaLR"]), min_size=2, max_size=4))
    specs = [draw(spec_strategy(name, n)) for name in names]
    return specs, steps(draw(st.integers(100, 200))), opt_spec


@FAST
@given(chain_scenarios())
def test_chained_schedulers_on_one_optimizer(scenario):
    """Several schedulers stepped back-to-back compose exactly as torch's do."""
    specs, ops, opt_spec = scenario
    assert_twin(lambda m, o: [s(m, o) for s in specs], ops, opt_spec)


@FAST
@given(chain_scenarios())
def test_chained_scheduler_class(scenario):
    specs, ops, opt_spec = scenario
    with_opt = bool(len(specs) % 2)

    def build(m, o):
        children = [s(m, o) for s in specs]
        return m.ChainedScheduler(children, optimizer=o if with_opt else None)

    assert_twin(build, ops, opt_spec)
    assert_resume_parity(build, ops[:80], opt_spec, 36)


SEQUENTIAL_CHILDREN = CHAINABLE + ["LambdaLR", "CosineAnnealingWarmRestarts", "CyclicLR"]


@st.composite
def sequential_scenarios(draw):
    opt_spec = draw(opt_specs(kinds=("sgd",)))
    n = len(opt_spec[1])
    names = draw(st.lists(st.sampled_from(SEQUENTIAL_CHILDREN), min_size=1, max_size=4))
    specs = [draw(spec_strategy(name, n)) for name in names]
    milestones = sorted(draw(st.lists(st.integers(1, 150), min_size=len(specs) - 1, max_size=len(specs) - 1)))
    nested = draw(st.booleans()) and len(specs) >= 2
    return specs, milestones, nested, steps(draw(st.integers(100, 200))), opt_spec


@FAST
@given(sequential_scenarios())
def test_sequential_lr(scenario):
    """SequentialLR hand-overs (incl. restarts at milestones and a nested first child)."""
    specs, milestones, nested, ops, opt_spec = scenario

    def build(m, o):
        children = [s(m, o) for s in specs]
        if nested:  # the first child is itself a SequentialLR (undo recurses into it)
            inner = m.SequentialLR(o, children[:2], [3])
            children = [inner] + children[2:]
            ms = milestones[1:]
        else:
            ms = milestones
        return m.SequentialLR(o, children, ms)

    assert_twin(build, ops, opt_spec)
    assert_resume_parity(build, ops[:90], opt_spec, 40)


def test_sequential_lr_documented_example():
    """ConstantLR for 20 epochs, then ExponentialLR: the docstring's numbers."""
    spec = lambda m, o: m.SequentialLR(  # noqa: E731
        o, [m.ConstantLR(o, factor=0.1, total_iters=20), m.ExponentialLR(o, gamma=0.9)], [20]
    )
    trace = assert_twin(spec, steps(25), ("sgd", (0.05,), None))
    lrs = [obs["groups"][0]["lr"] for obs in trace[:-1]]
    assert lrs[0] == pytest.approx(0.005) and lrs[19] == pytest.approx(0.005)
    assert lrs[20] == pytest.approx(0.05) and lrs[21] == pytest.approx(0.045)
    assert lrs[22] == pytest.approx(0.0405)


def test_chained_scheduler_documented_example():
    spec = lambda m, o: m.ChainedScheduler(  # noqa: E731
        [m.ConstantLR(o, factor=0.1, total_iters=20), m.ExponentialLR(o, gamma=0.9)], optimizer=o
    )
    trace = assert_twin(spec, steps(22), ("sgd", (0.05,), None))
    lrs = [obs["groups"][0]["lr"] for obs in trace[:-1]]
    assert lrs[0] == pytest.approx(0.005) and lrs[1] == pytest.approx(0.0045)
    assert lrs[20] == pytest.approx(0.05 * 0.9**20) and lrs[21] == pytest.approx(0.05 * 0.9**21)


def test_sequential_lr_restarts_a_warm_restart_scheduler_without_resetting_it():
    """At a milestone the child restarts at epoch 0 as torch does (T_cur is kept)."""

    def build(m, o):
        cawr = m.CosineAnnealingWarmRestarts(o, 5)
        cawr.step()
        cawr.step()
        return m.SequentialLR(o, [m.ConstantLR(o, 0.5, 3), cawr], [2])

    assert_twin(build, steps(12))
