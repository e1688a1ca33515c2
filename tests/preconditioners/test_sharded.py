"""Row-sharded preconditioner state (``shards=``), with the processes simulated by threads.

Each thread holds one block of rows; ``allreduce`` and ``gather`` meet at a barrier. The
sharded run must give the unsharded directions and factors to rounding, and take the fused
(reduce-only) step wherever the unsharded one does.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest

from lowrank_precond import preconditioners as pc
from lowrank_precond.backends.shards import Shards
from lowrank_precond.preconditioners.sharded import ShardedCurvature


@pytest.fixture(autouse=True)
def _blas_scopes_may_overlap(monkeypatch):
    """The fused steps hold a process-wide lock around their BLAS limit (one process runs one
    fused step at a time); the simulated processes here are threads that wait for each other
    inside their steps, so the limit is left out."""
    from lowrank_precond.backends import blas

    monkeypatch.setattr(blas, "single_threaded_blas", contextlib.nullcontext)


class _Group:
    """``n`` threads exchanging one item each (every thread sees all items in rank order)."""

    def __init__(self, n: int):
        self.n = n
        self.barrier = threading.Barrier(n, timeout=60)
        self.slots: list = [None] * n
        self.reduced_numbers = 0  # numbers summed by allreduce, per process
        self.gathered_rows = 0

    def exchange(self, i: int, item):
        self.slots[i] = item
        self.barrier.wait()
        items = list(self.slots)
        self.barrier.wait()
        return items


class ThreadShards(Shards):
    def __init__(self, group: _Group, i: int, bounds: list[int]):
        super().__init__(bounds[-1], bounds[i], bounds[i + 1])
        self.group, self.i = group, i

    def allreduce(self, parts):
        items = self.group.exchange(self.i, list(parts))
        if self.i == 0:
            self.group.reduced_numbers += sum(np.size(x) for x in parts)
        out = []
        for j, x in enumerate(parts):
            total = items[0][j]
            for other in items[1:]:
                total = total + other[j]
            out.append(float(total) if isinstance(x, float) else total)
        return out

    def gather(self, x):
        if self.i == 0:
            self.group.gathered_rows += int(x.shape[0])
        return np.concatenate(self.group.exchange(self.i, x), axis=0)


def _run_sharded(factory, grads, bounds):
    """Each shard's directions and final state, one thread per shard."""
    n = len(bounds) - 1
    group = _Group(n)
    out: list = [None] * n
    errors: list = []

    def work(i):
        try:
            shards = ThreadShards(group, i, bounds)
            pre = factory(shards=shards)
            a, b = bounds[i], bounds[i + 1]
            state = pre.init(np.zeros(b - a))
            dirs, impls = [], []
            for g in grads:
                p, state = pre.update(g[a:b], state)
                dirs.append(p)
                impls.append(getattr(state, "last_impl", None))
            out[i] = (dirs, state, impls)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out, group


def _run_plain(factory, grads):
    pre = factory()
    state = pre.init(np.zeros(grads.shape[1]))
    dirs, impls = [], []
    for g in grads:
        p, state = pre.update(g, state)
        dirs.append(p)
        impls.append(getattr(state, "last_impl", None))
    return dirs, state, impls


def _streams(kind: str, steps: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    if kind == "random":
        return rng.standard_normal((steps, d))
    if kind == "lowdim":  # gradients in a 2-dimensional subspace: the CGS2 passes
        basis = rng.standard_normal((2, d))
        return rng.standard_normal((steps, 2)) @ basis
    raise ValueError(kind)


FACTORIES = {
    "adagram-symmetric": lambda **kw: pc.adagram(rank=3, eps=0.1, **kw),
    "adagram-published": lambda **kw: pc.adagram(rank=3, eps=0.1, direction="published", **kw),
    "sketched": lambda **kw: pc.sketched_adagrad(rank=3, eps=0.1, **kw),
    "sketched-ema": lambda **kw: pc.sketched_adagrad(rank=3, eps=0.1, betas=(0.0, 0.9), **kw),
    # momentum: the direction of the moment needs the whole vector (gathered every step)
    "adamgram-momentum": lambda **kw: pc.adamgram(rank=None, eps=0.1, betas=(0.5, 0.0), **kw),
    "sketched-momentum": lambda **kw: pc.sketched_adagrad(rank=3, eps=0.1, betas=(0.9, 0.0), **kw),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("kind", ["random", "lowdim"])
@pytest.mark.parametrize("bounds", [[0, 20, 41, 64], [0, 64, 64, 64 + 9]])
def test_sharded_steps_equal_the_unsharded_ones(name, kind, bounds):
    factory = FACTORIES[name]
    grads = _streams(kind, 12, bounds[-1])
    dirs, state, impls = _run_plain(factory, grads)
    shards, _ = _run_sharded(factory, grads, bounds)
    scale = max(float(np.max(np.abs(p))) for p in dirs)
    for t, p in enumerate(dirs):
        got = np.concatenate([s[0][t] for s in shards])
        np.testing.assert_allclose(got, p, rtol=0, atol=1e-12 * scale, err_msg=f"step {t}")
    # the same implementation ran every step, on every shard
    for s in shards:
        assert s[2] == impls
    # the factors: the whole product from the rows (gauge-free)
    if hasattr(state, "U") and state.U.shape[1] and hasattr(state, "V"):
        U = np.concatenate([s[1].U for s in shards])
        V = np.concatenate([s[1].V for s in shards])
        np.testing.assert_allclose(U @ shards[0][1].S @ V.T, state.U @ state.S @ state.V.T,
                                   atol=1e-12)  # fmt: skip
    elif hasattr(state, "sig2"):
        U = np.concatenate([s[1].U for s in shards])
        np.testing.assert_allclose(
            (U * shards[0][1].sig2) @ U.T, (state.U * state.sig2) @ state.U.T, atol=1e-11
        )


@pytest.mark.parametrize("name", ["adagram-symmetric", "adagram-published", "sketched"])
def test_the_fused_steps_only_reduce_small_sums(name):
    """After the warm-up every step is fused: nothing of size d crosses, O(r^2) numbers do."""
    bounds = [0, 300, 700, 1000]
    grads = _streams("random", 10, bounds[-1])
    shards, group = _run_sharded(FACTORIES[name], grads, bounds)
    warm = 4  # rank 3: three exact / filling steps and the recompressing one
    assert all(impl == "fused" for impl in shards[0][2][warm:]), shards[0][2]
    gathered = group.gathered_rows
    shards2, group2 = _run_sharded(FACTORIES[name], grads[: warm + 2], bounds)
    shards3, group3 = _run_sharded(FACTORIES[name], grads[:warm], bounds)
    # the fused steps gathered nothing ...
    assert group2.gathered_rows == group3.gathered_rows == gathered
    # ... and reduced a few dozen numbers each, independent of d
    per_step = (group2.reduced_numbers - group3.reduced_numbers) / 2
    assert 0 < per_step < 100, per_step


def test_shards_check_their_arguments():
    with pytest.raises(ValueError, match="rows"):
        Shards(5, 3, 2)
    with pytest.raises(TypeError, match="shards"):
        ShardedCurvature(object(), "not shards")
    pre = pc.adagram(rank=2, shards=Shards(10, 0, 4))
    with pytest.raises(ValueError, match="holds 4 rows"):
        pre.init(np.zeros(10))
