"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest

from gradstep import _native


@pytest.fixture(params=["native", "python"])
def steady_check(request, monkeypatch):
    """Run a test with each implementation of the steady path's per-step check: the compiled
    one (``gradstep._native``; skipped where it cannot be built) and the Python one."""
    if request.param == "native":
        if _native.wait() is None:
            pytest.skip("the native helpers could not be built here")
    else:
        monkeypatch.setattr(_native, "ready", lambda n_tensors=0: None)
    return request.param
