"""adagram's streamed truncated KSL step (linalg.streaming) equals its general path.

``adagram(rank=r, integrator="projector_splitting", direction="published")`` takes the
truncated step through :func:`lowrank_precond.linalg.streaming.ksl_adagram_step`; these tests
replay the same streams with that path switched off and compare states and directions.
"""

import importlib

import numpy as np
import pytest

from lowrank_precond import preconditioners as pc

adagram_module = importlib.import_module("lowrank_precond.preconditioners.adagram")


def _run(run_streamed, grads, streamed, **kw):
    return run_streamed(adagram_module, "_streamed", pc.adagram, grads, streamed, **kw)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


@pytest.mark.parametrize("direction", ["published", "symmetric"])
@pytest.mark.parametrize("kind", ["random", "repeated", "zero_and_repeated"])
def test_streamed_equals_general_path(rng, run_streamed, kind, direction):
    d, r, eps = 300, 4, 1e-3
    pool = [rng.standard_normal(d) for _ in range(3)]
    grads = []
    for t in range(40):
        if kind == "random":
            grads.append(rng.standard_normal(d))
        else:
            grads.append(pool[t % 3] * (1.0 + 0.1 * np.sin(t)))
    if kind == "zero_and_repeated":
        grads[20] = np.zeros(d)
    kw = {"rank": r, "eps": eps, "direction": direction}
    p1, s1, calls = _run(run_streamed, grads, True, **kw)
    p0, s0, _ = _run(run_streamed, grads, False, **kw)
    assert sum(calls) >= 30  # the streamed path took the truncated steps
    for t, (a, b, x, y) in enumerate(zip(p1, p0, s1, s0, strict=True)):
        assert _rel(a, b) < 1e-9, t
        assert (x.t, x.truncated) == (y.t, y.truncated)
        assert x.sumsq == pytest.approx(y.sumsq, rel=1e-12)
        assert x.last_rho == pytest.approx(y.last_rho, rel=1e-9)
        if x.truncated:
            assert _rel(x.U @ x.S @ x.V.T, y.U @ y.S @ y.V.T) < 1e-9, t
    if kind == "zero_and_repeated":
        assert s1[20] is s1[19]  # a zero gradient is no step, on either path


def test_streamed_path_only_for_lie_trotter_published_or_symmetric(run_streamed, rng):
    grads = [rng.standard_normal(50) for _ in range(8)]
    for kw in ({"direction": "newton"}, {"order": 2}, {"integrator": "truncated_svd"}):
        _, _, calls = _run(run_streamed, grads, True, rank=3, eps=0.1, **kw)
        assert not calls
    _, _, calls = _run(run_streamed, grads, True, rank=3, eps=0.1)
    assert calls and all(calls)


def test_float32_parameter_streamed(run_streamed, rng):
    """float32 gradients reach the streamed step uncast; the result matches the general path."""
    grads = [rng.standard_normal(200).astype(np.float32) for _ in range(20)]
    p1, s1, calls = _run(run_streamed, grads, True, rank=4, eps=1e-2)
    p0, s0, _ = _run(run_streamed, grads, False, rank=4, eps=1e-2)
    assert any(calls) and p1[-1].dtype == np.float32 and s1[-1].U.dtype == np.float64
    for a, b in zip(p1, p0, strict=True):
        assert _rel(a.astype(np.float64), b.astype(np.float64)) <= 2.0**-22


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_recycled_buffers_never_touch_states_the_caller_keeps(backend):
    """The streamed step's Workspace reuses only buffers nobody references: a loop that drops
    its old states gets recycled memory, a caller that keeps some sees them unchanged, and the
    iterates are bit-identical either way."""
    rng = np.random.default_rng(7)
    d = 64
    grads = [rng.standard_normal(d) for _ in range(40)]
    if backend == "torch":
        torch = pytest.importorskip("torch")
        grads = [torch.from_numpy(g) for g in grads]

    def to_np(a):
        return a.copy() if isinstance(a, np.ndarray) else a.numpy().copy()

    def address(a):
        return a.__array_interface__["data"][0] if isinstance(a, np.ndarray) else a.data_ptr()

    # run 1: keep every 3rd state (and a copy of it taken at the time)
    pre = pc.adagram(rank=3, eps=0.1)
    state = pre.init(grads[0])
    kept, dirs1, addresses = [], [], set()
    for i, g in enumerate(grads):
        p, state = pre.update(g, state)
        dirs1.append(to_np(p))
        addresses.add(address(state.U))
        if i % 3 == 0:
            kept.append((state, to_np(state.U), to_np(state.V), to_np(state.S)))
        del p
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
