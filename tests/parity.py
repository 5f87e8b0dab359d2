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


def runs_fp32_math(kwargs, groups, dtype, device="cpu") -> bool:
    """Whether gradstep runs bf16/fp16 params of every group on the fused CPU backend.

    That backend (the default on the CPU) loads and stores bf16/fp16 as they are and computes
    in float32, whereas torch.optim's for-loop and foreach round every op to the storage dtype.
    Its oracle is torch.optim run in float32 with params and states rounded to ``dtype`` after
    every step (``_round_state``; ``_Cast`` compares its state in ``dtype``).
    """
    from gradstep.backends.cpu import available

    if dtype not in (torch.bfloat16, torch.float16) or device != "cpu" or not isinstance(kwargs, dict):
        return False
    for g in groups or [{}]:
        opts = {**kwargs, **g}
        fused, foreach = opts.get("fused"), opts.get("foreach")
        if opts.get("differentiable") or not (fused or (fused is None and foreach is None)):
            return False
    return available()


def _round_state(opt, params, dtype, keys):
    with torch.no_grad():
        for p in params:
            p.copy_(p.to(dtype))
            for k, v in opt.state.get(p, {}).items():
                if k in keys and isinstance(v, torch.Tensor) and v.is_floating_point():
                    v.copy_(v.to(dtype))


class _Cast:
    """A view of a float32 twin whose state_dict has the param-shaped states in ``dtype``."""

    def __init__(self, opt, dtype, keys):
        self.opt, self.dtype, self.keys = opt, dtype, keys

    def state_dict(self):
        sd = copy.deepcopy(self.opt.state_dict())
        for st in sd["state"].values():
            for k, v in st.items():
                if k in self.keys and isinstance(v, torch.Tensor) and v.is_floating_point():
                    st[k] = v.to(self.dtype)
        return sd


def _param_shaped_keys(opt, params):
    if hasattr(opt, "_param_shaped_state_keys"):
        return opt._param_shaped_state_keys()
    return {k for p in params for k, v in opt.state.get(p, {}).items()
            if k != "step" and isinstance(v, torch.Tensor) and v.shape == p.shape}


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
    each step, e.g. to change a hyperparameter mid-run the way a scheduler does. For bf16/fp16
    on the fused CPU backend, torch.optim runs in float32 and rounds (see ``runs_fp32_math``).
    """
    base = make_params(dtype, shapes, device=device)
    fp32_math = runs_fp32_math(kwargs, groups, dtype, device)
    pa, pb = clone_params(base), clone_params([t.float() for t in base] if fp32_math else base)

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
            y.grad = None if g is None else g.clone().to(y.dtype)
        if closure:
            la = oa.step(lambda: torch.tensor(1.0))
            lb = ob.step(lambda: torch.tensor(1.0))
            assert la == lb
        else:
            oa.step()
            ob.step()
        if fp32_math:
            _round_state(ob, pb, dtype, _param_shaped_keys(oa, pa))
        for i, (x, y) in enumerate(zip(pa, pb)):
            assert_close_tol(x.detach(), y.detach().to(dtype), dtype, f"step {step} param {i}")
        if cross_load_at is not None and step == cross_load_at:
            sa, sb = _roundtrip(copy.deepcopy(oa.state_dict())), _roundtrip(copy.deepcopy(ob.state_dict()))
            oa, ob = build(gs_cls, pa), build(torch_cls, pb)
            oa.load_state_dict(sb)  # torch checkpoint into gradstep
            ob.load_state_dict(sa)  # gradstep checkpoint into torch
    assert_state_close(oa, _Cast(ob, dtype, _param_shaped_keys(oa, pa)) if fp32_math else ob, dtype, "final")
    return oa, ob
