"""ReduceLROnPlateau: scripted metric sequences with known answers, and random ones vs torch."""

from __future__ import annotations

import pytest
import torch
import torch.optim.lr_scheduler as T
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_lr_scheduler import (
    Ops,
    Spec,
    assert_resume_parity,
    assert_same,
    assert_twin,
    make_optimizer,
    opt_specs,
    run,
)

import gradstep.lr_scheduler as G


def metrics(values):
    """Ops feeding each value to step(metric) after an optimizer step."""
    ops = Ops()
    for v in values:
        ops += ["opt", ("metric", v)]
    return ops


def lrs_of(trace, group=0):
    return [obs["groups"][group]["lr"] for obs in trace[1:-1]]


def test_patience_reduces_after_more_than_patience_bad_epochs():
    spec = Spec("ReduceLROnPlateau", factor=0.5, patience=2)
    trace = assert_twin(spec, metrics([10, 9, 9, 9, 9, 9, 9, 9]), ("sgd", (1.0,), None))
    assert lrs_of(trace) == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


def test_zero_patience_as_documented():
    """First epoch is the baseline; every later epoch that is not better reduces."""
    spec = Spec("ReduceLROnPlateau", factor=0.5, patience=0)
    trace = assert_twin(spec, metrics([5, 6, 4, 4, 7]), ("sgd", (1.0,), None))
    assert lrs_of(trace) == [1.0, 0.5, 0.5, 0.25, 0.125]


def test_cooldown_ignores_bad_epochs_after_a_reduction():
    spec = Spec("ReduceLROnPlateau", factor=0.5, patience=1, cooldown=2)
    trace = assert_twin(spec, metrics([3, 3, 3, 3, 3, 3, 3, 3]), ("sgd", (1.0,), None))
    assert lrs_of(trace) == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_max_mode_and_absolute_threshold():
    spec = Spec("ReduceLROnPlateau", mode="max", threshold=0.5, threshold_mode="abs", patience=0)
    trace = assert_twin(spec, metrics([1.0, 1.4, 1.6, 1.7, 2.2]), ("sgd", (1.0,), None))
    assert lrs_of(trace) == pytest.approx([1.0, 0.1, 0.1, 0.01, 0.01])


def test_min_lr_per_group_and_eps():
    """The lr stops at min_lr; a reduction smaller than eps is skipped."""
    spec = Spec("ReduceLROnPlateau", patience=0, min_lr=[0.05, 0.0], eps=1e-3)
    trace = assert_twin(spec, metrics([1, 2, 2, 2, 2]), ("sgd", (1.0, 0.02), None))
    assert lrs_of(trace, 0) == pytest.approx([1.0, 0.1, 0.05, 0.05, 0.05])
    # 0.02 -> 0.002 -> 0.0002, then the next change (0.00018) is below eps: skipped.
    assert lrs_of(trace, 1) == pytest.approx([0.02, 0.002, 0.0002, 0.0002, 0.0002])


def test_metric_may_be_a_tensor_and_epoch_argument_warns():
    for module in (T, G):
        sched = module.ReduceLROnPlateau(make_optimizer("sgd", (1.0,)), patience=1)
        for value in (torch.tensor(3.0), torch.tensor(4.0), 5.0):
            sched.step(value)
        with pytest.warns(UserWarning, match="epoch parameter in `scheduler.step\\(\\)`"):
            sched.step(2.0, 7)
        assert sched.last_epoch == 7
        assert sched.get_last_lr() == pytest.approx([0.1])


@pytest.mark.parametrize("min_lr", [0.001, [0.001]])
def test_param_group_added_after_construction(min_lr):
    """A scalar min_lr extends to new groups; a list cannot, and the error says so."""
    results = []
    for module in (T, G):
        opt = make_optimizer("sgd", (1.0,))
        sched = module.ReduceLROnPlateau(opt, patience=0, min_lr=min_lr)
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.5})
        try:
            sched.step(1.0)
            sched.step(2.0)
            results.append(("ok", [g["lr"] for g in opt.param_groups], sched.min_lrs))
        except Exception as exc:
            results.append((type(exc).__name__, str(exc)))
    assert results[0] == results[1]


def test_tensor_lr_is_updated_in_place():
    opt = make_optimizer("adam", (1.0,), torch.float64)
    lr = opt.param_groups[0]["lr"]
    sched = G.ReduceLROnPlateau(opt, patience=0)
    sched.step(1.0)
    sched.step(2.0)
    assert opt.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(0.1)
    assert sched.get_last_lr()[0] is not lr and sched.get_last_lr()[0].dtype == torch.float64


def test_state_dict_format_and_no_initial_step():
    """No initial_lr, no optimizer.step wrapping, last_epoch 0: torch's exact state keys."""
    states = []
    for module in (T, G):
        opt = make_optimizer("sgd", (1.0, 0.3))
        sched = module.ReduceLROnPlateau(opt, "max", 0.3, 4, 0.01, "abs", 1, [0.1, 0.2], 1e-6)
        assert "initial_lr" not in opt.param_groups[0]
        assert not hasattr(opt.step, "_wrapped_by_lr_sched")
        states.append(list(sched.state_dict().items()))
    assert states[0] == states[1]  # same keys, same order, same values


def test_invalid_mode_in_loaded_state_is_rejected():
    for module in (T, G):
        sched = module.ReduceLROnPlateau(make_optimizer())
        state = sched.state_dict()
        state["mode"] = "sideways"
        with pytest.raises(ValueError, match="mode sideways is unknown!"):
            sched.load_state_dict(state)


plateau_specs = st.builds(
    lambda mode, factor, patience, threshold, threshold_mode, cooldown, min_lr, eps: Spec(
        "ReduceLROnPlateau",
        mode=mode,
        factor=factor,
        patience=patience,
        threshold=threshold,
        threshold_mode=threshold_mode,
        cooldown=cooldown,
        min_lr=min_lr,  # a list is resized to the number of groups by the test
        eps=eps,
    ),
    st.sampled_from(["min", "max"]),
    st.floats(0.05, 0.9),
    st.integers(0, 6),
    st.sampled_from([0.0, 1e-4, 0.01, 0.2]),
    st.sampled_from(["rel", "abs"]),
    st.integers(0, 4),
    st.one_of(st.sampled_from([0, 1e-4, 0.01]), st.lists(st.floats(0, 0.01), min_size=1, max_size=1)),
    st.sampled_from([1e-8, 1e-3]),
)
# Few distinct values, so that ties, plateaus and tiny improvements all occur.
metric_values = st.lists(
    st.sampled_from([1.0, 0.99995, 0.999, 0.9, 0.5, 1.1, 2.0, -1.0, 0.0, 1e-3]),
    min_size=60,
    max_size=150,
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(opt_specs(), plateau_specs, metric_values)
def test_random_metric_sequences_match_torch(opt_spec, spec, values):
    n = len(opt_spec[1])
    if isinstance(spec.kwargs["min_lr"], list):
        spec.kwargs["min_lr"] = (spec.kwargs["min_lr"] * n)[:n]
    assert_twin(spec, metrics(values), opt_spec)


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(opt_specs(), plateau_specs, metric_values, st.integers(0, 59))
def test_state_dict_resume_and_cross_load(opt_spec, spec, values, k):
    n = len(opt_spec[1])
    if isinstance(spec.kwargs["min_lr"], list):
        spec.kwargs["min_lr"] = (spec.kwargs["min_lr"] * n)[:n]
    assert_resume_parity(spec, metrics(values), opt_spec, 2 * k)


def test_harness_sees_a_difference():
    """Guard against a vacuous harness: different schedules must not compare equal."""
    a = run(T, Spec("ReduceLROnPlateau", patience=0), metrics([1, 2, 3]), ("sgd",))
    b = run(G, Spec("ReduceLROnPlateau", patience=1), metrics([1, 2, 3]), ("sgd",))
    with pytest.raises(AssertionError):
        assert_same(a, b)
