"""Rank-r integrators against their dense definitions (ALGORITHMS.md B.2) and invariants.

Dense references are built here from the d x d matrices (d <= 60): SVD truncation [B01],
KSL ``Y1 = U1 U1^T (Y0 + dA)`` [B02], BUG ``U1 U1^T (Y0 + dA) V1 V1^T`` [B03], the dense
Strang composition of six K/S/L sub-steps [B04]; exactness [B05]; the counterexample [B06];
rank-adaptive BUG = SVD [B07]; orthonormality over 1000 steps [B08]; accuracy [B09].
"""

import numpy as np
import pytest

from lowrank_precond.linalg import (
    Factored,
    LowRank,
    basis_update_galerkin,
    kernels,
    projector_splitting,
    recompress,
    truncated_svd,
)

RTOL = 1e-11

INTEGRATORS = {
    "svd": lambda M, x, y: truncated_svd(M, x, y, M.rank),
    "ksl": lambda M, x, y: projector_splitting(M, x, y),
    "strang": lambda M, x, y: projector_splitting(M, x, y, order=2),
    "bug": lambda M, x, y: basis_update_galerkin(M, x, y),
    "rabug": lambda M, x, y: basis_update_galerkin(M, x, y, rank_adaptive=True),
}


# --------------------------------------------------------------------------- dense helpers
def orth(A):
    return np.linalg.qr(A)[0]


def proj(A):
    Q = orth(A)
    return Q @ Q.T


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def orth_err(Q):
    return np.abs(Q.T @ Q - np.eye(Q.shape[1])).max()


def best_rank(Y, r):
    W, s, Zt = np.linalg.svd(Y)
    return (W[:, :r] * s[:r]) @ Zt[:r]


def random_state(rng, d, r, full_core=True):
    U, V = orth(rng.standard_normal((d, r))), orth(rng.standard_normal((d, r)))
    if full_core:
        S = rng.standard_normal((r, r))
    else:
        S = np.diag(np.sort(rng.random(r))[::-1] + 0.5)
    return U, S, V


def dense_ksl_substeps(U, S, V, dA, steps):
    """Dense K/S/L sub-steps (Lubich & Oseledets): a list of ('K'|'S'|'L', weight)."""
    for kind, h in steps:
        if kind == "K":
            U, S = np.linalg.qr(U @ S + h * dA @ V)
        elif kind == "S":
            S = S - h * U.T @ dA @ V
        else:
            V, ST = np.linalg.qr(V @ S.T + h * dA.T @ U)
            S = ST.T
    return U @ S @ V.T


def dense_strang(U, S, V, dA):
    """K(1/2) S(1/2) L(1/2) | L(1/2) S(1/2) K(1/2): Lie-Trotter with dA/2 and its adjoint."""
    steps = [("K", 0.5), ("S", 0.5), ("L", 0.5), ("L", 0.5), ("S", 0.5), ("K", 0.5)]
    return dense_ksl_substeps(U, S, V, dA, steps)


def on(xp, U, S, V):
    return LowRank(xp.asarray(U), xp.asarray(S), xp.asarray(V))


def dense(xp, M):
    return xp.to_numpy(M.U) @ xp.to_numpy(M.S) @ xp.to_numpy(M.V).T


def check_orthonormal(xp, M, tol=1e-13):
    assert orth_err(xp.to_numpy(M.U)) < tol
    assert orth_err(xp.to_numpy(M.V)) < tol


# --------------------------------------------------------------------------- [B01]-[B04]
@pytest.mark.parametrize("full_core", [True, False])
def test_dense_definitions(xp, rng, full_core):
    d, r = 40, 4
    U, S, V = random_state(rng, d, r, full_core)
    x, y = rng.standard_normal(d), rng.standard_normal(d)
    Y0, dA = U @ S @ V.T, np.outer(x, y)
    Y = Y0 + dA
    M, xa, ya = on(xp, U, S, V), xp.asarray(x), xp.asarray(y)

    out = truncated_svd(M, xa, ya, r)  # [B01]
    assert rel(dense(xp, out), best_rank(Y, r)) < RTOL
    s = np.diag(xp.to_numpy(out.S))
    np.testing.assert_array_equal(xp.to_numpy(out.S), np.diag(s))
    assert np.all(np.diff(s) <= 0) and np.all(s >= 0)
    check_orthonormal(xp, out)

    out = projector_splitting(M, xa, ya)  # [B02]
    U1 = xp.to_numpy(out.U)
    assert rel(dense(xp, out), proj(Y @ V) @ Y) < RTOL
    assert rel(dense(xp, out), U1 @ U1.T @ Y) < RTOL
    assert np.linalg.norm(Y @ V - U1 @ (U1.T @ Y @ V)) < 1e-12 * np.linalg.norm(Y @ V)
    check_orthonormal(xp, out)

    out = projector_splitting(M, xa, ya, order=2)  # [B04]
    assert rel(dense(xp, out), dense_strang(U, S, V, dA)) < RTOL
    check_orthonormal(xp, out)

    out = basis_update_galerkin(M, xa, ya)  # [B03]
    assert rel(dense(xp, out), proj(Y @ V) @ Y @ proj(Y.T @ U)) < RTOL
    check_orthonormal(xp, out)

    # the references differ from each other, so the checks above can tell them apart
    ksl, strang = proj(Y @ V) @ Y, dense_strang(U, S, V, dA)
    assert rel(ksl, best_rank(Y, r)) > 1e-4
    assert rel(proj(Y @ V) @ Y @ proj(Y.T @ U), ksl) > 1e-4
    assert rel(strang, ksl) > 1e-4
    assert rel(dense_ksl_substeps(U, S, V, dA, [("K", 1), ("S", 1), ("L", 1)]), ksl) < RTOL


def test_dense_definitions_float32(xp, rng):
    d, r = 40, 4
    U, S, V = random_state(rng, d, r)
    x, y = rng.standard_normal(d), rng.standard_normal(d)
    Y = U @ S @ V.T + np.outer(x, y)
    f = np.float32
    M = on(xp, U.astype(f), S.astype(f), V.astype(f))
    xa, ya = xp.asarray(x.astype(f)), xp.asarray(y.astype(f))
    refs = {
        "svd": best_rank(Y, r),
        "ksl": proj(Y @ V) @ Y,
        "strang": dense_strang(U, S, V, np.outer(x, y)),
        "bug": proj(Y @ V) @ Y @ proj(Y.T @ U),
    }
    for name, ref in refs.items():
        out = INTEGRATORS[name](M, xa, ya)
        assert xp.to_numpy(out.U).dtype == np.float32 and xp.to_numpy(out.S).dtype == np.float32
        assert rel(dense(xp, out).astype(np.float64), ref) < 1e-5, name
        check_orthonormal(xp, out, tol=2e-6)


@pytest.mark.parametrize("kind", ["in_span", "zero", "nearly_in_span"])
@pytest.mark.parametrize("name", ["svd", "ksl", "strang", "bug"])
def test_degenerate_increments_match_dense(xp, rng, kind, name):
    """``x`` in ``span U`` (Householder fallback, basis of r columns), ``x = 0``, nearly in span."""
    d, r = 30, 3
    U, S, V = random_state(rng, d, r)
    y = rng.standard_normal(d)
    x = {
        "in_span": U @ rng.standard_normal(r),
        "zero": np.zeros(d),
        "nearly_in_span": U @ rng.standard_normal(r) + 1e-6 * rng.standard_normal(d),
    }[kind]
    Y, dA = U @ S @ V.T + np.outer(x, y), np.outer(x, y)
    out = INTEGRATORS[name](on(xp, U, S, V), xp.asarray(x), xp.asarray(y))
    ref = {
        "svd": best_rank(Y, r),
        "ksl": proj(Y @ V) @ Y,
        "strang": dense_strang(U, S, V, dA),
        "bug": proj(Y @ V) @ Y @ proj(Y.T @ U),
    }[name]
    assert rel(dense(xp, out), ref) < 1e-10
    check_orthonormal(xp, out)


def test_truncated_svd_rank_changes(xp, rng):
    d, r = 30, 4
    U, S, V = random_state(rng, d, r)
    x, y = rng.standard_normal(d), rng.standard_normal(d)
    Y = U @ S @ V.T + np.outer(x, y)
    M, xa, ya = on(xp, U, S, V), xp.asarray(x), xp.asarray(y)
    for rank in (1, 2, r + 1):
        out = truncated_svd(M, xa, ya, rank)
        assert out.rank == rank
        assert rel(dense(xp, out), best_rank(Y, rank)) < RTOL
    out = truncated_svd(M, xa, ya, r + 3)  # padded: exact, zero singular values
    assert out.rank == r + 3
    assert rel(dense(xp, out), Y) < 1e-13
    np.testing.assert_array_equal(np.diag(xp.to_numpy(out.S))[r + 1 :], 0.0)
    check_orthonormal(xp, out)


def test_rank_equal_to_d_is_exact(xp, rng):
    """r = d: ``x`` is always in ``span U`` (the basis keeps d columns); every step is exact."""
    d = 6
    U, S, V = random_state(rng, d, d)
    x, y = rng.standard_normal(d), rng.standard_normal(d)
    Y = U @ S @ V.T + np.outer(x, y)
    for name, step in INTEGRATORS.items():
        out = step(on(xp, U, S, V), xp.asarray(x), xp.asarray(y))
        assert out.rank == d and rel(dense(xp, out), Y) < 1e-13, name
        check_orthonormal(xp, out)


# --------------------------------------------------------------------------- [B05]
@pytest.mark.parametrize("name", list(INTEGRATORS))
def test_exact_for_rank_r_data_from_zero_core(xp, rng, name):
    """[B05]: every A_t of rank <= r, from S = 0 with recompress's deterministic padding."""
    d, r, steps = 30, 3, 9
    X, Z = rng.standard_normal((d, r)), rng.standard_normal((d, r))
    M = recompress(Factored.zeros(d, like=xp.asarray(np.zeros(1))), r)
    np.testing.assert_array_equal(xp.to_numpy(M.S), 0.0)
    A = np.zeros((d, d))
    for _ in range(steps):
        x, y = X @ rng.standard_normal(r), Z @ rng.standard_normal(r)
        A += np.outer(x, y)
        M = INTEGRATORS[name](M, xp.asarray(x), xp.asarray(y))
        assert M.rank == r
        assert rel(dense(xp, M), A) < 1e-11
    check_orthonormal(xp, M)


# --------------------------------------------------------------------------- [B06]
def test_counterexample_ksl_bug_lose_a_term(xp):
    """rank A1 = r = 2 and ``A1 V0`` misses ``range(A1)``: KSL / BUG drop a whole term.

    ``A0 = e1 e1^T`` stored with ``r = 2`` (``S = diag(1, 0)``, padding ``e2``), increment
    ``e3 e3^T``: ``w = V0^T y = 0``, so ``K = A1 V0 = [e1, 0]`` and ``z0 = U0^T x = 0``, so
    ``L = [e1, 0]``; both bases stay ``[e1, e2]`` and ``e3 e3^T`` is lost. The truncated SVD
    (and rank-adaptive BUG, equal to it) is exact.
    """
    d = 6
    E = np.eye(d)
    U = V = E[:, :2]
    S = np.diag([1.0, 0.0])
    x = y = E[:, 2]
    A1 = U @ S @ V.T + np.outer(x, y)
    assert np.linalg.matrix_rank(A1) == 2 and np.linalg.matrix_rank(A1 @ V) == 1
    M, xa, ya = on(xp, U, S, V), xp.asarray(x), xp.asarray(y)
    for name in ("svd", "rabug"):
        assert np.linalg.norm(dense(xp, INTEGRATORS[name](M, xa, ya)) - A1) < 1e-15
    for name in ("ksl", "strang", "bug"):
        Y = dense(xp, INTEGRATORS[name](M, xa, ya))
        np.testing.assert_allclose(np.linalg.norm(A1 - Y), 1.0, rtol=1e-14)  # all of e3 e3^T
        np.testing.assert_allclose(Y, U @ S @ V.T, atol=1e-15)


def test_counterexample_b06_full_rank_start_completes_inside_span(xp):
    """The literal [B06] set-up, ``rank A0 = rank A1 = r = 2``, ``A1 V0`` of rank 1.

    ``A0 = e2 f1^T + e3 f2^T``, ``x = e2``, ``y = -f1 + f4``: ``A1 = e3 f2^T + e2 f4^T`` and
    ``K = A1 V0 = [0, e3]``. The spec's Householder QR of the tall ``K`` completes it with
    ``e1`` and loses ``e2 f4^T`` (a whole term). Our QR completes ``K`` inside
    ``span[U0, x] = span{e2, e3} = range(A1)``, so KSL and BUG are exact here: with
    ``rank(S) = r`` a rank-deficient ``K`` forces ``x`` into ``span U0`` and then
    ``range(A1) ⊆ span U0``. (The loss needs ``rank A0 < r``: previous test.)
    """
    d = 8
    E = np.eye(d)
    U, V, S = E[:, [1, 2]], E[:, [0, 1]], np.eye(2)
    x, y = E[:, 1], -E[:, 0] + E[:, 3]
    A1 = U @ S @ V.T + np.outer(x, y)
    assert np.linalg.matrix_rank(A1) == 2 and np.linalg.matrix_rank(A1 @ V) == 1
    spec_ksl = orth(A1 @ V) @ orth(A1 @ V).T @ A1  # tall Householder QR of K
    lost = np.outer(E[:, 1], E[:, 3])
    np.testing.assert_allclose(A1 - spec_ksl, lost, atol=1e-15)
    M, xa, ya = on(xp, U, S, V), xp.asarray(x), xp.asarray(y)
    for name in INTEGRATORS:
        out = INTEGRATORS[name](M, xa, ya)
        assert np.linalg.norm(dense(xp, out) - A1) < 1e-14, name
        check_orthonormal(xp, out)


# --------------------------------------------------------------------------- [B07]
def test_rank_adaptive_bug_equals_truncated_svd(xp, rng):
    d, r = 25, 3
    U, S, V = random_state(rng, d, r)
    x, y = rng.standard_normal(d), rng.standard_normal(d)
    Y = U @ S @ V.T + np.outer(x, y)
    M, xa, ya = on(xp, U, S, V), xp.asarray(x), xp.asarray(y)
    sig = np.linalg.svd(Y, compute_uv=False)

    out = basis_update_galerkin(M, xa, ya, rank_adaptive=True)  # default cap: r
    assert out.rank == r
    assert rel(dense(xp, out), dense(xp, truncated_svd(M, xa, ya, r))) < RTOL
    out = basis_update_galerkin(M, xa, ya, rank_adaptive=True, max_rank=10)  # grows by one
    assert out.rank == r + 1 and rel(dense(xp, out), Y) < 1e-13
    tol = float(np.sqrt(np.sum(sig[r - 1 : r + 1] ** 2))) * 1.0001  # drops exactly two
    out = basis_update_galerkin(M, xa, ya, rank_adaptive=True, tol=tol, max_rank=10)
    assert out.rank == r - 1
    assert rel(dense(xp, out), best_rank(Y, r - 1)) < RTOL
    S1 = xp.to_numpy(out.S)
    np.testing.assert_array_equal(S1, np.diag(np.diag(S1)))
    out = basis_update_galerkin(M, xa, ya, rank_adaptive=True, tol=1e9)
    assert out.rank == 1  # never below one
    check_orthonormal(xp, out)


# --------------------------------------------------------------------------- [B08] / [B09]
def near_low_rank_stream(rng, d, steps, k=5, noise=0.05):
    X, Z = rng.standard_normal((d, k)), rng.standard_normal((d, k))
    for _ in range(steps):
        x = X @ rng.standard_normal(k) + noise * rng.standard_normal(d)
        y = Z @ rng.standard_normal(k) + noise * rng.standard_normal(d)
        yield x, y


@pytest.mark.parametrize("name", list(INTEGRATORS))
def test_orthonormal_after_1000_steps(rng, name):
    d, r = 60, 5
    U, S, V = random_state(rng, d, r, full_core=False)
    M = LowRank(U, S, V)
    for x, y in near_low_rank_stream(rng, d, 1000, k=8, noise=0.3):
        M = INTEGRATORS[name](M, x, y)
    assert orth_err(M.U) < 1e-12 and orth_err(M.V) < 1e-12
    assert np.all(np.isfinite(M.S))


def test_accuracy_against_best_rank_r(rng):
    """[B09] Error of the accumulated sum against its best rank-r approximation.

    Step level: the truncated SVD returns the best rank-r approximation of
    ``M_{t-1} + x y^T``. Accumulated over 200 near-low-rank increments (d=60, r=5, a fixed
    stream): the ratio ``|M_T - A_T| / |A_T - best_r(A_T)|`` is about svd 2.8, KSL 2.8,
    Strang 5.5, BUG 9.3 here (spec, its stream: 2.1 / 5.3 / 4.9 / 8.7; over other seeds of
    this generator BUG reaches ~90, which equals its dense definition: the Galerkin step
    discards what the old bases miss). The documented factors below (~1.5x the values
    here) are meaningful because a method that drops every other increment scores > 90.
    """
    d, r = 60, 5
    stream = list(near_low_rank_stream(rng, d, 200))
    A = sum(np.outer(x, y) for x, y in stream)
    best = np.linalg.norm(A - best_rank(A, r))
    ratios, final = {}, {}
    for name, step in INTEGRATORS.items():
        M = recompress(Factored.zeros(d, like=np.zeros(1)), r)
        for t, (x, y) in enumerate(stream):
            Y = M.dense() + np.outer(x, y)
            M = step(M, x, y)
            if name == "svd" and t % 20 == 19:  # step level: the best rank-r error
                err = np.linalg.norm(M.dense() - Y)
                assert abs(err - np.linalg.norm(Y - best_rank(Y, r))) < 1e-12 * np.linalg.norm(Y)
        ratios[name] = np.linalg.norm(M.dense() - A) / best
        final[name] = M.dense()
    factors = {"svd": 4.0, "rabug": 4.0, "ksl": 6.0, "strang": 8.0, "bug": 15.0}
    for name, factor in factors.items():
        assert 1.0 <= ratios[name] < factor, ratios
    assert rel(final["rabug"], final["svd"]) < 1e-10  # [B07] along the whole stream
    dropped = sum(np.outer(x, y) for x, y in stream[::2])
    assert np.linalg.norm(best_rank(dropped, r) - A) / best > 90.0


# --------------------------------------------------------------------------- backends
def test_cross_backend_stream(xp, rng):
    """The same 12-step stream gives the same M on every backend (float64, 1e-12)."""
    d, r = 40, 4
    U, S, V = random_state(rng, d, r)
    stream = list(near_low_rank_stream(rng, d, 12))
    for name, step in INTEGRATORS.items():
        ref, M = LowRank(U, S, V), on(xp, U, S, V)
        for x, y in stream:
            ref = step(ref, x, y)
            M = step(M, xp.asarray(x), xp.asarray(y))
        assert rel(dense(xp, M), ref.dense()) < 1e-12, name


def test_blocked_rows_equal_unblocked(monkeypatch, rng):
    d, r = 100, 4
    U, S, V = random_state(rng, d, r)
    x, y = rng.standard_normal(d), rng.standard_normal(d)
    plain = {n: f(LowRank(U, S, V), x, y).dense() for n, f in INTEGRATORS.items()}
    monkeypatch.setattr(kernels, "_BLOCK_ROWS", 16)
    for name, step in INTEGRATORS.items():
        assert rel(step(LowRank(U, S, V), x, y).dense(), plain[name]) < 1e-14, name


def test_input_orthonormality_drift_is_removed(rng):
    """U, V off orthonormality by 1e-8: the exact Gram pass returns orthonormal factors."""
    d, r = 50, 4
    U, S, V = random_state(rng, d, r)
    U = U + 1e-8 * rng.standard_normal((d, r))
    V = V + 1e-8 * rng.standard_normal((d, r))
    x, y = rng.standard_normal(d), rng.standard_normal(d)
    for name, step in INTEGRATORS.items():
        out = step(LowRank(U, S, V), x, y)
        assert orth_err(out.U) < 1e-14 and orth_err(out.V) < 1e-14, name


# --------------------------------------------------------------------------- recompress
def test_recompress(xp, rng):
    d = 30
    P, Q = rng.standard_normal((d, 3)), rng.standard_normal((d, 3))
    F = Factored(xp.asarray(P), xp.asarray(Q))
    Y = P @ Q.T
    out = recompress(F, 3)  # exact
    assert rel(dense(xp, out), Y) < 1e-13
    out = recompress(F, 2)  # best rank 2
    assert rel(dense(xp, out), best_rank(Y, 2)) < RTOL
    out = recompress(F, 6)  # padded, exact, deterministic
    assert out.rank == 6 and rel(dense(xp, out), Y) < 1e-13
    np.testing.assert_array_equal(np.diag(xp.to_numpy(out.S))[3:], 0.0)
    check_orthonormal(xp, out)
    again = recompress(F, 6)
    np.testing.assert_array_equal(xp.to_numpy(out.U), xp.to_numpy(again.U))
    # rank-deficient P and Q (A.6: [P Q]-like): the Householder fallback
    Pd = np.column_stack([P[:, 0], P[:, 0], P[:, 1]])
    Qd = np.column_stack([Q[:, 0], 2 * Q[:, 0], Q[:, 1]])
    out = recompress(Factored(xp.asarray(Pd), xp.asarray(Qd)), 3)
    assert rel(dense(xp, out), Pd @ Qd.T) < 1e-13
    check_orthonormal(xp, out)
    Pw, Qw = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))  # k > d
    out = recompress(Factored(xp.asarray(Pw), xp.asarray(Qw)), 5)
    assert rel(dense(xp, out), Pw @ Qw.T) < 1e-13
    zero = recompress(Factored.zeros(d, like=xp.asarray(P)), 2)
    assert zero.rank == 2 and np.all(xp.to_numpy(zero.S) == 0.0)
    check_orthonormal(xp, zero)


# --------------------------------------------------------------------------- memory
def test_memory_is_o_dr():
    """d = 2e6, r = 5, float64: a d x d array would need 32 TB; one step of each."""
    d, r = 2_000_000, 5
    rng = np.random.default_rng(0)
    M = recompress(Factored(rng.standard_normal((d, 3)), rng.standard_normal((d, 3))), r)
    x, y = rng.standard_normal(d), rng.standard_normal(d)
    for name, step in INTEGRATORS.items():
        out = step(M, x, y)
        assert out.U.shape == (d, r) and out.V.shape == (d, r), name
        assert np.all(np.isfinite(out.S))
    # spot check: the best rank-5 of a rank-4 sum is the sum itself
    u = truncated_svd(M, x, y, r)
    v = rng.standard_normal(d)
    want = M.matvec(v) + x * (y @ v)
    np.testing.assert_allclose(u.matvec(v), want, rtol=1e-10, atol=1e-10 * np.abs(want).max())


# --------------------------------------------------------------------------- bad input
def test_bad_input(xp, rng):
    d, r = 10, 2
    U, S, V = random_state(rng, d, r)
    M, x, y = on(xp, U, S, V), xp.asarray(rng.standard_normal(d)), xp.asarray(np.ones(d))
    with pytest.raises(TypeError, match="lowrank"):
        projector_splitting((U, S, V), x, y)
    with pytest.raises(ValueError, match="x"):
        projector_splitting(M, xp.asarray(np.ones(d + 1)), y)
    with pytest.raises(ValueError, match="y"):
        truncated_svd(M, x, xp.asarray(np.ones((d, 1))), 2)
    with pytest.raises(TypeError, match="x"):
        basis_update_galerkin(M, xp.asarray(np.ones(d, dtype=np.int64)), y)
    with pytest.raises(TypeError, match="y"):
        projector_splitting(M, x, xp.asarray(np.ones(d, dtype=np.float32)))
    with pytest.raises(ValueError, match="x"):
        projector_splitting(M, xp.asarray(np.full(d, np.nan)), y)
    with pytest.raises(ValueError, match="rank"):
        truncated_svd(M, x, y, 0)
    with pytest.raises(ValueError, match="rank"):
        truncated_svd(M, x, y, d + 1)
    with pytest.raises(TypeError, match="rank"):
        truncated_svd(M, x, y, 2.0)
    with pytest.raises(ValueError, match="order"):
        projector_splitting(M, x, y, order=3)
    with pytest.raises(TypeError, match="order"):
        projector_splitting(M, x, y, order=True)
    with pytest.raises(ValueError, match="tol"):
        basis_update_galerkin(M, x, y, rank_adaptive=True, tol=-1.0)
    with pytest.raises(ValueError, match="tol"):
        basis_update_galerkin(M, x, y, tol=0.1)
    with pytest.raises(ValueError, match="max_rank"):
        basis_update_galerkin(M, x, y, max_rank=2)
    with pytest.raises(ValueError, match="max_rank"):
        basis_update_galerkin(M, x, y, rank_adaptive=True, max_rank=0)
    with pytest.raises(TypeError, match="rank_adaptive"):
        basis_update_galerkin(M, x, y, rank_adaptive=1)
    with pytest.raises(TypeError, match="factored"):
        recompress(M, 2)
    with pytest.raises(ValueError, match="rank"):
        recompress(Factored(xp.asarray(U), xp.asarray(V)), d + 1)
    with pytest.raises(ValueError, match="lowrank.S"):
        projector_splitting(on(xp, U, np.full((r, r), np.inf), V), x, y)
    with pytest.raises(TypeError, match="lowrank.S"):
        projector_splitting(on(xp, U, S.astype(np.float32), V), x, y)
