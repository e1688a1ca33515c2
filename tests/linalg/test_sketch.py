"""Frequent-Directions Gram sketch (ALGORITHMS.md F) against dense float64 references.

Every reference is built here from the gradients alone: ``G_exact = eps I + sum g g^T``, the
sketch's own ``G_fd = (eps + rho) I + U diag(sig2) U^T`` formed densely, eigh for inverse
roots, and the SVD of the stacked ``[U sqrt(sig2), g]`` for one step.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from lowrank_precond.linalg import GramSketch, gram_sketch_update, sketch_inverse_sqrt_apply
from lowrank_precond.linalg import sketch as sketch_module


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny matrices on a shared CPU: BLAS/OpenMP threads only add barrier time."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    before = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    if torch:
        torch.set_num_threads(before)


U32 = 2.0**-24  # unit roundoff, float32


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def gradients(rng, d, T, decay=0.8):
    """A stream whose covariance has a decaying spectrum (so truncation matters)."""
    A = rng.standard_normal((d, d)) * decay ** np.arange(d)
    return rng.standard_normal((T, d)) @ A.T


def numpy_parts(xp, sk):
    return xp.to_numpy(sk.U), xp.to_numpy(sk.sig2), float(xp.to_numpy(sk.rho))


def sketch_matrix(U, sig2):
    return (U * sig2) @ U.T


def inv_sqrt_dense(G):
    w, E = np.linalg.eigh(G)
    return (E * w**-0.5) @ E.T


def empty(xp, d, dtype=np.float64):
    return GramSketch.empty(d, like=xp.asarray(np.zeros(1, dtype=dtype)))


# ----------------------------------------------------------------------------- container
def test_container_basics(xp, rng):
    sk = empty(xp, 5)
    assert sk.rank == 0 and sk.dim == 5 and tuple(sk.U.shape) == (5, 0)
    assert float(xp.to_numpy(sk.rho)) == 0.0
    np.testing.assert_array_equal(xp.to_numpy(sk.dense(0.5)), 0.5 * np.eye(5))
    U = np.linalg.qr(rng.standard_normal((5, 2)))[0]
    sk = GramSketch(xp.asarray(U), xp.asarray(np.array([3.0, 1.0])), 0.25)  # float rho converted
    assert sk.rho.dtype == xp.float64 and tuple(sk.rho.shape) == ()
    dense = (0.25 + 0.5) * np.eye(5) + sketch_matrix(U, np.array([3.0, 1.0]))
    np.testing.assert_allclose(xp.to_numpy(sk.dense(0.5)), dense, rtol=1e-15, atol=1e-15)


def test_checkpoint_round_trip(xp, rng):
    d, rank = 12, 3
    sk = empty(xp, d)
    for g in gradients(rng, d, 5):
        sk = gram_sketch_update(sk, xp.asarray(g), rank)
    state = dataclasses.asdict(sk)
    assert set(state) == {"U", "sig2", "rho"}
    sk2 = GramSketch(**state)
    g = xp.asarray(rng.standard_normal(d))
    a = numpy_parts(xp, gram_sketch_update(sk, g, rank))
    b = numpy_parts(xp, gram_sketch_update(sk2, g, rank))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_container_errors(xp):
    U = xp.asarray(np.eye(4)[:, :2])
    s = xp.asarray(np.ones(2))
    with pytest.raises(ValueError, match="U"):
        GramSketch(xp.asarray(np.ones(4)), s, 0.0)
    with pytest.raises(TypeError, match="U"):
        GramSketch(xp.asarray(np.ones((4, 2), dtype=np.int64)), s, 0.0)
    with pytest.raises(ValueError, match="sig2"):
        GramSketch(U, xp.asarray(np.ones(3)), 0.0)
    with pytest.raises(TypeError, match="sig2"):
        GramSketch(U, xp.asarray(np.ones(2, dtype=np.float32)), 0.0)
    with pytest.raises(ValueError, match="rho"):
        GramSketch(U, s, xp.asarray(np.zeros(1)))
    with pytest.raises(ValueError, match="d"):
        GramSketch.empty(0, like=s)
    with pytest.raises(TypeError, match="like"):
        GramSketch.empty(3, like=xp.asarray(np.ones(2, dtype=np.int64)))
    with pytest.raises(ValueError, match="eps"):
        GramSketch(U, s, 0.0).dense(0.0)


# ----------------------------------------------------------------------------- [F01]
@pytest.mark.parametrize("shrink", [True, False])
def test_f01_exact_full_matrix_adagrad_up_to_rank_gradients(xp, rng, shrink):
    d, rank, eps = 30, 6, 1e-3
    grads = gradients(rng, d, rank)
    sk = empty(xp, d)
    S = np.zeros((d, d))
    for t, g in enumerate(grads, start=1):
        S += np.outer(g, g)
        sk = gram_sketch_update(sk, xp.asarray(g), rank, shrink=shrink)
        U, sig2, rho = numpy_parts(xp, sk)
        assert sk.rank == t and rho == 0.0
        assert rel(sketch_matrix(U, sig2), S) < 1e-12
        np.testing.assert_allclose(U.T @ U, np.eye(t), atol=1e-12)
        p = xp.to_numpy(sketch_inverse_sqrt_apply(sk, xp.asarray(g), eps))
        assert rel(p, inv_sqrt_dense(eps * np.eye(d) + S) @ g) < 1e-10


# ----------------------------------------------------------------------------- [F02]
@pytest.mark.parametrize("shrink", [True, False])
def test_f02_loewner_sandwich_traces_and_orthonormality(xp, rng, shrink):
    """G_exact <= G_fd <= G_exact + rho I at every step of a 300-step stream.

    Traces: plain truncation conserves sum|g|^2 = sum(sig2) + rho; Frequent Directions takes
    delta from each of the rank + 1 columns: sum|g|^2 = sum(sig2) + (rank + 1) rho.
    """
    d, rank, T = 24, 4, 300
    grads = gradients(rng, d, T)
    sk = empty(xp, d)
    S = np.zeros((d, d))
    total = 0.0
    rho_prev = 0.0
    for t, g in enumerate(grads, start=1):
        S += np.outer(g, g)
        total += g @ g
        sk = gram_sketch_update(sk, xp.asarray(g), rank, shrink=shrink)
        U, sig2, rho = numpy_parts(xp, sk)
        Sfd = sketch_matrix(U, sig2)
        scale = np.linalg.eigvalsh(S)[-1]
        # eps cancels in both differences
        assert np.linalg.eigvalsh(Sfd + rho * np.eye(d) - S)[0] >= -1e-12 * scale
        assert np.linalg.eigvalsh(S - Sfd)[0] >= -1e-12 * scale
        assert np.abs(U.T @ U - np.eye(sk.rank)).max() < 1e-12
        assert np.all(sig2 >= 0) and np.all(np.diff(sig2) <= 0)
        assert rho >= rho_prev
        rho_prev = rho
        mult = rank + 1 if shrink else 1
        assert abs(sig2.sum() + mult * rho - total) <= 1e-12 * total
        if t > rank:
            assert sk.rank == rank
    assert rho > 0.01 * total  # truncation was exercised


# ----------------------------------------------------------------------------- [F03]
@pytest.mark.parametrize("eps", [1e-8, 1e-2])
def test_f03_direction_equals_dense_inverse_root(xp, rng, eps):
    d, rank = 20, 3
    sk = empty(xp, d)
    for g in gradients(rng, d, 40):
        sk = gram_sketch_update(sk, xp.asarray(g), rank)
    U, sig2, rho = numpy_parts(xp, sk)
    assert rho > 0
    G_fd = (eps + rho) * np.eye(d) + sketch_matrix(U, sig2)
    np.testing.assert_allclose(xp.to_numpy(sk.dense(eps)), G_fd, rtol=1e-14, atol=1e-12)
    for v in (gradients(rng, d, 1)[0], rng.standard_normal(d), U[:, 0]):
        p = xp.to_numpy(sketch_inverse_sqrt_apply(sk, xp.asarray(v), eps))
        assert rel(p, inv_sqrt_dense(G_fd) @ v) < 1e-10


def test_inverse_sqrt_apply_of_empty_sketch(xp, rng):
    v = rng.standard_normal(7)
    p = sketch_inverse_sqrt_apply(empty(xp, 7), xp.asarray(v), 0.25)
    np.testing.assert_allclose(xp.to_numpy(p), 2.0 * v, rtol=1e-15)


# ----------------------------------------------------------------------------- [F04]
@pytest.mark.parametrize("shrink", [True, False])
def test_f04_step_equals_svd_of_stacked_factor(xp, rng, shrink):
    d, rank = 16, 4
    sk = empty(xp, d)
    for g in gradients(rng, d, 9):
        for k_before in (sk.rank,):
            U0, s0, rho0 = numpy_parts(xp, sk)
            new = gram_sketch_update(sk, xp.asarray(g), rank, shrink=shrink)
            U1, s1, rho1 = numpy_parts(xp, new)
            B = np.concatenate([U0 * np.sqrt(s0), g[:, None]], axis=1)
            W, s, _ = np.linalg.svd(B, full_matrices=False)
            if k_before + 1 <= rank:
                np.testing.assert_allclose(s1, s**2, rtol=1e-12)
                assert rho1 == rho0
                assert rel(sketch_matrix(U1, s1), B @ B.T) < 1e-12
            else:
                delta = s[rank] ** 2
                expected = s[:rank] ** 2 - (delta if shrink else 0.0)
                np.testing.assert_allclose(s1, expected, rtol=1e-12, atol=1e-12 * s[0] ** 2)
                assert abs(rho1 - rho0 - delta) <= 1e-12 * s[0] ** 2
                Pw = W[:, :rank] @ W[:, :rank].T
                np.testing.assert_allclose(U1 @ U1.T, Pw, atol=1e-10)
        sk = new


# ----------------------------------------------------------------------------- special g
def test_gradient_inside_span_adds_no_column(xp, rng):
    d, rank = 20, 5
    sk = empty(xp, d)
    for g in gradients(rng, d, 3):
        sk = gram_sketch_update(sk, xp.asarray(g), rank)
    U, s0, rho0 = numpy_parts(xp, sk)
    g = U @ np.array([1.0, -2.0, 0.5])
    new = gram_sketch_update(sk, xp.asarray(g), rank)
    U1, s1, rho1 = numpy_parts(xp, new)
    assert new.rank == 3 and rho1 == rho0
    assert rel(sketch_matrix(U1, s1), sketch_matrix(U, s0) + np.outer(g, g)) < 1e-12
    np.testing.assert_allclose(U1.T @ U1, np.eye(3), atol=1e-12)
    # a full sketch: no column to drop, nothing escapes
    for g2 in gradients(rng, d, 2):
        new = gram_sketch_update(new, xp.asarray(g2), rank)
    U, s0, rho0 = numpy_parts(xp, new)
    assert new.rank == rank
    g = U @ rng.standard_normal(rank)
    U1, s1, rho1 = numpy_parts(xp, gram_sketch_update(new, xp.asarray(g), rank))
    assert U1.shape == (d, rank) and rho1 == rho0
    assert rel(sketch_matrix(U1, s1), sketch_matrix(U, s0) + np.outer(g, g)) < 1e-12


def test_zero_gradient_returns_the_same_object(xp, rng):
    d = 8
    sk = gram_sketch_update(empty(xp, d), xp.asarray(rng.standard_normal(d)), 2)
    assert gram_sketch_update(sk, xp.asarray(np.zeros(d)), 2) is sk
    e = empty(xp, d)
    assert gram_sketch_update(e, xp.asarray(np.zeros(d)), 2) is e


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_gradient_raises(xp, rng, bad):
    d = 8
    sk = gram_sketch_update(empty(xp, d), xp.asarray(rng.standard_normal(d)), 2)
    g = rng.standard_normal(d)
    g[3] = bad
    with pytest.raises(ValueError, match="g"):
        gram_sketch_update(sk, xp.asarray(g), 2)


def test_tiny_and_huge_gradients_are_scaled(xp, rng):
    """Norms are taken of g / max|g|: gradients near the ends of the range work exactly."""
    d, rank = 10, 3
    grads = gradients(rng, d, 6)
    ref = empty(xp, d)
    for g in grads:
        ref = gram_sketch_update(ref, xp.asarray(g), rank)
    Ur, sr, rr = numpy_parts(xp, ref)
    for c in (1e-140, 1e140):
        sk = empty(xp, d)
        for g in grads:
            sk = gram_sketch_update(sk, xp.asarray(c * g), rank)
        U, s, r = numpy_parts(xp, sk)
        np.testing.assert_allclose(s, c**2 * sr, rtol=1e-12)
        assert abs(r - c**2 * rr) <= 1e-12 * c**2 * sr[0]
        np.testing.assert_allclose(U @ U.T, Ur @ Ur.T, atol=1e-12)
    with pytest.raises(ValueError, match="g"):  # |g|^2 would overflow float64
        gram_sketch_update(ref, xp.asarray(np.full(d, 1e160)), rank)


def test_lowering_the_rank_keeps_the_sandwich(xp, rng):
    d = 15
    sk = empty(xp, d)
    for g in gradients(rng, d, 5):
        sk = gram_sketch_update(sk, xp.asarray(g), 5)
    U0, s0, rho0 = numpy_parts(xp, sk)
    g = rng.standard_normal(d)
    new = gram_sketch_update(sk, xp.asarray(g), 2)
    U1, s1, rho1 = numpy_parts(xp, new)
    assert new.rank == 2
    before = sketch_matrix(U0, s0) + rho0 * np.eye(d) + np.outer(g, g)
    after = sketch_matrix(U1, s1) + rho1 * np.eye(d)
    scale = np.linalg.eigvalsh(before)[-1]
    assert np.linalg.eigvalsh(after - before)[0] >= -1e-12 * scale
    assert np.linalg.eigvalsh(before + (rho1 - rho0) * np.eye(d) - after)[0] >= -1e-12 * scale


# ----------------------------------------------------------------------------- backends
def test_cross_backend_agreement(xp, rng):
    d, rank, T, eps = 14, 3, 60, 1e-4
    grads = gradients(rng, d, T)

    class Plain:
        asarray = staticmethod(np.asarray)
        to_numpy = staticmethod(np.asarray)

    runs = []
    for be in (Plain, xp):
        sk = GramSketch.empty(d, like=be.asarray(np.zeros(1)))
        dirs = []
        for g in grads:
            sk = gram_sketch_update(sk, be.asarray(g), rank)
            dirs.append(be.to_numpy(sketch_inverse_sqrt_apply(sk, be.asarray(g), eps)))
        U, s, r = (be.to_numpy(a) for a in (sk.U, sk.sig2, sk.rho))
        runs.append((sketch_matrix(U, s), s, float(r), np.array(dirs)))
    (S0, s0, r0, p0), (S1, s1, r1, p1) = runs
    assert rel(S1, S0) < 1e-12 and rel(s1, s0) < 1e-12 and abs(r1 - r0) <= 1e-12 * r0
    assert rel(p1, p0) < 1e-12  # sign-free quantities: U's column signs may differ


def test_float32_stays_orthonormal_and_close_to_float64(xp_fast, rng):
    """Over 5000 float32 steps max|U^T U - I| stays below 2 tau (tau = 50 u sqrt(k + 1),
    7.3e-6 at k = 5). Without the re-orthonormalisation it drifts linearly (~3e-5 here)."""
    xp = xp_fast
    d, rank, T, eps = 200, 5, 5000, 1e-2
    B = rng.standard_normal((d, 8))
    coef = np.array([10, 5, 3, 2, 1, 0.5, 0.3, 0.1])
    sk32, sk64 = empty(xp, d, np.float32), empty(xp, d)
    tau = 50 * U32 * np.sqrt(rank + 1)
    worst = 0.0
    for t in range(T):
        g = B @ (rng.standard_normal(8) * coef) + 0.3 * rng.standard_normal(d)
        sk32 = gram_sketch_update(sk32, xp.asarray(g.astype(np.float32)), rank)
        sk64 = gram_sketch_update(sk64, xp.asarray(g), rank)
        if t % 100 == 99:
            U = xp.to_numpy(sk32.U).astype(np.float64)
            worst = max(worst, np.abs(U.T @ U - np.eye(rank)).max())
    assert sk32.U.dtype == xp.float32 and sk32.sig2.dtype == xp.float32
    assert sk32.rho.dtype == xp.float32
    assert worst < 2 * tau
    U32_, s32, r32 = numpy_parts(xp, sk32)
    U64, s64, r64 = numpy_parts(xp, sk64)
    G32 = (eps + r32) * np.eye(d) + sketch_matrix(U32_.astype(np.float64), s32.astype(np.float64))
    G64 = (eps + r64) * np.eye(d) + sketch_matrix(U64, s64)
    assert rel(G32, G64) < 1e-3
    v = rng.standard_normal(d)
    p32 = xp.to_numpy(sketch_inverse_sqrt_apply(sk32, xp.asarray(v.astype(np.float32)), eps))
    assert p32.dtype == np.float32
    assert rel(p32.astype(np.float64), inv_sqrt_dense(G32) @ v) < 1e-5


def test_drift_is_repaired_without_changing_the_sketch(xp, rng):
    """A U that lost orthonormality (|U^T U - I| ~ 1e-6) is repaired by the next update."""
    d, rank = 20, 4
    U = np.linalg.qr(rng.standard_normal((d, 3)))[0]
    E = rng.standard_normal((3, 3)) * 1e-6
    Ub = U @ (np.eye(3) + (E + E.T) / 2)
    s = np.array([4.0, 2.0, 1.0])
    g = rng.standard_normal(d)
    sk = GramSketch(xp.asarray(Ub), xp.asarray(s), 0.0)
    U1, s1, rho1 = numpy_parts(xp, gram_sketch_update(sk, xp.asarray(g), rank))
    assert np.abs(U1.T @ U1 - np.eye(4)).max() < 1e-13
    # the represented matrix is kept: Ub diag(s) Ub^T + g g^T (the new column is
    # orthogonal to span(Ub), so up to the ~1e-6 non-orthogonality of the *input*)
    assert rel(sketch_matrix(U1, s1), sketch_matrix(Ub, s) + np.outer(g, g)) < 1e-5
    # the private repair itself preserves U diag(sig2) U^T to rounding
    U2, s2 = sketch_module._reorthonormalize(xp, xp.asarray(Ub), xp.asarray(s))
    U2, s2 = xp.to_numpy(U2), xp.to_numpy(s2)
    assert np.abs(U2.T @ U2 - np.eye(3)).max() < 1e-14
    assert rel(sketch_matrix(U2, s2), sketch_matrix(Ub, s)) < 1e-14


def test_huge_dimension_no_dense_array(xp_fast, rng):
    """d = 2e6, rank 5: a d x d float64 array would need 32 TB. The first five directions
    equal full-matrix AdaGrad, checked with the GGT form (Gram matrix of [g_1 .. g_t])."""
    xp = xp_fast
    # |g| ~ 1 and eps = 0.1: G^{-1/2} is well conditioned (sqrt(|g|^2 / eps) ~ 3), so the
    # ~u sqrt(d) rounding of the length-d inner products is not amplified
    d, rank, eps = 2_000_000, 5, 0.1
    sk = empty(xp, d)
    X = []
    for t in range(7):
        g = rng.standard_normal(d) / np.sqrt(d)
        X.append(g)
        sk = gram_sketch_update(sk, xp.asarray(g), rank)
        p = xp.to_numpy(sketch_inverse_sqrt_apply(sk, xp.asarray(g), eps))
        U = xp.to_numpy(sk.U)
        assert U.shape == (d, min(t + 1, rank))
        assert np.abs(U.T @ U - np.eye(U.shape[1])).max() < 1e-12
        if t < rank:
            Xm = np.array(X).T  # (d, t+1)
            lam, Ev = np.linalg.eigh(Xm.T @ Xm)
            Ug = Xm @ Ev / np.sqrt(lam)
            c = Ug.T @ g
            ref = g / np.sqrt(eps) + Ug @ (((eps + lam) ** -0.5 - eps**-0.5) * c)
            assert rel(p, ref) < 1e-10
        else:
            assert float(xp.to_numpy(sk.rho)) > 0


# ----------------------------------------------------------------------------- integrators
def test_truncated_svd_integrator_equals_plain_truncation(xp, rng):
    d, rank = 16, 3
    a = b = empty(xp, d)
    for g in gradients(rng, d, 40):
        a = gram_sketch_update(a, xp.asarray(g), rank, shrink=False)
        b = gram_sketch_update(b, xp.asarray(g), rank, integrator="truncated_svd")
    Ua, sa, ra = numpy_parts(xp, a)
    Ub, sb, rb = numpy_parts(xp, b)
    np.testing.assert_allclose(sb, sa, rtol=1e-10)
    assert abs(rb - ra) <= 1e-10 * ra
    assert rel(sketch_matrix(Ub, sb), sketch_matrix(Ua, sa)) < 1e-10


@pytest.mark.parametrize("integrator", ["projector_splitting", "basis_update_galerkin"])
def test_galerkin_integrators_on_the_symmetric_increment(xp, rng, integrator):
    """KSL / BUG on U diag(sig2) U^T + g g^T: the new sketch is the compression
    P A P, P = proj(A U) (closed forms [B02], [B03] with U = V), rho += escaped trace."""
    d, rank = 18, 3
    sk = empty(xp, d)
    total = 0.0
    for i, g in enumerate(gradients(rng, d, 30)):
        U0, s0, rho0 = numpy_parts(xp, sk)
        sk = gram_sketch_update(sk, xp.asarray(g), rank, integrator=integrator)
        U1, s1, rho1 = numpy_parts(xp, sk)
        total += g @ g
        assert np.abs(U1.T @ U1 - np.eye(sk.rank)).max() < 1e-12
        assert np.all(s1 >= 0) and rho1 >= rho0
        assert abs(s1.sum() + rho1 - total) <= 1e-12 * total
        if i >= rank:
            A = sketch_matrix(U0, s0) + np.outer(g, g)
            Q = np.linalg.qr(A @ U0)[0]
            P = Q @ Q.T
            assert rel(sketch_matrix(U1, s1), P @ A @ P) < 1e-10


@pytest.mark.parametrize("integrator", [None, "truncated_svd", "projector_splitting"])
def test_float32_integrators_keep_dtype_and_orthonormality(xp, rng, integrator):
    d, rank = 30, 4
    sk = empty(xp, d, np.float32)
    for g in gradients(rng, d, 20):
        sk = gram_sketch_update(sk, xp.asarray(g.astype(np.float32)), rank, integrator=integrator)
    assert sk.U.dtype == sk.sig2.dtype == sk.rho.dtype == xp.float32
    U = xp.to_numpy(sk.U).astype(np.float64)
    assert np.abs(U.T @ U - np.eye(rank)).max() < 50 * U32 * np.sqrt(rank + 1)


def test_update_errors(xp, rng):
    d = 6
    sk = gram_sketch_update(empty(xp, d), xp.asarray(rng.standard_normal(d)), 2)
    g = xp.asarray(rng.standard_normal(d))
    with pytest.raises(TypeError, match="sketch"):
        gram_sketch_update((sk.U, sk.sig2, sk.rho), g, 2)
    with pytest.raises(ValueError, match="g"):
        gram_sketch_update(sk, xp.asarray(rng.standard_normal(d + 1)), 2)
    with pytest.raises(ValueError, match="g"):
        gram_sketch_update(sk, xp.asarray(rng.standard_normal((d, 1))), 2)
    with pytest.raises(TypeError, match="g"):
        gram_sketch_update(sk, xp.asarray(np.ones(d, dtype=np.int64)), 2)
    with pytest.raises(TypeError, match="g"):
        gram_sketch_update(sk, xp.asarray(rng.standard_normal(d).astype(np.float32)), 2)
    with pytest.raises(ValueError, match="rank"):
        gram_sketch_update(sk, g, 0)
    with pytest.raises(ValueError, match="rank"):
        gram_sketch_update(sk, g, d + 1)
    with pytest.raises(TypeError, match="rank"):
        gram_sketch_update(sk, g, 2.0)
    with pytest.raises(TypeError, match="shrink"):
        gram_sketch_update(sk, g, 2, shrink="yes")
    with pytest.raises(ValueError, match="integrator"):
        gram_sketch_update(sk, g, 2, integrator="svd")
    with pytest.raises(ValueError, match="shrink"):
        gram_sketch_update(sk, g, 2, shrink=False, integrator="projector_splitting")
    with pytest.raises(TypeError, match="sketch"):
        sketch_inverse_sqrt_apply(None, g, 1e-3)
    with pytest.raises(ValueError, match="v"):
        sketch_inverse_sqrt_apply(sk, xp.asarray(np.ones(d + 1)), 1e-3)
    with pytest.raises(TypeError, match="v"):
        sketch_inverse_sqrt_apply(sk, xp.asarray(np.ones(d, dtype=np.float32)), 1e-3)
    with pytest.raises(ValueError, match="eps"):
        sketch_inverse_sqrt_apply(sk, g, 0.0)
    with pytest.raises(ValueError, match="eps"):
        sketch_inverse_sqrt_apply(sk, g, float("inf"))
