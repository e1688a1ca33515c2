"""AdaDiag and AdaDiag++: Adam in the singular bases of the gradient (:ref:`theory-adadiag`).

AdaDiag (one-sided) runs Adam on ``P^T G`` with ``P`` the left singular vectors of a recent
gradient; AdaDiag++ (two-sided) on ``P^T G Q`` with both singular bases. The bases are
refreshed by an SVD every ``update_freq`` steps; the Adam moments stay in the projected
coordinates (they are not rotated when the bases change), as in the paper's Algorithm 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lowrank_precond.backends import array_namespace, device_of
from lowrank_precond.linalg._unchecked import _svd_basis
from lowrank_precond.preconditioners._common import (
    adam_ratio,
    check_betas,
    check_bool,
    check_eps,
    check_grad_shape,
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

__all__ = ["AdaDiagState", "AdaDiagTwoSidedState", "adadiag"]


@dataclass
class AdaDiagState:
    """State of one-sided :func:`adadiag` (``two_sided=False``).

    Shapes are those of the working matrix ``(m, n)``, ``m <= n`` (a parameter of shape
    ``(a, b)`` with ``a > b`` is worked on as its transpose ``(b, a)``; a vector of length ``d``
    as ``(1, d)``).

    Attributes
    ----------
    t : int
        Number of updates applied.
    M, V : array, shape (m, n)
        Adam's first and second moments of ``P^T G`` (projected coordinates, not
        bias-corrected).
    P : array, shape (m, m)
        The current left singular basis (the identity before the first update).
    param_rows, param_cols : int
        The parameter's shape, which ``update`` requires of the gradient: ``(param_rows,
        param_cols)``, or ``(param_rows,)`` when ``param_cols == 0`` (a vector); ``-1`` in a
        state saved before it was recorded (then only the working matrix's shape is checked).
    """

    t: int
    M: Any
    V: Any
    P: Any
    param_rows: int = -1
    param_cols: int = -1

    @property
    def param_shape(self) -> tuple[int, ...]:
        """The parameter's shape (``()`` when unknown)."""
        return param_shape(self.param_rows, self.param_cols)


@dataclass
class AdaDiagTwoSidedState:
    """State of two-sided :func:`adadiag` (``two_sided=True``, AdaDiag++).

    Attributes
    ----------
    t : int
        Number of updates applied.
    M, V : array, shape (m, n)
        Adam's moments of ``P^T G Q`` (projected coordinates, not bias-corrected).
    P : array, shape (m, m)
        Left singular basis (identity before the first update).
    Q : array, shape (n, n)
        Full right singular basis (identity before the first update).
    param_rows, param_cols : int
        The parameter's shape, which ``update`` requires of the gradient: ``(param_rows,
        param_cols)``, or ``(param_rows,)`` when ``param_cols == 0`` (a vector); ``-1`` in a
        state saved before it was recorded (then only the working matrix's shape is checked).
    """

    t: int
    M: Any
    V: Any
    P: Any
    Q: Any
    param_rows: int = -1
    param_cols: int = -1

    @property
    def param_shape(self) -> tuple[int, ...]:
        """The parameter's shape (``()`` when unknown)."""
        return param_shape(self.param_rows, self.param_cols)


def adadiag(
    two_sided: bool = False,
    update_freq: int = 100,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    nonfinite: str = "raise",
) -> Preconditioner:
    """AdaDiag (one-sided) / AdaDiag++ (two-sided) for matrix parameters.

    With the working matrix ``G`` ``(m, n)``, ``m <= n``, and ``t`` the number of updates so
    far (0 on the first call)::

        if t % update_freq == 0:  P, sig, Q = svd(G, full_matrices=True), signs aligned
        t += 1
        Gt = P^T G                 (one-sided)   or   P^T G Q   (two-sided)
        M = b1 M + (1-b1) Gt;   V = b2 V + (1-b2) Gt^2
        N = (M / (1-b1^t)) / (sqrt(V) / sqrt(1-b2^t) + eps)
        direction = P N            (one-sided)   or   P N Q^T   (two-sided)

    The SVD is :func:`lowrank_precond.linalg.svd_basis` (float64 for float32 input). Column
    signs are aligned with the previous basis (``p_new . p_old >= 0``; the basis starts as the
    identity, so the first refresh makes ``diag(P) >= 0`` where possible): otherwise a sign
    flip at a refresh would negate the stored momentum [C03]. Two-sided uses the full ``(n, n)``
    ``Q`` (a thin ``Q`` loses the part of later gradients outside the old row space, [C01]);
    one-sided needs only ``P``. The moments are *not* transported when the bases refresh.
    Weight decay is the caller's job (``x <- x - lr * (direction + wd * x)``).

    Parameter shapes
        * 2-D ``(a, b)``: worked on as is when ``a <= b``, as its transpose when ``a > b`` (so
          ``P`` is always the smaller ``min(a, b)`` side); the state's arrays are in the
          working orientation and the direction comes back in the parameter's shape.
        * 1-D ``(d,)``: a ``1 x d`` row. Consequence [C04]: one-sided AdaDiag is then exactly
          Adam (``P = +1`` thanks to the sign alignment; the SVD of a vector is wasted work).
          Two-sided needs a dense ``d x d`` ``Q`` (O(d^2) memory and work per step); with
          ``update_freq=1`` it is the normalised gradient ``g/|g|`` scaled by Adam run on the
          scalar ``|g_t|``, with ``update_freq > 1`` Adam in a stale, arbitrary rotation. For
          vector parameters prefer ``adam`` or a full-matrix method.
        * other ``ndim``: ``ValueError`` (reshape to 2-D yourself, knowing that this imposes
          a structure on the parameter).

    Numerics: at a two-sided refresh ``P^T G Q`` is ``[diag(sig), 0]`` in exact arithmetic,
    and that exact matrix is used instead of the product, whose zero entries would carry
    rounding noise ``~u|G|`` that ``N`` amplifies to ``~u|G|/eps`` (pitfall (iii); O(1) in
    float32 with ``eps = 1e-8``). Between refreshes, entries of ``P^T G Q`` (or ``P^T G``)
    that are tiny compared with ``u|G|`` remain subject to the same amplification.

    Two-sided with ``n > m + 1`` and ``update_freq > 1``: the columns of ``Q`` beyond ``m``
    are a basis of the null space of the refresh gradient, which the SVD routine picks
    arbitrarily (the alignment fixes only their signs). Later gradients are Adam-normalised
    in those coordinates, so different SVD implementations (backends, devices, LAPACK
    builds) may give different, equally valid iterates.

    Parameters
    ----------
    two_sided : bool
        ``False``: AdaDiag; ``True``: AdaDiag++.
    update_freq : int, >= 1
        Refresh period ``T`` of the SVD bases (the paper uses 500 for images, 200 for
        language models).
    betas : (float, float), each in [0, 1)
        Adam's ``(b1, b2)``.
    eps : float, > 0
        Added outside the root (Adam convention).
    nonfinite : {"raise", "skip"}
        What ``update`` does with a gradient containing NaN/inf.

    Returns
    -------
    Preconditioner
        ``init(x) -> AdaDiagState`` (or ``AdaDiagTwoSidedState``) for a 1-D or 2-D ``x``;
        ``update(g, state) -> (direction, state)``, the direction in ``g``'s shape.

    Notes
    -----
    Cost per step O(m^2 n) (+ O(m n^2) two-sided); per refresh O(m^2 n) (two-sided: + O(m n^2)
    for the full ``Q``). Memory ``2 m n + m^2`` (+ ``n^2``).

    References
    ----------
    AdaDiag / AdaDiag++, arXiv 2502.07488 (Algorithm 1, Proposition 1). :ref:`theory-adadiag`
    [C01]-[C04].

    Examples
    --------
    With ``update_freq=1`` the first two-sided step is the polar factor ``U V^T`` of ``G``
    (up to ``eps``) [C02]:

    >>> import numpy as np
    >>> from lowrank_precond import preconditioners as pc
    >>> G = np.array([[3.0, 0.0, 1.0], [1.0, 2.0, 0.0]])
    >>> pre = pc.adadiag(two_sided=True, update_freq=1)
    >>> p, state = pre.update(G, pre.init(np.zeros((2, 3))))
    >>> U, _, Vt = np.linalg.svd(G, full_matrices=False)
    >>> bool(np.allclose(p, U @ Vt))
    True
    >>> state.P.shape, state.Q.shape, state.t
    ((2, 2), (3, 3), 1)
    """
    two_sided = check_bool("two_sided", two_sided)
    update_freq = check_update_freq("update_freq", update_freq)
    betas = check_betas("betas", betas)
    eps = check_eps("eps", eps)
    b1, b2 = betas

    def layout_of(shape: tuple[int, ...]):
        return matrix_layout(shape, vector="row", rows_le_cols=True)

    def init(x: Any) -> AdaDiagState | AdaDiagTwoSidedState:
        xp = check_param("x", x, ndims=(1, 2))
        lay = layout_of(tuple(x.shape))
        m, n = lay.rows, lay.cols
        dev = device_of(x)
        M = xp.zeros((m, n), dtype=x.dtype, device=dev)
        P = xp.eye(m, dtype=x.dtype, device=dev)
        if two_sided:
            Q = xp.eye(n, dtype=x.dtype, device=dev)
            return AdaDiagTwoSidedState(
                t=0, M=M, V=xp.zeros_like(M), P=P, Q=Q, **param_fields(tuple(x.shape))
            )
        return AdaDiagState(t=0, M=M, V=xp.zeros_like(M), P=P, **param_fields(tuple(x.shape)))

    def update(grad: Any, state: Any) -> tuple[Any, Any]:
        xp = array_namespace(grad)
        check_grad_shape(grad, state.param_shape)
        lay = layout_of(tuple(grad.shape)) if grad.ndim in (1, 2) else None
        if lay is None or (lay.rows, lay.cols) != tuple(state.M.shape):
            raise ValueError(
                f"grad: shape {tuple(grad.shape)} does not match the state, whose working "
                f"matrix has shape {tuple(state.M.shape)}"
            )
        G = lay.to_matrix(grad)
        P = state.P
        if two_sided:
            Q = state.Q
            if is_refresh_step(state.t, update_freq):
                P, sig, Q = _svd_basis(xp, G, full=True, align_to=(P, Q))
                # P^T G Q = [diag(sig), 0] exactly: use it, not the product, whose
                # structurally-zero entries would carry rounding noise ~u|G| that N
                # amplifies to ~u|G|/eps (docs/theory.rst#theory-adadiag, pitfall (iii)).
                m, n = int(G.shape[0]), int(G.shape[1])
                dev = device_of(G)
                D = xp.eye(m, dtype=G.dtype, device=dev) * sig
                Gt = xp.concat([D, xp.zeros((m, n - m), dtype=G.dtype, device=dev)], axis=1)
            else:
                Gt = (P.T @ G) @ Q
        else:
            if is_refresh_step(state.t, update_freq):
                P, _, _ = _svd_basis(xp, G, full=False, align_to=P)
            Gt = P.T @ G
        t = state.t + 1
        M = ema(state.M, Gt, b1)
        V = ema(state.V, Gt * Gt, b2)
        check_statistic("V", V)
        N = adam_ratio(xp, M, V, t, betas, eps)
        if two_sided:
            direction = (P @ N) @ Q.T
            new = AdaDiagTwoSidedState(t=t, M=M, V=V, P=P, Q=Q, **param_fields(state.param_shape))
        else:
            direction = P @ N
            new = AdaDiagState(t=t, M=M, V=V, P=P, **param_fields(state.param_shape))
        return lay.from_matrix(direction), new

    return make_preconditioner(
        "adadiag",
        init,
        update,
        {
            "two_sided": two_sided,
            "update_freq": update_freq,
            "betas": betas,
            "eps": eps,
            "nonfinite": nonfinite,
        },
    )
