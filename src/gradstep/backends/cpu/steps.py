"""Increment CPU step counters (and write other 0-d CPU state) in one native call.

Per-parameter ``step`` counters are 0-d tensors. Incrementing them with a foreach op and reading
them back with ``.item()`` costs several microseconds per parameter on the CPU (each is a full
dispatcher round trip), which would dominate a fused step over many small tensors. This helper
adds one to every counter and returns the new values, in one call, with the same float32
(or float64) arithmetic as ``torch._foreach_add_(steps, 1)``.
"""

from __future__ import annotations

import ctypes
from array import array

import torch

from ... import _native
from .compiler import load

_SOURCE = r"""
#include <stdint.h>
void gs_steps_f32(float *const *p, const int64_t n, double *out) {
    for (int64_t i = 0; i < n; ++i) { float v = *p[i] + 1.0f; *p[i] = v; out[i] = v; }
}
void gs_steps_f64(double *const *p, const int64_t n, double *out) {
    for (int64_t i = 0; i < n; ++i) { double v = *p[i] + 1.0; *p[i] = v; out[i] = v; }
}
void gs_load_f32(float *const *p, const int64_t n, double *out) {
    for (int64_t i = 0; i < n; ++i) out[i] = *p[i];
}
void gs_load_f64(double *const *p, const int64_t n, double *out) {
    for (int64_t i = 0; i < n; ++i) out[i] = *p[i];
}
void gs_store_f32(float *const *p, const int64_t n, const double *v) {
    for (int64_t i = 0; i < n; ++i) *p[i] = (float)v[i];
}
void gs_store_f64(double *const *p, const int64_t n, const double *v) {
    for (int64_t i = 0; i < n; ++i) *p[i] = v[i];
}
"""
_ARGTYPES = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p)
_NAMES = {torch.float32: "gs_steps_f32", torch.float64: "gs_steps_f64"}
_STORE_NAMES = {torch.float32: "gs_store_f32", torch.float64: "gs_store_f64"}
_LOAD_NAMES = {torch.float32: "gs_load_f32", torch.float64: "gs_load_f64"}
_fns: dict[str, object] = {}
_failed = False


def _fn(dtype: torch.dtype, names: dict = _NAMES):
    global _failed
    name = names[dtype]
    fn = _fns.get(name)
    if fn is None and not _failed:
        try:
            fn = _fns[name] = load(_SOURCE, name, _ARGTYPES)
        except Exception:  # no compiler: the caller uses torch ops
            _failed = True
    return fn


def _scalar_fn(tensors: list[torch.Tensor], names: dict):
    """``(native function of names, data pointers)`` for one-element CPU tensors of one float
    dtype, or None. The check and the pointers come from one C++ call where ``gradstep._native``
    is built."""
    dtype = tensors[0].dtype
    if dtype not in names or _failed:
        return None
    helpers = _native.ready(len(tensors))
    if helpers is not None:
        ptrs = array("Q", bytes(8 * len(tensors)))
        if not helpers.addresses(tensors, dtype is torch.float64, ptrs):
            return None
    elif all(t.is_cpu and t.dtype is dtype and t.numel() == 1 for t in tensors):
        ptrs = array("Q", map(torch.Tensor.data_ptr, tensors))
    else:
        return None
    fn = _fn(dtype, names)
    return None if fn is None else (fn, ptrs)


def _call(fn, ptrs: array, values: array | None = None) -> array:
    """Run a native function over the 0-d tensors at ``ptrs`` with a buffer of doubles: the
    values to write (``values``), or zeros it fills with what it read or computed."""
    buf = array("d", bytes(8 * len(ptrs))) if values is None else values
    fn(ptrs.buffer_info()[0], len(ptrs), buf.buffer_info()[0])
    return buf


def load_cpu(tensors: list[torch.Tensor]) -> list[float] | None:
    """The values of 0-d CPU tensors of one float dtype, read in one call (or None)."""
    found = _scalar_fn(tensors, _LOAD_NAMES)
    return None if found is None else _call(*found).tolist()


def store_cpu(tensors: list[torch.Tensor], values: list[float]) -> bool:
    """Write ``values`` (already representable in the tensors' dtype) into 0-d CPU tensors of
    one float dtype, in one call; False (nothing written) if they are not such tensors."""
    found = _scalar_fn(tensors, _STORE_NAMES)
    if found is None:
        return False
    _call(*found, array("d", values))
    return True


def increment_cpu(steps: list[torch.Tensor]) -> list[float] | None:
    """Add one to CPU counters of one float dtype; ``None`` (nothing done) if they are not."""
    found = _scalar_fn(steps, _NAMES)
    return None if found is None else _call(*found).tolist()


def incrementer(steps: list[torch.Tensor]):
    """``(native incrementer, the counters' data pointers)`` for CPU counters of one float dtype
    (as ``increment_cpu`` checks them), or None: for callers that keep the pointers."""
    return _scalar_fn(steps, _NAMES)


def increment_ptrs(fn, ptrs: array) -> array:
    """Add one to the counters at ``ptrs`` (validated by the caller) and return the new values."""
    return _call(fn, ptrs)
