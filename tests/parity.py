"""Shared parity harness: run a gradstep optimizer and its torch.optim twin on identical inputs.

Every algorithm's tests call :func:`assert_parity`; tolerances are stated per dtype in TOLERANCES.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import torch

# (rtol, atol) for comparing gradstep with torch.optim after many steps.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.complex64: (1e-5, 1e-6),
    torch.complex128: (1e-10, 1e-12),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}


def make_params(dtype=torch.float32, shapes=((5, 3), (4,), (2, 3, 2)), seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).to(device) for s in shapes]


def clone_params(tensors):
    return [torch.nn.Parameter(t.detach().clone()) for t in tensors]


def grads_for(params, step, seed=1, skip_every=0):
    """Deterministic gradients; with ``skip_every`` some params get no grad on some steps."""
    gen = torch.Generator().manual_seed(seed * 100003 + step)
    out = []
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        if p.is_complex():
            g = torch.complex(g, torch.randn(p.shape, generator=gen, dtype=torch.float64))
        if skip_every and (step + i) % skip_every == 0:
            out.append(None)
        else:
            out.append(g.to(p.dtype).to(p.device))
    return out


def assert_close_tol(a, b, dtype, msg=""):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{msg}: {m}")


def assert_state_close(gs_opt, torch_opt, dtype, where=""):
    sa, sb = gs_opt.state_dict(), torch_opt.state_dict()
    assert sa["param_groups"] == sb["param_groups"], where
    assert sa["state"].keys() == sb["state"].keys(), where
    for k in sb["state"]:
        sta, stb = sa["state"][k], sb["state"][k]
        assert sta.keys() == stb.keys(), (where, k, sta.keys(), stb.keys())
        for name in stb:
            va, vb = sta[name], stb[name]
            if isinstance(vb, torch.Tensor):
                assert isinstance(va, torch.Tensor), (where, name)
                assert va.dtype == vb.dtype and va.shape == vb.shape, (where, name, va, vb)
                assert va.device == vb.device, (where, name)
                tol_dtype = dtype if va.dtype == dtype else va.dtype
                if tol_dtype in TOLERANCES:
                    assert_close_tol(va, vb, tol_dtype, f"{where} state {k}.{name}")
                else:
                    assert torch.equal(va, vb), (where, name)
            else:
                assert va == vb, (where, name, va, vb)


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def assert_parity(
    gs_cls: type,
    torch_cls: type,
    kwargs: dict | Callable,
    *,
    dtype=torch.float32,
    steps: int = 30,
    groups: list[dict] | None = None,
    shapes=((5, 3), (4,), (2, 3, 2)),
    skip_every: int = 0,
    cross_load_at: int | None = None,
    closure: bool = False,
    before_step: Callable | None = None,
    device: str = "cpu",
):
    """Step both optimizers ``steps`` times on the same gradients and compare everything.

    ``groups`` optionally splits the params into groups with extra options each (group i gets
    param i mod len(groups)). With ``cross_load_at``, both optimizers are rebuilt mid-run from
    each other's state dict (through torch.save / torch.load(weights_only=True)), which checks
    checkpoint compatibility in both directions. ``before_step(step, *optimizers)`` runs before
    each step, e.g. to change a hyperparameter mid-run the way a scheduler does.
    """
    base = make_params(dtype, shapes, device=device)
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
        if before_step is not None:
            before_step(step, oa, ob)
        grads = grads_for(base, step, skip_every=skip_every)
        for x, y, g in zip(pa, pb, grads):
            x.grad = None if g is None else g.clone()
            y.grad = None if g is None else g.clone()
        if closure:
            la = oa.step(lambda: torch.tensor(1.0))
            lb = ob.step(lambda: torch.tensor(1.0))
            assert la == lb
        else:
            oa.step()
            ob.step()
        for i, (x, y) in enumerate(zip(pa, pb)):
            assert_close_tol(x.detach(), y.detach(), dtype, f"step {step} param {i}")
        if cross_load_at is not None and step == cross_load_at:
            sa, sb = _roundtrip(copy.deepcopy(oa.state_dict())), _roundtrip(copy.deepcopy(ob.state_dict()))
            oa, ob = build(gs_cls, pa), build(torch_cls, pb)
            oa.load_state_dict(sb)  # torch checkpoint into gradstep
            ob.load_state_dict(sa)  # gradstep checkpoint into torch
    assert_state_close(oa, ob, dtype, "final")
    return oa, ob
