"""Frequent-Directions sketch of the Gram matrix ``sum g g^T`` (sketched full-matrix AdaGrad).

The sketch keeps ``G_fd = (eps + rho) I + U diag(sig2) U^T`` with ``U`` ``(d, k)`` orthonormal,
``k <= r``: the rank-r part of ``sum g g^T`` ordered by curvature, plus the *escaped mass*
``rho`` added back to the diagonal. It satisfies ``G_exact <= G_fd <= G_exact + rho I``
(Loewner order), so it never steps further than full-matrix AdaGrad in any direction.
Memory ``d r`` (one factor), O(d r) flops per step. Theory: :ref:`theory-sketched-adagrad`
[F01]-[F04] (Liberty 2013; Ada-FD, Wan & Zhang 2021; Sketchy, Feinberg et al. 2023).

:func:`gram_sketch_update` and :func:`sketch_inverse_sqrt_apply` validate their arguments
once (kinds, dtypes, shapes, scalars, then the finiteness of every array:
``ValueError("NAME: contains NaN or inf")``) and call their unchecked kernels
``_gram_sketch_update(xp, sketch, g, rank, shrink, integrator)`` and
``_sketch_inverse_sqrt_apply(xp, sketch, v, eps)``; ``_gram_sketch(U, sig2, rho)`` builds a
``GramSketch`` without its checks (:mod:`lowrank_precond.linalg._unchecked`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from lowrank_precond.backends import (
    array_namespace,
    check_floating,
    check_in,
    check_int,
    check_positive,
    check_rank,
    check_vector,
    device_of,
)
from lowrank_precond.linalg._numerics import (
    as_core,
    core_dtype_of,
    host_floats,
    nonfinite_message,
    require_finite,
)
from lowrank_precond.linalg.integrators import (
    _basis_update_galerkin,
    _projector_splitting,
    _truncated_svd,
)
from lowrank_precond.linalg.lowrank import _lowrank

__all__ = ["GramSketch", "gram_sketch_update", "sketch_inverse_sqrt_apply", "INTEGRATORS"]

#: values of ``gram_sketch_update(..., integrator=)``: ``None`` is Frequent Directions.
INTEGRATORS = (None, "truncated_svd", "projector_splitting", "basis_update_galerkin")

#: a new column is added only when the orthogonalised residual exceeds
#: ``_NEW_COLUMN_TOL * u * |g|`` (``u`` the unit roundoff of the dtype): below that it is
#: rounding noise of the projection, and its direction would not be orthogonal to ``U``.
_NEW_COLUMN_TOL = 64.0

#: orthogonality threshold ``tau = _ORTH_TOL * u * sqrt(k + 1)`` (see ``gram_sketch_update``).
_ORTH_TOL = 50.0


@dataclass
class GramSketch:
    """Rank-``k`` Frequent-Directions sketch of ``sum g g^T`` with escaped mass ``rho``.

    Represents ``G_fd = (eps + rho) I + U diag(sig2) U^T`` (``eps`` is supplied when the
    sketch is applied, see :func:`sketch_inverse_sqrt_apply`).

    Parameters
    ----------
    U : array, shape (d, k)
        Orthonormal columns (not re-checked here: that would cost a pass over ``d``).
        ``k = 0`` is the empty sketch.
    sig2 : array, shape (k,)
        The sketch's eigenvalues, ``>= 0``, non-increasing; same dtype as ``U``.
    rho : array, shape () (or a Python real, converted)
        Escaped mass ``>= 0``: a 0-d array of ``U``'s dtype and device, so that updating it
        never synchronises with the device and ``dataclasses.asdict`` checkpoints it with
        the other fields. A Python ``int``/``float`` is converted on construction.

    Notes
    -----
    A flat dataclass of arrays: ``dataclasses.asdict(sketch)`` and ``GramSketch(**d)``
    round-trip it on every backend. Construction checks shapes and dtypes only (no data
    checks, no device synchronisation).

    References
    ----------
    :ref:`theory-sketched-adagrad`.

    Examples
    --------
    >>> import numpy as np
    >>> sk = GramSketch(np.eye(3)[:, :1], np.array([4.0]), 0.5)
    >>> sk.dim, sk.rank, float(sk.rho)
    (3, 1, 0.5)
    >>> sk.dense(eps=0.5)
    array([[5., 0., 0.],
           [0., 1., 0.],
           [0., 0., 1.]])
    """

    U: Any
    sig2: Any
    rho: Any

    def __post_init__(self) -> None:
        xp = check_floating("U", self.U)
        if self.U.ndim != 2:
            raise ValueError(f"U: expected a 2-D array (d, k), got shape {tuple(self.U.shape)}")
        k = int(self.U.shape[1])
        if isinstance(self.rho, numbers.Real) and not isinstance(self.rho, bool):
            self.rho = xp.asarray(float(self.rho), dtype=self.U.dtype, device=device_of(self.U))
        for name in ("sig2", "rho"):
            a = getattr(self, name)
            check_floating(name, a)
            if array_namespace(a) is not xp:
                raise TypeError(f"{name}: must be an array of the same kind as U")
            if a.dtype != self.U.dtype:
                raise TypeError(f"{name}: dtype {a.dtype} must equal U's dtype {self.U.dtype}")
        if tuple(self.sig2.shape) != (k,):
            raise ValueError(f"sig2: expected shape {(k,)}, got {tuple(self.sig2.shape)}")
        if self.rho.ndim != 0:
            raise ValueError(f"rho: expected a 0-d array, got shape {tuple(self.rho.shape)}")

    @classmethod
    def empty(cls, d: int, *, like: Any) -> GramSketch:
        """The empty sketch (``k = 0``, ``rho = 0``) of dimension ``d``.

        Parameters
        ----------
        d : int
            Dimension, ``>= 1``.
        like : array
            Real floating array whose kind, dtype and device the sketch takes.

        Examples
        --------
        >>> import numpy as np
        >>> sk = GramSketch.empty(4, like=np.zeros(1, dtype=np.float32))
        >>> sk.U.shape, sk.sig2.dtype, sk.rank
        ((4, 0), dtype('float32'), 0)
        """
        d = check_int("d", d, minimum=1)
        xp = check_floating("like", like)
        dev = device_of(like)
        return cls(
            xp.zeros((d, 0), dtype=like.dtype, device=dev),
            xp.zeros((0,), dtype=like.dtype, device=dev),
            xp.zeros((), dtype=like.dtype, device=dev),
        )

    @property
    def rank(self) -> int:
        """Number of stored columns ``k``."""
        return int(self.U.shape[1])

    @property
    def dim(self) -> int:
        """The dimension ``d``."""
        return int(self.U.shape[0])

    def dense(self, eps: float) -> Any:
        """The ``d x d`` matrix ``G_fd = (eps + rho) I + U diag(sig2) U^T`` (tests, small d).

        Parameters
        ----------
        eps : float
            Damping, ``> 0``.
        """
        eps = check_positive("eps", eps)
        xp = array_namespace(self.U)
        eye = xp.eye(self.dim, dtype=self.U.dtype, device=device_of(self.U))
        return (self.rho + eps) * eye + (self.U * self.sig2) @ self.U.T


def _gram_sketch(U: Any, sig2: Any, rho: Any) -> GramSketch:
    """``GramSketch(U, sig2, rho)`` without its checks (``rho`` a 0-d array of ``U``'s dtype)."""
    sketch = object.__new__(GramSketch)
    sketch.U, sketch.sig2, sketch.rho = U, sig2, rho
    return sketch


def _check_sketch_vector(sketch: Any, name: str, v: Any) -> Any:
    """The namespace of ``v`` after checking it against ``sketch`` (a ``GramSketch``)."""
    if not isinstance(sketch, GramSketch):
        raise TypeError(f"sketch: expected a GramSketch, got {type(sketch).__name__}")
    U = sketch.U
    xp = check_vector(name, v, int(U.shape[0]))
    if array_namespace(U) is not xp:
        raise TypeError(f"{name}: must be an array of the same kind as the sketch's U")
    if v.dtype != U.dtype:
        raise TypeError(f"{name}: dtype {v.dtype} must equal the sketch's dtype {U.dtype}")
    return xp


def _require_finite_sketch(xp: Any, sketch: GramSketch, vector: tuple[str, Any]) -> None:
    """``ValueError("NAME: contains NaN or inf")`` for the vector, then the sketch's arrays."""
    require_finite(
        xp, vector, ("sketch.U", sketch.U), ("sketch.sig2", sketch.sig2), ("sketch.rho", sketch.rho)
    )


def _scalar(xp: Any, a: Any) -> Any:
    """A reduction's result as a 0-d array (NumPy reductions return NumPy scalars)."""
    return xp.asarray(a)


def _unit_roundoff(xp: Any, dtype: Any) -> float:
    return float(xp.finfo(dtype).eps) / 2


def _orthonormality_error(xp: Any, U: Any) -> float:
    """``max |U^T U - I|`` (one pass over ``U``; one host transfer)."""
    k = int(U.shape[1])
    K = as_core(xp, U.T @ U)
    eye = xp.eye(k, dtype=K.dtype, device=device_of(K))
    return float(xp.max(xp.abs(K - eye)))


def _reorthonormalize(xp: Any, U: Any, sig2: Any) -> tuple[Any, Any]:
    """Orthonormal ``U'`` and ``sig2'`` with ``U' diag(sig2') U'^T = U diag(sig2) U^T``.

    Symmetric (Loewdin) orthogonalisation: ``K = U^T U = E diag(l) E^T``,
    ``Q = U K^{-1/2}`` is orthonormal and ``U diag(sig2) U^T = Q B B^T Q^T`` with
    ``B = K^{1/2} diag(sqrt(sig2))``; the SVD ``B = W diag(s) Z^T`` gives ``U' = Q W``,
    ``sig2' = s^2``. Two passes over ``U`` (the Gram matrix and one product); the small
    matrices are float64 for float32 input. ``U`` is only slightly non-orthonormal here
    (``|K - I| ~ 1e-5`` at most), so ``K`` is well conditioned; Householder QR is the
    fallback should it not be.
    """
    s2c = as_core(xp, sig2)
    K = as_core(xp, U.T @ U)
    K = (K + K.T) / 2
    lam, E = xp.linalg.eigh(K)
    if float(xp.min(lam)) > 0.25:
        T_inv = (E * lam ** (-0.5)) @ E.T  # K^{-1/2}
        B = ((E * lam**0.5) @ E.T) * xp.sqrt(s2c)  # K^{1/2} diag(sqrt(sig2))
        W, s, _ = xp.linalg.svd(B)
        A = T_inv @ W
        U_new = U @ (A if A.dtype == U.dtype else xp.astype(A, U.dtype))
    else:  # pragma: no cover - U is never this far from orthonormal in practice
        Qh, Rh = xp.linalg.qr(U)
        B = as_core(xp, Rh) * xp.sqrt(s2c)
        W, s, _ = xp.linalg.svd(B)
        U_new = Qh @ (W if W.dtype == U.dtype else xp.astype(W, U.dtype))
    s2 = s * s
    return U_new, (s2 if s2.dtype == U.dtype else xp.astype(s2, U.dtype))


def gram_sketch_update(
    sketch: GramSketch,
    g: Any,
    rank: int,
    shrink: bool = True,
    integrator: str | None = None,
) -> GramSketch:
    """Add ``g g^T`` to a Frequent-Directions sketch and truncate it to rank ``rank``.

    The O(d r) step of :ref:`theory-sketched-adagrad` (two-pass classical Gram-Schmidt,
    CGS2)::

        c = U^T g;  h = g - U c;  c2 = U^T h;  h -= U c2;  c += c2;  beta = ||h||
        core = [[diag(sqrt(sig2)), c], [0, beta]]          # (k+1) x (k+1): B = [U q] core
        W, s, _ = svd(core);  U = [U q] W;  s2 = s**2        # q = h / beta

    If ``k + 1 > rank``, with ``delta = s2[rank]`` (the largest dropped value):

    * ``shrink=True`` (Frequent Directions): ``rho += delta``, ``sig2 = s2[:rank] - delta``;
    * ``shrink=False`` (plain truncation): ``rho += delta``, ``sig2 = s2[:rank]``.

    In both variants ``rho`` *accumulates* the dropped ``s2[rank]`` of every step ("rho =
    dropped s2[r]" in :ref:`theory-sketched-adagrad` names what is added to it); that is what
    keeps
    ``G_exact <= G_fd <= G_exact + rho I`` for both. Traces: plain truncation conserves
    ``sum |g|^2 = sum(sig2) + rho``; Frequent Directions removes ``delta`` from each of the
    ``rank + 1`` columns, so ``sum |g|^2 = sum(sig2) + (rank + 1) rho``. A sketch holding more
    than ``rank`` columns (``rank`` was lowered) is cut the same way (the dropped values are
    all ``<= s2[rank]``).

    Parameters
    ----------
    sketch : GramSketch
        Current sketch, ``U`` of shape (d, k).
    g : array, shape (d,)
        The new gradient; same kind, dtype and device as ``sketch.U``; finite, with
        ``max|g| <= sqrt(max_float / d)`` so that ``|g|^2`` is representable (the sketch
        stores squared magnitudes in ``g``'s dtype).
    rank : int
        Maximal number of columns ``r``, ``1 <= rank <= d``.
    shrink : bool, default True
        Frequent-Directions shrink (``True``) or plain truncation (``False``), see above.
        Only for ``integrator=None`` (``shrink=False`` with an integrator raises).
    integrator : {None, "truncated_svd", "projector_splitting", "basis_update_galerkin"}
        ``None`` (default): the Frequent-Directions step above. Otherwise, once the sketch
        holds ``rank`` columns, the seeds' integrator of that name
        (:mod:`lowrank_precond.linalg.integrators`, :ref:`theory-integrators-methods`; KSL is
        the Lie-Trotter ``order=1``, BUG the fixed-rank variant) absorbs the symmetric
        increment ``g g^T`` into ``LowRank(U, diag(sig2), U)``; the result ``U1 S1 V1^T`` is
        replaced by its symmetric compression onto ``span(U1)`` (core ``sym(S1 V1^T U1)``,
        diagonalised, eigenvalues clamped at 0) and the escaped trace
        ``sum(sig2) + |g|^2 - sum(sig2_new)`` is added to ``rho``. ``"truncated_svd"`` then
        equals plain truncation (``shrink=False``). These variants cost O(d r^2) per step (QR
        of ``d x (r+1)``) and carry no Loewner guarantee; they exist to be measured against
        Frequent Directions. While the sketch fills (``k < rank``) every variant is the same
        exact step.

    Returns
    -------
    GramSketch
        The new sketch (``k`` grows by one until it reaches ``rank``). A zero ``g`` returns
        ``sketch`` itself (the same object). When ``g`` lies in ``span(U)`` up to rounding
        (orthogonal residual ``<= 64 u |g|``) no column is added and the ``k x (k+1)`` core
        ``[diag(sqrt(sig2)), c]`` is used.

    Raises
    ------
    ValueError
        ``g`` of the wrong length, non-finite (``"g: contains NaN or inf"``) or too large;
        an array of ``sketch`` non-finite; ``rank`` outside ``[1, d]``.
    TypeError
        ``sketch`` not a :class:`GramSketch`; ``g`` not floating or of another dtype than the
        sketch; ``rank`` not an integer; ``shrink`` not a bool.

    ``integrator`` not one of the names above (or combined with ``shrink=False``) raises
    ``ValueError``.

    Notes
    -----
    *Scaling.* ``g`` is divided by ``max|g|`` before the passes over ``d`` and the scale is
    put back in the small core, so norms neither overflow nor underflow
    (:ref:`theory-adagram-numerics`).

    *Precision.* The ``(k+1) x (k+1)`` SVD runs in float64 for float32 input; ``U``,
    ``sig2`` and ``rho`` are stored in the input dtype.

    *Orthonormality.* Each step rounds ``U`` afresh, so ``|U^T U - I|`` can drift (in
    float32 mostly). The second Gram-Schmidt pass measures the drift for free:
    ``c2 = U^T h = -(U^T U - I) c`` up to rounding. When ``|c2| > tau |g|`` with
    ``tau = 50 u sqrt(k + 1)`` the step computes ``max|U^T U - I|`` of the new ``U`` (one
    pass), and if that exceeds ``tau`` re-orthonormalises ``U`` (symmetric orthogonalisation,
    one more pass) while keeping ``U diag(sig2) U^T`` unchanged. The common step stays at
    the cost below; the check and the repair run only when flagged. float32 then keeps
    ``max|U^T U - I|`` of the order of ``tau`` (``u = 2^-24``: ``tau = 7.3e-6`` at
    ``k = 5``; measured <= 8.5e-6 over 20000 steps at d = 200, 1.1e-6 over 200 steps at
    d = 1e6; the tests assert ``< 2 tau`` over 5000 steps); without the repair the error
    grows linearly (1.2e-4 after 20000 steps at d = 200). float64 stays below ~2e-14
    (a repair every ~150 steps).

    *Cost.* O(d k) flops and memory traffic per step: four matrix-vector passes over ``U``
    (CGS2), the copy into ``[U h]`` and the product ``[U h] W`` (two reads and two writes
    of a ``d x (k+1)`` array), two passes over ``g``; an O(k^3) SVD; two device-to-host
    transfers of a few scalars.

    References
    ----------
    :ref:`theory-sketched-adagrad` ([F01]-[F04]); E. Liberty, "Simple and deterministic matrix
    sketching", KDD 2013; Wan & Zhang 2021 (Ada-FD); Feinberg et al. 2023 (Sketchy).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> gs = rng.standard_normal((3, 6))
    >>> sk = GramSketch.empty(6, like=gs)
    >>> for g in gs:
    ...     sk = gram_sketch_update(sk, g, rank=3)
    >>> sk.rank, float(sk.rho)                # at most `rank` gradients: exact
    (3, 0.0)
    >>> bool(np.allclose((sk.U * sk.sig2) @ sk.U.T, gs.T @ gs))
    True
    >>> sk = gram_sketch_update(sk, rng.standard_normal(6), rank=3)
    >>> sk.rank, float(sk.rho) > 0
    (3, True)
    """
    xp = _check_sketch_vector(sketch, "g", g)
    rank = check_rank("rank", rank, int(sketch.U.shape[0]))
    if not isinstance(shrink, bool):
        raise TypeError(f"shrink: expected a bool, got {shrink!r}")
    check_in("integrator", integrator, INTEGRATORS)
    if integrator is not None and not shrink:
        raise ValueError(
            "shrink: shrink=False selects plain truncation; with an integrator the truncation "
            "is the integrator's, so leave shrink at its default"
        )
    _require_finite_sketch(xp, sketch, ("g", g))
    return _gram_sketch_update(xp, sketch, g, rank, shrink, integrator)


def _gram_sketch_update(
    xp: Any,
    sketch: GramSketch,
    g: Any,
    rank: int,
    shrink: bool = True,
    integrator: str | None = None,
) -> GramSketch:
    """Unchecked :func:`gram_sketch_update` (validated arguments, ``1 <= rank <= d``).

    The ``max|g|`` that the step brings to the host for its scaling still refuses a
    non-finite ``g`` and one whose ``|g|^2`` would overflow (``ValueError``), at no cost.
    """
    U = sketch.U
    d, k = int(U.shape[0]), int(U.shape[1])
    finfo = xp.finfo(U.dtype)
    u = _unit_roundoff(xp, U.dtype)
    gmax_arr = _scalar(xp, xp.max(xp.abs(g)))
    gmax = float(gmax_arr)  # host transfer 1
    if not math.isfinite(gmax):
        raise ValueError(nonfinite_message("g"))
    if gmax == 0.0:
        return sketch
    if gmax > math.sqrt(float(finfo.max) / d):
        raise ValueError(f"g: too large (max|g| = {gmax:.3g}); |g|^2 would overflow {U.dtype}")

    if integrator is not None and k >= rank:
        return _integrator_update(xp, sketch, g, gmax_arr, rank, integrator)

    cdt = core_dtype_of(xp, U.dtype)
    dev = device_of(U)
    gs = g / gmax_arr  # entries in [-1, 1]: no overflow or underflow in the norms below
    if k == 0:
        h = gs
        c = xp.zeros((0,), dtype=cdt, device=dev)
        beta_arr = _scalar(xp, xp.linalg.vector_norm(h))
        beta, csq, c2n = float(beta_arr), 0.0, 0.0  # host transfer 2
    else:
        c1 = U.T @ gs
        h = gs - U @ c1
        c2 = U.T @ h
        h = h - U @ c2
        c = as_core(xp, c1) + as_core(xp, c2)
        beta_arr = _scalar(xp, xp.linalg.vector_norm(h))
        beta, csq, c2n = host_floats(  # host transfer 2
            xp,
            as_core(xp, beta_arr),
            _scalar(xp, xp.sum(c * c)),
            as_core(xp, _scalar(xp, xp.linalg.vector_norm(c2))),
        )
    gnorm_s = math.sqrt(csq + beta * beta)  # |g| / max|g| (Pythagoras)
    new_column = beta > _NEW_COLUMN_TOL * u * gnorm_s

    # small core, scaled back by gmax (core dtype: float64 for float32 input)
    scale = xp.astype(gmax_arr, cdt)
    beta_core = xp.astype(beta_arr, cdt) * scale if new_column else None
    W, keep, sig2_new, rho = _fd_core(
        xp, as_core(xp, sketch.sig2), c * scale, beta_core, rank, shrink, as_core(xp, sketch.rho)
    )

    # U_new = [U q] W[:, :keep] with q = h / beta: one product with [U h] (the 1/beta goes
    # into the last row of the small factor).
    if new_column:
        Wk = xp.concat(
            [W[:k, :keep], xp.reshape(W[k, :keep] / xp.astype(beta_arr, cdt), (1, keep))],
            axis=0,
        )
        basis = xp.concat([U, xp.reshape(h, (d, 1))], axis=1) if k else xp.reshape(h, (d, 1))
    else:
        Wk, basis = W[:, :keep], U
    U_new = basis @ (Wk if Wk.dtype == U.dtype else xp.astype(Wk, U.dtype))

    if c2n > _ORTH_TOL * u * math.sqrt(k + 1) * gnorm_s:
        tau = _ORTH_TOL * u * math.sqrt(keep + 1)
        if _orthonormality_error(xp, U_new) > tau:
            U_new, sig2_new = _reorthonormalize(xp, U_new, sig2_new)

    def back(a: Any) -> Any:
        return a if a.dtype == U.dtype else xp.astype(a, U.dtype)

    return _gram_sketch(U_new, back(sig2_new), xp.asarray(back(rho)))


def _fd_core(
    xp: Any, sig2: Any, c: Any, beta: Any, rank: int, shrink: bool, rho: Any
) -> tuple[Any, int, Any, Any]:
    """The Frequent-Directions core step (all core dtype): ``(W, keep, sig2_new, rho_new)``.

    ``core = [[diag(sqrt(sig2)), c], [0, beta]]`` (``beta=None``: no new column, the
    ``k x (k+1)`` core ``[diag(sqrt(sig2)), c]``), ``core = W diag(s) Z^T``, and with more
    than ``rank`` values ``delta = s^2[rank]`` moves to ``rho`` (and, with ``shrink``, is
    subtracted from the kept ``s^2``). The new basis is ``[U q] W[:, :keep]``.
    """
    k = int(sig2.shape[0])
    cdt, dev = sig2.dtype, device_of(sig2)
    top = xp.concat(
        [xp.eye(k, dtype=cdt, device=dev) * xp.sqrt(sig2), xp.reshape(c, (k, 1))], axis=1
    )
    if beta is None:
        core = top
    else:
        corner = xp.reshape(xp.astype(xp.asarray(beta, device=dev), cdt), (1, 1))
        bottom = xp.concat([xp.zeros((1, k), dtype=cdt, device=dev), corner], axis=1)
        core = xp.concat([top, bottom], axis=0)
    W, s, _ = xp.linalg.svd(core, full_matrices=False)
    n_cols = int(s.shape[0])
    s2 = s * s
    if n_cols > rank:
        delta = s2[rank]
        return W, rank, (s2[:rank] - delta if shrink else s2[:rank]), rho + delta
    return W, n_cols, s2, rho


def _integrator_update(
    xp: Any, sketch: GramSketch, g: Any, gmax: Any, rank: int, integrator: str
) -> GramSketch:
    """A full sketch (``k >= rank``) updated by one of the seeds' integrators.

    Theory: :ref:`theory-integrators-methods`.

    ``LowRank(U, diag(sig2), U)`` plus ``g g^T`` goes through the integrator, giving
    ``U1 S1 V1^T``; its Galerkin compression ``U1 (U1^T Y1 U1) U1^T`` with the symmetrised
    ``k x k`` core ``C = sym(S1 (V1^T U1))`` is diagonalised (float64 for float32 input),
    eigenvalues clamped at 0, the top ``rank`` kept, and the escaped trace
    ``sum(sig2) + |g|^2 - sum(sig2_new)`` (clamped at 0) added to ``rho``.
    """
    U = sketch.U
    cdt = core_dtype_of(xp, U.dtype)
    k = int(U.shape[1])
    eye = xp.eye(k, dtype=U.dtype, device=device_of(U))
    lowrank = _lowrank(U, eye * sketch.sig2, U)
    if integrator == "truncated_svd":
        res = _truncated_svd(xp, lowrank, g, g, rank)
    elif integrator == "projector_splitting":
        res = _projector_splitting(xp, lowrank, g, g, 1)
    else:
        res = _basis_update_galerkin(xp, lowrank, g, g)
    C = as_core(xp, res.S) @ as_core(xp, res.V.T @ res.U)
    lam, E = xp.linalg.eigh((C + C.T) / 2)
    lam, E = xp.flip(lam, axis=0), xp.flip(E, axis=1)
    keep = min(int(lam.shape[0]), rank)
    lam = lam[:keep]
    lam = xp.where(lam > 0, lam, xp.zeros_like(lam))
    Ek = E[:, :keep]
    U_new = res.U @ (Ek if Ek.dtype == U.dtype else xp.astype(Ek, U.dtype))
    gm = xp.astype(gmax, cdt)
    gsq = (gm * as_core(xp, _scalar(xp, xp.linalg.vector_norm(g / gmax)))) ** 2
    escaped = xp.sum(as_core(xp, sketch.sig2)) + gsq - xp.sum(lam)
    rho = as_core(xp, sketch.rho) + xp.where(escaped > 0, escaped, xp.zeros_like(escaped))
    return _gram_sketch(
        U_new,
        lam if lam.dtype == U.dtype else xp.astype(lam, U.dtype),
        xp.asarray(rho if rho.dtype == U.dtype else xp.astype(rho, U.dtype)),
    )


def sketch_inverse_sqrt_apply(sketch: GramSketch, v: Any, eps: float) -> Any:
    """Apply ``G_fd^{-1/2}`` to a vector in O(d k), ``G_fd = (eps + rho) I + U diag(sig2) U^T``.

    ``p = v / sqrt(base) + U ((1/sqrt(base + sig2) - 1/sqrt(base)) * (U^T v))`` with
    ``base = eps + rho``. The coefficient is computed in the cancellation-free form
    ``-sig2 / (sqrt(base) sqrt(base + sig2) (sqrt(base) + sqrt(base + sig2)))``, in float64
    for float32 input. With ``v = g`` this is sketched full-matrix AdaGrad's direction.

    Parameters
    ----------
    sketch : GramSketch
        ``U`` of shape (d, k), orthonormal.
    v : array, shape (d,)
        Same kind, dtype and device as ``sketch.U``.
    eps : float
        Damping, ``> 0`` (inside the root: ``G_0 = eps I``).

    Returns
    -------
    array, shape (d,)
        ``G_fd^{-1/2} v``, dtype of ``v``.

    Raises
    ------
    ValueError
        ``v`` of the wrong shape; ``v`` or an array of ``sketch`` with NaN or inf
        (``"v: contains NaN or inf"``); ``eps`` not finite and ``> 0``.
    TypeError
        ``sketch`` not a :class:`GramSketch`; ``v`` not floating or of another dtype.

    References
    ----------
    :ref:`theory-sketched-adagrad` (invariants [F01], [F03]).

    Examples
    --------
    >>> import numpy as np
    >>> sk = GramSketch(np.eye(3)[:, :1], np.array([3.0]), 0.0)
    >>> sketch_inverse_sqrt_apply(sk, np.ones(3), eps=1.0)  # diag(4, 1, 1)^(-1/2) @ 1
    array([0.5, 1. , 1. ])
    """
    xp = _check_sketch_vector(sketch, "v", v)
    eps = check_positive("eps", eps)
    _require_finite_sketch(xp, sketch, ("v", v))
    return _sketch_inverse_sqrt_apply(xp, sketch, v, eps)


def _sketch_inverse_sqrt_apply(xp: Any, sketch: GramSketch, v: Any, eps: float) -> Any:
    """Unchecked :func:`sketch_inverse_sqrt_apply` (validated arguments, ``eps`` a float)."""
    U = sketch.U
    k = int(U.shape[1])
    base = as_core(xp, sketch.rho) + eps
    sb = xp.sqrt(base)
    p = v * xp.astype(1.0 / sb, v.dtype)
    if k == 0:
        return p
    s2 = as_core(xp, sketch.sig2)
    sbs = xp.sqrt(base + s2)
    coef = -s2 / (sb * sbs * (sb + sbs))
    cv = as_core(xp, U.T @ v) * coef
    return p + U @ (cv if cv.dtype == v.dtype else xp.astype(cv, v.dtype))
