"""Shared fixtures of the optimizer-wrapper tests."""

import pytest


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: these are many tiny ops, so threads only contend
    (and the test machine is shared)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
