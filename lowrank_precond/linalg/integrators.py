"""Rank-r integrators: absorb a rank-one increment ``x y^T`` into ``M = U S V^T``.

Theory: :ref:`theory-integrators`.

Each integrator takes a :class:`~lowrank_precond.linalg.lowrank.LowRank` ``(U, S, V)`` with
orthonormal ``U, V`` ``(d, r)`` and returns a new ``LowRank`` approximating
``U S V^T + x y^T`` in O(d r^2) flops and O(d r) memory; no ``d x d`` array is formed.

- :func:`truncated_svd` -- the best rank-``rank`` approximation (:ref:`theory-integrator-svd`);
- :func:`projector_splitting` -- projector splitting (KSL), Lie--Trotter or Strang
  (:ref:`theory-integrator-ksl`);
- :func:`basis_update_galerkin` -- basis update & Galerkin (BUG), fixed rank or rank-adaptive
  (:ref:`theory-integrator-bug`);
- :func:`recompress` -- the switch from the exact ``P Q^T`` to ``U S V^T``
  (:ref:`theory-integrators-warmup`).

How they are computed
---------------------
All three integrators act inside ``span[U, x]`` and ``span[V, y]``: every K-, L- and
Galerkin quantity of the integrators is a combination of ``U`` and ``x`` (resp. ``V`` and
``y``). So each step is

1. one Gram pass per side: ``Bu = [U x] Ru^{-1}`` is an orthonormal basis of ``span[U, x]``
   from the exact ``(r+1) x (r+1)`` Gram matrix (the closed-form Gram idea of
   :ref:`theory-streamed-ksl`, made exact:
   computing ``U^T U`` as well also corrects any loss of orthonormality ``U`` carries, so it
   does not accumulate over steps). Ill-conditioned ``[U x]`` (``x`` nearly in ``span U``)
   falls back to CholeskyQR2 / Householder QR of ``[U x]`` (:mod:`.kernels`);
2. the integrator's recipe on the small coordinates ``Ru`` (``U = Bu Ru[:, :r]``,
   ``x = Bu Ru[:, r]``), with Householder QR / SVD of ``(r+1) x r`` cores in the core dtype
   (float64 for float32 input);
3. one write pass per output factor: ``U1 = [U x] W`` for a small ``W`` (NumPy outputs are
   column-contiguous: :mod:`.kernels`).

Cost: O(d r^2) flops, two Gram passes and two write passes over ``d x (r+1)`` data for every
integrator and order (measured ~3.3x the time to read and write ``U`` and ``V`` once at
d = 1e6, r = 5, float64 NumPy). When ``x`` is nearly in ``span U`` (equilibrated
``kappa([U x]) > 32``) that side's basis costs a CholeskyQR2 of the formed ``[U x]`` (about
four more passes); above ``kappa = 1e6`` (``x`` in ``span U`` to ~6 digits) a Householder
QR, ~25x the floor with NumPy's LAPACK.

A numerically rank-deficient ``K = U S + x w^T`` (or ``L``) is completed by the small
Householder QR *inside* ``span[U, x]``, where the spec's ``qr`` of the tall ``d x r`` ``K``
completes with a direction set by rounding noise in ``R^d``. Both are valid KSL / BUG steps
(``range(U1) ⊇ range(K)``); ours is deterministic and keeps a term the tall QR would drop
when ``rank(U S V^T) = r`` (see the [B06] tests).

Checks
------
Each public function validates its arguments once -- kinds, dtypes and shapes, then the
scalars, then the finiteness of every array (``ValueError("NAME: contains NaN or inf")``,
one host transfer on a device) -- and calls its unchecked kernel, the same name with a
leading underscore and the namespace first: ``_truncated_svd(xp, lowrank, x, y, rank)``,
``_projector_splitting(xp, lowrank, x, y, order)``, ``_basis_update_galerkin(xp, lowrank, x,
y, rank_adaptive, tol, max_rank)``, ``_recompress(xp, factored, rank)``. The kernels call
kernels only and check nothing; :mod:`lowrank_precond.linalg._unchecked` collects them for
the preconditioners, which validate their gradient once per step.
"""

from __future__ import annotations

import math
from typing import Any

from lowrank_precond.backends import (
    array_namespace,
    check_int,
    check_positive,
    check_rank,
    check_vector,
    device_of,
)
from lowrank_precond.linalg._numerics import as_core, require_finite
from lowrank_precond.linalg.kernels import (
    _Basis,
    _cast,
    _combine,
    _complement,
    _diag,
    _extend_basis,
    _outer,
    _qr_core,
    _qr_tall,
)
from lowrank_precond.linalg.lowrank import Factored, LowRank, _lowrank

__all__ = ["basis_update_galerkin", "projector_splitting", "recompress", "truncated_svd"]


# --------------------------------------------------------------------------- validation
def _check_step(lowrank: Any, x: Any, y: Any) -> tuple[Any, int, int]:
    """Validate the kinds, dtypes and shapes of ``(lowrank, x, y)``; return ``(xp, d, r)``.

    Their finiteness is :func:`_require_finite_step`, done after the scalar arguments.
    """
    if not isinstance(lowrank, LowRank):
        raise TypeError(f"lowrank: expected a LowRank, got {type(lowrank).__name__}")
    U, S, V = lowrank.U, lowrank.S, lowrank.V
    d, r = int(U.shape[0]), int(U.shape[1])
    if r < 1:
        raise ValueError("lowrank: has rank 0; start from recompress(factored, rank)")
    if r > d:
        raise ValueError(f"lowrank: rank {r} exceeds the dimension d={d}")
    check_vector("x", x, d)
    check_vector("y", y, d)
    try:
        xp = array_namespace(U, S, V, x, y)
    except TypeError:
        raise TypeError("x, y: must be arrays of the same kind as lowrank's factors") from None
    for name, a in (("lowrank.S", S), ("lowrank.V", V), ("x", x), ("y", y)):
        if a.dtype != U.dtype:
            raise TypeError(f"{name}: dtype {a.dtype} differs from lowrank.U's dtype {U.dtype}")
    return xp, d, r


def _require_finite_step(xp: Any, lowrank: LowRank, x: Any, y: Any) -> None:
    """``ValueError("NAME: contains NaN or inf")`` for the first non-finite array."""
    require_finite(
        xp,
        ("lowrank.S", lowrank.S),
        ("x", x),
        ("lowrank.U", lowrank.U),
        ("y", y),
        ("lowrank.V", lowrank.V),
    )


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {value!r}")
    return value


# --------------------------------------------------------------------------- shared steps
class _Step:
    """The two bases and the small coordinates shared by every integrator.

    ``Bu`` ``(d, mu)``, ``Bv`` ``(d, mv)`` orthonormal with ``U = Bu Uc``, ``x = Bu xc``,
    ``V = Bv Vc``, ``y = Bv yc``; ``S`` in the core dtype.
    """

    def __init__(self, xp: Any, lowrank: LowRank, x: Any, y: Any) -> None:
        r = lowrank.rank
        self.xp = xp
        self.Bu: _Basis = _extend_basis(xp, lowrank.U, x, "x")
        self.Bv: _Basis = _extend_basis(xp, lowrank.V, y, "y")
        self.Uc, self.xc = self.Bu.R[:, :r], self.Bu.R[:, r]
        self.Vc, self.yc = self.Bv.R[:, :r], self.Bv.R[:, r]
        self.S = as_core(xp, lowrank.S)
        self.like = lowrank.U

    def result(self, Cu: Any, S1: Any, Cv: Any) -> LowRank:
        """``LowRank(Bu Cu, S1, Bv Cv)`` with one write pass per factor."""
        S1 = _cast(self.xp, S1, self.like.dtype)
        return _lowrank(self.Bu.tall(Cu), S1, self.Bv.tall(Cv))


def _pad_to(xp: Any, U1: Any, V1: Any, sig: Any, rank: int) -> tuple[Any, Any, Any]:
    """Pad ``U1, V1`` ``(d, k)`` to ``rank`` columns (orthonormal complements), ``sig`` with 0."""
    k = int(U1.shape[1])
    if k >= rank:
        return U1, V1, sig
    U1 = xp.concat([U1, _complement(xp, U1, rank - k)], axis=1)
    V1 = xp.concat([V1, _complement(xp, V1, rank - k)], axis=1)
    zeros = xp.zeros((rank - k,), dtype=sig.dtype, device=device_of(sig))
    return U1, V1, xp.concat([sig, zeros])


def _svd_step(xp: Any, st: _Step, Z: Any, Cu: Any, Cv: Any, keep: int, rank: int) -> LowRank:
    """``LowRank`` from the SVD ``Z = P diag(sig) Qt`` of a core in the bases ``Bu Cu, Bv Cv``.

    Keeps ``keep`` triplets and pads to ``rank`` columns with zero singular values.
    """
    P, sig, Qt = xp.linalg.svd(Z, full_matrices=False)
    keep = min(keep, int(sig.shape[0]))
    U1 = st.Bu.tall(Cu @ P[:, :keep])
    V1 = st.Bv.tall(Cv @ Qt[:keep, :].T)
    U1, V1, sig = _pad_to(xp, U1, V1, _cast(xp, sig[:keep], U1.dtype), rank)
    return _lowrank(U1, _diag(xp, sig), V1)


# --------------------------------------------------------------------------- integrators
def truncated_svd(lowrank: LowRank, x: Any, y: Any, rank: int) -> LowRank:
    """Best rank-``rank`` approximation of ``U S V^T + x y^T`` (:ref:`theory-integrator-svd`).

    ``Bu Ru = qr([U, x])``, ``Bv Rv = qr([V, y])`` (implicit bases from one Gram pass each,
    see the module notes), then the SVD of the ``(r+1) x (r+1)`` core
    ``Ru diag(S, 1) Rv^T`` (float64 for float32 input) and its leading ``rank`` triplets.
    Exact iff ``rank(U S V^T + x y^T) <= rank`` [B01].

    Parameters
    ----------
    lowrank : LowRank
        ``U, V`` ``(d, r)`` orthonormal, ``S`` ``(r, r)`` (any core, not only diagonal).
    x, y : array, shape (d,)
        The increment ``x y^T``; same backend and dtype as ``lowrank``.
    rank : int
        Rank of the result, ``1 <= rank <= d``; may differ from ``r`` (shrink or grow). The
        sum has rank at most ``r + 1``; beyond that the result is padded with orthonormal
        columns (deterministic, orthogonal to the others) and zero singular values.

    Returns
    -------
    LowRank
        ``U1, V1`` ``(d, rank)``, diagonal ``S1`` with non-increasing, non-negative entries.

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
    >>> Y = M.dense() + np.outer(x, y)
    >>> W, s, Zt = np.linalg.svd(Y)
    >>> bool(np.allclose(truncated_svd(M, x, y, rank=2).dense(), (W[:, :2] * s[:2]) @ Zt[:2]))
    True
    """
    xp, d, _ = _check_step(lowrank, x, y)
    rank = check_rank("rank", rank, d)
    _require_finite_step(xp, lowrank, x, y)
    return _truncated_svd(xp, lowrank, x, y, rank)


def _truncated_svd(xp: Any, lowrank: LowRank, x: Any, y: Any, rank: int) -> LowRank:
    """Unchecked :func:`truncated_svd` (validated arguments, ``1 <= rank <= d``)."""
    st = _Step(xp, lowrank, x, y)
    D = _blockdiag_one(xp, st.S)
    Z = st.Bu.R @ D @ st.Bv.R.T
    eye_u = _eye_core(xp, st.Bu.m, st.S)
    eye_v = _eye_core(xp, st.Bv.m, st.S)
    return _svd_step(xp, st, Z, eye_u, eye_v, rank, rank)


def projector_splitting(lowrank: LowRank, x: Any, y: Any, order: int = 1) -> LowRank:
    """Projector-splitting (KSL) integrator for ``U S V^T + x y^T`` (:ref:`theory-integrator-ksl`).

    Lie--Trotter (``order=1``), K -> S -> L with ``w = V^T y``::

        U1, Shat = qr(U S + x w^T);  z = U1^T x;  Stil = Shat - z w^T
        V1, S1^T = qr(V Stil^T + y z^T)

    Closed form ``Y1 = U1 U1^T (Y0 + x y^T)``, ``range(U1) ⊇ range((Y0 + x y^T) V0)`` [B02].
    ``order=2`` is Strang, K(1/2) S(1/2) L(1) S(1/2) K(1/2), with three QRs [B04]::

        U1, Sh = qr(U S + x (w/2)^T);  z = U1^T x;  St = Sh - z (w/2)^T
        V1, Sb^T = qr(V St^T + y z^T); w1 = V1^T y; St2 = Sb - z (w1/2)^T
        U2, S2 = qr(U1 St2 + x (w1/2)^T)            -> (U2, S2, V1)

    Every QR is of an ``(r+1) x r`` coordinate matrix in the bases of ``span[U, x]`` and
    ``span[V, y]`` (module notes), so a step costs two Gram passes and two write passes over
    ``d x r`` data whatever the order.

    Parameters
    ----------
    lowrank : LowRank
        ``U, V`` ``(d, r)`` orthonormal, ``S`` ``(r, r)``.
    x, y : array, shape (d,)
        Same backend and dtype as ``lowrank``.
    order : {1, 2}
        1: Lie--Trotter; 2: Strang.

    Returns
    -------
    LowRank
        Rank ``r``, full (upper-triangular-transposed) ``r x r`` core.

    References
    ----------
    C. Lubich, I. V. Oseledets, "A projector-splitting integrator for dynamical low-rank
    approximation", BIT 54 (2014), arXiv:1301.1058.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import LowRank
    >>> rng = np.random.default_rng(1)
    >>> U, _ = np.linalg.qr(rng.standard_normal((40, 2)))
    >>> V, _ = np.linalg.qr(rng.standard_normal((40, 2)))
    >>> M = LowRank(U, np.diag([2.0, 1.0]), V)
    >>> x, y = U @ np.array([0.5, -1.0]), rng.standard_normal(40)   # sum stays rank 2
    >>> M1 = projector_splitting(M, x, y)
    >>> bool(np.allclose(M1.dense(), M.dense() + np.outer(x, y)))
    True
    >>> bool(np.allclose(projector_splitting(M, x, y, order=2).dense(), M1.dense()))
    True
    """
    xp, _, _ = _check_step(lowrank, x, y)
    if isinstance(order, bool):
        raise TypeError(f"order: expected 1 or 2, got {order!r}")
    order = check_int("order", order)
    if order not in (1, 2):
        raise ValueError(f"order: expected 1 or 2, got {order!r}")
    _require_finite_step(xp, lowrank, x, y)
    return _projector_splitting(xp, lowrank, x, y, order)


def _projector_splitting(xp: Any, lowrank: LowRank, x: Any, y: Any, order: int = 1) -> LowRank:
    """Unchecked :func:`projector_splitting` (validated arguments, ``order`` 1 or 2)."""
    st = _Step(xp, lowrank, x, y)
    Uc, xc, Vc, yc, S = st.Uc, st.xc, st.Vc, st.yc, st.S
    w = Vc.T @ yc  # = V^T y
    if order == 1:
        Q1, Shat = _qr_core(xp, Uc @ S + _outer(xp, xc, w))
        z = Q1.T @ xc
        Stil = Shat - _outer(xp, z, w)
        Q2, S1T = _qr_core(xp, Vc @ Stil.T + _outer(xp, yc, z))
        return st.result(Q1, S1T.T, Q2)
    half = w / 2
    Q1, Sh = _qr_core(xp, Uc @ S + _outer(xp, xc, half))
    z = Q1.T @ xc
    St = Sh - _outer(xp, z, half)
    Q2, SbT = _qr_core(xp, Vc @ St.T + _outer(xp, yc, z))
    w1 = (Q2.T @ yc) / 2
    St2 = SbT.T - _outer(xp, z, w1)
    Q3, S2 = _qr_core(xp, Q1 @ St2 + _outer(xp, xc, w1))
    return st.result(Q3, S2, Q2)


def basis_update_galerkin(
    lowrank: LowRank,
    x: Any,
    y: Any,
    rank_adaptive: bool = False,
    tol: float = 0.0,
    max_rank: int | None = None,
) -> LowRank:
    """Basis-update & Galerkin (BUG) integrator for ``U S V^T + x y^T``.

    Theory: :ref:`theory-integrator-bug`.

    Both bases from the old factors, then the Galerkin core (``w = V^T y``, ``z0 = U^T x``)::

        U1 = orth(U S + x w^T);  V1 = orth(V S^T + y z0^T)
        S1 = (U1^T U) S (V1^T V)^T + (U1^T x)(V1^T y)^T

    Closed form ``Y1 = U1 U1^T (Y0 + x y^T) V1 V1^T`` [B03].

    Rank-adaptive (``rank_adaptive=True``): augmented bases ``Uh = orth([K, U])``,
    ``Vh = orth([L, V])``, the Galerkin core ``Sh`` in them, its SVD, and the smallest rank
    ``r1 >= 1`` with ``||sig[r1:]||_2 <= tol``, capped at ``max_rank``. ``[K, U]`` lies in
    the ``(r+1)``-dimensional ``span[U, x]``, and ``orth`` is taken there (a ``d x 2r``
    Householder basis would add ``r - 1`` arbitrary columns with zero rows in ``Sh``); for a
    rank-one increment the Galerkin core is then exact, so this equals :func:`truncated_svd`
    at the chosen rank [B07].

    Parameters
    ----------
    lowrank : LowRank
        ``U, V`` ``(d, r)`` orthonormal, ``S`` ``(r, r)``.
    x, y : array, shape (d,)
        Same backend and dtype as ``lowrank``.
    rank_adaptive : bool
    tol : float, >= 0
        Absolute truncation tolerance on the 2-norm of the discarded singular values
        (rank-adaptive only). ``tol = 0`` truncates nothing below the cap: the result has
        ``min(max_rank, r + 1)`` columns.
    max_rank : int, optional
        Cap on the new rank (rank-adaptive only), ``1 <= max_rank <= d``. Default: the
        current rank ``r``, so the rank never grows unless asked (it can grow by at most one
        per step: the sum has rank ``<= r + 1``).

    Returns
    -------
    LowRank
        Fixed rank: rank ``r``, full core. Rank-adaptive: rank ``r1``, diagonal core.

    References
    ----------
    G. Ceruti, C. Lubich, "An unconventional robust integrator for dynamical low-rank
    approximation", BIT 62 (2022), arXiv:2010.02022; G. Ceruti, J. Kusch, C. Lubich, "A
    rank-adaptive robust integrator for dynamical low-rank approximation", BIT 62 (2022).

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import LowRank
    >>> rng = np.random.default_rng(2)
    >>> U, _ = np.linalg.qr(rng.standard_normal((30, 2)))
    >>> V, _ = np.linalg.qr(rng.standard_normal((30, 2)))
    >>> M = LowRank(U, np.diag([2.0, 1.0]), V)
    >>> x, y = rng.standard_normal(30), rng.standard_normal(30)
    >>> M1 = basis_update_galerkin(M, x, y, rank_adaptive=True, tol=1e-12, max_rank=5)
    >>> M1.rank, bool(np.allclose(M1.dense(), M.dense() + np.outer(x, y)))
    (3, True)
    >>> basis_update_galerkin(M, x, y).rank
    2
    """
    xp, d, _ = _check_step(lowrank, x, y)
    _check_bool("rank_adaptive", rank_adaptive)
    tol = check_positive("tol", tol, allow_zero=True)
    if max_rank is not None:
        max_rank = check_rank("max_rank", max_rank, d)
    if not rank_adaptive:
        if max_rank is not None:
            raise ValueError("max_rank: only applies with rank_adaptive=True")
        if tol != 0.0:
            raise ValueError("tol: only applies with rank_adaptive=True")
    _require_finite_step(xp, lowrank, x, y)
    return _basis_update_galerkin(xp, lowrank, x, y, rank_adaptive, tol, max_rank)


def _basis_update_galerkin(
    xp: Any,
    lowrank: LowRank,
    x: Any,
    y: Any,
    rank_adaptive: bool = False,
    tol: float = 0.0,
    max_rank: int | None = None,
) -> LowRank:
    """Unchecked :func:`basis_update_galerkin` (validated arguments: ``tol`` a float ``>= 0``,
    ``max_rank`` None or in ``[1, d]``, both only with ``rank_adaptive``)."""
    r = lowrank.rank
    st = _Step(xp, lowrank, x, y)
    Uc, xc, Vc, yc, S = st.Uc, st.xc, st.Vc, st.yc, st.S
    w = Vc.T @ yc  # V^T y
    z0 = Uc.T @ xc  # U^T x
    K = Uc @ S + _outer(xp, xc, w)
    L = Vc @ S.T + _outer(xp, yc, z0)
    if rank_adaptive:
        Qu = _qr_core(xp, xp.concat([K, Uc], axis=1))[0]
        Qv = _qr_core(xp, xp.concat([L, Vc], axis=1))[0]
    else:
        Qu, Qv = _qr_core(xp, K)[0], _qr_core(xp, L)[0]
    S1 = (Qu.T @ Uc) @ S @ (Qv.T @ Vc).T + _outer(xp, Qu.T @ xc, Qv.T @ yc)
    if not rank_adaptive:
        return st.result(Qu, S1, Qv)
    sig = xp.linalg.svdvals(S1)
    r1 = _adaptive_rank(
        [float(sig[i]) for i in range(int(sig.shape[0]))], tol, r if max_rank is None else max_rank
    )
    return _svd_step(xp, st, S1, Qu, Qv, r1, r1)


def _adaptive_rank(sig: list[float], tol: float, cap: int) -> int:
    """Smallest ``r1`` in ``[1, min(cap, len(sig))]`` with ``||sig[r1:]|| <= tol`` (else the cap).

    ``tol = 0`` keeps the cap: exact zeros in ``sig`` (which one backend's SVD returns where
    another returns 1e-17) must not change the rank.
    """
    cap = min(cap, len(sig))
    if tol == 0.0:
        return cap
    tail = 0.0
    tails = [0.0] * (len(sig) + 1)
    for i in range(len(sig) - 1, -1, -1):
        tail += sig[i] * sig[i]
        tails[i] = tail
    for r1 in range(1, cap + 1):
        if math.sqrt(tails[r1]) <= tol:
            return r1
    return cap


def recompress(factored: Factored, rank: int) -> LowRank:
    """Convert the exact ``M = P Q^T`` to ``U S V^T`` of rank ``rank``.

    Theory: :ref:`theory-integrators-warmup`.

    ``Qp Rp = qr(P)``, ``Qq Rq = qr(Q)`` (:func:`~lowrank_precond.linalg.kernels.qr_tall`:
    CholeskyQR2, Householder when ``P`` or ``Q`` is rank deficient or ill-conditioned),
    ``Uc Sig Vc^T = svd(Rp Rq^T)`` (float64 for float32 input), ``U = Qp Uc``,
    ``S = diag(Sig)``, ``V = Qq Vc``, keeping the leading ``min(k, rank)`` triplets (the best
    approximation of that rank; exact when ``k <= rank``).

    When ``k < rank`` the bases are padded to ``rank`` columns with zero singular values, so
    ``M`` is unchanged and the integrators get the ``r`` columns they need. The padding is
    deterministic and generic: the orthonormal complement (CholeskyQR2 / Householder of
    ``[U, E]``) of fixed dense columns ``E_ij = cos(2 pi frac(alpha_j i + beta_j))`` with
    incommensurate frequencies. Generic padding matters: KSL / BUG started from ``S = 0``
    are exact for rank-``<= r`` data only if the padding is not orthogonal to the new
    directions [B05], which coordinate vectors (a common choice) would be for sparse data.

    Parameters
    ----------
    factored : Factored
        ``P, Q`` ``(d, k)``, ``k >= 0``.
    rank : int
        ``1 <= rank <= d``.

    Returns
    -------
    LowRank
        ``U, V`` ``(d, rank)`` orthonormal, diagonal ``S`` with non-increasing entries.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import Factored
    >>> rng = np.random.default_rng(3)
    >>> F = Factored(rng.standard_normal((20, 2)), rng.standard_normal((20, 2)))
    >>> M = recompress(F, 3)                       # padded: exact, one zero singular value
    >>> M.rank, bool(np.allclose(M.dense(), F.dense())), float(M.S[2, 2])
    (3, True, 0.0)
    >>> bool(np.allclose(M.U.T @ M.U, np.eye(3)))
    True
    """
    if not isinstance(factored, Factored):
        raise TypeError(f"factored: expected a Factored, got {type(factored).__name__}")
    P, Q = factored.P, factored.Q
    rank = check_rank("rank", rank, int(P.shape[0]))
    xp = array_namespace(P, Q)
    if P.dtype != Q.dtype:
        raise TypeError(f"factored.Q: dtype {Q.dtype} differs from factored.P's dtype {P.dtype}")
    require_finite(xp, ("factored.P", P), ("factored.Q", Q))
    return _recompress(xp, factored, rank)


def _recompress(xp: Any, factored: Factored, rank: int) -> LowRank:
    """Unchecked :func:`recompress` (finite ``P, Q`` of one dtype, ``1 <= rank <= d``)."""
    P, Q = factored.P, factored.Q
    d, k = int(P.shape[0]), int(P.shape[1])
    kept = min(k, rank)
    if kept > 0:
        if k <= d:
            Qp, Rp = _qr_tall(xp, P)
            Qq, Rq = _qr_tall(xp, Q)
        else:  # more columns than rows: the thin Householder QR has d columns
            Qp, Rp = xp.linalg.qr(P)
            Qq, Rq = xp.linalg.qr(Q)
        W, sig, Zt = xp.linalg.svd(as_core(xp, Rp) @ as_core(xp, Rq).T, full_matrices=False)
        U = _combine(xp, Qp, None, W[:, :kept])
        V = _combine(xp, Qq, None, Zt[:kept, :].T)
        sig = _cast(xp, sig[:kept], P.dtype)
    else:
        U = V = xp.zeros((d, 0), dtype=P.dtype, device=device_of(P))
        sig = xp.zeros((0,), dtype=P.dtype, device=device_of(P))
    U, V, sig = _pad_to(xp, U, V, sig, rank)
    return _lowrank(U, _diag(xp, sig), V)


# --------------------------------------------------------------------------- core helpers
def _eye_core(xp: Any, n: int, like: Any) -> Any:
    return xp.eye(n, dtype=like.dtype, device=device_of(like))


def _blockdiag_one(xp: Any, S: Any) -> Any:
    """``[[S, 0], [0, 1]]`` (core dtype)."""
    r = int(S.shape[0])
    z = xp.zeros((r, 1), dtype=S.dtype, device=device_of(S))
    top = xp.concat([S, z], axis=1)
    bottom = xp.concat([z.T, xp.ones((1, 1), dtype=S.dtype, device=device_of(S))], axis=1)
    return xp.concat([top, bottom], axis=0)
