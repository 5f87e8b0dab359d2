"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest

from gradstep.algorithms import _steady_native


@pytest.fixture(params=["native", "python"])
def steady_check(request, monkeypatch):
    """Run a test with each implementation of the steady path's per-step check: the compiled
    one (``_steady_native``; skipped where it cannot be built) and the Python one."""
    if request.param == "native":
        if _steady_native.wait() is None:
            pytest.skip("the native steady-state check could not be built here")
    else:
        monkeypatch.setattr(_steady_native, "ready", lambda n_params=0: None)
    return request.param
