"""Tall-skinny kernels shared by the integrators.

``qr_tall`` / :func:`orthonormalize` factor a ``d x k`` matrix (``k`` small) with CholeskyQR2:
two passes of ``Q = A R^{-1}`` where ``R^T R = A^T A`` is the Cholesky factor of the small
``k x k`` Gram matrix (computed in float64 for float32 input). It costs two tall products per
pass and no column-by-column sweep over ``d``, unlike Householder QR, which LAPACK runs at a
small fraction of memory bandwidth for ``k << d``.

CholeskyQR2 is accurate when ``kappa(A) <~ u^{-1/2}``; for rank-deficient or ill-conditioned
input (``cond(A^T A)`` above :data:`GRAM_COND_LIMIT` for the dtype, or a Cholesky that fails)
the kernels fall back to Householder QR (``xp.linalg.qr``), which returns orthonormal columns
for any input (ALGORITHMS.md A.6: ``[P Q]`` is rank deficient by construction).
"""

from __future__ import annotations

from typing import Any

from lowrank_precond.backends import array_namespace, check_floating, device_of, to_core

__all__ = ["GRAM_COND_LIMIT", "core_svd", "householder_qr", "orthonormalize", "qr_tall"]

#: largest ``cond(A^T A)`` for which CholeskyQR2 is used, per dtype name of ``A``;
#: above it, Householder QR. float64: kappa(A) <= 1e6 leaves the first pass with
#: orthogonality error <= u kappa^2 ~ 1e-4, which the second pass removes. float32 tall
#: products: kappa(A) <= ~300.
GRAM_COND_LIMIT = {"float64": 1e12, "float32": 1e5}


def _dtype_name(xp: Any, dtype: Any) -> str:
    return "float32" if dtype == xp.float32 else "float64"


def householder_qr(A: Any) -> tuple[Any, Any]:
    """Thin Householder QR ``A = Q R`` (``Q`` orthonormal even for rank-deficient ``A``)."""
    xp = array_namespace(A)
    return xp.linalg.qr(A)


def _cholesky_pass(xp: Any, A: Any) -> tuple[Any, Any] | None:
    """One CholeskyQR pass: ``(Q, R)`` with ``R`` in the core dtype, or None if unsafe."""
    G = to_core(A.T @ A) if A.dtype == xp.float64 else to_core(A).T @ to_core(A)
    G = (G + G.T) / 2
    w = xp.linalg.eigvalsh(G)
    wmax = float(w[-1])
    wmin = float(w[0])
    if not (wmax > 0.0) or wmin <= wmax / GRAM_COND_LIMIT[_dtype_name(xp, A.dtype)]:
        return None
    try:
        L = xp.linalg.cholesky(G)
    except Exception:  # backend-specific LinAlgError types
        return None
    R = L.T
    Rinv = xp.linalg.inv(R)
    if not bool(xp.all(xp.isfinite(Rinv))):
        return None
    return A @ xp.astype(Rinv, A.dtype), R


def qr_tall(A: Any) -> tuple[Any, Any]:
    """Thin QR of a tall-skinny ``A`` ``(d, k)``: CholeskyQR2 with a Householder fallback.

    Parameters
    ----------
    A : array, shape (d, k), real floating, ``k <= d``

    Returns
    -------
    Q : array, shape (d, k)
        Orthonormal columns, ``A``'s dtype.
    R : array, shape (k, k)
        Upper triangular with ``A = Q R``; ``A``'s dtype.

    Notes
    -----
    For float32 input the Gram matrices are formed and factored in float64.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.random.default_rng(0).standard_normal((1000, 4))
    >>> Q, R = qr_tall(A)
    >>> bool(np.allclose(Q.T @ Q, np.eye(4), atol=1e-14)), bool(np.allclose(Q @ R, A))
    (True, True)
    """
    xp = check_floating("A", A)
    if A.ndim != 2 or A.shape[1] > A.shape[0]:
        raise ValueError(f"A: expected a tall 2-D array (d >= k), got shape {tuple(A.shape)}")
    if A.shape[1] == 0:
        return A, xp.zeros((0, 0), dtype=A.dtype, device=device_of(A))
    first = _cholesky_pass(xp, A)
    if first is not None:
        Q1, R1 = first
        second = _cholesky_pass(xp, Q1)
        if second is not None:
            Q, R2 = second
            return Q, xp.astype(R2 @ R1, A.dtype)
    return householder_qr(A)


def orthonormalize(A: Any) -> Any:
    """Orthonormal basis ``Q`` ``(d, k)`` of the columns of ``A`` (the ``Q`` of :func:`qr_tall`).

    For rank-deficient ``A`` the Householder fallback still returns ``k`` orthonormal
    columns whose span contains ``range(A)``.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.ones((5, 2))                     # rank 1
    >>> Q = orthonormalize(A)
    >>> bool(np.allclose(Q.T @ Q, np.eye(2)))
    True
    """
    return qr_tall(A)[0]


def core_svd(C: Any) -> tuple[Any, Any, Any]:
    """SVD of a small core matrix in float64 (for float32 input); results in ``C``'s dtype.

    Returns ``(W_left, sig, W_right_T)`` with ``C = W_left diag(sig) W_right_T``.
    """
    xp = array_namespace(C)
    Wl, sig, WrT = xp.linalg.svd(to_core(C), full_matrices=False)
    return xp.astype(Wl, C.dtype), xp.astype(sig, C.dtype), xp.astype(WrT, C.dtype)
