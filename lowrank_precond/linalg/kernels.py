"""Tall-skinny kernels shared by the integrators.

Theory: :ref:`theory-notation` (thin QR), :ref:`theory-adagram-numerics`,
:ref:`theory-integrators-methods`, :ref:`theory-streamed-ksl`.

Public
------
:func:`orthonormalize` ``(A, *, return_r=False)`` and :func:`qr_tall` ``(A) -> (Q, R)``: thin QR
of a ``d x k`` matrix (``k`` up to a few dozen) by CholeskyQR2 with a Householder fallback.

Private, shared with :mod:`~lowrank_precond.linalg.integrators`
--------------------------------------------------------------
These take the namespace ``xp`` as their first argument and check nothing: their inputs
come validated from a public function (or from another kernel). Every O(d) operation of the
integrators is one of two row-local kernels, so that rows could later be sharded with one
all-reduce of a small matrix per step:

- ``_gram(xp, A, x)``: the Gram matrix of ``[A x]`` (a reduction, accumulated in the core
  dtype);
- ``_combine(xp, A, x, W)``: the tall product ``[A x] @ W`` (a map, one write per output).

For NumPy arrays both walk the rows in blocks of ``_BLOCK_ROWS`` (8192) so that the few
small products of a block run from cache and OpenBLAS stays on its single-threaded path
(its threaded path for ``n = 5`` columns is several times slower on a shared machine, and
so is a ``d x 5`` broadcast, whose inner loop runs per row). Blocks are processed
transposed, ``[A_b^T; x_b^T]``: one gemm per block with a long inner dimension, the
rank-one term included, and ``_combine`` returns column-contiguous arrays (``(c, d)``
buffer, transposed), the layout in which the next step reads its blocks as contiguous rows.
Other backends (torch, CuPy, array-api-strict) make one call per kernel.
``_extend_basis(xp, U, x)`` builds an orthonormal basis of ``span[U, x]`` from one Gram pass
and no write (implicit ``B = [U x] R^{-1}``), falling back to CholeskyQR2 / Householder
when ``[U x]`` is ill-conditioned; ``_complement`` pads a basis deterministically.

Thresholds (condition numbers of the column-equilibrated matrix, estimated exactly from the
small Cholesky factor):

- ``ONE_PASS_COND = 32``: a single Cholesky pass on an exactly computed Gram matrix leaves an
  orthogonality error of about ``u kappa^2`` (``u`` unit roundoff; ``<~ 1e-13`` in float64)
  and is used only for the integrators' implicit bases.
- ``CHOLQR2_COND`` (float64 ``1e6``, float32 ``1e3``): CholeskyQR2 leaves ``O(u)`` when the
  first pass is accurate to ``u kappa^2 <~ 1e-4`` (float64; float32 tall products add
  ``u kappa``); above it, or if Cholesky fails, Householder QR (``xp.linalg.qr``), which is
  orthonormal for any input, rank-deficient included (plain Cholesky-QR is not, see
  :ref:`theory-adagram-numerics`).
"""

from __future__ import annotations

import math
from typing import Any

from lowrank_precond.backends import check_floating, device_of, on_host, prefers_row_blocks
from lowrank_precond.linalg._numerics import (
    as_core,
    core_dtype_of,
    host_floats,
    nonfinite_message,
    require_finite,
)

__all__ = ["CHOLQR2_COND", "ONE_PASS_COND", "orthonormalize", "qr_tall"]

#: largest condition number (column-equilibrated) of ``[U x]`` for the one-pass implicit basis
ONE_PASS_COND = 32.0
#: largest condition number (column-equilibrated) for CholeskyQR2, per dtype of the tall input
CHOLQR2_COND = {"float64": 1e6, "float32": 1e3}
#: rows per block of the NumPy kernels (tests lower it to exercise the blocked path)
_BLOCK_ROWS = 8192
#: ``max|Q1^T Q1 - I|`` above which the second CholeskyQR pass is not trusted
_SECOND_PASS_TOL = 0.1
#: float64 ``x`` with ``max|x|`` above this is rescaled before its Gram matrix (no overflow)
_SCALE_ABOVE = 1e100
_CHOLESKY_ERRORS = (ValueError, RuntimeError, ArithmeticError)  # numpy / torch LinAlgError


# --------------------------------------------------------------------------- small helpers
def _eps(xp: Any, dtype: Any) -> float:
    return float(xp.finfo(dtype).eps)


def _dtype_key(xp: Any, dtype: Any) -> str:
    return "float32" if dtype == xp.float32 else "float64"


def _cast(xp: Any, a: Any, dtype: Any) -> Any:
    return a if a.dtype == dtype else xp.astype(a, dtype)


def _col(xp: Any, v: Any) -> Any:
    return xp.reshape(v, (v.shape[0], 1))


def _row(xp: Any, v: Any) -> Any:
    return xp.reshape(v, (1, v.shape[0]))


def _outer(xp: Any, a: Any, b: Any) -> Any:
    return _col(xp, a) * _row(xp, b)


def _eye(xp: Any, n: int, like: Any) -> Any:
    return xp.eye(n, dtype=like.dtype, device=device_of(like))


def _diag(xp: Any, v: Any) -> Any:
    """``diag(v)`` as an ``n x n`` matrix (the standard has no ``diag`` constructor)."""
    return _eye(xp, v.shape[0], v) * _row(xp, v)


def _blocks(d: int, like: Any) -> list[tuple[int, int]]:
    """Row ranges of the blocked kernels: NumPy only (one range for other backends)."""
    step = _BLOCK_ROWS
    if d <= step or not prefers_row_blocks(like):
        return [(0, d)]
    return [(a, min(a + step, d)) for a in range(0, d, step)]


# --------------------------------------------------------------------------- tall kernels
def _gram(xp: Any, A: Any, x: Any = None, xscale: float | None = None) -> Any:
    """``[A x]^T [A x]`` (``x`` optional), accumulated in the core dtype; one pass over rows.

    float32 blocks are cast to float64 before the products, so the Gram matrix of a float32
    input carries float64 rounding only. ``xscale`` multiplies ``x`` block by block (the
    Gram matrix of ``[A, xscale x]``, for ``x`` whose squares would overflow).

    The blocked (NumPy) path stacks ``[A_b^T; x_b^T]`` (``(k+1) x rows``, contiguous rows
    when ``A`` is column-contiguous, as the integrators' outputs are) and multiplies it by
    ``A_b``: one gemm per block gives ``A^T A`` and ``x^T A`` together. (Two distinct
    buffers also keep NumPy off syrk, which OpenBLAS runs ~2.5x slower at ``k = 5``.)
    """
    d, k = int(A.shape[0]), int(A.shape[1])
    cdt = core_dtype_of(xp, A.dtype)
    blocks = _blocks(d, A)
    if len(blocks) == 1:
        Ac = _cast(xp, A, cdt)
        if x is None:
            return Ac.T @ Ac
        xc = _cast(xp, x, cdt)
        if xscale is not None:
            xc = xc * xscale
        return _gram_from_parts(xp, Ac.T @ Ac, xc @ Ac, xc @ xc)
    rows = k if x is None else k + 1
    P = xp.zeros((rows, k), dtype=cdt, device=device_of(A))
    s = xp.zeros((), dtype=cdt, device=device_of(A))
    for a, b in blocks:
        Ab = _cast(xp, A[a:b, :], cdt)
        if x is None:
            Tb = xp.astype(A[a:b, :].T, cdt, copy=True)
        else:
            xb = _cast(xp, x[a:b], cdt)
            if xscale is not None:
                xb = xb * xscale
            Tb = xp.concat([_cast(xp, A[a:b, :].T, cdt), _row(xp, xb)], axis=0)
            s = s + xb @ xb
        P = P + Tb @ Ab
    if x is None:
        return P
    return _gram_from_parts(xp, P[:k, :], P[k, :], s)


def _gram_from_parts(xp: Any, G: Any, g: Any, s: Any) -> Any:
    """``[[G, g], [g^T, s]]``."""
    top = xp.concat([G, _col(xp, g)], axis=1)
    bottom = xp.concat([_row(xp, g), xp.reshape(s, (1, 1))], axis=1)
    return xp.concat([top, bottom], axis=0)


def _combine(xp: Any, A: Any, x: Any, W: Any) -> Any:
    """The tall product ``[A x] @ W`` (``x`` may be None) in ``A``'s dtype; one pass over rows.

    ``W`` is a small ``(k+1, c)`` (or ``(k, c)``) matrix, cast to ``A``'s dtype.

    The blocked (NumPy) path computes ``W^T [A_b^T; x_b^T]`` (one gemm with a long inner
    loop, the rank-one term included) into a ``(c, d)`` buffer and returns its transpose: a
    column-contiguous ``(d, c)`` array, the layout the next step's blocks read fastest.
    """
    d, k = int(A.shape[0]), int(A.shape[1])
    W = _cast(xp, W, A.dtype)
    c = int(W.shape[1])
    blocks = _blocks(d, A)
    if len(blocks) == 1:
        out = A @ W[:k, :]
        if x is None:
            return out
        if on_host(A) and c <= 16:
            # column by column: a broadcast over rows of c entries runs NumPy's inner loop
            # per row, and costs torch a d x c temporary
            for j in range(c):
                out[:, j] += float(W[k, j]) * x
            return out
        return out + _col(xp, x) * _row(xp, W[k, :])
    WT = W.T
    outT = xp.empty((c, d), dtype=A.dtype, device=device_of(A))
    for a, b in blocks:
        Tb = A[a:b, :].T
        if x is not None:
            Tb = xp.concat([Tb, _row(xp, x[a:b])], axis=0)
        outT[:, a:b] = WT @ Tb
    return outT.T


# --------------------------------------------------------------------------- small cores
def _cholesky_eq(xp: Any, G: Any) -> tuple[Any, Any, float] | None:
    """Equilibrated Cholesky of a small Gram matrix ``G = A^T A`` (core dtype).

    Returns ``(R, T, kappa)`` with ``G = R^T R`` (``R`` upper triangular), ``T = R^{-1}`` and
    ``kappa`` the condition number of ``A D^{-1}`` (``D`` the column norms), computed from
    the small factor; ``None`` when a diagonal entry is zero or not finite (then ``A`` has a
    zero or non-finite column: a Gram matrix is finite iff its diagonal is), the
    factorization fails (the exception type differs per backend; CuPy returns NaN instead)
    or is not finite. Two host transfers: the diagonal test, and ``(smin, smax)`` together,
    which also carry the finiteness of the factor (a non-finite one is replaced by zeros,
    whose ``smin = 0`` declines).
    """
    dg = xp.linalg.diagonal(G)
    if not bool(xp.all(xp.isfinite(dg) & (dg > 0))):
        return None
    D = xp.sqrt(dg)
    Gs = G / _outer(xp, D, D)
    Gs = (Gs + Gs.T) / 2
    try:
        L = xp.linalg.cholesky(Gs)
    except _CHOLESKY_ERRORS:
        return None
    L = xp.where(xp.all(xp.isfinite(L)), L, xp.zeros_like(L))
    Rs = L.T
    sv = xp.linalg.svdvals(Rs)
    smin, smax = host_floats(xp, sv[-1], sv[0])
    if not smin > 0.0:
        return None
    kappa = smax / smin
    Ts = xp.linalg.inv(Rs)
    return Rs * _row(xp, D), Ts / _col(xp, D), kappa


def _qr_core(xp: Any, C: Any) -> tuple[Any, Any]:
    """Householder QR of a small core matrix (exact orthonormality, any rank)."""
    return xp.linalg.qr(C)


# --------------------------------------------------------------------------- public QR
def _cholqr2_cond(xp: Any, dtype: Any) -> float:
    return CHOLQR2_COND[_dtype_key(xp, dtype)]


def _qr_tall_impl(xp: Any, A: Any, G: Any = None) -> tuple[Any, Any, bool]:
    """``(Q, R_core, householder_used)`` for a validated tall ``A``; ``G`` its Gram if known.

    ``G`` must be a Gram matrix (:func:`_cholesky_eq` declines a non-finite one by its
    diagonal, so a non-finite ``A`` goes to Householder QR).
    """
    k = int(A.shape[1])
    if G is None:
        G = _gram(xp, A)
    first = _cholesky_eq(xp, G)
    if first is not None and first[2] <= _cholqr2_cond(xp, A.dtype):
        R1, T1, _ = first
        Q1 = _combine(xp, A, None, T1)
        G2 = _gram(xp, Q1)
        second = _cholesky_eq(xp, G2)
        if second is not None:
            dev = float(xp.max(xp.abs(G2 - _eye(xp, k, G2))))
            if dev <= _SECOND_PASS_TOL:
                R2, T2, _ = second
                return _combine(xp, Q1, None, T2), R2 @ R1, False
    Q, R = xp.linalg.qr(A)
    return Q, as_core(xp, R), True


def _qr_tall(xp: Any, A: Any) -> tuple[Any, Any]:
    """Unchecked :func:`qr_tall`: ``(Q, R)`` of a validated tall ``A``, ``R`` in ``A``'s dtype."""
    if int(A.shape[1]) == 0:
        return A, xp.zeros((0, 0), dtype=A.dtype, device=device_of(A))
    Q, R, _ = _qr_tall_impl(xp, A)
    return Q, _cast(xp, R, A.dtype)


def _check_tall(A: Any) -> Any:
    xp = check_floating("A", A)
    if A.ndim != 2:
        raise ValueError(f"A: expected a 2-D array, got shape {tuple(A.shape)}")
    if A.shape[1] > A.shape[0]:
        raise ValueError(f"A: expected at most as many columns as rows, got shape {tuple(A.shape)}")
    require_finite(xp, ("A", A))
    return xp


def orthonormalize(A: Any, *, return_r: bool = False) -> Any:
    """Orthonormal basis of the columns of a tall-skinny ``A`` (CholeskyQR2, Householder fallback).

    CholeskyQR2 (two passes of ``Q = A R^{-1}`` with ``R^T R = A^T A``, the ``k x k`` Gram
    matrix factored in float64 for float32 input) costs two Gram reductions and two tall
    products, each one pass over ``A``. When ``A`` is rank deficient or ill-conditioned (the
    equilibrated condition number, computed from the small Cholesky factor, above
    ``CHOLQR2_COND``: 1e6 for float64, 1e3 for float32), when Cholesky fails, or when the
    second pass finds ``max|Q1^T Q1 - I| > 0.1``, it falls back to Householder QR
    (``xp.linalg.qr``), which returns orthonormal columns for every input (Cholesky-QR alone
    is not safe for the rank-deficient ``[P Q]``, :ref:`theory-adagram-numerics`).

    Parameters
    ----------
    A : array, shape (d, k)
        Real floating and finite, ``k <= d`` (``k`` small: the work is O(d k^2)).
    return_r : bool, keyword-only
        Also return ``R`` (same as :func:`qr_tall`).

    Returns
    -------
    Q : array, shape (d, k)
        Orthonormal columns in ``A``'s dtype whose span contains ``range(A)`` (equal to it
        when ``A`` has full column rank).
    R : array, shape (k, k), only with ``return_r=True``
        Upper triangular, ``A = Q R`` (``A``'s dtype).

    Raises
    ------
    TypeError
        ``A`` not a real floating array, ``return_r`` not a bool.
    ValueError
        ``A`` not 2-D, with more columns than rows, or containing NaN or inf.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.random.default_rng(0).standard_normal((1000, 4))
    >>> Q, R = orthonormalize(A, return_r=True)
    >>> bool(np.abs(Q.T @ Q - np.eye(4)).max() < 1e-14), bool(np.allclose(Q @ R, A))
    (True, True)
    >>> Q = orthonormalize(np.ones((5, 2)))            # rank 1: Householder fallback
    >>> bool(np.allclose(Q.T @ Q, np.eye(2)))
    True
    """
    if not isinstance(return_r, bool):
        raise TypeError(f"return_r: expected a bool, got {return_r!r}")
    Q, R = _qr_tall(_check_tall(A), A)
    return (Q, R) if return_r else Q


def qr_tall(A: Any) -> tuple[Any, Any]:
    """Thin QR ``A = Q R`` of a tall-skinny ``A`` ``(d, k)``: ``orthonormalize(A, return_r=True)``.

    Parameters
    ----------
    A : array, shape (d, k), real floating and finite, ``k <= d``

    Returns
    -------
    Q : array, shape (d, k)
        Orthonormal columns, ``A``'s dtype.
    R : array, shape (k, k)
        Upper triangular, ``A``'s dtype (its diagonal may have either sign).

    Examples
    --------
    >>> import numpy as np
    >>> A = np.random.default_rng(1).standard_normal((200, 3))
    >>> Q, R = qr_tall(A)
    >>> bool(np.allclose(Q @ R, A)), bool(np.allclose(np.tril(R, -1), 0.0))
    (True, True)
    """
    return orthonormalize(A, return_r=True)


# --------------------------------------------------------------------------- bases
class _Basis:
    """Orthonormal ``B`` ``(d, m)`` with ``[A x] = B R`` (``R`` ``(m, k+1)``, core dtype).

    Implicit (``B = [A x] T``, never formed) or explicit (``B = Q``, a tall array).
    """

    def __init__(self, xp: Any, A: Any, x: Any, R: Any, T: Any = None, Q: Any = None) -> None:
        self.xp, self.A, self.x, self.R, self.T, self.Q = xp, A, x, R, T, Q

    @property
    def m(self) -> int:
        return int(self.R.shape[0])

    def tall(self, C: Any) -> Any:
        """``B @ C`` for a small core ``C`` ``(m, c)``: one pass over the rows."""
        if self.Q is not None:
            return _combine(self.xp, self.Q, None, C)
        return _combine(self.xp, self.A, self.x, self.T @ C)


def _drop_tol(xp: Any, dtype: Any, d: int) -> float:
    """Relative size of ``x``'s component outside ``span(A)`` treated as rounding noise."""
    return 10.0 * _eps(xp, dtype) * math.sqrt(max(d, 100))


def _extend_basis(xp: Any, A: Any, x: Any, name: str = "x") -> _Basis:
    """Orthonormal basis of ``span[A, x]`` for (near-)orthonormal ``A`` ``(d, k)``, ``x`` ``(d,)``.

    One Gram pass (no write). If the equilibrated ``[A x]`` has condition number <=
    ``ONE_PASS_COND`` the basis stays implicit, ``B = [A x] R^{-1}`` with ``R^T R`` the exact
    Gram matrix, so it also removes any loss of orthonormality that ``A`` carries. Otherwise
    ``[A x]`` is formed and factored by CholeskyQR2 / Householder; when ``x`` lies in
    ``span(A)`` to rounding (``|R[k, k]| <= 10 u sqrt(d) |x|``) its last column is dropped,
    so ``m = k`` (the basis is then ``span(A)``, which contains ``x``) instead of ``k + 1``.

    Unchecked: the caller has validated ``A`` and ``x`` (finite, one dtype). The one
    ``max|x|`` it brings to the host rescales a float64 ``x`` above 1e100 so that ``|x|^2``
    cannot overflow; as that value is on the host anyway, a non-finite ``x`` still raises
    ``ValueError("NAME: contains NaN or inf")`` naming ``name``, at no cost.
    """
    d, k = int(A.shape[0]), int(A.shape[1])
    xmax = float(xp.max(xp.abs(x))) if d > 0 else 0.0
    if not math.isfinite(xmax):
        raise ValueError(nonfinite_message(name))
    scale = xmax if (xmax > _SCALE_ABOVE and A.dtype == xp.float64) else None
    G = _gram(xp, A, x, None if scale is None else 1.0 / scale)
    chol = _cholesky_eq(xp, G)
    if chol is not None and chol[2] <= ONE_PASS_COND:
        R, T, _ = chol
        if scale is not None:  # T acts on [A, x / scale]
            T = T * _col(xp, _scales(xp, k, 1.0 / scale, T))
        basis = _Basis(xp, A, x, R, T=T)
    else:
        xs = x if scale is None else x / scale
        Q, R, _ = _qr_tall_impl(xp, xp.concat([A, _col(xp, xs)], axis=1), G=G)
        xnorm = float(xp.linalg.vector_norm(R[:, k]))
        # k = d: [A x] has only d rows (x is in span A); else drop x's column if it is noise
        if int(R.shape[0]) <= k or abs(float(R[k, k])) <= _drop_tol(xp, A.dtype, d) * xnorm:
            Q, R = Q[:, :k], R[:k, :]
        basis = _Basis(xp, A, x, R, Q=Q)
    if scale is not None:  # R's last column belongs to x / scale
        basis.R = basis.R * _row(xp, _scales(xp, k, scale, basis.R))
    return basis


def _scales(xp: Any, k: int, last: float, like: Any) -> Any:
    """``[1, ..., 1, last]`` of length ``k + 1``."""
    ones = xp.ones((k,), dtype=like.dtype, device=device_of(like))
    return xp.concat([ones, xp.asarray([last], dtype=like.dtype, device=device_of(like))])


def _generic_columns(xp: Any, d: int, m: int, like: Any) -> Any:
    """A deterministic, dense, generic ``d x m`` matrix (``cos`` of incommensurate frequencies).

    Column ``j`` is ``cos(2 pi frac(alpha_j i + beta_j))`` with ``alpha_j`` from the golden
    ratio: linearly independent, no zero pattern, and no relation to coordinate or
    low-frequency structure in the data.
    """
    dev = device_of(like)
    i = _col(xp, xp.arange(d, dtype=xp.float64, device=dev))
    j = xp.arange(1, m + 1, dtype=xp.float64, device=dev)
    phi = 0.6180339887498949
    alpha = j * phi - xp.floor(j * phi)
    beta = j * j * 0.7548776662466927
    t = i * _row(xp, alpha) + _row(xp, beta)
    E = xp.cos(2.0 * math.pi * (t - xp.floor(t)))
    return _cast(xp, E, like.dtype)


def _complement(xp: Any, B: Any, m: int) -> Any:
    """``m`` orthonormal columns orthogonal to ``range(B)`` (``B`` orthonormal ``(d, k)``).

    Deterministic: the last ``m`` columns of the QR (CholeskyQR2, Householder fallback) of
    ``[B, E]`` with ``E`` from :func:`_generic_columns`.
    """
    d, k = int(B.shape[0]), int(B.shape[1])
    E = _generic_columns(xp, d, m, B)
    Q, _, _ = _qr_tall_impl(xp, xp.concat([B, E], axis=1))
    return Q[:, k:]
