"""Sketched full-matrix AdaGrad: a rank-r Frequent-Directions sketch of ``sum g g^T``.

The state is the sketch ``G_fd = (eps + rho) I + U diag(sig2) U^T`` (:ref:`theory-sketched-adagrad`):
``U`` ``(d, k <= r)`` orthonormal, ``sig2 >= 0``, and the escaped mass ``rho`` that Frequent
Directions moves to the diagonal, so that ``G_exact <= G_fd <= G_exact + rho I`` (Loewner
order, [F02]). The sketch arithmetic lives in :mod:`lowrank_precond.linalg.sketch`; this
module adds the protocol, the moments and the bookkeeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lowrank_precond.backends import array_namespace, check_in, check_int, device_of
from lowrank_precond.backends.blocked import Workspace
from lowrank_precond.linalg.sketch import INTEGRATORS as SKETCH_INTEGRATORS
from lowrank_precond.linalg.sketch import (
    GramSketch,
    gram_sketch_update,
    sketch_inverse_sqrt_apply,
)
from lowrank_precond.linalg.streaming_sketch import SKETCH_REFRESH_EVERY, fd_sketch_step
from lowrank_precond.preconditioners._common import (
    as_direction,
    bias_correction,
    check_betas,
    check_bool,
    check_eps,
    check_factor_dtype,
    check_param,
    ema,
    factor_dtype_for,
    flat_grad,
)
from lowrank_precond.preconditioners.base import (
    Preconditioner,
    check_statistic,
    make_preconditioner,
)

__all__ = ["SketchedAdaGradState", "sketched_adagrad"]


@dataclass
class SketchedAdaGradState:
    """State of :func:`sketched_adagrad` (flat: ``dataclasses.asdict`` is a checkpoint).

    Attributes
    ----------
    t : int
        Number of steps applied. With ``betas = (0, 0)`` a zero gradient is no step; with a
        moment (``b1 > 0`` or ``b2 > 0``) every finite gradient is one (it is the ``t`` of the
        bias corrections ``1 - b^t``).
    U : array, shape (d, k)
        Orthonormal sketch basis, ``k <= rank`` (``k`` grows by one per step until ``rank``).
    sig2 : array, shape (k,)
        Sketched eigenvalues of the accumulated Gram matrix beyond ``rho`` (``>= 0``).
    rho : array, shape ()
        Escaped mass added to the diagonal (a 0-d array, as
        :class:`~lowrank_precond.linalg.GramSketch` stores it).
    m : array, shape (d,) or (0,)
        First moment ``b1 m + (1 - b1) g`` (not bias-corrected); empty when ``b1 = 0``.

    Arrays have the parameter's dtype and device.
    """

    t: int
    U: Any
    sig2: Any
    rho: Any
    m: Any

    @property
    def sketch(self) -> GramSketch:
        """The stored sum (or EMA, ``b2 > 0``, not bias-corrected) as a ``GramSketch``."""
        return GramSketch(self.U, self.sig2, self.rho)


def sketched_adagrad(
    rank: int = 5,
    eps: float = 1e-8,
    shrink: bool = True,
    integrator: Any = None,
    betas: tuple[float, float] = (0.0, 0.0),
    nonfinite: str = "raise",
    factor_dtype: Any = None,
) -> Preconditioner:
    """Full-matrix AdaGrad with a rank-``r`` Frequent-Directions sketch of the Gram matrix (F).

    The parameter is flattened to ``d = x.size`` entries. Each step feeds the raw gradient to
    the sketch (:func:`~lowrank_precond.linalg.gram_sketch_update`: O(d r) CGS2 update plus an
    ``(r+1) x (r+1)`` SVD; with ``shrink`` the ``(r+1)``-th sketched eigenvalue ``delta`` is
    subtracted from the others and added to ``rho``) and returns::

        p = G_fd^{-1/2} v,    G_fd = (eps + rho) I + U diag(sig2) U^T             [F03]

    with ``v = g`` (``b1 = 0``) or ``v = m / (1 - b1^t)``, ``m = b1 m + (1 - b1) g`` (Adam's
    bias-corrected first moment, as :func:`~lowrank_precond.preconditioners.adamgram` does for
    AdaGram). While ``t <= rank`` nothing escapes and the step is exactly full-matrix AdaGrad's
    ``(eps I + sum g g^T)^{-1/2} g`` [F01]; afterwards ``G_exact <= G_fd <= G_exact + rho I``,
    so the sketch never steps further than full-matrix AdaGrad in any direction [F02].
    Memory ``d r`` (one factor), O(d r) per step.

    Parameters
    ----------
    rank : int >= 1
        Sketch rank ``r`` (a parameter with ``d < r`` uses ``r = d``, which is exact).
    eps : float > 0
        ``G_0 = eps I`` (inside the root, as full-matrix AdaGrad and AdaGram).
    shrink : bool
        ``True``: Frequent Directions (shrink by the dropped eigenvalue, the Loewner sandwich
        above). ``False``: plain truncation with the dropped eigenvalue added to ``rho``.
    integrator : {None, "truncated_svd", "projector_splitting", "basis_update_galerkin"}
        ``None``: Frequent Directions. Otherwise the seeds' integrators applied to the
        symmetric increment ``g g^T`` once the sketch holds ``rank`` columns, with the escaped
        trace added to ``rho`` (:func:`~lowrank_precond.linalg.gram_sketch_update`). Measured
        (d = 40, r = 5, 300 steps): ``truncated_svd`` equals plain truncation; KSL and BUG
        break the Loewner sandwich (by -2.4e-3 and -1.3e-2 relative), so FD stays the default.
        Requires ``shrink=True``.
    betas : (float, float)
        ``(b1, b2)`` in ``[0, 1)``. ``b1 > 0``: first moment (above). ``b2 = 0`` (default):
        AdaGrad's running *sum* ``H = sum g g^T``. ``b2 > 0``: an exponential moving average
        ``H = b2 H + (1 - b2) g g^T``, kept as a sketch by scaling ``sig2`` and ``rho`` by
        ``b2`` and feeding ``sqrt(1 - b2) g``, and used bias-corrected,
        ``G = eps I + H / (1 - b2^t)`` (Adam-style; the sandwich holds for the EMA). Note that
        ``b2 = 0`` is the sum, not the limit ``b2 -> 0`` of the EMA (the last ``g g^T``).
    nonfinite : {"raise", "skip"}
        A gradient with NaN/inf raises ``FloatingPointError`` before touching the state, or
        (``"skip"``) gives a zero direction and the very same state.
    factor_dtype : None, "float32", "float64" (or that dtype object)
        dtype of the sketch (``U``, ``sig2``, ``rho``, ``m``) and of the step's arithmetic.
        ``None``: float64 for float32 (and half-precision) parameters, else the parameter's
        dtype; the direction is cast back to the gradient's dtype. A float32 sketch projects
        ``g`` off ``U`` with rounding ``~6e-8 |g|``, which the step then scales by
        ``(eps + rho)^{-1/2}``: at ``eps = 1e-8`` one gradient of norm 6e3 moved the
        parameter by 8 ``lr`` (the bound is 1). Choose ``"float32"`` only with a large
        ``eps``.

    Returns
    -------
    Preconditioner
        ``init(x) -> SketchedAdaGradState``; ``update(g, state) -> (direction, state)`` with
        the direction in ``g``'s shape, dtype and backend. With ``betas = (0, 0)`` a zero
        gradient returns a zero direction and the same state object.

    References
    ----------
    Liberty 2013 (Frequent Directions); Ada-FD (Wan & Zhang 2021); Sketchy (Feinberg et al.
    2023). :ref:`theory-sketched-adagrad` [F01]-[F04].

    Examples
    --------
    With at most ``rank`` gradients it is full-matrix AdaGrad:

    >>> import numpy as np
    >>> from lowrank_precond import preconditioners as pc
    >>> rng = np.random.default_rng(0)
    >>> pre = pc.sketched_adagrad(rank=3, eps=0.1)
    >>> state, G = pre.init(np.zeros(5)), 0.1 * np.eye(5)
    >>> for g in rng.standard_normal((3, 5)):
    ...     p, state = pre.update(g, state)
    ...     G += np.outer(g, g)
    >>> w, E = np.linalg.eigh(G)
    >>> bool(np.allclose(p, E @ (E.T @ g / np.sqrt(w)))), state.U.shape
    (True, (5, 3))
    """
    rank = check_int("rank", rank, minimum=1)
    eps = check_eps("eps", eps)
    shrink = check_bool("shrink", shrink)
    check_in("integrator", integrator, SKETCH_INTEGRATORS)
    if integrator is not None and not shrink:
        raise ValueError(f"integrator: {integrator!r} needs shrink=True")
    b1, b2 = check_betas("betas", betas)
    factor_dtype = check_factor_dtype("factor_dtype", factor_dtype)
    # output buffers of the streamed step, recycled once no state or direction uses them
    workspace = Workspace()

    def init(x: Any) -> SketchedAdaGradState:
        xp = check_param("x", x)
        d = math.prod(x.shape)
        dtype = factor_dtype_for(xp, x.dtype, factor_dtype)
        sketch = GramSketch.empty(d, like=xp.zeros((1,), dtype=dtype, device=device_of(x)))
        m = xp.zeros((d if b1 > 0 else 0,), dtype=dtype, device=device_of(x))
        return SketchedAdaGradState(t=0, U=sketch.U, sig2=sketch.sig2, rho=sketch.rho, m=m)

    def update(grad: Any, state: SketchedAdaGradState) -> tuple[Any, SketchedAdaGradState]:
        xp = array_namespace(grad)
        d = int(state.U.shape[0])
        g = flat_grad(grad, d)
        if g.dtype != state.U.dtype:
            g = xp.astype(g, state.U.dtype)
        t = state.t + 1
        sketch = state.sketch
        if b2 > 0.0:  # EMA: H <- b2 H + (1 - b2) g g^T
            sketch = GramSketch(sketch.U, b2 * sketch.sig2, b2 * sketch.rho)
        if b1 == 0.0 and integrator is None and sketch.rank == min(rank, d):
            # the full sketch's Frequent-Directions step fused with its direction
            # (linalg.streaming_sketch): two passes over d instead of ten
            streamed = fd_sketch_step(
                sketch, g, eps, shrink=shrink,
                feed_scale=math.sqrt(1.0 - b2) if b2 > 0.0 else 1.0,
                apply_scale=bias_correction(b2, t) if b2 > 0.0 else 1.0,
                refresh=t % SKETCH_REFRESH_EVERY == 0, workspace=workspace,
            )
            if streamed is not None:
                new_sk = streamed.sketch
                check_statistic("sig2", new_sk.sig2)
                check_statistic("rho", new_sk.rho)
                new = SketchedAdaGradState(t=t, U=new_sk.U, sig2=new_sk.sig2, rho=new_sk.rho,
                                           m=state.m)
                return as_direction(streamed.direction, grad), new
        fed = gram_sketch_update(sketch, math.sqrt(1.0 - b2) * g if b2 > 0.0 else g,
                                 min(rank, d), shrink=shrink, integrator=integrator)
        if fed is sketch and b1 == 0.0 and b2 == 0.0:  # g = 0 and no moments: no step
            return xp.zeros_like(grad), state
        sketch = fed
        check_statistic("sig2", sketch.sig2)
        check_statistic("rho", sketch.rho)
        m = state.m
        if b1 > 0.0:
            m = ema(m, g, b1)
            v = m / bias_correction(b1, t)
        else:
            v = g
        applied = sketch
        if b2 > 0.0:
            c = bias_correction(b2, t)
            applied = GramSketch(sketch.U, sketch.sig2 / c, sketch.rho / c)
        p = sketch_inverse_sqrt_apply(applied, v, eps)
        new = SketchedAdaGradState(t=t, U=sketch.U, sig2=sketch.sig2, rho=sketch.rho, m=m)
        return as_direction(p, grad), new

    hyper = {
        "rank": rank,
        "eps": eps,
        "shrink": shrink,
        "integrator": integrator,
        "betas": (b1, b2),
        "nonfinite": nonfinite,
        "factor_dtype": factor_dtype,
    }
    return make_preconditioner("sketched_adagrad", init, update, hyper)
