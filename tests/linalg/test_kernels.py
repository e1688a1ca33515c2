import numpy as np
import pytest

from lowrank_precond.linalg import kernels
from lowrank_precond.linalg.kernels import core_svd, orthonormalize, qr_tall


def _orth_err(Q):
    return np.abs(Q.T @ Q - np.eye(Q.shape[1])).max()


def test_qr_tall_well_conditioned(xp, rng):
    A = rng.standard_normal((500, 6))
    Q, R = qr_tall(xp.asarray(A))
    Q, R = xp.to_numpy(Q), xp.to_numpy(R)
    assert _orth_err(Q) < 1e-13
    np.testing.assert_allclose(Q @ R, A, rtol=0, atol=1e-12 * np.abs(A).max())
    np.testing.assert_array_equal(np.tril(R, -1), 0.0)


@pytest.mark.parametrize("kind", ["rank_deficient", "ill_conditioned", "zero_column"])
def test_fallback_to_householder(xp, rng, monkeypatch, kind):
    A = rng.standard_normal((300, 5))
    if kind == "rank_deficient":
        A[:, 4] = A[:, 0] - 2 * A[:, 1]
    elif kind == "ill_conditioned":
        A[:, 4] = A[:, 0] + 1e-9 * A[:, 4]
    else:
        A[:, 2] = 0.0
    calls = []
    real = kernels.householder_qr
    monkeypatch.setattr(kernels, "householder_qr", lambda a: calls.append(1) or real(a))
    Q, R = qr_tall(xp.asarray(A))
    Q, R = xp.to_numpy(Q), xp.to_numpy(R)
    assert calls, "expected the Householder fallback"
    assert _orth_err(Q) < 1e-13
    np.testing.assert_allclose(Q @ R, A, atol=1e-12 * np.abs(A).max())
    # span(Q) contains range(A)
    assert np.abs(A - Q @ (Q.T @ A)).max() < 1e-12 * np.abs(A).max()


def test_cholesky_path_taken_when_safe(monkeypatch, rng):
    calls = []
    real = kernels.householder_qr
    monkeypatch.setattr(kernels, "householder_qr", lambda a: calls.append(1) or real(a))
    qr_tall(rng.standard_normal((400, 4)))
    assert not calls


def test_float32(xp, rng):
    A = rng.standard_normal((2000, 5)).astype(np.float32)
    Q = orthonormalize(xp.asarray(A))
    assert Q.dtype == xp.float32
    assert _orth_err(xp.to_numpy(Q).astype(np.float64)) < 1e-5


def test_empty_and_errors(rng):
    Q, R = qr_tall(np.zeros((5, 0)))
    assert Q.shape == (5, 0) and R.shape == (0, 0)
    with pytest.raises(ValueError, match="A: expected a tall 2-D array"):
        qr_tall(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="A: expected a real floating-point array"):
        qr_tall(np.ones((4, 2), dtype=np.int64))


def test_core_svd_float32_core_in_float64(rng):
    C = rng.standard_normal((4, 4)).astype(np.float32)
    Wl, s, WrT = core_svd(C)
    assert Wl.dtype == np.float32
    np.testing.assert_allclose(Wl @ np.diag(s) @ WrT, C, atol=1e-5)
