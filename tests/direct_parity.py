"""Parity helpers for the algorithms written directly with torch ops (LBFGS, SparseAdam,
Adafactor, Muon).

They do the same torch ops in the same order as torch.optim, so the two round alike in every
dtype and are compared in the storage dtype (bf16 included) with parity.py's tolerances. The
state may hold lists (LBFGS's history), None, ints and Python floats; these are compared by
type as well as value, because a checkpoint must round-trip into either library unchanged.
"""

from __future__ import annotations

import copy

import torch

from parity import _roundtrip, assert_close_tol, clone_params, grads_for, make_params


def assert_value_close(va, vb, dtype, where):
    """Tensors within the dtype's tolerance; everything else of the same type and equal."""
    if isinstance(vb, torch.Tensor):
        assert isinstance(va, torch.Tensor), (where, type(va))
        assert va.dtype == vb.dtype and va.shape == vb.shape, (where, va, vb)
        assert va.device == vb.device, where
        if va.is_floating_point() or va.is_complex():
            assert_close_tol(va, vb, dtype if va.dtype == dtype else va.dtype, where)
        else:
            assert torch.equal(va, vb), where
    elif isinstance(vb, (list, tuple)):
        assert type(va) is type(vb) and len(va) == len(vb), (where, va, vb)
        for i, (x, y) in enumerate(zip(va, vb)):
            assert_value_close(x, y, dtype, f"{where}[{i}]")
    else:
        assert type(va) is type(vb) and va == vb, (where, va, vb)


def assert_states_close(oa, ob, dtype, where=""):
    """The two optimizers' state_dicts agree: groups exactly, state within tolerance."""
    sa, sb = oa.state_dict(), ob.state_dict()
    assert len(sa["param_groups"]) == len(sb["param_groups"]), where
    for ga, gb in zip(sa["param_groups"], sb["param_groups"]):
        assert list(ga) == list(gb), (where, list(ga), list(gb))  # same keys, same order
        for key in gb:
            assert_value_close(ga[key], gb[key], dtype, f"{where} group.{key}")
    assert sa["state"].keys() == sb["state"].keys(), where
    for k, stb in sb["state"].items():
        sta = sa["state"][k]
        assert sta.keys() == stb.keys(), (where, k, sta.keys(), stb.keys())
        for name in stb:
            assert_value_close(sta[name], stb[name], dtype, f"{where} state {k}.{name}")


def sparse_grads(params, step, seed=1, skip_every=0):
    """Row-sparse COO gradients with repeated (uncoalesced) rows, as nn.Embedding gives."""
    gen = torch.Generator().manual_seed(seed * 7919 + step)
    out = []
    for i, p in enumerate(params):
        if skip_every and (step + i) % skip_every == 0:
            out.append(None)
            continue
        rows = torch.randint(0, p.shape[0], (3,), generator=gen)
        values = torch.randn((3, *p.shape[1:]), generator=gen, dtype=torch.float64)
        out.append(torch.sparse_coo_tensor(rows[None], values.to(p.dtype), p.shape))
    return out


def run_parity(
    gs_cls,
    torch_cls,
    kwargs,
    *,
    dtype=torch.float32,
    steps=30,
    groups=None,
    shapes=((5, 3), (4,), (2, 3, 2)),
    skip_every=0,
    cross_load_at=None,
    make_grads=grads_for,
):
    """Step both optimizers on the same gradients; compare params each step, state at the end.

    Like parity.assert_parity (groups, skipped grads, mid-run cross-loading through
    torch.save/torch.load(weights_only=True) in both directions), compared in storage dtype;
    ``make_grads(params, step, skip_every=...)`` makes the gradients (dense or sparse).
    """
    base = make_params(dtype, shapes)
    pa, pb = clone_params(base), clone_params(base)

    def build(cls, ps):
        if groups:
            spec = [dict(g, params=[]) for g in groups]
            for i, p in enumerate(ps):
                spec[i % len(groups)]["params"].append(p)
            return cls(spec, **kwargs)
        return cls(ps, **kwargs)

    oa, ob = build(gs_cls, pa), build(torch_cls, pb)
    for step in range(steps):
        grads = make_grads(base, step, skip_every=skip_every)
        for x, y, g in zip(pa, pb, grads):
            x.grad = None if g is None else g.clone()
            y.grad = None if g is None else g.clone()
        oa.step()
        ob.step()
        for i, (x, y) in enumerate(zip(pa, pb)):
            assert_close_tol(x.detach(), y.detach(), dtype, f"step {step} param {i}")
        if cross_load_at is not None and step == cross_load_at:
            sa = _roundtrip(copy.deepcopy(oa.state_dict()))
            sb = _roundtrip(copy.deepcopy(ob.state_dict()))
            oa, ob = build(gs_cls, pa), build(torch_cls, pb)
            oa.load_state_dict(sb)  # torch checkpoint into gradstep
            ob.load_state_dict(sa)  # gradstep checkpoint into torch
            assert_states_close(oa, ob, dtype, f"after cross-load at {step}")
    assert_states_close(oa, ob, dtype, "final")
    return oa, ob


def assert_same_signature(gs_cls, torch_cls):
    """Same argument names, order, kinds and defaults as torch.optim's constructor."""
    import inspect

    def shape(cls):
        return [
            (p.name, p.kind, p.default) for p in inspect.signature(cls.__init__).parameters.values()
        ]

    assert shape(gs_cls) == shape(torch_cls)

