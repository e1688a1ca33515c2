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
