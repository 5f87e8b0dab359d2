"""Scheduler behaviour beyond the lr numbers: warnings, errors, signatures, tensor lrs,
the optimizer.step wrapper, serialization.  torch.optim.lr_scheduler is the oracle."""

from __future__ import annotations

import copy
import gc
import inspect
import io
import pickle
import warnings

import pytest
import torch
import torch.optim.lr_scheduler as T
from test_lr_scheduler import (
    BASIC_SCHEDULERS,
    Spec,
    Warmup,
    assert_same,
    exp_decay,
    make_optimizer,
    typical_spec,
    snapshot,
)

import gradstep.lr_scheduler as G

MODULES = (T, G)
NAMES = [n for n in T.__all__ if n != "LRScheduler"]


def both(fn):
    """Run fn(module) for torch and gradstep; return both outcomes (value or exception)."""
    out = []
    for module in MODULES:
        try:
            out.append(("ok", fn(module)))
        except Exception as exc:
            out.append((type(exc).__name__, str(exc)))
    return out


def recorded(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [(w.category, str(w.message), w.filename) for w in caught]


# --------------------------------------------------------------------------- public surface


def test_public_names_and_constants():
    assert G.__all__ == T.__all__
    assert G.EPOCH_DEPRECATION_WARNING == T.EPOCH_DEPRECATION_WARNING
    assert issubclass(G._LRScheduler, G.LRScheduler)


def _signature(fn):
    return [(p.name, p.default, p.kind) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", T.__all__ + ["_LRScheduler"])
def test_signatures_match_torch(name):
    """Constructor and every public method: same parameter names, order, defaults and kinds."""
    ours, theirs = getattr(G, name), getattr(T, name)
    assert _signature(ours.__init__) == _signature(theirs.__init__)
    for attr in dir(theirs):
        value = inspect.getattr_static(theirs, attr)
        if attr.startswith("_") or not callable(value):
            continue
        assert _signature(getattr(ours, attr)) == _signature(getattr(theirs, attr)), attr


# --------------------------------------------------------------------------- errors


def sgd(n=1):
    return make_optimizer("sgd", (0.1, 0.05, 0.02)[:n])


def adagrad():
    return make_optimizer("adagrad", (0.1,))


def resumed_without_initial_lr(m):
    return m.StepLR(sgd(), 2, last_epoch=3)


def sequential(m, kind):
    o = sgd()
    a, b = m.ConstantLR(o), m.ExponentialLR(o, 0.9)
    other = m.StepLR(sgd(), 2)
    return {
        "empty": lambda: m.SequentialLR(o, [], []),
        "no optimizer attr": lambda: m.SequentialLR(o, [a, 3], [1]),
        "plateau": lambda: m.SequentialLR(o, [a, m.ReduceLROnPlateau(o)], [1]),
        "other optimizer": lambda: m.SequentialLR(o, [a, other], [1]),
        "milestones": lambda: m.SequentialLR(o, [a, b], [1, 2]),
        "chain empty": lambda: m.ChainedScheduler([]),
        "chain no optimizer attr": lambda: m.ChainedScheduler([a, 3]),
        "chain plateau": lambda: m.ChainedScheduler([a, m.ReduceLROnPlateau(o)]),
        "chain other optimizer": lambda: m.ChainedScheduler([a, other]),
        "chain given other optimizer": lambda: m.ChainedScheduler([a, b], optimizer=sgd()),
    }[kind]()


BAD_CONSTRUCTIONS = {
    "not an optimizer": lambda m: m.StepLR(object(), 2),
    "plateau not an optimizer": lambda m: m.ReduceLROnPlateau(3),
    "lambda not an optimizer": lambda m: m.LambdaLR(object(), exp_decay),
    "cyclic not an optimizer": lambda m: m.CyclicLR(object(), 0.1, 0.2),
    "onecycle not an optimizer": lambda m: m.OneCycleLR(None, 0.1, 10),
    "resume without initial_lr": resumed_without_initial_lr,
    "lambda count": lambda m: m.LambdaLR(sgd(2), [exp_decay]),
    "lambda not callable": lambda m: m.LambdaLR(sgd(2), 3),
    "multiplicative count": lambda m: m.MultiplicativeLR(sgd(2), (exp_decay,) * 3),
    "multiplicative not callable": lambda m: m.MultiplicativeLR(sgd(2), 0.95),
    "multiplicative list not callable": lambda m: m.MultiplicativeLR(sgd(2), [exp_decay, 0.95]),
    "multiplicative tuple not callable": lambda m: m.MultiplicativeLR(sgd(), (0.95,)),
    "constant factor > 1": lambda m: m.ConstantLR(sgd(), 1.5),
    "constant factor < 0": lambda m: m.ConstantLR(sgd(), -0.5),
    "linear start 0": lambda m: m.LinearLR(sgd(), 0),
    "linear start > 1": lambda m: m.LinearLR(sgd(), 1.5),
    "linear end > 1": lambda m: m.LinearLR(sgd(), 0.5, 1.5),
    "linear end < 0": lambda m: m.LinearLR(sgd(), 0.5, -1),
    "cawr T_0 0": lambda m: m.CosineAnnealingWarmRestarts(sgd(), 0),
    "cawr T_0 float": lambda m: m.CosineAnnealingWarmRestarts(sgd(), 2.0),
    "cawr T_mult 0": lambda m: m.CosineAnnealingWarmRestarts(sgd(), 2, 0),
    "cawr T_mult float": lambda m: m.CosineAnnealingWarmRestarts(sgd(), 2, 1.5),
    "cawr eta_min str": lambda m: m.CosineAnnealingWarmRestarts(sgd(), 2, 1, "0"),
    "cawr eta_min None": lambda m: m.CosineAnnealingWarmRestarts(sgd(), 2, 1, None),
    "cyclic mode": lambda m: m.CyclicLR(sgd(), 0.1, 0.2, mode="foo"),
    "cyclic no momentum": lambda m: m.CyclicLR(adagrad(), 0.1, 0.2),
    "cyclic base_lr count": lambda m: m.CyclicLR(sgd(2), [0.1], 0.2),
    "cyclic max_lr count": lambda m: m.CyclicLR(sgd(2), 0.1, (0.2, 0.3, 0.4)),
    "cyclic momentum counts": lambda m: m.CyclicLR(sgd(2), 0.1, 0.2, base_momentum=[0.8], max_momentum=[0.9]),
    "cyclic zero size": lambda m: m.CyclicLR(sgd(), 0.1, 0.2, 0),
    "cyclic resume": lambda m: m.CyclicLR(sgd(), 0.1, 0.2, last_epoch=3),
    "onecycle no steps": lambda m: m.OneCycleLR(sgd(), 0.1),
    "onecycle total 0": lambda m: m.OneCycleLR(sgd(), 0.1, total_steps=0),
    "onecycle total float": lambda m: m.OneCycleLR(sgd(), 0.1, total_steps=2.5),
    "onecycle epochs 0": lambda m: m.OneCycleLR(sgd(), 0.1, epochs=0, steps_per_epoch=3),
    "onecycle steps_per_epoch 0": lambda m: m.OneCycleLR(sgd(), 0.1, epochs=3, steps_per_epoch=0),
    "onecycle epochs only": lambda m: m.OneCycleLR(sgd(), 0.1, epochs=3),
    "onecycle pct > 1": lambda m: m.OneCycleLR(sgd(), 0.1, 10, pct_start=1.5),
    "onecycle pct < 0": lambda m: m.OneCycleLR(sgd(), 0.1, 10, pct_start=-0.1),
    "onecycle pct int": lambda m: m.OneCycleLR(sgd(), 0.1, 10, pct_start=0),
    "onecycle anneal": lambda m: m.OneCycleLR(sgd(), 0.1, 10, anneal_strategy="foo"),
    "onecycle no momentum": lambda m: m.OneCycleLR(adagrad(), 0.1, 10),
    "onecycle max_lr count": lambda m: m.OneCycleLR(sgd(2), [0.1], 10),
    "onecycle momentum counts": lambda m: m.OneCycleLR(sgd(2), 0.1, 10, base_momentum=[0.8], max_momentum=[0.9]),
    "onecycle resume": lambda m: m.OneCycleLR(sgd(), 0.1, 10, last_epoch=3),
    "plateau factor": lambda m: m.ReduceLROnPlateau(sgd(), factor=1.0),
    "plateau mode": lambda m: m.ReduceLROnPlateau(sgd(), mode="foo"),
    "plateau threshold mode": lambda m: m.ReduceLROnPlateau(sgd(), threshold_mode="foo"),
    "plateau min_lr count": lambda m: m.ReduceLROnPlateau(sgd(2), min_lr=[0.1]),
    **{
        f"sequential {kind}": (lambda kind: lambda m: sequential(m, kind))(kind)
        for kind in [
            "empty",
            "no optimizer attr",
            "plateau",
            "other optimizer",
            "milestones",
            "chain empty",
            "chain no optimizer attr",
            "chain plateau",
            "chain other optimizer",
            "chain given other optimizer",
        ]
    },
}


@pytest.mark.parametrize("case", sorted(BAD_CONSTRUCTIONS))
def test_errors_match_torch(case):
    """Same exception type and message as torch for every invalid construction."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs, ours = both(BAD_CONSTRUCTIONS[case])
    assert theirs[0] != "ok", f"torch accepts {case}"
    assert ours == theirs


def test_base_get_lr_is_abstract():
    for module in MODULES:
        opt = sgd()
        chained = module.ChainedScheduler([module.StepLR(opt, 2)])
        with pytest.raises(NotImplementedError):
            chained.get_lr()


# --------------------------------------------------------------------------- warnings


def _scenario_outcomes(scenario):
    out = []
    for module in MODULES:
        opt = sgd(2)
        caught = recorded(lambda: scenario(module, opt))
        out.append([(cat, msg, filename == __file__) for cat, msg, filename in caught])
    return out


def _step_before_optimizer(m, opt):
    sched = m.StepLR(opt, 2)
    sched.step()
    sched.step()  # only the first call is checked


def _overridden_step(m, opt):
    sched = m.ExponentialLR(opt, 0.9)
    opt.step = lambda closure=None: None
    sched.step()


def _documented_loop(m, opt):
    s1, s2 = m.ExponentialLR(opt, 0.9), m.MultiStepLR(opt, [3, 8])
    for _ in range(10):
        opt.step()
        s1.step()
        s2.step()


def _two_schedulers_no_optimizer_step(m, opt):
    scheds = [m.ExponentialLR(opt, 0.9), m.CosineAnnealingLR(opt, 5)]
    for s in scheds:
        s.step()


def _epoch_argument(m, opt):
    sched = m.StepLR(opt, 2)
    opt.step()
    sched.step(5)


def _warm_restarts_never_checks_order(m, opt):
    sched = m.CosineAnnealingWarmRestarts(opt, 3)
    sched.step()
    sched.step(1.5)


def _chained_before_optimizer(m, opt):
    m.ChainedScheduler([m.ConstantLR(opt), m.ExponentialLR(opt, 0.9)]).step()


def _sequential_nested_init(m, opt):
    inner = m.SequentialLR(opt, [m.ConstantLR(opt), m.ExponentialLR(opt, 0.9)], [2])
    m.SequentialLR(opt, [inner, m.StepLR(opt, 2)], [4])


def _plateau_epoch(m, opt):
    sched = m.ReduceLROnPlateau(opt)
    sched.step(1.0)
    sched.step(1.0, 4)


WARNING_SCENARIOS = {
    "step before optimizer.step": _step_before_optimizer,
    "optimizer.step overridden": _overridden_step,
    "documented loop: silent": _documented_loop,
    "two schedulers": _two_schedulers_no_optimizer_step,
    "epoch argument": _epoch_argument,
    "warm restarts": _warm_restarts_never_checks_order,
    "chained": _chained_before_optimizer,
    "nested sequential init": _sequential_nested_init,
    "plateau epoch": _plateau_epoch,
}


@pytest.mark.parametrize("scenario", sorted(WARNING_SCENARIOS))
def test_warnings_match_torch(scenario):
    """Same warnings (category, message) in the same order, attributed to the same caller."""
    theirs, ours = _scenario_outcomes(WARNING_SCENARIOS[scenario])
    assert [w[:2] for w in ours] == [w[:2] for w in theirs]
    if scenario in ("step before optimizer.step", "optimizer.step overridden", "epoch argument"):
        assert theirs and all(w[2] for w in theirs + ours)  # points at the user's call


@pytest.mark.parametrize("name", BASIC_SCHEDULERS)  # the composites and plateau have no get_lr
def test_get_lr_outside_step_warns(name):
    for module in MODULES:
        opt = make_optimizer("sgd", (0.1, 0.02))
        sched = typical_spec(name)(module, opt)
        with pytest.warns(UserWarning, match="please use `get_last_lr\\(\\)`"):
            sched.get_lr()


# --------------------------------------------------------------------------- optimizer.step wrapper


def test_optimizer_step_wrapper_looks_like_torchs():
    wrapped = {}
    for module in MODULES:
        opt = sgd()
        original = opt.step
        module.StepLR(opt, 2)
        step = vars(opt)["step"]  # an instance attribute shadowing the class's method
        assert step.__wrapped__ is original.__func__
        assert step._wrapped_by_lr_sched is True
        wrapped[module.__name__] = (sorted(vars(step)), step.__name__, step.__qualname__, step.__doc__)
        assert not hasattr(opt, "_opt_called")
        opt.step()
        assert opt._opt_called is True
    assert wrapped["gradstep.lr_scheduler"] == wrapped["torch.optim.lr_scheduler"]


def test_optimizer_step_wrapped_once_and_marked_even_when_it_raises():
    opt = sgd()
    G.StepLR(opt, 2)
    first = opt.step
    G.ExponentialLR(opt, 0.9)
    T.ExponentialLR(opt, 0.9)  # torch's scheduler sees gradstep's wrapper and keeps it
    assert opt.step is first

    def closure():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        opt.step(closure)
    assert opt._opt_called is True


def test_wrapper_holds_the_optimizer_weakly():
    gc.disable()
    try:
        opt = sgd()
        sched = G.StepLR(opt, 2)
        ref = __import__("weakref").ref(opt)
        del sched, opt
        assert ref() is None  # freed by reference counting: no cycle through the wrapper
    finally:
        gc.enable()


def test_instance_level_step_function_is_rejected_like_torch():
    def setup(m):
        opt = sgd()
        opt.step = lambda closure=None: None
        return m.StepLR(opt, 2)

    theirs, ours = both(setup)
    assert ours == theirs and theirs[0] == "AttributeError"


# --------------------------------------------------------------------------- tensor lr


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tensor_lr_updated_in_place_and_never_aliased(name, dtype):
    opt = make_optimizer("sgd", (0.1, 0.02), dtype)
    lr_tensors = [g["lr"] for g in opt.param_groups]
    if name == "SequentialLR":
        sched = G.SequentialLR(opt, [G.ConstantLR(opt, 0.5, 2), G.ExponentialLR(opt, 0.9)], [3])
    elif name == "ChainedScheduler":
        sched = G.ChainedScheduler([G.ConstantLR(opt, 0.5, 2), G.ExponentialLR(opt, 0.9)])
    elif name == "ReduceLROnPlateau":
        sched = G.ReduceLROnPlateau(opt, patience=0)
    else:
        sched = typical_spec(name)(G, opt)
    for i in range(8):
        opt.step()
        sched.step(float(i)) if name == "ReduceLROnPlateau" else sched.step()
        for group, lr in zip(opt.param_groups, lr_tensors):
            assert group["lr"] is lr and lr.dtype == dtype
            if "initial_lr" in group and name not in ("OneCycleLR",):
                assert group["initial_lr"] is not lr
        for last, lr in zip(sched.get_last_lr(), lr_tensors):
            assert isinstance(last, torch.Tensor) and last is not lr and last.dtype == dtype
            assert torch.equal(last, lr)
    for base in getattr(sched, "base_lrs", []):
        assert all(base is not lr for lr in lr_tensors)


# --------------------------------------------------------------------------- serialization


def _stepped(module, name, n=7):
    opt = make_optimizer("sgd", (0.1, 0.02))
    if name == "SequentialLR":
        sched = module.SequentialLR(opt, [module.ConstantLR(opt), module.ExponentialLR(opt, 0.9)], [3])
    elif name == "ChainedScheduler":
        sched = module.ChainedScheduler([module.ConstantLR(opt), module.ExponentialLR(opt, 0.9)])
    elif name == "ReduceLROnPlateau":
        sched = module.ReduceLROnPlateau(opt, patience=1)
    else:
        sched = typical_spec(name)(module, opt)
    for i in range(n):
        opt.step()
        sched.step(1.0) if name == "ReduceLROnPlateau" else sched.step()
    return opt, sched


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_loads_with_weights_only(name):
    """Our state dicts hold what torch's hold, so torch.load(weights_only=True) reads them."""
    _, sched = _stepped(G, name)
    _, reference = _stepped(T, name)
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert_same(snapshot(loaded), snapshot(reference.state_dict()))
    assert list(loaded) == list(reference.state_dict())  # same key order too


@pytest.mark.parametrize("name", NAMES)
def test_pickle_and_deepcopy(name):
    opt, sched = _stepped(G, name)
    if name == "LambdaLR":  # lambdas/functions of this test module pickle by reference
        assert isinstance(sched.lr_lambdas[1], Warmup)
    for clone in (pickle.loads(pickle.dumps(sched)), copy.deepcopy(sched)):
        assert type(clone) is type(sched)
        assert_same(snapshot(clone.state_dict()), snapshot(sched.state_dict()))


def test_unpickled_class_path_is_public():
    assert G.StepLR.__module__ == "gradstep.lr_scheduler"
    assert G._LRScheduler.__module__ == "gradstep.lr_scheduler"
    assert b"gradstep.lr_scheduler" in pickle.dumps(G.StepLR(sgd(), 2))


def test_spec_helper_round_trip():
    """Sanity of the shared Spec helper used across these tests."""
    assert repr(Spec("StepLR", 3, gamma=0.5)) == "StepLR(opt, 3, gamma=0.5)"
