"""Increment CPU step counters in one native call.

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

from .compiler import load

_SOURCE = r"""
#include <stdint.h>
void gs_steps_f32(float *const *p, const int64_t n, double *out) {
    for (int64_t i = 0; i < n; ++i) { float v = *p[i] + 1.0f; *p[i] = v; out[i] = v; }
}
void gs_steps_f64(double *const *p, const int64_t n, double *out) {
    for (int64_t i = 0; i < n; ++i) { double v = *p[i] + 1.0; *p[i] = v; out[i] = v; }
}
"""
_ARGTYPES = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p)
_NAMES = {torch.float32: "gs_steps_f32", torch.float64: "gs_steps_f64"}
_fns: dict[torch.dtype, object] = {}
_failed = False


def _fn(dtype: torch.dtype):
    global _failed
    fn = _fns.get(dtype)
    if fn is None and not _failed:
        try:
            fn = _fns[dtype] = load(_SOURCE, _NAMES[dtype], _ARGTYPES)
        except Exception:  # no compiler: the caller uses torch ops
            _failed = True
    return fn


def increment_cpu(steps: list[torch.Tensor]) -> list[float] | None:
    """Add one to CPU counters of one float dtype; ``None`` (nothing done) if they are not."""
    dtype = steps[0].dtype
    if dtype not in _NAMES or _failed:
        return None
    if not all(s.is_cpu and s.dtype is dtype for s in steps):
        return None
    fn = _fn(dtype)
    if fn is None:
        return None
    ptrs = array("Q", map(torch.Tensor.data_ptr, steps))
    out = array("d", bytes(8 * len(steps)))
    fn(ptrs.buffer_info()[0], len(steps), out.buffer_info()[0])
    return out.tolist()


def function(dtype: torch.dtype):
    """The native incrementer for counters of ``dtype`` (float32/float64), or None."""
    return _fn(dtype) if dtype in _NAMES else None


def increment_ptrs(fn, ptrs: array) -> array:
    """Add one to the counters at ``ptrs`` (validated by the caller) and return the new values."""
    out = array("d", bytes(8 * len(ptrs)))
    fn(ptrs.buffer_info()[0], len(ptrs), out.buffer_info()[0])
    return out
