"""Tall-skinny kernels: CholeskyQR2 with Householder fallback, Gram / combine passes, bases."""

import numpy as np
import pytest

from lowrank_precond.backends import array_namespace
from lowrank_precond.linalg import LowRank, kernels, truncated_svd
from lowrank_precond.linalg.kernels import orthonormalize, qr_tall

NP = array_namespace(np.zeros(1))  # the namespace the private kernels take for NumPy arrays


def orth_err(Q):
    return np.abs(Q.T @ Q - np.eye(Q.shape[1])).max()


def with_cond(rng, d, k, kappa):
    """``d x k`` with singular values geometric from 1 to ``1/kappa`` and random bases."""
    W = np.linalg.qr(rng.standard_normal((d, k)))[0]
    Z = np.linalg.qr(rng.standard_normal((k, k)))[0]
    return (W * np.geomspace(1.0, 1.0 / kappa, k)) @ Z.T


def qr_path(xp, A):
    """``(Q, R, householder_used)`` of the private implementation, as NumPy."""
    a = xp.asarray(A)
    Q, R, hh = kernels._qr_tall_impl(array_namespace(a), a)
    return xp.to_numpy(Q), xp.to_numpy(R), hh


# --------------------------------------------------------------------------- orthonormalize
@pytest.mark.parametrize("kappa", [1.0, 1e4])
def test_cholesky_qr2_well_and_moderately_conditioned(xp, rng, kappa):
    A = with_cond(rng, 500, 6, kappa) * np.array([1e-3, 1.0, 1e4, 2.0, 1.0, 7.0])  # bad scaling
    Q, R, hh = qr_path(xp, A)
    assert not hh  # CholeskyQR2 handled it (equilibrated kappa <= 1e6)
    assert orth_err(Q) < 1e-13
    assert np.linalg.norm(Q @ R - A) <= 1e-13 * np.linalg.norm(A)
    np.testing.assert_array_equal(np.tril(R, -1), 0.0)
    Qp, Rp = orthonormalize(xp.asarray(A), return_r=True)
    assert orth_err(xp.to_numpy(Qp)) < 1e-13
    np.testing.assert_allclose(xp.to_numpy(qr_tall(xp.asarray(A))[1]), xp.to_numpy(Rp))


@pytest.mark.parametrize("kind", ["rank_deficient", "ill_conditioned", "zero_column", "duplicate"])
def test_fallback_to_householder(xp, rng, kind):
    A = rng.standard_normal((300, 5))
    if kind == "rank_deficient":
        A[:, 4] = A[:, 0] - 2 * A[:, 1]
    elif kind == "ill_conditioned":
        A = with_cond(rng, 300, 5, 1e9)
    elif kind == "zero_column":
        A[:, 2] = 0.0
    else:
        A[:, 3] = A[:, 1]
    Q, R, hh = qr_path(xp, A)
    assert hh
    assert orth_err(Q) < 1e-13
    assert np.linalg.norm(A - Q @ (Q.T @ A)) <= 1e-13 * np.linalg.norm(A)  # span Q ⊇ range A
    assert np.linalg.norm(Q @ R - A) <= 1e-13 * np.linalg.norm(A)
    Qp = xp.to_numpy(orthonormalize(xp.asarray(A)))
    assert Qp.shape == (300, 5) and orth_err(Qp) < 1e-13


def test_float32(xp, rng):
    A = rng.standard_normal((400, 5)).astype(np.float32)
    Q, R = orthonormalize(xp.asarray(A), return_r=True)
    Q, R = xp.to_numpy(Q), xp.to_numpy(R)
    assert Q.dtype == np.float32 and R.dtype == np.float32
    assert orth_err(Q.astype(np.float64)) < 2e-6
    assert np.linalg.norm(Q @ R - A) <= 2e-6 * np.linalg.norm(A)
    # above the float32 CholeskyQR2 limit (1e3): Householder, still orthonormal
    B = with_cond(rng, 400, 5, 1e5).astype(np.float32)
    Q, _, hh = qr_path(xp, B)
    assert hh and orth_err(Q.astype(np.float64)) < 2e-6


def test_empty_and_square(xp, rng):
    Q, R = orthonormalize(xp.asarray(np.zeros((7, 0))), return_r=True)
    assert tuple(Q.shape) == (7, 0) and tuple(R.shape) == (0, 0)
    A = rng.standard_normal((4, 4))
    Q = xp.to_numpy(orthonormalize(xp.asarray(A)))
    assert orth_err(Q) < 1e-13


def test_bad_input(xp):
    with pytest.raises(ValueError, match="A"):
        orthonormalize(xp.asarray(np.ones(5)))
    with pytest.raises(ValueError, match="A"):
        orthonormalize(xp.asarray(np.ones((3, 5))))
    with pytest.raises(TypeError, match="A"):
        orthonormalize(xp.asarray(np.ones((5, 2), dtype=np.int64)))
    with pytest.raises(TypeError, match="A"):
        orthonormalize([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(TypeError, match="return_r"):
        orthonormalize(xp.asarray(np.ones((5, 2))), return_r=1)
    for bad in (np.nan, np.inf):
        A = np.ones((5, 2))
        A[3, 1] = bad
        with pytest.raises(ValueError, match="A: contains NaN or inf"):
            orthonormalize(xp.asarray(A))
        with pytest.raises(ValueError, match="A: contains NaN or inf"):
            qr_tall(xp.asarray(A))


def test_cholesky_failure_is_detected(xp):
    """Indefinite / singular Gram matrices: every backend signals failure its own way."""
    ns = array_namespace(xp.asarray(np.zeros(1)))
    for G in ([[1.0, 2.0], [2.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]):
        assert kernels._cholesky_eq(ns, xp.asarray(np.array(G))) is None
    for G in ([[np.nan, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, np.inf]]):  # non-finite diagonal
        assert kernels._cholesky_eq(ns, xp.asarray(np.array(G))) is None
    R, T, kappa = kernels._cholesky_eq(ns, xp.asarray(np.array([[4.0, 2.0], [2.0, 2.0]])))
    np.testing.assert_allclose(xp.to_numpy(R).T @ xp.to_numpy(R), [[4.0, 2.0], [2.0, 2.0]])
    np.testing.assert_allclose(xp.to_numpy(R) @ xp.to_numpy(T), np.eye(2), atol=1e-15)
    assert 1.0 <= kappa < 10.0


# --------------------------------------------------------------------------- tall passes
@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("block", [7, 100_000])
def test_gram_and_combine_blocked(monkeypatch, rng, block, layout):
    """The row-blocked NumPy path (and the single-block one) equal the plain products."""
    monkeypatch.setattr(kernels, "_BLOCK_ROWS", block)
    A, x, W = rng.standard_normal((53, 4)), rng.standard_normal(53), rng.standard_normal((5, 3))
    A = np.asfortranarray(A) if layout == "F" else A
    Ax = np.column_stack([A, x])
    np.testing.assert_allclose(kernels._gram(NP, A, x), Ax.T @ Ax, rtol=1e-14, atol=1e-13)
    np.testing.assert_allclose(kernels._gram(NP, A), A.T @ A, rtol=1e-14, atol=1e-13)
    np.testing.assert_allclose(kernels._combine(NP, A, x, W), Ax @ W, rtol=1e-14, atol=1e-13)
    np.testing.assert_allclose(
        kernels._combine(NP, A, None, W[:4]), A @ W[:4], rtol=1e-14, atol=1e-13
    )
    W20 = rng.standard_normal((5, 20))  # more than 16 columns: the broadcast branch
    np.testing.assert_allclose(kernels._combine(NP, A, x, W20), Ax @ W20, rtol=1e-14, atol=1e-13)
    A32 = A.astype(np.float32)
    Ax32 = np.column_stack([A32, x.astype(np.float32)]).astype(np.float64)
    G32 = kernels._gram(NP, A32, x.astype(np.float32))
    assert G32.dtype == np.float64
    np.testing.assert_allclose(G32, Ax32.T @ Ax32, rtol=1e-14, atol=1e-13)
    np.testing.assert_allclose(
        kernels._gram(NP, A, x, 0.5),
        Ax.T @ Ax * np.outer([1, 1, 1, 1, 0.5], [1, 1, 1, 1, 0.5]),
        rtol=1e-14,
        atol=1e-13,
    )
    assert kernels._combine(NP, A32, x.astype(np.float32), W).dtype == np.float32


def test_gram_and_combine_backends(xp, rng):
    A, x, W = rng.standard_normal((30, 3)), rng.standard_normal(30), rng.standard_normal((4, 2))
    Ax = np.column_stack([A, x])
    ns = array_namespace(xp.asarray(A))
    G = xp.to_numpy(kernels._gram(ns, xp.asarray(A), xp.asarray(x)))
    np.testing.assert_allclose(G, Ax.T @ Ax, rtol=1e-14, atol=1e-13)
    C = xp.to_numpy(kernels._combine(ns, xp.asarray(A), xp.asarray(x), xp.asarray(W)))
    np.testing.assert_allclose(C, Ax @ W, rtol=1e-14, atol=1e-13)


# --------------------------------------------------------------------------- bases
def explicit(xp, basis, k):
    return xp.to_numpy(basis.tall(xp.eye(basis.m, dtype=xp.float64)))


@pytest.mark.parametrize("kind", ["generic", "nearly_in_span", "in_span", "zero", "drifted"])
def test_extend_basis(xp, rng, kind):
    d, k = 50, 4
    U = np.linalg.qr(rng.standard_normal((d, k)))[0]
    x = rng.standard_normal(d)
    if kind == "nearly_in_span":  # [U x] has kappa ~ 1e4: CholeskyQR2 of the formed [U x]
        x = U @ rng.standard_normal(k) + 1e-4 * x
    elif kind == "in_span":
        x = U @ rng.standard_normal(k)
    elif kind == "zero":
        x = np.zeros(d)
    elif kind == "drifted":  # U off orthonormality by 1e-9: the exact Gram removes it
        U = U + 1e-9 * rng.standard_normal((d, k))
    B = kernels._extend_basis(array_namespace(xp.asarray(U)), xp.asarray(U), xp.asarray(x))
    Bn, R = explicit(xp, B, k), xp.to_numpy(B.R)
    assert B.m == (k if kind in ("in_span", "zero") else k + 1)
    assert orth_err(Bn) < 1e-14
    Ux = np.column_stack([U, x])
    assert np.linalg.norm(Bn @ R - Ux) <= 1e-14 * np.linalg.norm(Ux)
    assert (B.Q is None) == (kind in ("generic", "drifted"))  # implicit one-pass basis


def test_extend_basis_errors_and_overflow(xp, rng):
    d, k = 20, 2
    U = np.linalg.qr(rng.standard_normal((d, k)))[0]
    x = rng.standard_normal(d)
    ns = array_namespace(xp.asarray(U))
    bad = x.copy()
    bad[3] = np.nan
    # the max|x| the kernel brings to the host for its scaling names a non-finite x for free
    with pytest.raises(ValueError, match="x: contains NaN or inf"):
        kernels._extend_basis(ns, xp.asarray(U), xp.asarray(bad), "x")
    bad[3] = np.inf
    with pytest.raises(ValueError, match="y: contains NaN or inf"):
        kernels._extend_basis(ns, xp.asarray(U), xp.asarray(bad), "y")
    # a non-finite basis is not the kernel's to find: the public integrators reject it
    badU = U.copy()
    badU[0, 0] = np.nan
    M = LowRank(xp.asarray(badU), xp.asarray(np.eye(k)), xp.asarray(U))
    with pytest.raises(ValueError, match="lowrank.U: contains NaN or inf"):
        truncated_svd(M, xp.asarray(x), xp.asarray(x), k)
    huge = 1e200 * x  # |x|^2 overflows float64: factored as x / max|x|
    B = kernels._extend_basis(ns, xp.asarray(U), xp.asarray(huge))
    Bn, R = explicit(xp, B, k), xp.to_numpy(B.R)
    assert orth_err(Bn) < 1e-14
    np.testing.assert_allclose(Bn @ R[:, k], huge, rtol=1e-13)


def test_complement(xp, rng):
    d, k = 30, 3
    B = np.linalg.qr(rng.standard_normal((d, k)))[0]
    ns = array_namespace(xp.asarray(B))
    C = xp.to_numpy(kernels._complement(ns, xp.asarray(B), 4))
    assert C.shape == (d, 4)
    assert orth_err(C) < 1e-14
    assert np.abs(B.T @ C).max() < 1e-14
    C2 = xp.to_numpy(kernels._complement(ns, xp.asarray(B), 4))
    np.testing.assert_array_equal(C, C2)  # deterministic
    # complements of coordinate bases are dense (generic), not coordinate vectors
    E = np.eye(d)[:, :k]
    C = xp.to_numpy(kernels._complement(ns, xp.asarray(E), 2))
    assert np.abs(C[k:]).min() > 0.0 and np.abs(C[:k]).max() < 1e-14
