"""Rank-r matrix integrators: absorb a rank-one increment ``x y^T`` into ``M = U S V^T``.

Each integrator takes a :class:`~lowrank_precond.linalg.lowrank.LowRank` ``(U, S, V)`` with
orthonormal ``U, V`` ``(d, r)`` and returns a new ``LowRank`` approximating
``U S V^T + x y^T`` in O(d r^2) flops and O(d r) memory; no ``d x d`` array is formed
(ALGORITHMS.md B.2). Products with the increment are outer products.

- :func:`truncated_svd` — the best rank-r approximation (B.2.1).
- :func:`projector_splitting` — the projector-splitting (KSL) integrator of Lubich &
  Oseledets (2014), Lie–Trotter or Strang (B.2.2).
- :func:`basis_update_galerkin` — the basis-update & Galerkin (BUG) integrator of Ceruti &
  Lubich (2022), fixed rank or rank-adaptive (B.2.3).
- :func:`recompress` — the switch from the exact ``P Q^T`` form to ``U S V^T`` (B.1).

Small cores are factored in float64 for float32 input; the tall factors keep the input dtype.
"""

from __future__ import annotations

import math
from typing import Any

from lowrank_precond.backends import (
    array_namespace,
    check_in,
    check_int,
    check_positive,
    check_rank,
    check_vector,
    device_of,
    to_core,
)
from lowrank_precond.linalg.kernels import core_svd, householder_qr, qr_tall
from lowrank_precond.linalg.lowrank import Factored, LowRank

__all__ = ["basis_update_galerkin", "projector_splitting", "recompress", "truncated_svd"]


# --------------------------------------------------------------------------- helpers
def _check(lowrank: Any, x: Any, y: Any) -> tuple[Any, int, int]:
    if not isinstance(lowrank, LowRank):
        raise TypeError(f"lowrank: expected a LowRank, got {type(lowrank).__name__}")
    d, r = int(lowrank.U.shape[0]), int(lowrank.U.shape[1])
    xp = check_vector("x", x, d)
    check_vector("y", y, d)
    for name, a in (("x", x), ("y", y), ("S", lowrank.S), ("V", lowrank.V)):
        if a.dtype != lowrank.U.dtype:
            raise TypeError(f"{name}: dtype {a.dtype} differs from U's dtype {lowrank.U.dtype}")
    return xp, d, r


def _col(v: Any) -> Any:
    xp = array_namespace(v)
    return xp.reshape(v, (v.shape[0], 1))


def _row(v: Any) -> Any:
    xp = array_namespace(v)
    return xp.reshape(v, (1, v.shape[0]))


def _outer(a: Any, b: Any) -> Any:
    return _col(a) * _row(b)


def _diag(v: Any) -> Any:
    xp = array_namespace(v)
    n = v.shape[0]
    return xp.eye(n, dtype=v.dtype, device=device_of(v)) * _row(v)


def _tiny(xp: Any, dtype: Any) -> float:
    """Relative size below which a new direction is treated as numerically dependent."""
    return 1e-4 if dtype == xp.float32 else 1e-10


def _extend_basis(U: Any, x: Any) -> tuple[Any, Any]:
    """``[U, x] = Qx Rx`` with ``Qx = [U, q]`` orthonormal ``(d, r+1)``, ``Rx`` in the core dtype.

    Since ``U`` is orthonormal this is one Gram–Schmidt step, done twice (CGS2); when ``x``
    is numerically in ``span(U)`` Householder QR gives an orthonormal ``q`` instead.
    """
    xp = array_namespace(U, x)
    r = U.shape[1]
    a = U.T @ x
    h = x - U @ a
    a2 = U.T @ h
    h = h - U @ a2
    a = a + a2
    alpha = xp.linalg.vector_norm(h)
    xnorm = xp.linalg.vector_norm(x)
    if float(alpha) > _tiny(xp, x.dtype) * float(xnorm) and float(alpha) > 0.0:
        Qx = xp.concat([U, _col(h / alpha)], axis=1)
        top = xp.concat([xp.eye(r, dtype=x.dtype, device=device_of(x)), _col(a)], axis=1)
        bottom = xp.concat(
            [xp.zeros((1, r), dtype=x.dtype, device=device_of(x)), xp.reshape(alpha, (1, 1))],
            axis=1,
        )
        return Qx, to_core(xp.concat([top, bottom], axis=0))
    Qx, Rx = householder_qr(xp.concat([U, _col(x)], axis=1))
    return Qx, to_core(Rx)


def _blockdiag_one(S: Any) -> Any:
    """``[[S, 0], [0, 1]]`` in the core dtype."""
    xp = array_namespace(S)
    S = to_core(S)
    r = S.shape[0]
    zc = xp.zeros((r, 1), dtype=S.dtype, device=device_of(S))
    top = xp.concat([S, zc], axis=1)
    bottom = xp.concat([zc.T, xp.ones((1, 1), dtype=S.dtype, device=device_of(S))], axis=1)
    return xp.concat([top, bottom], axis=0)


def _tall(xp: Any, core: Any, like: Any) -> Any:
    return core if core.dtype == like.dtype else xp.astype(core, like.dtype)


# --------------------------------------------------------------------------- integrators
def truncated_svd(lowrank: LowRank, x: Any, y: Any, rank: int) -> LowRank:
    """Best rank-``rank`` approximation of ``U S V^T + x y^T`` (ALGORITHMS.md B.2.1).

    ``Qx Rx = qr([U, x])``, ``Qy Ry = qr([V, y])`` (one CGS2 step each, since ``U, V`` are
    orthonormal; Householder when the new vector is numerically in the span), then the SVD of
    the ``(r+1) x (r+1)`` core ``Rx diag(S, 1) Ry^T`` and the leading ``rank`` triplets.
    Exact iff ``rank(U S V^T + x y^T) <= rank`` [B01].

    Parameters
    ----------
    lowrank : LowRank
        ``U, V`` ``(d, r)`` orthonormal, ``S`` ``(r, r)`` (any, not only diagonal).
    x, y : array, shape (d,)
    rank : int
        ``1 <= rank <= r + 1`` (and ``<= d``).

    Returns
    -------
    LowRank
        ``U1, V1`` ``(d, rank)``, diagonal ``S1`` with non-increasing entries.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import LowRank
    >>> rng = np.random.default_rng(0)
    >>> U, _ = np.linalg.qr(rng.standard_normal((50, 3)))
    >>> V, _ = np.linalg.qr(rng.standard_normal((50, 3)))
    >>> M = LowRank(U, np.diag([3.0, 2.0, 1.0]), V)
    >>> x, y = rng.standard_normal(50), rng.standard_normal(50)
    >>> M1 = truncated_svd(M, x, y, rank=4)                 # rank 4: exact
    >>> bool(np.allclose(M1.dense(), M.dense() + np.outer(x, y)))
    True
    """
    xp, d, r = _check(lowrank, x, y)
    rank = check_rank("rank", rank, d)
    if rank > r + 1:
        raise ValueError(f"rank: at most r + 1 = {r + 1} for a rank-one increment, got {rank}")
    Qx, Rx = _extend_basis(lowrank.U, x)
    Qy, Ry = _extend_basis(lowrank.V, y)
    C = Rx @ _blockdiag_one(lowrank.S) @ Ry.T
    Wl, sig, WrT = xp.linalg.svd(C, full_matrices=False)
    U1 = Qx @ _tall(xp, Wl[:, :rank], x)
    V1 = Qy @ _tall(xp, WrT[:rank, :].T, x)
    return LowRank(U1, _tall(xp, _diag(sig[:rank]), x), V1)


def projector_splitting(lowrank: LowRank, x: Any, y: Any, order: int = 1) -> LowRank:
    """Projector-splitting (KSL) integrator for ``U S V^T + x y^T`` (ALGORITHMS.md B.2.2).

    Lie–Trotter (``order=1``), with ``w = V^T y``::

        U1, Shat = qr(U S + x w^T);  z = U1^T x;  Stil = Shat - z w^T
        V1, S1^T = qr(V Stil^T + y z^T)

    Closed form: ``Y1 = U1 U1^T (Y0 + x y^T)`` with ``range(U1) = range((Y0 + x y^T) V0)``
    [B02]. ``order=2`` is the Strang composition K(1/2) S(1/2) L(1) S(1/2) K(1/2), three QRs
    [B04]. Exact when ``V1^T V0`` is invertible and the sum has rank ``<= r`` (B.2).

    Parameters
    ----------
    lowrank : LowRank
        ``U, V`` ``(d, r)`` orthonormal, ``S`` ``(r, r)``.
    x, y : array, shape (d,)
    order : {1, 2}

    Returns
    -------
    LowRank
        Rank ``r``, full ``r x r`` core.

    References
    ----------
    C. Lubich, I. V. Oseledets, "A projector-splitting integrator for dynamical low-rank
    approximation", BIT 54 (2014).

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import LowRank
    >>> rng = np.random.default_rng(1)
    >>> U, _ = np.linalg.qr(rng.standard_normal((40, 2)))
    >>> V, _ = np.linalg.qr(rng.standard_normal((40, 2)))
    >>> M = LowRank(U, np.diag([2.0, 1.0]), V)
    >>> x, y = U @ np.array([0.5, -1.0]), V @ np.array([1.0, 0.3])  # stays rank 2
    >>> M1 = projector_splitting(M, x, y)
    >>> bool(np.allclose(M1.dense(), M.dense() + np.outer(x, y)))
    True
    """
    xp, d, r = _check(lowrank, x, y)
    order = check_int("order", order)
    check_in("order", order, (1, 2))
    U, S, V = lowrank.U, lowrank.S, lowrank.V
    w = V.T @ y
    if order == 1:
        U1, Shat = qr_tall(U @ S + _outer(x, w))
        z = U1.T @ x
        Stil = Shat - _outer(z, w)
        V1, S1T = qr_tall(V @ Stil.T + _outer(y, z))
        return LowRank(U1, S1T.T, V1)
    half = w / 2
    U1, Sh = qr_tall(U @ S + _outer(x, half))
    z = U1.T @ x
    St = Sh - _outer(z, half)
    V1, SbT = qr_tall(V @ St.T + _outer(y, z))
    w1 = (V1.T @ y) / 2
    St2 = SbT.T - _outer(z, w1)
    U2, S2 = qr_tall(U1 @ St2 + _outer(x, w1))
    return LowRank(U2, S2, V1)


def basis_update_galerkin(
    lowrank: LowRank,
    x: Any,
    y: Any,
    rank_adaptive: bool = False,
    tol: float = 0.0,
    max_rank: int | None = None,
) -> LowRank:
    """Basis-update & Galerkin (BUG) integrator for ``U S V^T + x y^T`` (ALGORITHMS.md B.2.3).

    Both bases come from the old factors, then a Galerkin core (``w = V^T y``,
    ``z0 = U^T x``)::

        U1 = orth(U S + x w^T);  V1 = orth(V S^T + y z0^T)
        S1 = (U1^T U) S (V1^T V)^T + (U1^T x)(V1^T y)^T

    Closed form ``Y1 = U1 U1^T (Y0 + x y^T) V1 V1^T`` [B03].

    Rank-adaptive (``rank_adaptive=True``): augmented bases ``orth([K, U])``,
    ``orth([L, V])`` (``d x 2r``), the Galerkin core in them, its SVD, and the smallest rank
    ``r1 >= 1`` with ``||sig[r1:]|| <= tol``, capped at ``max_rank``. For a rank-one
    increment this equals the truncated SVD at the chosen rank [B07].

    Parameters
    ----------
    lowrank : LowRank
    x, y : array, shape (d,)
    rank_adaptive : bool
    tol : float, >= 0
        Truncation tolerance (absolute, Frobenius norm of the discarded singular values).
    max_rank : int, optional
        Upper bound on the new rank (rank-adaptive only); default ``2 r`` (no cap beyond the
        augmented basis, whose effective rank is at most ``r + 1``).

    References
    ----------
    G. Ceruti, C. Lubich, "An unconventional robust integrator for dynamical low-rank
    approximation", BIT 62 (2022).

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import LowRank
    >>> rng = np.random.default_rng(2)
    >>> U, _ = np.linalg.qr(rng.standard_normal((30, 2)))
    >>> V, _ = np.linalg.qr(rng.standard_normal((30, 2)))
    >>> M = LowRank(U, np.diag([2.0, 1.0]), V)
    >>> x, y = rng.standard_normal(30), rng.standard_normal(30)
    >>> M1 = basis_update_galerkin(M, x, y, rank_adaptive=True, tol=1e-12)
    >>> M1.rank, bool(np.allclose(M1.dense(), M.dense() + np.outer(x, y)))
    (3, True)
    """
    xp, d, r = _check(lowrank, x, y)
    if not isinstance(rank_adaptive, bool):
        raise TypeError(f"rank_adaptive: expected a bool, got {rank_adaptive!r}")
    tol = check_positive("tol", tol, allow_zero=True)
    if max_rank is not None:
        max_rank = check_rank("max_rank", max_rank, d)
        if not rank_adaptive:
            raise ValueError("max_rank: only applies with rank_adaptive=True")
    U, S, V = lowrank.U, lowrank.S, lowrank.V
    w = V.T @ y
    z0 = U.T @ x
    K = U @ S + _outer(x, w)
    L = V @ S.T + _outer(y, z0)
    if not rank_adaptive:
        U1 = qr_tall(K)[0]
        V1 = qr_tall(L)[0]
        S1 = (U1.T @ U) @ S @ (V1.T @ V).T + _outer(U1.T @ x, V1.T @ y)
        return LowRank(U1, S1, V1)
    Uh = householder_qr(xp.concat([K, U], axis=1))[0]
    Vh = householder_qr(xp.concat([L, V], axis=1))[0]
    Sh = (Uh.T @ U) @ S @ (Vh.T @ V).T + _outer(Uh.T @ x, Vh.T @ y)
    Wl, sig, WrT = core_svd(Sh)
    sq = [float(sig[i]) ** 2 for i in range(sig.shape[0])]
    cap = min(max_rank if max_rank is not None else 2 * r, len(sq))
    r1 = cap
    for k in range(1, cap + 1):
        if math.sqrt(sum(sq[k:])) <= tol:
            r1 = k
            break
    return LowRank(Uh @ Wl[:, :r1], _diag(sig[:r1]), Vh @ WrT[:r1, :].T)


def recompress(factored: Factored, rank: int) -> LowRank:
    """Convert the exact ``M = P Q^T`` to ``U S V^T`` of rank ``rank`` (ALGORITHMS.md B.1).

    ``Qp Rp = qr(P)``, ``Qq Rq = qr(Q)`` (:func:`~lowrank_precond.linalg.kernels.qr_tall`,
    which falls back to Householder when ``P`` or ``Q`` is rank deficient),
    ``Uc Sig Vc^T = svd(Rp Rq^T)``, ``U = Qp Uc``, ``S = diag(Sig)``, ``V = Qq Vc``, keeping
    the leading ``min(k, rank)`` triplets (the best approximation of that rank). When
    ``k < rank`` the bases are padded with orthonormal columns (orthogonal to the kept ones,
    from a Householder QR against the first coordinate vectors) and zero singular values, so
    the result has exactly ``rank`` columns and represents ``P Q^T`` exactly.

    Parameters
    ----------
    factored : Factored
        ``P, Q`` ``(d, k)``.
    rank : int
        ``1 <= rank <= d``.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import Factored
    >>> rng = np.random.default_rng(3)
    >>> F = Factored(rng.standard_normal((20, 2)), rng.standard_normal((20, 2)))
    >>> M = recompress(F, 3)
    >>> M.rank, bool(np.allclose(M.dense(), F.dense()))
    (3, True)
    """
    if not isinstance(factored, Factored):
        raise TypeError(f"factored: expected a Factored, got {type(factored).__name__}")
    d, k = int(factored.P.shape[0]), factored.rank
    rank = check_rank("rank", rank, d)
    xp = array_namespace(factored.P)
    P, Q = factored.P, factored.Q
    kept = min(k, rank)
    if kept > 0:
        Qp, Rp = qr_tall(P)
        Qq, Rq = qr_tall(Q)
        Wl, sig, WrT = xp.linalg.svd(to_core(Rp) @ to_core(Rq).T, full_matrices=False)
        U = Qp @ _tall(xp, Wl[:, :kept], P)
        V = Qq @ _tall(xp, WrT[:kept, :].T, P)
        sig = _tall(xp, sig[:kept], P)
    else:
        U = V = xp.zeros((d, 0), dtype=P.dtype, device=device_of(P))
        sig = xp.zeros((0,), dtype=P.dtype, device=device_of(P))
    if kept < rank:
        U, V = _pad(U, rank), _pad(V, rank)
        sig = xp.concat([sig, xp.zeros((rank - kept,), dtype=P.dtype, device=device_of(P))])
    return LowRank(U, _diag(sig), V)


def _pad(U: Any, rank: int) -> Any:
    """``U`` extended to ``rank`` orthonormal columns (deterministic)."""
    xp = array_namespace(U)
    d, k = U.shape
    E = xp.eye(d, rank, dtype=U.dtype, device=device_of(U))
    Qh = householder_qr(xp.concat([U, E], axis=1))[0]
    return xp.concat([U, Qh[:, k:rank]], axis=1)
