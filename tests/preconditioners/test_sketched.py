"""Tests of ``sketched_adagrad`` against dense float64 references written here (section F).

The dense reference keeps the sketched part ``H = U diag(sig2) U^T`` as a ``d x d`` matrix:
each step ``H + g g^T`` is eigendecomposed, the top ``r`` eigenpairs are kept and (Frequent
Directions) shrunk by the ``(r+1)``-th eigenvalue ``delta``, which is added to ``rho``; the
direction is ``G_fd^{-1/2} v`` with ``G_fd = (eps + rho) I + H`` from a dense ``eigh``. This
is the basis-free form of the O(d r) update [F04], so it shares no code with the library.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from dense_reference import (
    assert_snapshot_equal,
    check_nonfinite,
    check_roundtrip,
    gradient_stream,
    state_snapshot,
)

from lowrank_precond import preconditioners as pc

sketched_adagrad = pc.sketched_adagrad


# --------------------------------------------------------------------------- dense reference


def _inv_sqrt_apply(G: np.ndarray, v: np.ndarray) -> np.ndarray:
    w, E = np.linalg.eigh(G)
    return E @ ((E.T @ v) / np.sqrt(w))


def dense_sketched(grads, eps, rank, shrink=True, betas=(0.0, 0.0)):
    """Replay ``sketched_adagrad`` densely.

    Returns ``(directions, records)`` where ``records[s]`` holds the dense ``G_fd`` (bias
    corrected when ``b2 > 0``), the exact ``G`` it sandwiches, ``rho`` (bias corrected) and
    ``stored = (eps + rho) I + H`` as the state holds it (not bias corrected) after step ``s``.
    """
    b1, b2 = betas
    d = grads[0].size
    H = np.zeros((d, d))  # U diag(sig2) U^T
    exact = np.zeros((d, d))  # sum g g^T (or its EMA)
    rho = 0.0
    m = np.zeros(d)
    t = 0
    out, records = [], []
    for g in grads:
        g = g.reshape(-1)
        zero = not np.any(g)
        if zero and b1 == 0 and b2 == 0:
            out.append(np.zeros(d))
            records.append(records[-1] if records else None)
            continue
        t += 1
        g_in = g
        if b2 > 0:
            H, rho, exact = b2 * H, b2 * rho, b2 * exact
            g_in = math.sqrt(1 - b2) * g
        exact = exact + np.outer(g_in, g_in)
        if not zero:
            w, E = np.linalg.eigh(H + np.outer(g_in, g_in))
            w, E = w[::-1], E[:, ::-1]
            r = min(rank, d)
            delta = max(w[r], 0.0) if r < d else 0.0
            sig2 = np.maximum(w[:r], 0.0) - (delta if shrink else 0.0)
            rho += delta
            H = (E[:, :r] * sig2) @ E[:, :r].T
        v = g
        if b1 > 0:
            m = b1 * m + (1 - b1) * g
            v = m / (1 - b1**t)
        c = 1 - b2**t if b2 > 0 else 1.0
        G_fd = (eps + rho / c) * np.eye(d) + H / c
        out.append(_inv_sqrt_apply(G_fd, v))
        records.append(
            {
                "G_fd": G_fd,
                "G": eps * np.eye(d) + exact / c,
                "rho": rho / c,
                "stored": (eps + rho) * np.eye(d) + H,
            }
        )
    return out, records


# --------------------------------------------------------------------------- helpers


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-300))


def _run(pre, x, grads, xp=None):
    conv = (lambda a: a) if xp is None else xp.asarray
    back = np.asarray if xp is None else xp.to_numpy
    state = pre.init(conv(x))
    ps, states = [], []
    for g in grads:
        p, state = pre.update(conv(g), state)
        ps.append(np.array(back(p), dtype=np.float64))
        states.append(state)
    return ps, states


def _assert_close_list(got, want, rtol, what):
    assert len(got) == len(want)
    for s, (a, b) in enumerate(zip(got, want, strict=True)):
        err = _rel(a, b)
        assert err <= rtol, f"{what}, step {s}: relative error {err:.3e} > {rtol:.1e}"


def _rho(state) -> float:
    """``rho`` as a Python float (a float or a 0-d array of any backend)."""
    return float(state.rho)


def _dense_G_fd(state, eps, xp=None) -> np.ndarray:
    back = np.asarray if xp is None else xp.to_numpy
    U, sig2 = back(state.U), back(state.sig2)
    return (eps + _rho(state)) * np.eye(U.shape[0]) + (U * sig2) @ U.T


D, STEPS, EPS, RANK = 20, 150, 0.05, 5


@pytest.fixture(scope="module")
def stream():
    return gradient_stream(np.random.default_rng(11), (D,), STEPS)


def _full_adagrad(grads, eps):
    d = grads[0].size
    G = eps * np.eye(d)
    out = []
    for g in grads:
        G = G + np.outer(g, g)
        out.append(_inv_sqrt_apply(G, g))
    return out


# --------------------------------------------------------------------------- tests


def test_at_most_rank_steps_is_full_matrix_adagrad(stream):
    """[F01]: while t <= r nothing escapes and the step is full-matrix AdaGrad."""
    got, states = _run(sketched_adagrad(rank=RANK, eps=EPS), np.zeros(D), stream[:RANK])
    _assert_close_list(got, _full_adagrad(stream[:RANK], EPS), 1e-10, "t <= rank")
    assert all(_rho(s) == 0.0 for s in states)
    assert [s.U.shape[1] for s in states] == list(range(1, RANK + 1))


@pytest.mark.parametrize("shrink", [True, False])
def test_matches_dense_replay(stream, shrink):
    """[F03]: after truncation the direction equals the dense G_fd^{-1/2} g."""
    want, records = dense_sketched(stream, EPS, RANK, shrink=shrink)
    got, states = _run(sketched_adagrad(rank=RANK, eps=EPS, shrink=shrink), np.zeros(D), stream)
    _assert_close_list(got, want, 1e-10, f"shrink={shrink}")
    for s, (st, rec) in enumerate(zip(states, records, strict=True)):
        assert _rel(_dense_G_fd(st, EPS), rec["stored"]) <= 1e-10, s
        assert _rho(st) == pytest.approx(rec["rho"], rel=1e-9, abs=1e-12)
    assert states[-1].U.shape == (D, RANK) and _rho(states[-1]) > 0
    # the sketch is not full-matrix AdaGrad any more (the test is not vacuous)
    assert _rel(got[-1], _full_adagrad(stream, EPS)[-1]) > 1e-3


def test_loewner_sandwich_and_orthonormal_basis():
    """[F02]: G_exact <= G_fd <= G_exact + rho I over a few hundred steps; U orthonormal."""
    grads = gradient_stream(np.random.default_rng(12), (D,), 300)
    _, states = _run(sketched_adagrad(rank=4, eps=EPS), np.zeros(D), grads)
    G = EPS * np.eye(D)
    for s, (g, st) in enumerate(zip(grads, states, strict=True)):
        G = G + np.outer(g, g)
        G_fd = _dense_G_fd(st, EPS)
        scale = np.linalg.norm(G, 2)
        lower = np.linalg.eigvalsh(G_fd - G).min()
        upper = np.linalg.eigvalsh(G + _rho(st) * np.eye(D) - G_fd).min()
        assert lower >= -1e-12 * scale, (s, lower)
        assert upper >= -1e-12 * scale, (s, upper)
        U = np.asarray(st.U)
        assert np.abs(U.T @ U - np.eye(U.shape[1])).max() <= 1e-12
    assert _rho(states[-1]) > 1.0  # plenty escaped: the sandwich was really exercised


def test_gradient_inside_span_and_zero_gradient(stream):
    pre = sketched_adagrad(rank=RANK, eps=EPS)
    _, states = _run(pre, np.zeros(D), stream[:8])
    state = states[-1]
    # zero gradient: no step, the same state object, bit-identical
    snap = state_snapshot(state)
    p, new = pre.update(np.zeros(D), state)
    assert new is state and not np.any(p)
    assert_snapshot_equal(new, snap)
    # a gradient inside span(U): no new direction, nothing escapes
    U = np.asarray(state.U)
    g = U @ np.array([1.0, -2.0, 0.5, 3.0, 1.0])
    grads = list(stream[:8]) + [g]
    want, records = dense_sketched(grads, EPS, RANK)
    p, new = pre.update(g, state)
    assert _rel(p, want[-1]) <= 1e-10
    assert _rho(new) == pytest.approx(_rho(state), rel=1e-12)
    assert _rel(_dense_G_fd(new, EPS), records[-1]["stored"]) <= 1e-10


@pytest.mark.parametrize("betas", [(0.9, 0.0), (0.0, 0.99), (0.9, 0.999)])
def test_moments_match_dense_replay(stream, betas):
    grads = list(stream[:80])
    grads[30] = np.zeros(D)  # a zero gradient is a moment step here
    want, records = dense_sketched(grads, EPS, RANK, betas=betas)
    got, states = _run(sketched_adagrad(rank=RANK, eps=EPS, betas=betas), np.zeros(D), grads)
    _assert_close_list(got, want, 1e-10, f"betas={betas}")
    # the sketch's t counts its own steps: the zero gradient is one only with the EMA (b2 > 0)
    assert states[-1].t == (80 if betas[1] > 0 else 79)
    if betas[0] > 0:
        assert np.any(got[30]) and states[-1].m.shape == (D,) and states[-1].count == 80
    plain, _ = dense_sketched(grads, EPS, RANK)
    assert _rel(got[-1], plain[-1]) > 1e-3  # the moments really change the step


def test_ema_sandwich():
    """b2 > 0: the sandwich holds for the bias-corrected EMA of g g^T."""
    grads = gradient_stream(np.random.default_rng(13), (D,), 120)
    betas = (0.0, 0.95)
    want, records = dense_sketched(grads, EPS, 4, betas=betas)
    got, states = _run(sketched_adagrad(rank=4, eps=EPS, betas=betas), np.zeros(D), grads)
    _assert_close_list(got, want, 1e-10, "ema")
    for s, rec in enumerate(records):
        scale = np.linalg.norm(rec["G"], 2)
        assert np.linalg.eigvalsh(rec["G_fd"] - rec["G"]).min() >= -1e-12 * scale, s
        upper = rec["G"] + rec["rho"] * np.eye(D) - rec["G_fd"]
        assert np.linalg.eigvalsh(upper).min() >= -1e-12 * scale, s


@pytest.mark.parametrize("betas", [(0.0, 0.0), (0.9, 0.0), (0.8, 0.9)])
def test_every_backend_same_directions(xp, betas):
    rng = np.random.default_rng(14)
    d = 10
    grads = gradient_stream(rng, (d,), 14)
    want, records = dense_sketched(grads, 0.1, 3, betas=betas)
    got, states = _run(sketched_adagrad(rank=3, eps=0.1, betas=betas), np.zeros(d), grads, xp)
    _assert_close_list(got, want, 1e-10, f"{xp}")
    assert _rel(_dense_G_fd(states[-1], 0.1, xp), records[-1]["stored"]) <= 1e-10


def test_float32(xp):
    """float32 in and out; error within the cancellation model ``~u sqrt(cond(G_fd))``.

    ``G_fd^{-1/2} g`` subtracts the in-span part of ``g / sqrt(eps + rho)``, so rounding of
    order ``u |g| / sqrt(eps + rho)`` is compared with a result of order
    ``|g| / sqrt(lambda_max)``, the A.15 mechanism (measured: at most ~3 u sqrt(cond)).
    """
    rng = np.random.default_rng(15)
    d, u32 = 12, 2.0**-24
    grads = [g.astype(np.float32) for g in gradient_stream(rng, (d,), 30)]
    want, records = dense_sketched([g.astype(np.float64) for g in grads], 1e-3, 3)
    pre = sketched_adagrad(rank=3, eps=1e-3)
    state = pre.init(xp.asarray(np.zeros(d, dtype=np.float32)))
    for s, (g, w, rec) in enumerate(zip(grads, want, records, strict=True)):
        p, state = pre.update(xp.asarray(g), state)
        assert p.dtype == xp.float32
        ev = np.linalg.eigvalsh(rec["G_fd"])
        bound = 8 * u32 * math.sqrt(ev[-1] / ev[0])
        err = _rel(xp.to_numpy(p).astype(np.float64), w)
        assert err <= bound, f"step {s}: {err:.2e} > {bound:.2e}"
    U = xp.to_numpy(state.U).astype(np.float64)
    assert np.abs(U.T @ U - np.eye(3)).max() <= 1e-5


def test_matrix_parameter_and_rank_above_d(rng):
    grads = [rng.standard_normal((2, 3)) for _ in range(9)]
    got, states = _run(sketched_adagrad(rank=10, eps=0.2), np.zeros((2, 3)), grads)
    want = _full_adagrad([g.reshape(-1) for g in grads], 0.2)
    assert got[0].shape == (2, 3)
    _assert_close_list([p.reshape(-1) for p in got], want, 1e-10, "rank >= d")
    assert states[-1].U.shape[1] <= 6 and _rho(states[-1]) == 0.0


# --------------------------------------------------------------------------- protocol


@pytest.mark.parametrize("betas", [(0.0, 0.0), (0.9, 0.99)])
def test_nonfinite_raise_and_skip(stream, betas):
    check_nonfinite(sketched_adagrad, np.zeros(D), stream[:6], rank=3, eps=EPS, betas=betas)


@pytest.mark.parametrize("betas", [(0.0, 0.0), (0.9, 0.99)])
def test_checkpoint_roundtrip(stream, betas):
    pre = sketched_adagrad(rank=3, eps=EPS, betas=betas)
    state_cls = type(pre.init(np.zeros(D)))
    for split in (2, 7):
        check_roundtrip(pre, state_cls, np.zeros(D), stream[:12], split)
    names = {f.name for f in dataclasses.fields(state_cls)}
    assert names >= {"t", "U", "sig2", "rho", "last_impl"}
    assert ({"count", "m"} <= names) == (betas[0] > 0)


@pytest.mark.parametrize("betas", [(0.0, 0.0), (0.9, 0.0)])
def test_checkpoint_of_the_earlier_layout_loads(stream, betas):
    """States saved before the moment moved to its own class: an empty ``m`` without
    momentum, and ``t`` (no ``count``) as the moment's step count with it."""
    from lowrank_precond.preconditioners.base import state_from_dict, state_to_dict

    pre = sketched_adagrad(rank=3, eps=EPS, betas=betas)
    _, state = _run(pre, np.zeros(D), stream[:6])
    state = state[-1]
    old = {k: v for k, v in state_to_dict(state).items() if k not in ("count", "last_impl")}
    old.setdefault("m", np.zeros(0))
    restored = state_from_dict(type(state), old)
    p1, _ = pre.update(stream[6], state)
    p2, _ = pre.update(stream[6], restored)
    np.testing.assert_array_equal(p1, p2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"rank": 0}, "rank"),
        ({"rank": None}, "rank"),
        ({"eps": 0.0}, "eps"),
        ({"shrink": "yes"}, "shrink"),
        ({"integrator": "no_such_integrator"}, "integrator"),
        ({"betas": (1.0, 0.0)}, "betas"),
        ({"betas": (0.0, -0.1)}, "betas"),
        ({"betas": 0.9}, "betas"),
        ({"nonfinite": "ignore"}, "nonfinite"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        sketched_adagrad(**kwargs)


def test_bad_parameter_and_gradient():
    pre = sketched_adagrad()
    with pytest.raises(TypeError, match="x"):
        pre.init(np.zeros(3, dtype=np.int32))
    state = pre.init(np.zeros(3))
    with pytest.raises(ValueError, match="grad"):
        pre.update(np.ones(2), state)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="grad: a numpy array.*torch"):
        pre.update(np.ones(3), pre.init(torch.zeros(3, dtype=torch.float64)))
    # a float32 gradient into a float64 sketch is computed in float64, returned in float32
    p32, _ = pre.update(np.ones(3, dtype=np.float32), state)
    p64, _ = pre.update(np.ones(3), state)
    assert p32.dtype == np.float32
    np.testing.assert_array_equal(p32, p64.astype(np.float32))


def test_two_million_parameters():
    d, r = 2_000_000, 5
    rng = np.random.default_rng(0)
    pre = sketched_adagrad(rank=r, eps=1e-3, betas=(0.9, 0.0))
    state = pre.init(np.zeros(d))
    for _ in range(r + 1):  # the last step truncates
        p, state = pre.update(rng.standard_normal(d), state)
        assert np.all(np.isfinite(p))
    assert state.U.shape == (d, r) and _rho(state) > 0.0


@pytest.mark.parametrize("integrator", ["truncated_svd", "projector_splitting"])
def test_integrator_option_uses_the_linalg_sketch_update(integrator):
    """``integrator=`` is passed through: the state equals gram_sketch_update's, step by step."""
    from lowrank_precond.linalg import GramSketch, gram_sketch_update, sketch_inverse_sqrt_apply

    rng = np.random.default_rng(7)
    d, rank, eps = 12, 3, 1e-2
    pre = sketched_adagrad(rank=rank, eps=eps, integrator=integrator)
    state = pre.init(np.zeros(d))
    sketch = GramSketch.empty(d, like=np.zeros(d))
    for _ in range(10):
        g = rng.standard_normal(d)
        p, state = pre.update(g, state)
        sketch = gram_sketch_update(sketch, g, rank, integrator=integrator)
        np.testing.assert_allclose(p, sketch_inverse_sqrt_apply(sketch, g, eps), rtol=1e-12)
    np.testing.assert_allclose(state.sig2, sketch.sig2, rtol=1e-12)
    with pytest.raises(ValueError, match="integrator: 'truncated_svd' needs shrink=True"):
        sketched_adagrad(integrator="truncated_svd", shrink=False)
