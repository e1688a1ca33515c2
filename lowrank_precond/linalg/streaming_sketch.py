"""One sketched-AdaGrad step (Frequent Directions + its direction) in two row-blocked passes.

:func:`fd_sketch_step` fuses :func:`~lowrank_precond.linalg.gram_sketch_update` (the
Frequent-Directions step of ALGORITHMS.md F, ``integrator=None``) on a *full* sketch (``k =
rank`` columns) with :func:`~lowrank_precond.linalg.sketch_inverse_sqrt_apply` of the new
sketch to ``g``. Same mathematics (the same ``U diag(sig2) U^T``, ``rho`` and direction to
rounding), fewer passes over ``d``:

1. pass 1: ``c = U^T g`` and ``|g|^2`` (reads ``U, g``);
2. in between, no pass, only small matrices: ``beta^2 = |g|^2 - |c|^2`` is the squared norm
   of the residual ``h = g - U c`` (``U`` orthonormal), the ``(k+1) x (k+1)`` core
   ``[[diag(sqrt(sig2)), c], [0, beta]]`` and its SVD ``W diag(s)`` give the new sketch, and
   ``U_new^T g = W^T [c; beta]`` (``q = h / beta`` is orthogonal to ``U``), so the
   direction's coefficients need no pass either;
3. pass 2: ``U_new^T = W_top^T U^T + w h^T = (W_top^T - w c^T) U^T + w g^T`` block by block
   (one small product per block, ``w = W[k] / beta``), and in the same block ``p = g /
   sqrt(base) + U_new cv`` from the rows just written (reads ``U, g``, writes ``U_new, p``).

Against the floor of the bench (read and write ``U`` and ``V`` once) that is about one read
of ``U`` more than the floor of ``U`` alone, and the general path's ten passes (CGS2's four,
the copy into ``[U h]``, the product, the direction's two) become two.

**When ``g`` lies nearly in span U.** ``beta^2 = |g|^2 - |c|^2`` cancels; below
``beta^2 < EXTEND_MIN |g|^2`` an extra pass forms ``h1 = g - U c`` block by block and
projects it once more (``c2 = U^T h1``: classical Gram--Schmidt twice, as the general path
always does); pass 2 recomputes ``h1`` bit for bit and subtracts ``U c2``. A residual at the
rounding level (``beta <= 64 u |g|``) adds no column, as in the general path.

**Orthonormality.** Every :data:`SKETCH_REFRESH_EVERY` steps (the caller says when) pass 1
also accumulates ``U^T U``; a drift above the general path's ``tau = 50 u sqrt(k + 1)``
re-orthonormalises ``U`` first (two more passes, rare: the general path detects drift for
free through ``c2`` each step, the streamed one on these steps only; float32 drifts by about
``6e-9`` per step, so ``tau = 7.3e-6`` is far from reached in 64 steps).

**torch CPU** tensors run through NumPy views, as in :mod:`.streaming`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from lowrank_precond.backends import array_namespace, core_dtype, device_of
from lowrank_precond.backends.blocked import (
    Workspace,
    copy_into,
    empty,
    from_numpy_view,
    numpy_views,
    residual_into,
    single_threaded_blas,
)
from lowrank_precond.linalg.sketch import (
    _NEW_COLUMN_TOL,
    _ORTH_TOL,
    GramSketch,
    _fd_core,
    _reorthonormalize,
)
from lowrank_precond.linalg.streaming import (
    EXTEND_MIN,
    _row_blocks,
    _safe_range,
)

__all__ = ["SKETCH_REFRESH_EVERY", "StreamedSketchStep", "fd_sketch_step"]

#: ``sketched_adagrad`` measures ``U^T U`` in pass 1 every this many streamed steps
SKETCH_REFRESH_EVERY = 64


@dataclass(frozen=True)
class StreamedSketchStep:
    """Result of :func:`fd_sketch_step`.

    Attributes
    ----------
    sketch : GramSketch
        The new sketch (``U`` ``(d, k)``, a transposed view of a row-contiguous ``(k, d)``
        buffer that the next step reads block by block).
    direction : array, shape (d,)
        ``G_fd^{-1/2} g`` of the new sketch, ``G_fd = (eps + rho / c) I + U diag(sig2 / c)
        U^T`` with ``c = apply_scale``.
    """

    sketch: GramSketch
    direction: Any


def fd_sketch_step(
    sketch: GramSketch,
    g: Any,
    eps: float,
    *,
    shrink: bool = True,
    feed_scale: float = 1.0,
    apply_scale: float = 1.0,
    refresh: bool = False,
    workspace: Workspace | None = None,
) -> StreamedSketchStep | None:
    """Frequent-Directions update of a full sketch fused with its direction (two passes).

    Equivalent to ``new = gram_sketch_update(sketch, feed_scale * g, rank=sketch.rank,
    shrink=shrink)`` followed by ``sketch_inverse_sqrt_apply(GramSketch(new.U, new.sig2 /
    apply_scale, new.rho / apply_scale), g, eps)``, to rounding; see the module notes.

    Parameters
    ----------
    sketch : GramSketch
        ``U`` ``(d, k)`` orthonormal, ``k >= 1`` (the sketch is full: ``k`` is the rank).
    g : array, shape (d,)
        Finite gradient, same backend, device and dtype as ``sketch.U``.
    eps : float
        ``> 0``.
    shrink : bool, keyword-only
        Frequent Directions (``True``) or plain truncation, as in ``gram_sketch_update``.
    feed_scale, apply_scale : float, keyword-only
        ``g`` enters the sketch as ``feed_scale * g``; the direction uses the sketch divided
        by ``apply_scale`` (``sketched_adagrad``'s EMA: ``sqrt(1 - b2)`` and the bias
        correction ``1 - b2^t``).
    refresh : bool, keyword-only
        Measure ``U^T U`` in pass 1 and re-orthonormalise on drift (see the module notes).
    workspace : Workspace, optional, keyword-only
        Recycles the output buffers (see :class:`~lowrank_precond.backends.blocked.Workspace`).

    Returns
    -------
    StreamedSketchStep or None
        ``None`` where the caller's general path must take the step: an empty sketch,
        ``d < k + 2``, or ``|g|^2`` zero, non-finite or outside the dtype's safe range (the
        general path scales by ``max|g|`` and raises or skips as documented there). Nothing
        is modified.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import (GramSketch, gram_sketch_update,
    ...                                     sketch_inverse_sqrt_apply)
    >>> rng = np.random.default_rng(0)
    >>> U, _ = np.linalg.qr(rng.standard_normal((40, 3)))
    >>> sk = GramSketch(U, np.array([3.0, 2.0, 1.0]), 0.1)
    >>> g = rng.standard_normal(40)
    >>> out = fd_sketch_step(sk, g, 0.5)
    >>> ref = gram_sketch_update(sk, g, rank=3)
    >>> bool(np.allclose(out.sketch.dense(0.5), ref.dense(0.5)))
    True
    >>> bool(np.allclose(out.direction, sketch_inverse_sqrt_apply(ref, g, 0.5)))
    True
    """
    with warnings.catch_warnings(), single_threaded_blas(sketch.U):
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow: declined below
        host = _numpy_views(sketch, g)
        args = (eps, shrink, feed_scale, apply_scale, refresh, workspace)
        if host is None:
            return _step(sketch, g, *args)
        res = _step(host[0], host[1], *args)
        if res is None:
            return None
        new = res.sketch
        return StreamedSketchStep(
            GramSketch(from_numpy_view(new.U), from_numpy_view(new.sig2),
                       from_numpy_view(new.rho)),
            from_numpy_view(res.direction),
        )


def _numpy_views(sketch: GramSketch, g: Any) -> tuple[GramSketch, Any] | None:
    views = numpy_views(sketch.U, sketch.sig2, sketch.rho, g)
    return None if views is None else (GramSketch(*views[:3]), views[3])


def _step(
    sketch: GramSketch, g: Any, eps: float, shrink: bool, feed_scale: float,
    apply_scale: float, refresh: bool, workspace: Workspace | None,
) -> StreamedSketchStep | None:
    U, sig2 = sketch.U, sketch.sig2
    xp = array_namespace(U)
    d, k = int(U.shape[0]), int(U.shape[1])
    if k < 1 or d < k + 2:
        return None
    dt = U.dtype
    cdt = core_dtype(U)
    dev = device_of(U)
    u = float(xp.finfo(dt).eps) / 2
    tau = _ORTH_TOL * u * math.sqrt(k + 1)

    def alloc(shape: tuple[int, ...]) -> Any:
        return empty(shape, U) if workspace is None else workspace.empty(shape, U)

    Ut = U.T
    if not _row_contiguous(Ut):  # e.g. from the general path: one copy into (k, d) rows
        Ut = _row_copy(U)
    blocks = _row_blocks(d, k, U, write=False)
    wblocks = _row_blocks(d, k, U, write=True)

    # ---- pass 1: c = U^T g, |g|^2 (and U^T U on refresh steps)
    c1, gg, K = _project(xp, Ut, g, blocks, refresh)
    if refresh:
        drift = float(xp.max(xp.abs(xp.astype(K, cdt) - xp.eye(k, dtype=cdt, device=dev))))
        if not math.isfinite(drift):
            return None
        if drift > tau:
            U2, sig2 = _reorthonormalize(xp, U, sig2)
            Ut = _row_copy(U2)
            c1, gg, _ = _project(xp, Ut, g, blocks, False)
    lo, hi = _safe_range(xp, dt)
    c1c = xp.astype(c1, cdt)
    csq = float(c1c @ c1c)
    if not (lo < gg < hi) or not math.isfinite(csq):
        return None

    # ---- the residual h = g - U c: implicit, or explicit (CGS2) when g is nearly in span U
    beta2 = gg - csq
    c2 = H = None
    if beta2 < EXTEND_MIN * gg:
        H = empty((1, wblocks[0][1] - wblocks[0][0]), U)  # h1 by blocks, also in pass 2
        c2 = xp.zeros((k,), dtype=dt, device=dev)
        hh = 0.0
        for a, b in wblocks:  # the writing pass's blocks: h1 is recomputed there bit for bit
            hb = _first_residual(H, g, c1, Ut, a, b)
            c2 = c2 + Ut[:, a:b] @ hb
            hh += float(hb @ hb)
        c2c = xp.astype(c2, cdt)
        beta2 = hh - float(c2c @ c2c)
        cc = c1c + c2c
    else:
        cc = c1c
    beta = math.sqrt(max(beta2, 0.0))
    new_column = beta > _NEW_COLUMN_TOL * u * math.sqrt(gg)

    # ---- small algebra (core dtype): the core, its SVD, rho, sig2, the direction's coefficients
    fs = float(feed_scale)
    W, keep, sig2_new, rho = _fd_core(
        xp, xp.astype(sig2, cdt), cc * fs, beta * fs if new_column else None, k, shrink,
        xp.astype(sketch.rho, cdt),
    )
    Wk = W[:, :keep]
    # U_new^T g = W^T [U^T g; q^T g] = W^T [c1; beta] (q = h / beta is orthogonal to U)
    ug = Wk.T @ (xp.concat([c1c, xp.asarray([beta], dtype=cdt, device=dev)]) if new_column
                 else c1c)
    ac = float(apply_scale)
    base = eps + float(rho) / ac
    sb = math.sqrt(base)
    s2a = sig2_new / ac
    sbs = xp.sqrt(base + s2a)
    cv = xp.astype((-s2a / (sb * sbs * (sb + sbs))) * ug, dt)
    # U_new rows = A U_b + w h_b with A = W_top^T (minus w c^T where h is implicit)
    if new_column:
        w = Wk[k, :] / beta
        A = Wk[:k, :].T - (xp.reshape(w, (keep, 1)) * xp.reshape(c1c, (1, k))
                           if c2 is None else 0.0)
        wt = xp.astype(w, dt)
    else:
        A = Wk.T
        wt = xp.zeros((keep,), dtype=dt, device=dev)
    negA = xp.astype(-A, dt)

    # ---- pass 2: U_new (one (keep, d) buffer) and p = g / sqrt(base) + U_new cv
    W1 = alloc((keep, d))
    p = alloc((d,))
    inv_sb = 1.0 / sb
    for a, b in wblocks:
        rows = (slice(None), slice(a, b))
        Fb = Ut[:, a:b]
        if c2 is None:  # h_b = g_b - c^T U_b folded into A: W1_b = w g_b^T - (-A) U_b
            residual_into(W1, rows, wt, g[a:b], negA, Fb)
        else:  # CGS2: h_b = (g_b - c1^T U_b) - c2^T U_b, then W1_b = w h_b^T + A U_b
            hb = _first_residual(H, g, c1, Ut, a, b)
            residual_into(H, (0, slice(0, b - a)), 1.0, hb, c2, Fb)
            residual_into(W1, rows, wt, H[0, : b - a], negA, Fb)
        residual_into(p, (slice(a, b),), inv_sb, g[a:b], -cv, W1[:, a:b])
    new = GramSketch(W1.T, xp.astype(sig2_new, dt), xp.asarray(xp.astype(rho, dt)))
    return StreamedSketchStep(new, p)


def _row_copy(U: Any) -> Any:
    """``U.T`` ``(k, d)`` copied into a row-contiguous buffer."""
    Ut = empty((int(U.shape[1]), int(U.shape[0])), U)
    copy_into(Ut, (slice(None), slice(None)), U.T)
    return Ut


def _row_contiguous(Ft: Any) -> bool:
    """Whether the ``(k, d)`` array has unit stride along ``d`` (NumPy only; else True)."""
    strides = getattr(Ft, "strides", None)
    return not isinstance(strides, tuple) or strides[1] == Ft.itemsize


def _project(xp: Any, Ut: Any, g: Any, blocks: Any, gram: bool) -> tuple[Any, float, Any]:
    """``(U^T g, |g|^2, U^T U or None)`` in one pass over ``U`` and ``g``."""
    k = int(Ut.shape[0])
    c = xp.zeros((k,), dtype=Ut.dtype, device=device_of(Ut))
    K = None
    gg = 0.0
    for a, b in blocks:
        Fb = Ut[:, a:b]
        gb = g[a:b]
        c = c + Fb @ gb
        gg += float(gb @ gb)
        if gram:
            K = Fb @ Fb.T if K is None else K + Fb @ Fb.T
    return c, gg, K


def _first_residual(H: Any, g: Any, c1: Any, Ut: Any, a: int, b: int) -> Any:
    """``h1 = g_b - c1^T U_b`` into ``H[0, :B]`` (the same call in both passes: same bits)."""
    residual_into(H, (0, slice(0, b - a)), 1.0, g[a:b], c1, Ut[:, a:b])
    return H[0, : b - a]
