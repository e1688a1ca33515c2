"""Shared fixtures of the linalg tests."""

import pytest

from lowrank_precond.linalg import streaming


@pytest.fixture
def small_blocks(monkeypatch):
    """Small blocks, so that the multi-block code of the streamed steps (``streaming``,
    ``streaming_sketch``) runs at test sizes on numpy and torch: 16 rows in the writing pass,
    ``1024 // (itemsize r)`` (a different blocking) in the reading ones."""
    monkeypatch.setattr(streaming, "_MIN_ROWS", 16)
    monkeypatch.setattr(streaming, "BLOCK_BYTES", 1024)
    monkeypatch.setattr(streaming, "WRITE_BLOCK_BYTES", 16 * 8)


@pytest.fixture(params=["blocks", "compiled"])
def pass_kernels(request, monkeypatch):
    """Run a streamed-KSL test with each implementation of its passes: the NumPy blocks, and
    the compiled (numba) passes, forced at every size (they run from ``MIN_ROWS`` rows
    otherwise). Skips the compiled run, with the reason, where numba is not installed."""
    from lowrank_precond.backends import numba_kernels

    if request.param == "compiled":
        if not numba_kernels.AVAILABLE:
            pytest.skip("numba is not installed (the 'fast' extra): no compiled passes")
        monkeypatch.setattr(numba_kernels, "MIN_ROWS", 0)
    else:
        monkeypatch.setattr(numba_kernels, "MIN_ROWS", 1 << 62)
    return request.param
