"""SVD bases (AdaDiag) and inverse roots (ASGO) against dense references (ALGORITHMS.md C, D)."""

import numpy as np
import pytest
import scipy.linalg

from lowrank_precond.linalg import inverse_root, svd_basis

TOL = 1e-12


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def basis(xp, G, **kw):
    if "align_to" in kw and kw["align_to"] is not None:
        a = kw["align_to"]
        kw["align_to"] = tuple(xp.asarray(x) for x in a) if isinstance(a, tuple) else xp.asarray(a)
    P, sig, Q = svd_basis(xp.asarray(G), **kw)
    return xp.to_numpy(P), xp.to_numpy(sig), xp.to_numpy(Q)


# ----------------------------------------------------------------------------- svd_basis
def test_c01_orthogonal_bases_and_exact_round_trip(xp, rng):
    m, n = 4, 9
    G = rng.standard_normal((m, n))
    P, sig, Q = basis(xp, G)
    assert P.shape == (m, m) and sig.shape == (m,) and Q.shape == (n, n)
    np.testing.assert_allclose(P.T @ P, np.eye(m), atol=TOL)
    np.testing.assert_allclose(Q.T @ Q, np.eye(n), atol=TOL)
    np.testing.assert_allclose(sig, np.linalg.svd(G, compute_uv=False), rtol=TOL)
    assert np.all(np.diff(sig) <= 0)
    Gt = P.T @ G @ Q
    assert abs(np.linalg.norm(Gt) - np.linalg.norm(G)) < TOL * np.linalg.norm(G)
    # a later gradient goes through the stale basis and back without loss [C01]
    G2 = rng.standard_normal((m, n))
    assert rel(P @ (P.T @ G2 @ Q) @ Q.T, G2) < TOL
    # pitfall (i): the thin Q drops the part of G2 outside G's row space
    _, _, Qt = basis(xp, G, full=False)
    assert Qt.shape == (n, m)
    np.testing.assert_allclose(Qt.T @ Qt, np.eye(m), atol=TOL)
    assert rel(P @ (P.T @ G2 @ Qt) @ Qt.T, G2) > 0.3


def test_c02_two_sided_first_step_is_the_polar_factor(xp, rng):
    m, n = 3, 7
    G = rng.standard_normal((m, n))
    P, sig, Q = basis(xp, G)
    Gt = P.T @ G @ Q
    expected = np.zeros((m, n))
    expected[:, :m] = np.diag(sig)
    np.testing.assert_allclose(Gt, expected, atol=TOL * np.linalg.norm(G))
    # AdaDiag++ with T = 1, step 1: N = Gt / (|Gt| + eps) ~ sign(Gt), update P N Q^T
    eps = 1e-8
    N = Gt / (np.abs(Gt) + eps)
    polar = scipy.linalg.polar(G)[0]  # U V^T, orthonormal rows (m < n)
    np.testing.assert_allclose(polar @ polar.T, np.eye(m), atol=TOL)
    # error model: eps/sig on the diagonal, and pitfall (iii): rounding noise ~u|G| in the
    # zero entries of Gt is amplified to ~u|G|/eps
    u = np.finfo(np.float64).eps
    bound = eps / sig.min() + u * np.linalg.norm(G) * np.sqrt(m * n) / eps
    assert rel(P @ N @ Q.T, polar) < 4 * bound
    assert rel(P @ Q[:, :m].T, polar) < TOL


def test_c03_sign_alignment_gives_adam_on_a_vector(xp, rng):
    d, steps = 6, 25
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1e-2
    grads = rng.standard_normal((steps, d)) * rng.choice([-1.0, 1.0], size=(steps, 1))
    # one-sided AdaDiag with refresh every step (T = 1) on a 1 x d parameter
    M = np.zeros((1, d))
    V = np.zeros((1, d))
    m_a = np.zeros(d)
    v_a = np.zeros(d)
    W = np.zeros((1, d))
    w_adam = np.zeros(d)
    P = np.ones((1, 1))
    for t, g in enumerate(grads, start=1):
        G = g[None, :]
        P_new, sig, Q = basis(xp, G, align_to=P)
        assert P_new.item() == 1.0  # never flips: P_old starts at +1
        assert P_new.item() * P.item() >= 0
        np.testing.assert_allclose(Q[:, 0], g / np.linalg.norm(g), atol=TOL)
        P = P_new
        Gt = P.T @ G
        M = b1 * M + (1 - b1) * Gt
        V = b2 * V + (1 - b2) * Gt**2
        W -= lr * P @ ((M / (1 - b1**t)) / (np.sqrt(V / (1 - b2**t)) + eps))
        m_a = b1 * m_a + (1 - b1) * g
        v_a = b2 * v_a + (1 - b2) * g**2
        w_adam -= lr * (m_a / (1 - b1**t)) / (np.sqrt(v_a / (1 - b2**t)) + eps)
    np.testing.assert_allclose(W[0], w_adam, rtol=1e-14, atol=1e-16)


def test_alignment_flips_p_and_q_together(xp, rng):
    m, n = 3, 5
    G = rng.standard_normal((m, n))
    P0, sig0, Q0 = basis(xp, G)
    flips = np.array([1.0, -1.0, -1.0])
    P, sig, Q = basis(xp, G, align_to=P0 * flips)
    np.testing.assert_allclose(P, P0 * flips, atol=TOL)
    np.testing.assert_allclose(Q[:, :m], Q0[:, :m] * flips, atol=TOL)
    np.testing.assert_allclose(Q[:, m:], Q0[:, m:], atol=TOL)  # not tied to P: untouched
    assert rel(P @ np.diag(sig) @ Q[:, :m].T, G) < TOL
    # with (P_old, Q_old) the null-space columns of Q are aligned as well
    qflips = np.array([1.0, 1.0, 1.0, -1.0, 1.0])
    P, _, Q = basis(xp, G, align_to=(P0 * flips, Q0 * qflips * np.r_[flips, 1.0, 1.0]))
    np.testing.assert_allclose(P, P0 * flips, atol=TOL)
    np.testing.assert_allclose(Q, Q0 * qflips * np.r_[flips, 1.0, 1.0], atol=TOL)
    # thin Q: flipped with P
    P, sig, Qt = basis(xp, G, full=False, align_to=P0 * flips)
    assert rel(P @ np.diag(sig) @ Qt.T, G) < TOL
    for j in range(m):
        assert P[:, j] @ (P0 * flips)[:, j] >= 0


def test_svd_basis_float32_uses_float64_core(xp, rng):
    G = rng.standard_normal((4, 30)).astype(np.float32)
    P, sig, Q = svd_basis(xp.asarray(G))
    assert P.dtype == xp.float32 and sig.dtype == xp.float32 and Q.dtype == xp.float32
    P, sig, Q = (xp.to_numpy(a).astype(np.float64) for a in (P, sig, Q))
    U, s, Vh = np.linalg.svd(G.astype(np.float64), full_matrices=True)
    np.testing.assert_allclose(sig, s, rtol=2e-7)
    # Q = Q64 + D with |D_ij| <= u |Q64_ij| (rounding of an orthonormal float64 basis), so
    # |Q^T Q - I| <= 2u + u^2 entrywise; a float32 SVD (torch) gives ~3e-7 = 5u here
    u = 2.0**-24
    assert np.abs(Q.T @ Q - np.eye(30)).max() < 2 * u + 1e-14
    assert np.abs(P.T @ P - np.eye(4)).max() < 2 * u + 1e-14


def test_svd_basis_errors(xp, rng):
    G = xp.asarray(rng.standard_normal((2, 3)))
    with pytest.raises(ValueError, match="G"):
        svd_basis(xp.asarray(rng.standard_normal((3, 2))))  # m > n: pass the transpose
    with pytest.raises(ValueError, match="G"):
        svd_basis(xp.asarray(rng.standard_normal((2, 3, 1))))
    with pytest.raises(ValueError, match="G"):
        svd_basis(xp.asarray(np.array([[1.0, np.nan, 0.0], [0.0, 1.0, 0.0]])))
    with pytest.raises(TypeError, match="G"):
        svd_basis(xp.asarray(np.ones((2, 3), dtype=np.int64)))
    with pytest.raises(TypeError, match="full"):
        svd_basis(G, full=1)
    with pytest.raises(ValueError, match="align_to"):
        svd_basis(G, align_to=xp.asarray(np.eye(3)))
    with pytest.raises(ValueError, match="align_to"):
        svd_basis(G, align_to=(xp.asarray(np.eye(2)), xp.asarray(np.eye(2))))
    with pytest.raises(ValueError, match="align_to"):
        svd_basis(G, align_to=(xp.asarray(np.eye(2)),))
    with pytest.raises(TypeError, match="align_to"):
        svd_basis(G, align_to="P")


# ----------------------------------------------------------------------------- inverse_root
def spd(rng, m, cond=1e4):
    Q = np.linalg.qr(rng.standard_normal((m, m)))[0]
    return (Q * np.geomspace(1.0, 1.0 / cond, m)) @ Q.T


@pytest.mark.parametrize("eps", [1e-8, 1e-3])
def test_d01_inverse_root_matches_fractional_power(xp, rng, eps):
    m = 7
    B = rng.standard_normal((m, 3))
    V = B @ B.T + spd(rng, m) * 1e-2  # a typical ASGO accumulator
    R = xp.to_numpy(inverse_root(xp.asarray(V), eps))
    np.testing.assert_array_equal(R, R.T)
    Ve = V + eps * np.eye(m)
    np.testing.assert_allclose(R @ Ve @ R, np.eye(m), atol=1e-10)
    ref = np.real(scipy.linalg.fractional_matrix_power(Ve, -0.5))
    assert rel(R, ref) < 1e-10
    # another power (Shampoo-style quarter root)
    R4 = xp.to_numpy(inverse_root(xp.asarray(V), eps, power=0.25))
    assert rel(R4, np.real(scipy.linalg.fractional_matrix_power(Ve, -0.25))) < 1e-10


def test_inverse_root_clamps_before_adding_eps(xp, rng):
    # indefinite input (rounding of a PSD matrix, or worse): never NaN, never above eps^-1/2
    Q = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    w = np.array([-1e-3, 0.0, 2.0])
    V = (Q * w) @ Q.T
    eps = 1e-6
    R = xp.to_numpy(inverse_root(xp.asarray(V), eps))
    expected = (Q * (np.maximum(w, 0.0) + eps) ** -0.5) @ Q.T
    assert np.all(np.isfinite(R))
    assert rel(R, expected) < 1e-10
    assert np.linalg.eigvalsh(R)[-1] <= eps**-0.5 * (1 + 1e-12)


def test_inverse_root_float32_keeps_an_eps_below_the_ulp(xp, rng):
    # V is exactly rank 5 in float32 (integer entries, exact products): the null space must
    # get eps^-1/2 = 100. A float32 eigh puts eigenvalues ~1e-2 there (torch: 84 % error).
    m, eps = 20, 1e-4
    B = rng.integers(-300, 301, size=(m, 5)).astype(np.float32)
    V = B @ B.T
    assert np.abs(V).max() < 2**24 and np.array_equal(
        V.astype(np.float64), B.astype(np.float64) @ B.T.astype(np.float64)
    )
    R = inverse_root(xp.asarray(V), eps)
    assert R.dtype == xp.float32
    R = xp.to_numpy(R).astype(np.float64)
    ref = np.real(
        scipy.linalg.fractional_matrix_power(V.astype(np.float64) + eps * np.eye(m), -0.5)
    )
    assert rel(R, ref) < 1e-5
    np.testing.assert_array_equal(R, R.T)


def test_inverse_root_errors(xp, rng):
    V = xp.asarray(np.eye(3))
    with pytest.raises(ValueError, match="V"):
        inverse_root(xp.asarray(np.ones((2, 3))), 1e-3)
    with pytest.raises(ValueError, match="V"):
        inverse_root(xp.asarray(np.array([[1.0, np.inf], [np.inf, 1.0]])), 1e-3)
    with pytest.raises(TypeError, match="V"):
        inverse_root(xp.asarray(np.eye(3, dtype=np.int64)), 1e-3)
    with pytest.raises(ValueError, match="eps"):
        inverse_root(V, 0.0)
    with pytest.raises(ValueError, match="eps"):
        inverse_root(V, float("nan"))
    with pytest.raises(TypeError, match="eps"):
        inverse_root(V, "1e-3")
    with pytest.raises(ValueError, match="power"):
        inverse_root(V, 1e-3, power=-0.5)
