"""Tests of ``adagram`` / ``adamgram`` against dense float64 references written here.

The dense reference replays the same algorithm with ``d x d`` matrices (ALGORITHMS.md A.3,
B.1, B.2): ``M`` is a dense matrix, the increment ``x y^T`` is an outer product, and the
integrators are their basis-free closed forms

* truncated SVD: best rank-``r`` approximation of ``Y = M + x y^T`` [B01];
* KSL (Lie-Trotter): ``Y1 = U1 U1^T Y``, ``U1 = orth(Y V0)`` [B02];
* KSL (Strang): ``U1 = orth((M + dA/2) V0)``, ``V1 = orth(Y^T U1)``,
  ``Y1 = (U1 U1^T (M + dA/2) + dA/2) V1 V1^T`` (the three sub-steps of B.2 multiplied out);
* BUG: ``Y1 = U1 U1^T Y V1 V1^T``, ``U1 = orth(Y V0)``, ``V1 = orth(Y^T U0)`` [B03];
* rank-adaptive BUG: SVD truncation at the tolerance-chosen rank [B07];

where ``U0, V0`` span the column / row space of the rank-``r`` ``M`` (basis-free: the closed
forms only need the subspaces). Directions come from the dense ``M^+ = M + x y^T``. The exact
mode (``rank=None``) is also checked against the plain full-matrix formulas ``solve(L, g)``,
``eigh(G)^{-1/2} g`` and ``solve(G, g)`` with ``L`` built by its own recursion.
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
from lowrank_precond.linalg import factor_health
from lowrank_precond.linalg.integrator_types import (
    BasisUpdateGalerkin,
    ProjectorSplitting,
    TruncatedSVD,
)

# the factories under test (through the public package, as users reach them)
adagram = pc.adagram
adamgram = pc.adamgram

DIRECTIONS = ("published", "symmetric", "newton")
INTEGRATORS = ("truncated_svd", "projector_splitting", "basis_update_galerkin")
RTOL = 1e-8


# --------------------------------------------------------------------------- dense reference


def _orth(A: np.ndarray) -> np.ndarray:
    return np.linalg.qr(A)[0]


def _svd_truncate(Y: np.ndarray, r: int) -> np.ndarray:
    W, sig, Vt = np.linalg.svd(Y)
    return (W[:, :r] * sig[:r]) @ Vt[:r]


def _adaptive_rank(sig: np.ndarray, tol: float, r_max: int) -> int:
    """Smallest ``r1 <= r_max`` with ``|sig[r1:]| <= tol`` (``r_max`` if none)."""
    for r1 in range(r_max + 1):
        if np.linalg.norm(sig[r1:]) <= tol:
            return r1
    return r_max


def dense_integrate(M, x, y, rank, integrator, order=1, tol=0.0):
    """One rank-``rank`` integrator step of ``M + x y^T`` in dense closed form (B.2)."""
    dA = np.outer(x, y)
    Y = M + dA
    W0, sig0, V0t = np.linalg.svd(M)
    r0 = int(np.sum(sig0 > 1e-12 * max(sig0[0], 1e-300)))  # rank of the stored M
    U0, V0 = W0[:, :r0], V0t[:r0].T
    if integrator == "truncated_svd":
        return _svd_truncate(Y, rank)
    if integrator == "projector_splitting" and order == 1:
        U1 = _orth(Y @ V0)
        return U1 @ (U1.T @ Y)
    if integrator == "projector_splitting":
        half = M + dA / 2
        U1 = _orth(half @ V0)
        V1 = _orth(Y.T @ U1)
        return (U1 @ (U1.T @ half) + dA / 2) @ V1 @ V1.T
    assert integrator == "basis_update_galerkin"
    if tol > 0:
        sig = np.linalg.svd(Y, compute_uv=False)
        return _svd_truncate(Y, _adaptive_rank(sig, tol, rank))
    U1, V1 = _orth(Y @ V0), _orth(Y.T @ U0)
    return U1 @ (U1.T @ Y @ V1) @ V1.T


def dense_operators(Mp: np.ndarray, eps: float):
    """``L^{-1}``, ``G^{-1/2}``, ``G^{-1}`` of the dense updated matrix ``M^+``."""
    d = Mp.shape[0]
    A = np.eye(d) - Mp
    Linv = A / math.sqrt(eps)
    _, sig, Vt = np.linalg.svd(A)
    root = (Vt.T * sig) @ Vt / math.sqrt(eps)  # eps^{-1/2} |I - M|
    return {"published": Linv, "symmetric": root, "newton": Linv.T @ Linv}


def dense_adagram(
    grads, eps, rank=None, integrator="projector_splitting", order=1, tol=0.0, b1=None
):
    """Replay AdaGram (``b1=None``) or AdamGram (first moment ``b1``) densely.

    Returns ``(directions, Ms, info)``: ``directions[kind]`` the list of directions,
    ``Ms`` the stored dense ``M`` after each step, ``info`` per-step ``(t, sumsq, rho)``.
    """
    d = grads[0].size
    M = np.zeros((d, d))
    k = 0  # exact columns so far (warm-up)
    truncated = False
    m = np.zeros(d)
    count = t = 0
    sumsq = rho = 0.0
    out = {kind: [] for kind in DIRECTIONS}
    Ms, info = [], []
    for g in grads:
        g = g.reshape(-1)
        gbar = (g - M @ g) / math.sqrt(eps)
        nu = np.linalg.norm(gbar)
        Mp = M
        if nu > 0:
            s = math.hypot(1.0, nu)
            x = gbar / (s * (1 + s))
            y = gbar - M.T @ gbar
            Mp = M + np.outer(x, y)
            if rank is None or (not truncated and k < rank):
                M, k = Mp, k + 1
            else:
                M, truncated = dense_integrate(M, x, y, rank, integrator, order, tol), True
            t += 1
            sumsq += g @ g
            rho = eps * nu**2 / (g @ g)
        v = g
        if b1 is not None:
            count += 1
            m = b1 * m + (1 - b1) * g
            v = m / (1 - b1**count)
        ops = dense_operators(Mp, eps)
        for kind in DIRECTIONS:
            out[kind].append(ops[kind] @ v)
        Ms.append(M)
        info.append((t, sumsq, rho))
    return out, Ms, info


def dense_full_matrix(grads, eps):
    """Independent exact references: ``solve(L, g)``, ``G^{-1/2} g`` (eigh), ``solve(G, g)``."""
    d = grads[0].size
    L = math.sqrt(eps) * np.eye(d)
    G = eps * np.eye(d)
    out = {kind: [] for kind in DIRECTIONS}
    for g in grads:
        gbar = np.linalg.solve(L, g)
        n = gbar @ gbar
        a = 1.0 / (1.0 + math.sqrt(1.0 + n))
        L = L @ (np.eye(d) + a * np.outer(gbar, gbar))  # [A01]
        G = G + np.outer(g, g)
        w, E = np.linalg.eigh(G)
        out["published"].append(np.linalg.solve(L, g))
        out["symmetric"].append(E @ ((E.T @ g) / np.sqrt(w)))
        out["newton"].append(np.linalg.solve(G, g))
    return out


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


def _dense_M(state, xp=None) -> np.ndarray:
    back = np.asarray if xp is None else xp.to_numpy
    if state.truncated:
        U, S, V = (back(a) for a in (state.U, state.S, state.V))
        return U @ S @ V.T
    P, Q = back(state.P), back(state.Q)
    return P @ Q.T


def _assert_close_list(got, want, rtol, what):
    for s, (a, b) in enumerate(zip(got, want, strict=True)):
        err = _rel(a, b)
        assert err <= rtol, f"{what}, step {s}: relative error {err:.3e} > {rtol:.1e}"


D, STEPS, EPS = 24, 120, 0.05


@pytest.fixture(scope="module")
def stream():
    return gradient_stream(np.random.default_rng(7), (D,), STEPS)


@pytest.fixture(scope="module")
def references(stream):
    """Dense replays, computed once per module (all three directions in each)."""
    cache = {}

    def get(rank, integrator="projector_splitting", order=1, tol=0.0, b1=None):
        key = (rank, integrator, order, tol, b1)
        if key not in cache:
            cache[key] = dense_adagram(stream, EPS, rank, integrator, order, tol, b1)
        return cache[key]

    return get


# --------------------------------------------------------------------------- exact mode


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_exact_matches_full_matrix_formulas(stream, direction):
    want = dense_full_matrix(stream, EPS)[direction]
    got, states = _run(adagram(rank=None, eps=EPS, direction=direction), np.zeros(D), stream)
    _assert_close_list(got, want, RTOL, direction)
    assert states[-1].P.shape == (D, STEPS) and states[-1].U.shape == (D, 0)
    assert not states[-1].truncated


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_exact_matches_dense_replay(stream, references, direction):
    ref, Ms, info = references(None)
    got, states = _run(adagram(rank=None, eps=EPS, direction=direction), np.zeros(D), stream)
    _assert_close_list(got, ref[direction], RTOL, direction)
    _assert_close_list([_dense_M(s) for s in states], Ms, RTOL, "M")
    for s, (t, sumsq, rho) in zip(states, info, strict=True):
        assert s.t == t
        assert s.sumsq == pytest.approx(sumsq, rel=1e-12)
        assert s.last_ratio == pytest.approx(rho, rel=1e-10)
        assert s.last_ratio <= 1.0 + 1e-12  # [B14]


def test_exact_health_interval(stream):
    _, states = _run(adagram(rank=None, eps=EPS), np.zeros(D), stream[:40])
    st = states[-1]
    sig = np.asarray(factor_health(st.factor))
    lo = math.sqrt(EPS / (EPS + st.sumsq))
    assert sig.max() <= 1 + 1e-10 and sig.min() >= lo * (1 - 1e-8)  # [A10]


# --------------------------------------------------------------------------- truncated mode


@pytest.mark.parametrize("integrator", INTEGRATORS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_rank5_matches_dense_replay(stream, references, integrator, direction):
    ref, Ms, info = references(5, integrator)
    pre = adagram(rank=5, integrator=integrator, direction=direction, eps=EPS)
    got, states = _run(pre, np.zeros(D), stream)
    _assert_close_list(got, ref[direction], RTOL, f"{integrator}/{direction}")
    _assert_close_list([_dense_M(s) for s in states], Ms, RTOL, f"{integrator}: M")
    assert [s.truncated for s in states[:6]] == [False] * 5 + [True]
    assert states[4].P.shape == (D, 5)
    assert states[-1].U.shape == (D, 5) and states[-1].P.shape == (D, 0)
    assert states[-1].t == STEPS
    assert [s.last_ratio for s in states] == pytest.approx([i[2] for i in info], rel=1e-8)
    # the truncated matrices really differ from exact AdaGram (the test is not vacuous)
    exact = references(None)[0][direction]
    assert _rel(got[-1], exact[-1]) > 1e-3


def test_strang_splitting_matches_dense_replay(stream, references):
    ref, Ms, _ = references(5, "projector_splitting", order=2)
    for direction in DIRECTIONS:
        pre = adagram(rank=5, order=2, direction=direction, eps=EPS)
        got, states = _run(pre, np.zeros(D), stream)
        _assert_close_list(got, ref[direction], RTOL, f"strang/{direction}")
    _assert_close_list([_dense_M(s) for s in states], Ms, RTOL, "strang: M")
    lie = references(5, "projector_splitting")[1]
    assert _rel(lie[-1], Ms[-1]) > 1e-3  # order 2 is a different method


def test_rank_adaptive_bug_equals_svd_truncation(stream, references):
    """[B07]: rank-adaptive BUG with a small tol is SVD truncation at rank <= r."""
    ref, Ms, _ = references(5, "basis_update_galerkin", tol=1e-6)
    svd = references(5, "truncated_svd")[1]
    _assert_close_list(Ms, svd, 1e-12, "dense references agree")
    got, states = _run(
        adagram(
            rank=5, integrator="basis_update_galerkin", tol=1e-6, eps=EPS, direction="published"
        ),
        np.zeros(D),
        stream,
    )
    _assert_close_list(got, ref["published"], RTOL, "adaptive BUG")
    _assert_close_list([_dense_M(s) for s in states], Ms, RTOL, "adaptive BUG: M")


def test_rank_adaptive_bug_drops_rank(rng):
    """Gradients in a 2-dim subspace, rank 4: adaptive BUG keeps rank 2 and is exact."""
    d, eps = 12, 0.1
    B = rng.standard_normal((d, 2))
    grads = [B @ rng.standard_normal(2) for _ in range(15)]
    exact = dense_full_matrix(grads, eps)
    pre = adagram(
        rank=4, integrator="basis_update_galerkin", tol=1e-8, eps=eps, direction="symmetric"
    )
    got, states = _run(pre, np.zeros(d), grads)
    _assert_close_list(got, exact["symmetric"], 1e-9, "adaptive BUG, low-dim gradients")
    assert states[-1].truncated and states[-1].U.shape[1] <= 4
    assert states[-1].U.shape[1] == 2


@pytest.mark.parametrize("integrator", INTEGRATORS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_low_dimensional_gradients_reproduce_exact_adagram(rng, integrator, direction):
    """[B11]: gradients in <= r dimensions: every integrator/direction is exact AdaGram."""
    d, r, eps = 15, 3, 0.1
    B = rng.standard_normal((d, r))
    grads = [B @ rng.standard_normal(r) * (1 + 0.3 * np.sin(s)) for s in range(40)]
    want = dense_full_matrix(grads, eps)[direction]
    got, states = _run(
        adagram(rank=r, integrator=integrator, direction=direction, eps=eps), np.zeros(d), grads
    )
    assert states[-1].truncated
    _assert_close_list(got, want, 1e-8, f"{integrator}/{direction}")


def test_callable_integrator(stream, references):
    from lowrank_precond.linalg import truncated_svd

    calls = []

    def mine(low, x, y):
        calls.append(low.rank)
        return truncated_svd(low, x, y, 5)

    ref, Ms, _ = references(5, "truncated_svd")
    pre = adagram(rank=5, integrator=mine, eps=EPS, direction="published")
    got, states = _run(pre, np.zeros(D), stream[:30])
    _assert_close_list(got, ref["published"][:30], RTOL, "callable")
    assert calls == [5] * 25


# --------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("rank", [None, 4])
@pytest.mark.parametrize("integrator", INTEGRATORS)
def test_published_and_symmetric_norms_below_one(stream, rank, integrator):
    """[A06]/[B12]: |published| = |symmetric| = nu/s < 1, also after truncation."""
    g_scaled = [100.0 * g for g in stream[:60]]
    pub, _ = _run(adagram(rank=rank, integrator=integrator, eps=EPS), np.zeros(D), g_scaled)
    sym, _ = _run(
        adagram(rank=rank, integrator=integrator, eps=EPS, direction="symmetric"),
        np.zeros(D),
        g_scaled,
    )
    new, _ = _run(
        adagram(rank=rank, integrator=integrator, eps=EPS, direction="newton"),
        np.zeros(D),
        g_scaled,
    )
    for g, a, b, c in zip(g_scaled, pub, sym, new, strict=True):
        assert np.linalg.norm(a) < 1.0
        assert np.linalg.norm(a) == pytest.approx(np.linalg.norm(b), rel=1e-8)
        assert g @ c == pytest.approx(np.linalg.norm(a) ** 2, rel=1e-8)  # [A08]


@pytest.mark.parametrize("rank", [None, 3])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_zero_gradient_is_no_step(stream, rank, direction):
    """[A09]: g = 0 gives a zero direction and the very same state object."""
    pre = adagram(rank=rank, direction=direction, eps=EPS)
    _, states = _run(pre, np.zeros(D), stream[:6])
    state = states[-1]
    assert state.truncated == (rank is not None)
    snap = state_snapshot(state)
    p, new = pre.update(np.zeros(D), state)
    assert new is state and p.shape == (D,) and not np.any(p)
    assert_snapshot_equal(new, snap)


def test_first_step_is_normalised_gradient():
    g = np.array([1.0, 2.0, 2.0])
    pre = adagram(rank=None, eps=1.0, direction="published")
    p, st = pre.update(g, pre.init(np.zeros(3)))
    # L_1^{-1} g = gbar / s with gbar = g, s = sqrt(1 + 9)
    np.testing.assert_allclose(p, g / math.sqrt(10.0), rtol=1e-15)
    assert (st.t, st.sumsq, st.last_ratio) == (1, 9.0, pytest.approx(1.0))


def test_parameter_shape_and_rank_above_d(rng):
    """Matrix parameters are flattened; rank >= d is exact (rank d)."""
    x = np.zeros((3, 2))
    grads = [rng.standard_normal((3, 2)) for _ in range(10)]
    want = dense_full_matrix([g.reshape(-1) for g in grads], 0.5)["symmetric"]
    got, states = _run(adagram(rank=50, eps=0.5, direction="symmetric"), x, grads)
    assert got[0].shape == (3, 2)
    _assert_close_list([p.reshape(-1) for p in got], want, 1e-9, "rank >= d")
    assert states[-1].U.shape == (6, 6)


# --------------------------------------------------------------------------- adamgram


@pytest.mark.parametrize("rank,integrator", [(None, "projector_splitting")])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_adamgram_matches_dense_replay(stream, references, rank, integrator, direction):
    grads = list(stream)
    grads[50] = np.zeros(D)  # a moment-only step
    ref, Ms, _ = dense_adagram(grads, EPS, rank, integrator, b1=0.9)
    pre = adamgram(rank=rank, integrator=integrator, direction=direction, eps=EPS, betas=(0.9, 0.0))
    got, states = _run(pre, np.zeros(D), grads)
    _assert_close_list(got, ref[direction], RTOL, f"adamgram {integrator}/{direction}")
    _assert_close_list([_dense_M(s) for s in states], Ms, RTOL, "adamgram: M")
    assert states[-1].count == STEPS and states[-1].t == STEPS - 1
    assert np.any(got[50])  # the moment keeps moving on a zero gradient


@pytest.mark.parametrize("integrator", INTEGRATORS)
@pytest.mark.parametrize("rank", [2, 5])
def test_adamgram_refuses_finite_rank_with_momentum(rank, integrator):
    """A finite rank with momentum diverges (dropped directions revert to the eps scale)."""
    with pytest.raises(ValueError, match=r"rank: AdamGram with a finite rank .*unstable"):
        adamgram(rank=rank, integrator=integrator, betas=(0.9, 0.0))
    with pytest.raises(TypeError):
        adamgram()  # rank has no default: exact mode is an explicit choice
    adamgram(rank=rank, integrator=integrator, betas=(0.0, 0.0))  # without momentum: adagram


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_adamgram_without_momentum_is_adagram(stream, direction):
    a, _ = _run(
        adamgram(rank=4, direction=direction, eps=EPS, betas=(0.0, 0.0)), np.zeros(D), stream[:40]
    )
    b, _ = _run(adagram(rank=4, direction=direction, eps=EPS), np.zeros(D), stream[:40])
    _assert_close_list(a, b, 1e-10, direction)


def test_adamgram_momentum_changes_direction(stream, references):
    got, _ = _run(adamgram(rank=None, eps=EPS), np.zeros(D), stream[:20])
    plain = references(None)[0]["published"][:20]
    assert _rel(got[0], plain[0]) < 1e-12  # step 1: m_hat = g
    assert _rel(got[-1], plain[-1]) > 1e-2


def test_adamgram_exact_step_bounded(stream):
    """Exact factor: m_hat is a convex combination of g_s with g_s^T G_t^{-1} g_s < 1."""
    g_scaled = [30.0 * g for g in stream[:50]]
    for direction in ("published", "symmetric"):
        pre = adamgram(rank=None, eps=EPS, direction=direction, betas=(0.9, 0.0))
        got, _ = _run(pre, np.zeros(D), g_scaled)
        assert max(np.linalg.norm(p) for p in got) < 1.0


# --------------------------------------------------------------------------- backends, dtypes


@pytest.mark.parametrize("integrator", INTEGRATORS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_every_backend_same_directions(xp, integrator, direction):
    rng = np.random.default_rng(3)
    d, eps = 10, 0.1
    grads = gradient_stream(rng, (d,), 12)
    ref, Ms, _ = dense_adagram(grads, eps, 3, integrator)
    got, states = _run(
        adagram(rank=3, integrator=integrator, direction=direction, eps=eps), np.zeros(d), grads, xp
    )
    _assert_close_list(got, ref[direction], 1e-10, f"{xp}: {integrator}/{direction}")
    assert _rel(_dense_M(states[-1], xp), Ms[-1]) <= 1e-10
    assert states[-1].truncated


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_every_backend_adamgram(xp, direction):
    rng = np.random.default_rng(4)
    d, eps = 8, 0.1
    grads = gradient_stream(rng, (d,), 10)
    ref, _, _ = dense_adagram(grads, eps, None, "projector_splitting", b1=0.8)
    got, _ = _run(
        adamgram(rank=None, direction=direction, eps=eps, betas=(0.8, 0.0)), np.zeros(d), grads, xp
    )
    _assert_close_list(got, ref[direction], 1e-10, f"{xp}: adamgram/{direction}")


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("rank", [None, 5])
def test_float32_keeps_float64_factor(xp, direction, rank):
    """A.6/[A15]: with float32 params the default factor is float64, so the only error left
    is the float32 rounding of the output; an explicit float32 factor shows the pitfall."""
    rng = np.random.default_rng(5)
    d, eps = 20, 1e-10
    grads = [g.astype(np.float32).astype(np.float64) for g in gradient_stream(rng, (d,), 40)]
    ref, _ = _run(adagram(rank=rank, direction=direction, eps=eps), np.zeros(d), grads)
    x32 = np.zeros(d, dtype=np.float32)
    g32 = [g.astype(np.float32) for g in grads]
    pre = adagram(rank=rank, direction=direction, eps=eps)
    state = pre.init(xp.asarray(x32))
    assert state.P.dtype == xp.float64
    for s, (g, want) in enumerate(zip(g32, ref, strict=True)):
        p, state = pre.update(xp.asarray(g), state)
        assert p.dtype == xp.float32
        err = _rel(xp.to_numpy(p).astype(np.float64), want)
        assert err <= 2**-23, f"step {s}: {err:.2e}"  # one float32 rounding per entry
    # the same exact run with a float32 factor: A.15 predicts ~0.4 u sqrt(lambda_max/eps),
    # >> 1e-3 here (after truncation most of g sits in eps-scale directions, no cancellation)
    if xp.name == "numpy" and direction == "published" and rank is None:
        low, _ = _run(
            adagram(rank=rank, direction=direction, eps=eps, factor_dtype="float32"), x32, g32
        )
        assert max(_rel(a, b) for a, b in zip(low, ref, strict=True)) > 1e-3


def test_factor_dtype_spellings():
    torch = pytest.importorskip("torch")
    for spelling in ("float64", np.float64, np.dtype("float64"), torch.float64):
        st = adagram(factor_dtype=spelling).init(np.zeros(3, dtype=np.float32))
        assert st.P.dtype == np.float64
    st = adagram(factor_dtype="float32").init(np.zeros(3))
    assert st.P.dtype == np.float32
    p, _ = adagram(factor_dtype="float32").update(np.ones(3), st)
    assert p.dtype == np.float64  # directions come back in the parameter's dtype


# --------------------------------------------------------------------------- protocol


def _adamgram(rank=None, **kw):
    """adamgram with momentum where it is allowed (exact), without it at a finite rank."""
    kw.setdefault("betas", (0.9, 0.0) if rank is None else (0.0, 0.0))
    return adamgram(rank=rank, **kw)


@pytest.mark.parametrize("factory", [adagram, _adamgram])
@pytest.mark.parametrize("rank", [None, 3])
def test_nonfinite_raise_and_skip(stream, factory, rank):
    check_nonfinite(factory, np.zeros(D), stream[:6], rank=rank, eps=EPS)


@pytest.mark.parametrize("factory", [adagram, _adamgram])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_checkpoint_roundtrip(stream, factory, direction):
    pre = factory(rank=4, direction=direction, eps=EPS)
    state_cls = type(pre.init(np.zeros(D)))
    for split in (2, 4, 9):  # exact, boundary, truncated
        check_roundtrip(pre, state_cls, np.zeros(D), stream[:14], split)
    fields = {f.name for f in dataclasses.fields(state_cls)}
    assert {"t", "sumsq", "last_ratio", "P", "Q", "U", "S", "V"} <= fields


def test_repr_and_hyperparams():
    pre = adagram(rank=5, integrator="truncated_svd", direction="symmetric")
    assert pre.name == "adagram" and pre.hyperparams["rank"] == 5
    assert "TruncatedSVD()" in repr(pre)
    assert adamgram(rank=None).hyperparams["betas"] == (0.9, 0.0)


@pytest.mark.parametrize(
    "value,name,options",
    [
        (ProjectorSplitting(order=2), "projector_splitting", {"order": 2}),
        (ProjectorSplitting(), "projector_splitting", {}),
        (BasisUpdateGalerkin(tol=1e-6), "basis_update_galerkin", {"tol": 1e-6}),
        (TruncatedSVD(), "truncated_svd", {}),
    ],
)
def test_integrator_values_equal_the_named_spelling(stream, value, name, options):
    a, _ = _run(adagram(rank=4, eps=EPS, integrator=value), np.zeros(D), stream[:30])
    b, _ = _run(adagram(rank=4, eps=EPS, integrator=name, **options), np.zeros(D), stream[:30])
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert adagram(rank=4, integrator=name, **options).hyperparams["integrator"] == value


def test_integrator_value_options_are_set_on_the_value():
    with pytest.raises(ValueError, match="^order/tol"):
        adagram(integrator=ProjectorSplitting(), order=2)
    with pytest.raises(ValueError, match="^order"):
        ProjectorSplitting(order=3)
    with pytest.raises(ValueError, match="^tol"):
        BasisUpdateGalerkin(tol=-1.0)
    with pytest.raises(ValueError, match="^max_rank"):
        BasisUpdateGalerkin(tol=0.1, max_rank=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"rank": 0}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"integrator": "qr"}, "integrator"),
        ({"direction": "adagrad"}, "direction"),
        ({"eps": 0.0}, "eps"),
        ({"eps": -1.0}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"order": 3}, "order"),
        ({"order": 2, "integrator": "truncated_svd"}, "order"),
        ({"tol": -1.0}, "tol"),
        ({"tol": 0.1, "integrator": "projector_splitting"}, "tol"),
        ({"factor_dtype": "float16"}, "factor_dtype"),
        ({"nonfinite": "ignore"}, "nonfinite"),
    ],
)
@pytest.mark.parametrize("factory", [adagram, _adamgram])
def test_bad_arguments(factory, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        factory(**kwargs)


@pytest.mark.parametrize(
    "betas,match", [((0.9, 0.99), "betas"), ((1.0, 0.0), "betas"), ((0.9,), "betas")]
)
def test_adamgram_bad_betas(betas, match):
    with pytest.raises(ValueError, match=match):
        adamgram(rank=None, betas=betas)


def test_bad_parameter_and_gradient():
    pre = adagram()
    with pytest.raises(TypeError, match="x"):
        pre.init(np.zeros(3, dtype=np.int64))
    state = pre.init(np.zeros(3))
    with pytest.raises(ValueError, match="grad"):
        pre.update(np.ones(4), state)
    with pytest.raises(TypeError, match="grad"):
        pre.update(np.ones(3, dtype=np.int64), state)


# --------------------------------------------------------------------------- large d


def test_two_million_parameters_ksl():
    """d = 2e6, rank 5, KSL, published: runs past the warm-up with O(d r) memory."""
    d, r = 2_000_000, 5
    rng = np.random.default_rng(0)
    pre = adagram(rank=r, integrator="projector_splitting", eps=1e-3)
    state = pre.init(np.zeros(d))
    for _ in range(r + 1):  # the last step truncates
        g = rng.standard_normal(d)
        p, state = pre.update(g, state)
        assert np.linalg.norm(p) < 1.0
    assert state.truncated and state.U.shape == (d, r) and state.S.shape == (r, r)
    assert state.P.shape == (d, 0)
