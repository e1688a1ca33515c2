"""The recycling Workspace (lowrank_precond.backends.blocked): memory is reused only once no
object can reach the array it was lent as, decided by lifetime (a finaliser), not by counting
references."""

import gc
import threading

import numpy as np
import pytest

from lowrank_precond.backends.blocked import Workspace


def _address(x):
    if isinstance(x, np.ndarray):
        return x.__array_interface__["data"][0]
    return x.data_ptr()


def _like(kind):
    if kind == "torch":
        torch = pytest.importorskip("torch")
        return torch.zeros(1, dtype=torch.float64)
    return np.zeros(1)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_workspace_reuses_only_unreachable_buffers(kind):
    like = _like(kind)
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
    assert _address(d) == a_addr  # nothing reaches it any more: handed back
    assert type(d) is type(like) and d.dtype == like.dtype and tuple(d.shape) == (3, 5)
    # other shapes and dtypes are separate pools
    assert tuple(ws.empty((4,), like).shape) == (4,)


def _holders(x):
    """Objects that see ``x``'s memory without being ``x``: each must keep it from reuse."""
    yield "slice", x[1:]
    yield "transpose of a slice", x[:, 1:].T
    yield "memoryview", memoryview(x) if isinstance(x, np.ndarray) else x.numpy().data
    if isinstance(x, np.ndarray):
        yield "as_strided", np.lib.stride_tricks.as_strided(x, shape=(2, 4), strides=x.strides)
        yield "reshape", x.reshape(-1)
        try:
            import torch
        except ImportError:
            return
        yield "torch.from_numpy", torch.from_numpy(x)[1:]
    else:
        yield ".numpy() of a view", x[1:].numpy()
        yield "dlpack", np.from_dlpack(x)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_every_kind_of_view_keeps_the_memory(kind):
    """Whatever object still sees the memory (views of views, memoryviews, tensors made from
    it, arrays made from those tensors), the memory is not lent again; once it is dropped,
    it is."""
    like = _like(kind)
    ws = Workspace(keep=4)
    probe = ws.empty((3, 4), like)
    for name, holder in list(_holders(probe)):
        x = ws.empty((3, 4), like)
        addr = _address(x)
        x[...] = 7.0
        holders = dict(_holders(x))
        holder = holders.pop(name)
        del x, holders
        gc.collect()
        others = [ws.empty((3, 4), like) for _ in range(3)]
        assert addr not in {_address(o) for o in others}, name
        assert float(np.asarray(holder if not hasattr(holder, "numpy") else holder.numpy()
                                ).ravel()[0]) == 7.0, name  # fmt: skip
        del others, holder
        gc.collect()


def test_workspace_keeps_a_bounded_number_of_spares():
    ws = Workspace(keep=2)
    held = [ws.empty((8,), np.zeros(1)) for _ in range(5)]  # all reachable: 5 distinct
    assert len({_address(h) for h in held}) == 5
    del held
    gc.collect()
    assert len(ws._spare[((8,), np.dtype(np.float64))]) == 2


def test_workspace_dies_with_buffers_still_lent():
    """An array may outlive its workspace: its memory is then simply freed with it."""
    ws = Workspace()
    a = ws.empty((6,), np.zeros(1))
    a[:] = 1.0
    del ws
    gc.collect()
    assert a.sum() == 6.0
    del a
    gc.collect()


def test_concurrent_callers_never_share_a_buffer():
    ws = Workspace(keep=8)
    like = np.zeros(1)
    seen, errors = [], []

    def run():
        try:
            for _ in range(300):
                x = ws.empty((16,), like)
                x[:] = threading.get_ident()
                seen.append(bool((x == threading.get_ident()).all()))
                del x
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(seen) == 900 and all(seen)


def test_workspace_falls_back_for_other_backends():
    xps = pytest.importorskip("array_api_strict")
    out = Workspace().empty((2, 3), xps.zeros(1, dtype=xps.float64))
    assert out.shape == (2, 3) and out.dtype == xps.float64


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_recycled_buffers_never_touch_states_the_caller_keeps(backend):
    """Through adagram's fused step: a loop that drops its old states gets recycled memory,
    a caller that keeps some sees them unchanged, and the iterates are bit-identical either
    way."""
    from lowrank_precond import preconditioners as pc

    rng = np.random.default_rng(7)
    d = 64
    grads = [rng.standard_normal(d) for _ in range(40)]
    if backend == "torch":
        torch = pytest.importorskip("torch")
        grads = [torch.from_numpy(g) for g in grads]

    def to_np(a):
        return a.copy() if isinstance(a, np.ndarray) else a.numpy().copy()

    # run 1: keep every 3rd state (and a copy of it taken at the time)
    pre = pc.adagram(rank=3, eps=0.1)
    state = pre.init(grads[0])
    kept, dirs1, addresses = [], [], set()
    for i, g in enumerate(grads):
        p, state = pre.update(g, state)
        dirs1.append(to_np(p))
        addresses.add(_address(state.U))
        if i % 3 == 0:
            kept.append((state, to_np(state.U), to_np(state.V), to_np(state.S)))
        del p
    assert state.last_impl == "fused"
    for st, U, V, S in kept:
        assert np.array_equal(to_np(st.U), U) and np.array_equal(to_np(st.V), V)
        assert np.array_equal(to_np(st.S), S)
    # the loop did recycle memory (fewer distinct factor buffers than truncated steps)
    assert len(addresses) < len(grads) - 5

    # run 2: keep nothing; same directions bit for bit
    pre = pc.adagram(rank=3, eps=0.1)
    state = pre.init(grads[0])
    for g, want in zip(grads, dirs1, strict=True):
        p, state = pre.update(g, state)
        assert np.array_equal(to_np(p), want)
