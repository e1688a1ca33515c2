"""The in-place block helpers and the recycling Workspace (lowrank_precond.backends.blocked)."""

import gc

import numpy as np
import pytest

from lowrank_precond.backends.blocked import Workspace


def _address(x):
    if isinstance(x, np.ndarray):
        return x.__array_interface__["data"][0]
    return x.data_ptr()


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_workspace_reuses_only_unreferenced_buffers(kind):
    if kind == "torch":
        torch = pytest.importorskip("torch")
        like = torch.zeros(1, dtype=torch.float64)
    else:
        like = np.zeros(1)
    ws = Workspace(keep=2)
    a = ws.empty((3, 5), like)
    b = ws.empty((3, 5), like)
    assert _address(a) != _address(b)
    view = a[1:, 2:].T  # a view keeps the buffer alive
    a_addr = _address(a)
    del a
    gc.collect()
    c = ws.empty((3, 5), like)
    assert _address(c) not in (a_addr, _address(b))  # a is still seen through `view`
    del view
    gc.collect()
    d = ws.empty((3, 5), like)
    assert _address(d) == a_addr  # nothing refers to it any more: handed back
    assert type(d) is type(like) and d.dtype == like.dtype and tuple(d.shape) == (3, 5)
    # other shapes and dtypes are separate pools
    assert tuple(ws.empty((4,), like).shape) == (4,)


def test_workspace_pool_is_bounded():
    ws = Workspace(keep=2)
    held = [ws.empty((8,), np.zeros(1)) for _ in range(5)]  # all referenced: 5 distinct
    assert len({_address(h) for h in held}) == 5
    assert len(ws._buffers[((8,), np.dtype(np.float64))]) == 2


def test_workspace_falls_back_for_other_backends():
    xps = pytest.importorskip("array_api_strict")
    out = Workspace().empty((2, 3), xps.zeros(1, dtype=xps.float64))
    assert out.shape == (2, 3) and out.dtype == xps.float64
