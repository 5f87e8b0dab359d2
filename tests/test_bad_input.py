"""Bad input, for every gradstep optimizer with a torch.optim twin (see zoo.py).

NaN/inf gradients propagate exactly as in torch.optim; parameters of several dtypes in one
group work as in torch; integer parameters, non-leaf tensors and sparse gradients to dense-only
algorithms raise torch's error types with torch's message inside; and load_state_dict refuses
corrupted or mismatched checkpoints with a clear error, leaving the optimizer as it was.
"""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch

import gradstep
from parity import TOLERANCES
from zoo import BY_NAME, NAMES, SPECS, assert_same_error, base_params, grads, leaves, outcome, step

CASES = [(s.name, b) for s in SPECS for b in s.backends()]

# Differences from torch.optim that belong to an algorithm's own module, found by these tests.
# strict: the test fails once the difference is fixed, so the entry gets removed.
KNOWN: dict[tuple[str, str], str] = {}


def case_id(name, backend):
    return f"{name}-{'-'.join(f'{k}={v}' for k, v in backend.items()) or 'default'}"


CASE_IDS = [case_id(name, b) for name, b in CASES]


def check_or_known(kind, case, check):
    """Run ``check``; for a known difference, require that it still fails, then xfail."""
    reason = KNOWN.get((kind, case))
    if reason is None:
        check()
        return
    with pytest.raises(AssertionError):
        check()
    pytest.xfail(reason)


def assert_opts_match(gopt, topt, gparams, tparams, dtype, where):
    rtol, atol = TOLERANCES[dtype]
    for i, (a, b) in enumerate(zip(gparams, tparams)):
        torch.testing.assert_close(
            a.detach(), b.detach(), rtol=rtol, atol=atol, equal_nan=True,
            msg=lambda m: f"{where}: param {i}: {m}",
        )
    gsd, tsd = gopt.state_dict(), topt.state_dict()
    assert gsd["state"].keys() == tsd["state"].keys(), where
    for k, tst in tsd["state"].items():
        assert gsd["state"][k].keys() == tst.keys(), (where, k)
        for name, tv in tst.items():
            gv = gsd["state"][k][name]
            if isinstance(tv, torch.Tensor):
                torch.testing.assert_close(
                    gv, tv, rtol=rtol, atol=atol, equal_nan=True, check_dtype=True,
                    msg=lambda m: f"{where}: state {k}.{name}: {m}",
                )


# ------------------------------------------------------------------ NaN and inf gradients


def _poisoned(spec, params, seed):
    gs = grads(spec, params, seed)
    g0 = gs[0].to_dense() if spec.sparse else gs[0]
    g0 = g0.clone()
    flat = g0.view(-1)
    flat[0], flat[1], flat[2] = math.nan, math.inf, -math.inf
    gs[0] = g0.to_sparse() if spec.sparse else g0
    gs[-1] = torch.full_like(gs[-1].to_dense() if spec.sparse else gs[-1], math.nan)
    if spec.sparse:
        gs[-1] = gs[-1].to_sparse()
    return gs


@pytest.mark.parametrize("name, backend", CASES, ids=CASE_IDS)
def test_nan_and_inf_gradients_propagate_like_torch(name, backend):
    """A poisoned step and the finite steps after it give torch's numbers, NaNs and infs."""
    spec = BY_NAME[name]
    base = base_params(spec)
    gparams, tparams = leaves(base), leaves(base)
    gopt, topt = spec.make(gradstep, gparams, **backend), spec.make(torch.optim, tparams, **backend)

    def check():
        for i in range(4):
            gs = _poisoned(spec, base, i) if i == 1 else grads(spec, base, i)
            terr, _ = outcome(lambda: step(spec, topt, tparams, gs))
            gerr, _ = outcome(lambda: step(spec, gopt, gparams, gs))
            assert_same_error(terr, gerr, f"step {i}")
            assert_opts_match(gopt, topt, gparams, tparams, torch.float32, f"{name} {backend} step {i}")

    check_or_known("nan", case_id(name, backend), check)


# ------------------------------------------------------------------ parameter dtypes


@pytest.mark.parametrize("name, backend", CASES, ids=CASE_IDS)
def test_mixed_dtypes_in_one_group_match_torch(name, backend):
    spec = BY_NAME[name]
    dtypes = [torch.float32, torch.float64, torch.bfloat16]
    base = [t.to(d) for t, d in zip(base_params(spec, torch.float64), dtypes * 2)]
    gparams, tparams = leaves(base), leaves(base)
    terr, topt = outcome(lambda: spec.make(torch.optim, tparams, **backend))
    gerr, gopt = outcome(lambda: spec.make(gradstep, gparams, **backend))
    assert_same_error(terr, gerr, "construction")
    if terr is not None:
        return
    for i in range(3):
        gs = grads(spec, base, i)
        terr, _ = outcome(lambda: step(spec, topt, tparams, gs))
        gerr, _ = outcome(lambda: step(spec, gopt, gparams, gs))
        assert_same_error(terr, gerr, f"step {i}")
        for a, b in zip(gparams, tparams):
            rtol, atol = TOLERANCES[a.dtype]
            torch.testing.assert_close(a.detach(), b.detach(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name, backend", CASES, ids=CASE_IDS)
def test_integer_parameter_raises_and_updates_nothing(name, backend):
    """torch fails (a RuntimeError, or its subclass NotImplementedError, from whichever op meets
    the integers first); gradstep's elementwise algorithms raise a RuntimeError that holds
    torch's in-place cast message and names the parameter, before anything is updated."""
    spec = BY_NAME[name]
    if spec.sparse:
        pytest.skip("SparseAdam takes only sparse gradients")
    errors = {}
    for lib in (torch.optim, gradstep):
        floats = leaves(base_params(spec))[:1]
        ints = torch.arange(floats[0].numel()).reshape(floats[0].shape)
        before = floats[0].detach().clone()
        err, opt = outcome(lambda: spec.make(lib, floats + [ints], **backend))
        if err is None:
            gs = [torch.ones_like(floats[0]), torch.ones_like(ints)]
            err, _ = outcome(lambda: step(spec, opt, floats + [ints], gs))
        errors[lib.__name__] = err
        if lib is gradstep and spec.elementwise:
            assert torch.equal(floats[0].detach(), before), "a parameter was updated"
    terr, gerr = errors["torch.optim"], errors["gradstep"]
    if not spec.elementwise:
        check_or_known("int", case_id(name, backend), lambda: assert_same_error(terr, gerr))
        return
    assert isinstance(terr, RuntimeError) and isinstance(gerr, RuntimeError), (terr, gerr)
    assert re.search(r"parameter 1 of param group 0 has dtype torch\.int64", str(gerr)), gerr
    if "fused=True" in str(terr) or "output type Long" in str(terr):
        assert str(terr) in str(gerr)


@pytest.mark.parametrize("name", NAMES)
def test_integer_parameter_without_grad_is_skipped(name):
    """Elementwise algorithms never look at a parameter without a gradient; the others do
    what torch does (LBFGS updates every parameter, Muon takes matrices only)."""
    spec = BY_NAME[name]
    results = []
    for lib in (torch.optim, gradstep):
        p = leaves(base_params(spec))[:1]
        err, opt = outcome(lambda: spec.make(lib, p + [torch.arange(4)]))
        if err is None:
            err, _ = outcome(lambda: step(spec, opt, p, grads(spec, p, 0)))
        results.append(err)
    assert_same_error(*results)
    if spec.elementwise:
        assert results == [None, None]


@pytest.mark.parametrize("name", NAMES)
def test_non_leaf_parameter_rejected(name):
    spec = BY_NAME[name]
    for lib in (torch.optim, gradstep):
        p = leaves(base_params(spec))[0] * 2
        with pytest.raises(ValueError, match="can't optimize a non-leaf Tensor"):
            spec.make(lib, [p])
    if "differentiable" in spec.options:  # a differentiable optimizer may take non-leaves
        for lib in (torch.optim, gradstep):
            spec.make(lib, [leaves(base_params(spec))[0] * 2], differentiable=True)


# ------------------------------------------------------------------ sparse gradients


@pytest.mark.parametrize("name, backend", CASES, ids=CASE_IDS)
def test_sparse_gradients_like_torch(name, backend):
    """Dense-only algorithms raise torch's error; the others step as torch does."""
    spec = BY_NAME[name]
    base = base_params(spec)
    gparams, tparams = leaves(base), leaves(base)
    gopt, topt = spec.make(gradstep, gparams, **backend), spec.make(torch.optim, tparams, **backend)
    gs = [g.to_sparse() for g in grads(spec, base, 0)] if not spec.sparse else grads(spec, base, 0)
    terr, _ = outcome(lambda: step(spec, topt, tparams, gs))
    gerr, _ = outcome(lambda: step(spec, gopt, gparams, gs))
    assert_same_error(terr, gerr)
    if terr is None:
        assert_opts_match(gopt, topt, gparams, tparams, torch.float32, f"{name} sparse")


@pytest.mark.parametrize("name", [s.name for s in SPECS if s.elementwise])
def test_sparse_gradient_in_a_later_group_updates_nothing(name):
    """gradstep checks every group before updating any (torch may update earlier groups)."""
    spec = BY_NAME[name]
    ps = leaves(base_params(spec))
    opt = spec.make(gradstep, [{"params": ps[:1]}, {"params": ps[1:]}])
    before = [p.detach().clone() for p in ps]
    gs = grads(spec, ps, 0)
    gs[-1] = gs[-1].to_sparse()
    err, _ = outcome(lambda: step(spec, opt, ps, gs))
    if err is None:
        pytest.skip(f"{name} accepts sparse gradients")
    assert isinstance(err, RuntimeError) and "sparse" in str(err)
    assert all(torch.equal(a.detach(), b) for a, b in zip(ps, before))
    assert not opt.state


# ------------------------------------------------------------------ corrupted state dicts


def _first_shaped_key(sd):
    st = sd["state"][0]
    return next(k for k, v in st.items() if isinstance(v, torch.Tensor) and v.dim() > 0)


def _set(sd, key, value, pid=0):
    sd["state"][pid][key] = value
    return sd


def _group(sd, **changes):
    return {**sd, "param_groups": [{**sd["param_groups"][0], **changes}]}


def _ids(sd):
    return sd["param_groups"][0]["params"]


def _complex_like(sd):
    key = _first_shaped_key(sd)
    return _set(sd, key, torch.zeros_like(sd["state"][0][key], dtype=torch.complex64))


# name: (corrupt the state dict, error type, message regex, what the optimizer must keep)
CORRUPTIONS = {
    "not a dict": (lambda sd: list(sd.items()), TypeError, "must be a dict", None),
    "None": (lambda sd: None, TypeError, "must be a dict", None),
    "missing 'state'": (lambda sd: {"param_groups": sd["param_groups"]}, KeyError, "'state'", None),
    "missing 'param_groups'": (lambda sd: {"state": sd["state"]}, KeyError, "'param_groups'", None),
    "state is a list": (lambda sd: {**sd, "state": [1]}, TypeError, "'state' must be a dict", None),
    "param_groups is a dict": (lambda sd: {**sd, "param_groups": sd["param_groups"][0]}, TypeError, "list of dicts", None),
    "one group too many": (lambda sd: {**sd, "param_groups": sd["param_groups"] * 2}, ValueError, "different number of parameter groups", None),
    "group is not a dict": (lambda sd: {**sd, "param_groups": [1]}, TypeError, "group 0 must be a dict", None),
    "group without params": (lambda sd: {**sd, "param_groups": [{k: v for k, v in sd["param_groups"][0].items() if k != "params"}]}, KeyError, "without 'params'", None),
    "params is not a list": (lambda sd: _group(sd, params=3), TypeError, "list of parameter ids", None),
    "truncated group": (lambda sd: _group(sd, params=_ids(sd)[:-1]), ValueError, "doesn't match the size", None),
    "id listed twice": (lambda sd: _group(sd, params=[0] * len(_ids(sd))), ValueError, "parameter id 0 for two different parameters", None),
    "ids from another optimizer": (lambda sd: _group(sd, params=[i + 7 for i in _ids(sd)]), ValueError, r"state for parameter id\(s\) \[0", None),
    "state entry not a dict": (lambda sd: {**sd, "state": {**sd["state"], 0: torch.zeros(3)}}, TypeError, "state of parameter 0 must be a dict", None),
    "state tensor missing": (lambda sd: {**sd, "state": {**sd["state"], 0: {k: v for k, v in sd["state"][0].items() if k != _first_shaped_key(sd)}}}, KeyError, "state of parameter 0 lacks", "shaped"),
    "state tensor wrong shape": (lambda sd: _set(sd, _first_shaped_key(sd), torch.zeros(7)), ValueError, "parameter 0 has shape \\(7,\\)", "shaped"),
    "state tensor is a string": (lambda sd: _set(sd, _first_shaped_key(sd), "oops"), TypeError, "must be a Tensor, but got str", "shaped"),
    "state tensor complex": (_complex_like, TypeError, "dtype torch.complex64", "shaped"),
    "step is a string": (lambda sd: _set(sd, "step", "ten"), ValueError, "'step' of parameter 0", "step"),
    "step is a vector": (lambda sd: _set(sd, "step", torch.ones(3)), ValueError, "'step' of parameter 0 must hold one real number", "step"),
}


def _applies(spec, sd, needs) -> bool:
    if needs is None:
        return True
    if not spec.elementwise or 0 not in sd["state"]:
        return False  # only elementwise algorithms declare their per-parameter state
    st = sd["state"][0]
    if needs == "step":
        return "step" in st
    # (removing an entry's only tensor leaves an empty state, which is legitimate)
    return len(st) > 1 and any(isinstance(v, torch.Tensor) and v.dim() > 0 for v in st.values())


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    return a == b


def _trained(spec, lib=gradstep):
    ps = leaves(base_params(spec))
    opt = spec.make(lib, ps)
    for i in range(2):
        step(spec, opt, ps, grads(spec, ps, i))
    return ps, opt


def _snapshot(opt):
    return copy.deepcopy(opt.state_dict()), {id(k): {n: id(v) for n, v in st.items()} for k, st in opt.state.items()}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("name", NAMES)
def test_corrupted_state_dict_raises_and_changes_nothing(name, corruption):
    spec = BY_NAME[name]
    mutate, error, match, needs = CORRUPTIONS[corruption]
    ps, opt = _trained(spec)
    sd = copy.deepcopy(opt.state_dict())
    if not _applies(spec, sd, needs):
        pytest.skip(f"{name} keeps no such state")
    before, identities = _snapshot(opt)
    with pytest.raises(error, match=match):
        opt.load_state_dict(mutate(sd))
    after, identities_after = _snapshot(opt)
    assert identities == identities_after, "state tensors were replaced"
    assert _equal(after, before)
    # ...and it trains on exactly like a twin that never saw the bad checkpoint.
    twin_ps, twin = _trained(spec)
    for i in range(2, 4):
        step(spec, opt, ps, grads(spec, ps, i))
        step(spec, twin, twin_ps, grads(spec, ps, i))
    for a, b in zip(ps, twin_ps):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_state_tensors_of_another_dtype_are_cast_like_torch(name):
    """Not an error: state saved in another real dtype is cast to the parameter's, as in torch."""
    spec = BY_NAME[name]
    results = []
    for lib in (torch.optim, gradstep):
        _, src = _trained(spec, lib)
        sd = copy.deepcopy(src.state_dict())
        for st in sd["state"].values():
            for key, value in st.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.is_floating_point():
                    st[key] = value.to(torch.float64)
        ps = leaves(base_params(spec))
        dst = spec.make(lib, ps)
        dst.load_state_dict(sd)
        results.append(dst.state_dict()["state"])
    tstate, gstate = results
    for k, st in tstate.items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                assert gstate[k][key].dtype == value.dtype, (k, key)


def test_failed_load_with_a_pre_hook_result_is_checked_too():
    ps, opt = _trained(BY_NAME["Adam"])
    opt.register_load_state_dict_pre_hook(lambda o, sd: {"state": sd["state"]})
    with pytest.raises(KeyError, match="param_groups"):
        opt.load_state_dict(copy.deepcopy(opt.state_dict()))
