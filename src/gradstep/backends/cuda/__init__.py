"""CUDA backend: each elementwise rule printed as a multi-tensor Triton kernel.

Triton is optional (``pip install gradstep[cuda]``; CUDA builds of torch usually bring it). When
it is missing, CUDA parameters use the foreach backend and one warning says so.
"""

from __future__ import annotations

import importlib.util
import warnings

_UNRESOLVED = object()
_runner = _UNRESOLVED


def triton_available() -> bool:
    """Whether Triton can be found (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def cuda_runner():
    """The Triton runner, or None (after one warning per process) when Triton is unusable."""
    global _runner
    if _runner is not _UNRESOLVED:
        return _runner
    _runner = None
    if triton_available():
        try:
            from .runner import run_triton
        except ImportError as exc:  # a broken install: say why once, then fall back
            reason = f"importing Triton failed ({exc})"
        else:
            _runner = run_triton
            return _runner
    else:
        reason = "Triton is not installed (pip install gradstep[cuda])"
    warnings.warn(
        f"gradstep: {reason}; CUDA parameters use the foreach backend instead of the fused "
        "Triton kernels.",
        UserWarning,
        stacklevel=2,
    )
    return None
