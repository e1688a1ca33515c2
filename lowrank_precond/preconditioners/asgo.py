"""ASGO: one-sided full-matrix AdaGrad on one side of a matrix parameter (:ref:`theory-asgo`).

ASGO accumulates ``V = sum G G^T`` on one side of a weight matrix and steps along
``(V + eps I)^{-1/2} G``: full-matrix AdaGrad for the rows' space at the cost of an
``m x m`` matrix, ``m`` the preconditioned side.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from lowrank_precond.backends import array_namespace, check_in, device_of
from lowrank_precond.linalg._unchecked import _inverse_root
from lowrank_precond.preconditioners._common import (
    check_beta,
    check_eps,
    check_grad_shape,
    check_optional_beta,
    check_param,
    check_update_freq,
    ema,
    is_refresh_step,
    matrix_layout,
    param_fields,
    param_shape,
)
from lowrank_precond.preconditioners.base import (
    Preconditioner,
    check_statistic,
    make_preconditioner,
)

__all__ = ["ASGOMomentumState", "ASGOState", "SIDES", "asgo"]

#: accepted values of ``asgo(side=...)``
SIDES = ("left", "right")


@dataclass
class ASGOState:
    """State of :func:`asgo` without momentum (``betas[0] == 0``).

    ``m`` is the preconditioned side (see :func:`asgo`'s ``side``).

    Attributes
    ----------
    t : int
        Number of updates applied.
    V : array, shape (m, m)
        ``sum G G^T`` (or its EMA when ``betas[1]`` is given), in the parameter's dtype.
    R : array, shape (m, m)
        The cached root ``(V + eps I)^{-1/2}`` of the last refresh (``eps^{-1/2} I`` before
        the first update).
    param_rows, param_cols : int
        The parameter's shape, which ``update`` requires of the gradient: ``(param_rows,
        param_cols)``, or ``(param_rows,)`` when ``param_cols == 0`` (a vector); ``-1`` in a
        state saved before it was recorded (then only the working matrix's shape is checked).
    """

    t: int
    V: Any
    R: Any
    param_rows: int = -1
    param_cols: int = -1

    @property
    def param_shape(self) -> tuple[int, ...]:
        """The parameter's shape (``()`` when unknown)."""
        return param_shape(self.param_rows, self.param_cols)


@dataclass
class ASGOMomentumState:
    """State of :func:`asgo` with momentum (``betas[0] > 0``).

    Attributes
    ----------
    t : int
        Number of updates applied.
    V : array, shape (m, m)
        ``sum G G^T`` (or its EMA).
    R : array, shape (m, m)
        The cached root ``(V + eps I)^{-1/2}``.
    B : array, shape (m, n)
        Momentum ``b1 B + (1 - b1) G`` in the working orientation (no bias correction).
    param_rows, param_cols : int
        The parameter's shape, which ``update`` requires of the gradient: ``(param_rows,
        param_cols)``, or ``(param_rows,)`` when ``param_cols == 0`` (a vector); ``-1`` in a
        state saved before it was recorded (then only the working matrix's shape is checked).
    """

    t: int
    V: Any
    R: Any
    B: Any
    param_rows: int = -1
    param_cols: int = -1

    @property
    def param_shape(self) -> tuple[int, ...]:
        """The parameter's shape (``()`` when unknown)."""
        return param_shape(self.param_rows, self.param_cols)


def asgo(
    update_freq: int = 1,
    eps: float = 1e-8,
    betas: tuple[float, float | None] = (0.0, None),
    side: str = "left",
    nonfinite: str = "raise",
    *,
    beta1: float | None = None,
    beta2: float | None = None,
) -> Preconditioner:
    """ASGO: ``(V + eps I)^{-1/2} G`` with ``V = sum G G^T`` on one side of the parameter.

    With the working matrix ``G`` ``(m, n)`` (see ``side``) and ``t`` the number of updates so
    far (0 on the first call)::

        V = V + G G^T                      (b2 given: V = b2 V + (1-b2) G G^T)
        if t % update_freq == 0:  R = (V + eps I)^{-1/2}      (eigh, eigenvalues clamped at 0)
        t += 1
        B = G                              (b1 > 0: B = b1 B + (1-b1) G)
        direction = R B

    ``V`` accumulates every step while ``R`` is refreshed every ``update_freq`` steps (stale in
    between [D03]). ``R`` comes from :func:`lowrank_precond.linalg.inverse_root`
    (``E diag((max(w, 0) + eps)^{-1/2}) E^T``; the ``m x m`` eigh runs in float64 for float32
    input). Neither ``V`` (EMA option) nor ``B`` is bias-corrected. eps is inside the root
    (AdaGrad family: the same eps as diagonal and full-matrix AdaGrad).

    Parameter shapes and ``side``
        * 2-D ``(a, b)``: ``side="left"`` preconditions the row space, ``m = a``:
          ``V = sum G G^T`` is ``a x a`` and the direction is ``R G``. ``side="right"``
          preconditions the column space, ``m = b``: ``V = sum G^T G`` is ``b x b`` and the
          direction is ``G R`` (the state holds the transposed working matrix). Nothing is
          transposed automatically: pick the side to precondition (usually the smaller one,
          ``m^2`` memory and ``m^3`` per refresh).
        * 1-D ``(d,)``: a column ``d x 1``. ``side="left"`` is then exactly full-matrix
          AdaGrad [D02] with a dense ``d x d`` ``V`` (O(d^2) memory, O(d^3) per refresh; see
          ``full_matrix_adagrad`` and, for large ``d``, ``adagram``); ``side="right"`` is
          AdaGrad-Norm, ``g / sqrt(eps + sum_s |g_s|^2)`` (a ``1 x 1`` ``V``) [D02].
        * other ``ndim``: ``ValueError``.

    Parameters
    ----------
    update_freq : int, >= 1
        Refresh period ``T`` of the root ``R``.
    eps : float, > 0
        Damping inside the root.
    betas : (float, float or None)
        ``(b1, b2)``, named as in every other method: ``b1`` in ``[0, 1)`` the momentum on
        ``G`` (0: none; the state then holds no ``B``); ``b2`` ``None`` for the plain sum
        ``V`` (AdaGrad), or in ``[0, 1)`` for an EMA with this factor.
    beta1, beta2 : float, keyword-only, deprecated
        The earlier spelling of ``betas=(beta1, beta2)`` (a ``DeprecationWarning``).
    side : {"left", "right"}
        The side of a 2-D parameter that is preconditioned (see above).
    nonfinite : {"raise", "skip"}
        What ``update`` does with a gradient containing NaN/inf.

    Returns
    -------
    Preconditioner
        ``init(x) -> ASGOState`` (``ASGOMomentumState`` when ``betas[0] > 0``) for a 1-D or 2-D
        ``x``; ``update(g, state) -> (direction, state)``, the direction in ``g``'s shape.

    Notes
    -----
    Cost O(m^2 n) per step and O(m^3) per refresh; memory ``2 m^2`` (+ ``m n`` with
    momentum). The authors' public configuration uses momentum 0.9, ``b2`` 0.8, damping
    1e-10 and an iterative inverse root; the eigendecomposition here is the reference.

    References
    ----------
    ASGO, arXiv 2503.20762. :ref:`theory-asgo` [D01]-[D03].

    Examples
    --------
    On a vector with ``side="right"``, ASGO is AdaGrad-Norm [D02]:

    >>> import numpy as np
    >>> from lowrank_precond import preconditioners as pc
    >>> pre = pc.asgo(side="right", eps=1e-8)
    >>> state = pre.init(np.zeros(2))
    >>> p, state = pre.update(np.array([3.0, 4.0]), state)
    >>> p, state = pre.update(np.array([0.0, 5.0]), state)
    >>> bool(np.allclose(p, np.array([0.0, 5.0]) / np.sqrt(50.0)))
    True
    >>> state.V.shape, state.R.shape
    ((1, 1), (1, 1))
    """
    update_freq = check_update_freq("update_freq", update_freq)
    eps = check_eps("eps", eps)
    if beta1 is not None or beta2 is not None:
        warnings.warn(
            "asgo: beta1=/beta2= are deprecated; pass betas=(beta1, beta2)",
            DeprecationWarning,
            stacklevel=2,
        )
        betas = (0.0 if beta1 is None else beta1, beta2)
    try:
        pair = tuple(betas)
    except TypeError:
        raise TypeError(f"betas: expected a pair (beta1, beta2 or None), got {betas!r}") from None
    if len(pair) != 2:
        raise ValueError(f"betas: expected a pair (beta1, beta2 or None), got {betas!r}")
    beta1 = check_beta("betas[0]", pair[0])
    beta2 = check_optional_beta("betas[1]", pair[1])
    side = check_in("side", side, SIDES)
    momentum = beta1 > 0.0

    def layout_of(shape: tuple[int, ...]):
        return matrix_layout(shape, vector="column", transpose=side == "right")

    def init(x: Any) -> ASGOState | ASGOMomentumState:
        xp = check_param("x", x, ndims=(1, 2))
        lay = layout_of(tuple(x.shape))
        m, n = lay.rows, lay.cols
        dev = device_of(x)
        V = xp.zeros((m, m), dtype=x.dtype, device=dev)
        R = xp.eye(m, dtype=x.dtype, device=dev) * (eps**-0.5)
        shape = param_fields(tuple(x.shape))
        if momentum:
            B = xp.zeros((m, n), dtype=x.dtype, device=dev)
            return ASGOMomentumState(t=0, V=V, R=R, B=B, **shape)
        return ASGOState(t=0, V=V, R=R, **shape)

    def update(grad: Any, state: Any) -> tuple[Any, Any]:
        xp = array_namespace(grad)
        m = int(state.V.shape[0])
        check_grad_shape(grad, state.param_shape)
        lay = layout_of(tuple(grad.shape)) if grad.ndim in (1, 2) else None
        if lay is None or lay.rows != m or (momentum and lay.cols != int(state.B.shape[1])):
            raise ValueError(
                f"grad: shape {tuple(grad.shape)} does not match the state, which "
                f"preconditions a side of size {m} (side={side!r})"
            )
        G = lay.to_matrix(grad)
        GGt = G @ G.T
        V = state.V + GGt if beta2 is None else ema(state.V, GGt, beta2)
        check_statistic("V", V)
        R = _inverse_root(xp, V, eps) if is_refresh_step(state.t, update_freq) else state.R
        t = state.t + 1
        if momentum:
            B = ema(state.B, G, beta1)
            new = ASGOMomentumState(t=t, V=V, R=R, B=B, **param_fields(state.param_shape))
        else:
            B = G
            new = ASGOState(t=t, V=V, R=R, **param_fields(state.param_shape))
        return lay.from_matrix(R @ B), new

    return make_preconditioner(
        "asgo",
        init,
        update,
        {
            "update_freq": update_freq,
            "eps": eps,
            "betas": (beta1, beta2),
            "side": side,
            "nonfinite": nonfinite,
        },
    )
