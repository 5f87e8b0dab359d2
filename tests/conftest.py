"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest

from gradstep import _native


@pytest.fixture
def native_helpers():
    """The compiled helpers of ``gradstep._native`` (built if need be), or skip the test."""
    if _native.wait() is None:
        _native._builder = None  # (an earlier build in this process may have lost its cache)
        if _native.wait() is None:
            pytest.skip("the native helpers could not be built here")
    return _native.ready()


@pytest.fixture(params=["native", "python"])
def steady_check(request, monkeypatch):
    """Run a test with each implementation of the steady path's per-step check: the compiled
    one (``gradstep._native``; skipped where it cannot be built) and the Python one."""
    if request.param == "native":
        request.getfixturevalue("native_helpers")
    else:
        monkeypatch.setattr(_native, "ready", lambda n_tensors=0: None)
    return request.param
