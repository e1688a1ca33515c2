"""One sketched-AdaGrad step (Frequent Directions + its direction) in two row-blocked passes.

:func:`try_fd_sketch_step` fuses :func:`~lowrank_precond.linalg.gram_sketch_update` (the
Frequent-Directions step of :ref:`theory-sketched-adagrad` in ``docs/theory.rst``,
``integrator=None``) on a *full* sketch (``k = rank`` columns) with
:func:`~lowrank_precond.linalg.sketch_inverse_sqrt_apply` of the new sketch to ``g``. Same
mathematics (the same ``U diag(sig2) U^T``, ``rho`` and direction to rounding), fewer passes
over ``d``:

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

**Where it runs**, and how it declines: as in :mod:`.streaming` (the kernels of
:func:`~lowrank_precond.backends.fused.fused_kernels`, a
:class:`~lowrank_precond.backends.fused.Declined` where they do not apply;
:func:`fd_sketch_available` for the static part).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from lowrank_precond.backends import array_namespace, core_dtype, device_of, numba_kernels
from lowrank_precond.backends.blocked import Workspace
from lowrank_precond.backends.fused import Declined, FusedKernels, fused_declined, fused_kernels
from lowrank_precond.backends.shards import Shards
from lowrank_precond.linalg.sketch import (
    _NEW_COLUMN_TOL,
    _ORTH_TOL,
    GramSketch,
    _fd_core,
    _reorthonormalize,
)
from lowrank_precond.linalg.streaming import (
    EXTEND_MIN,
    _finite,
    _row_blocks,
    _safe_range,
)

__all__ = [
    "SKETCH_REFRESH_EVERY",
    "Declined",
    "StreamedSketchStep",
    "fd_sketch_available",
    "fd_sketch_step",
    "try_fd_sketch_step",
]

#: ``sketched_adagrad`` measures ``U^T U`` in pass 1 every this many streamed steps
SKETCH_REFRESH_EVERY = 64


@dataclass(frozen=True)
class StreamedSketchStep:
    """Result of :func:`try_fd_sketch_step`.

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


def fd_sketch_available(like: Any, d: int, rank: int, *, dtype: Any = None) -> tuple[bool, str]:
    """Whether :func:`try_fd_sketch_step` can run, before any step: ``(True, "")`` or
    ``(False, reason)``.

    Static conditions only: the backend and device of ``like`` have fused kernels, the
    sketch ``dtype`` (default ``like.dtype``) is float32 or float64, and
    ``d >= rank + 2``. The step itself also needs a full sketch (``rank`` columns), which
    the caller knows, and declines at run time for the gradient's reasons.

    Examples
    --------
    >>> import numpy as np
    >>> fd_sketch_available(np.zeros(1), 100, 5)
    (True, '')
    >>> fd_sketch_available(np.zeros(1), 6, 5)
    (False, 'd = 6 is below rank + 2 = 7 (rank 5): too small for the fused step')
    """
    declined = _static_decline(like, d, rank, like.dtype if dtype is None else dtype)
    return (True, "") if declined is None else (False, declined.reason)


def _static_decline(like: Any, d: int, k: int, dtype: Any) -> Declined | None:
    declined = fused_declined(like, dtype)
    if declined is not None:
        return declined
    if k < 1 or d < k + 2:
        reason = f"d = {d} is below rank + 2 = {k + 2} (rank {k}): too small for the fused step"
        return Declined("size", reason)
    return None


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
    """:func:`try_fd_sketch_step` with ``None`` in place of its
    :class:`~lowrank_precond.backends.fused.Declined` (the reason is dropped).

    Examples
    --------
    >>> import numpy as np
    >>> U, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((20, 2)))
    >>> fd_sketch_step(GramSketch(U, np.ones(2), 0.0), np.zeros(20), 0.1) is None  # g = 0
    True
    """
    res = try_fd_sketch_step(
        sketch, g, eps, shrink=shrink, feed_scale=feed_scale, apply_scale=apply_scale,
        refresh=refresh, workspace=workspace,
    )  # fmt: skip
    return None if isinstance(res, Declined) else res


def try_fd_sketch_step(
    sketch: GramSketch,
    g: Any,
    eps: float,
    *,
    shrink: bool = True,
    feed_scale: float = 1.0,
    apply_scale: float = 1.0,
    refresh: bool = False,
    workspace: Workspace | None = None,
    overwrite: bool = False,
    shards: Shards | None = None,
) -> StreamedSketchStep | Declined:
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
    overwrite : bool, keyword-only
        Write the new ``U`` into the memory of ``sketch.U`` (the transpose of a row-contiguous
        buffer, as these steps' outputs are; else into the step's row copy) where the sketch
        keeps its size: one buffer read and written instead of two. ``sketch`` must not be used
        after a step that returns a :class:`StreamedSketchStep`; after a :class:`Declined` it
        is unchanged (every check runs before the first write). Default ``False``: nothing is
        modified.
    shards : Shards, optional, keyword-only
        ``U`` and ``g`` are this process's rows of length-``shards.size`` arrays
        (:mod:`lowrank_precond.backends.shards`): each pass's sums over the rows are
        completed by ``shards.allreduce`` (``O(k^2)`` numbers), the outputs are this
        process's rows. A refresh step that finds a drift declines (``"geometry"``: its
        re-orthonormalisation is a tall QR). Default: all rows here.

    Returns
    -------
    StreamedSketchStep or Declined
        :class:`~lowrank_precond.backends.fused.Declined` where the caller's general path
        must take the step: the static conditions of :func:`fd_sketch_available` (codes
        ``"backend"``, ``"dtype"``, ``"size"``, the latter also for an empty sketch); arrays
        a torch tensor cannot share with NumPy (``"view"``); ``|g|^2`` zero, non-finite or
        outside the dtype's safe range, or a non-finite drift measure (``"gradient"``: the
        general path scales by ``max|g|`` and raises or skips as documented there); small
        matrices that are not finite in the factor dtype (``"geometry"``). Nothing is
        modified unless ``overwrite`` and the step succeeded.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import (GramSketch, gram_sketch_update,
    ...                                     sketch_inverse_sqrt_apply)
    >>> rng = np.random.default_rng(0)
    >>> U, _ = np.linalg.qr(rng.standard_normal((40, 3)))
    >>> sk = GramSketch(U, np.array([3.0, 2.0, 1.0]), 0.1)
    >>> g = rng.standard_normal(40)
    >>> out = try_fd_sketch_step(sk, g, 0.5)
    >>> ref = gram_sketch_update(sk, g, rank=3)
    >>> bool(np.allclose(out.sketch.dense(0.5), ref.dense(0.5)))
    True
    >>> bool(np.allclose(out.direction, sketch_inverse_sqrt_apply(ref, g, 0.5)))
    True
    """
    U = sketch.U
    d = int(U.shape[0]) if shards is None else shards.size
    declined = _static_decline(U, d, int(U.shape[1]), U.dtype)
    if declined is not None:
        return declined
    kernels = fused_kernels(U)
    host = _to_host(kernels, sketch, g)
    if isinstance(host, Declined):
        return host
    if workspace is None:
        ops = kernels.ops

        def alloc(shape: tuple[int, ...]) -> Any:
            return ops.empty(shape, host[0].dtype)
    else:

        def alloc(shape: tuple[int, ...]) -> Any:
            return workspace.empty(shape, host[0])

    scales = (float(feed_scale), float(apply_scale))
    with warnings.catch_warnings(), kernels.single_threaded():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow: declined below
        res = _host_step(kernels.ops, host, eps, shrink, scales, refresh, alloc, overwrite, shards)
    if isinstance(res, Declined):
        return res
    U1, sig2, rho, p = (kernels.wrap(x) for x in res)
    return StreamedSketchStep(GramSketch(U1, sig2, rho), p)


def _to_host(kernels: FusedKernels, sketch: GramSketch, g: Any) -> tuple[Any, ...] | Declined:
    """``(U, sig2, rho, g)`` as host arrays sharing their memory (plain arrays, not a
    :class:`GramSketch`: no validation per step)."""
    views = tuple(kernels.host(x) for x in (sketch.U, sketch.sig2, sketch.rho, g))
    if any(v is None for v in views):
        return Declined(
            "view",
            "the sketch or the gradient have no NumPy view (e.g. a "
            "tensor with the negative or conjugate bit set, or another dtype)",
        )
    return views


class _Passes:
    """What the passes over ``d`` read (host arrays)."""

    def __init__(self, ops: Any, U: Any, g: Any, shards: Shards | None = None):
        self.ops = ops
        self.shards = shards
        self.xp = xp = array_namespace(U)
        self.d, self.k = d, k = int(U.shape[0]), int(U.shape[1])
        self.dt, self.cdt, self.dev = U.dtype, core_dtype(U), device_of(U)
        # a float16 / bfloat16 gradient: one cast (numba has no such arrays, and NumPy would
        # compute c g and |g|^2 in half precision)
        self.g = numba_kernels.readable(g, U.dtype)
        self.Ut = U.T
        if not _row_contiguous(self.Ut):  # e.g. from the general path: one copy into rows
            self.Ut = _row_copy(ops, U)
        self.blocks = _row_blocks(d, k, U.dtype, xp, write=False)
        self.wblocks = _row_blocks(d, k, U.dtype, xp, write=True)
        #: compiled passes are used from ``numba_kernels.MIN_ROWS`` rows
        self.compiled = d >= numba_kernels.MIN_ROWS

    def reduce(self, *parts: Any) -> tuple[Any, ...]:
        """The sums of ``parts`` (``None`` passes through) over every shard's rows."""
        if self.shards is None:
            return parts
        summed = iter(self.shards.allreduce([x for x in parts if x is not None]))
        return tuple(None if x is None else next(summed) for x in parts)


def _host_step(
    ops: Any, host: tuple[Any, ...], eps: float, shrink: bool, scales: Any, refresh: bool,
    alloc: Any, overwrite: bool = False, shards: Shards | None = None,
) -> tuple[Any, ...] | Declined:  # fmt: skip
    """The whole step on the host arrays ``(U, sig2, rho, g)``: pass 1, the residual, the
    core, pass 2. Returns the host ``(U_new, sig2_new, rho_new, p)``."""
    U, sig2, rho, g = host
    P = _Passes(ops, U, g, shards)
    xp, cdt, k = P.xp, P.cdt, P.k
    c1, gg, K = P.reduce(*_pass_project(P, refresh))
    if refresh:
        u = float(xp.finfo(P.dt).eps) / 2
        drift = float(xp.max(xp.abs(xp.astype(K, cdt) - xp.eye(k, dtype=cdt, device=P.dev))))
        if not math.isfinite(drift):
            return Declined("gradient", "U^T U is not finite")
        if drift > _ORTH_TOL * u * math.sqrt(k + 1):
            if shards is not None:
                reason = "a drift to re-orthonormalise: a tall QR, not a sum over the rows"
                return Declined("geometry", reason)
            U2, sig2 = _reorthonormalize(xp, U, sig2)
            P.Ut = _row_copy(ops, U2)
            c1, gg, _ = _pass_project(P, False)
    lo, hi = _safe_range(xp, P.dt)
    c1c = xp.astype(c1, cdt)
    csq = float(c1c @ c1c)
    if not (lo < gg < hi) or not math.isfinite(csq):
        return Declined("gradient", f"|g|^2 = {gg:.3g} is zero, non-finite or out of range")
    beta, c2, H = _residual(P, c1, c1c, gg, csq)
    core = _core(P, rho, sig2, c1c, c2, beta, gg, eps, shrink, scales)
    sig2_out, rho_out = xp.astype(core.sig2, P.dt), xp.asarray(xp.astype(core.rho, P.dt))
    if not _finite(xp, sig2_out, rho_out, core.wt, core.negA, core.cv, core.inv_sb):
        return Declined("geometry", "the step's small matrices are not finite")
    W1, p = _pass_write(P, core, c1, c2, H, alloc, overwrite)
    return W1.T, sig2_out, rho_out, p


def _pass_project(P: _Passes, gram: bool) -> tuple[Any, float, Any]:
    """Pass 1: ``(U^T g, |g|^2, U^T U or None)`` in one pass over ``U`` and ``g``."""
    xp, Ut = P.xp, P.Ut
    jit = numba_kernels.sketch_kernels(P.k, P.k) if P.compiled and not gram else None
    if jit is not None:
        c, gg = jit.project(Ut, P.g)
        return xp.astype(c, Ut.dtype), gg, None
    c = xp.zeros((P.k,), dtype=Ut.dtype, device=device_of(Ut))
    K = None
    gg = 0.0
    for a, b in P.blocks:
        Fb = Ut[:, a:b]
        gb = P.g[a:b]
        c = c + Fb @ gb
        gg += float(gb @ gb)
        if gram:
            K = Fb @ Fb.T if K is None else K + Fb @ Fb.T
    return c, gg, K


def _residual(P: _Passes, c1: Any, c1c: Any, gg: float, csq: float) -> tuple[float, Any, Any]:
    """``(beta, c2, H)``: the residual ``h = g - U c`` implicitly (``c2 = H = None``), or
    explicitly (CGS2) when ``g`` is nearly in span U (the writing pass's blocks: ``h1`` is
    recomputed there bit for bit)."""
    xp = P.xp
    beta2 = gg - csq
    c2 = H = None
    if beta2 < EXTEND_MIN * gg:
        H = P.ops.empty((1, P.wblocks[0][1] - P.wblocks[0][0]), P.dt)
        c2 = xp.zeros((P.k,), dtype=P.dt, device=P.dev)
        hh = 0.0
        for a, b in P.wblocks:
            hb = _first_residual(P, H, c1, a, b)
            c2 = c2 + P.Ut[:, a:b] @ hb
            hh += float(hb @ hb)
        c2, hh = P.reduce(c2, hh)
        c2c = xp.astype(c2, P.cdt)
        beta2 = hh - float(c2c @ c2c)
    return math.sqrt(max(beta2, 0.0)), c2, H


@dataclass(frozen=True)
class _Core:
    """The small algebra's results: new ``sig2``, ``rho``; pass 2's ``wt``, ``negA``, ``cv``,
    ``1/sqrt(base)``."""

    sig2: Any
    rho: Any
    wt: Any
    negA: Any
    cv: Any
    inv_sb: float


def _core(
    P: _Passes, rho0: Any, sig2: Any, c1c: Any, c2: Any, beta: float, gg: float,
    eps: float, shrink: bool, scales: Any,
) -> _Core:  # fmt: skip
    """The core, its SVD, ``rho``, ``sig2`` and the direction's coefficients (core dtype)."""
    xp, cdt, dev, k = P.xp, P.cdt, P.dev, P.k
    u = float(xp.finfo(P.dt).eps) / 2
    cc = c1c if c2 is None else c1c + xp.astype(c2, cdt)
    new_column = beta > _NEW_COLUMN_TOL * u * math.sqrt(gg)
    fs, ac = scales
    W, keep, sig2_new, rho = _fd_core(
        xp, xp.astype(sig2, cdt), cc * fs, beta * fs if new_column else None, k, shrink,
        xp.astype(rho0, cdt),
    )  # fmt: skip
    Wk = W[:, :keep]
    # U_new^T g = W^T [U^T g; q^T g] = W^T [c1; beta] (q = h / beta is orthogonal to U)
    col = xp.concat([c1c, xp.asarray([beta], dtype=cdt, device=dev)]) if new_column else c1c
    ug = Wk.T @ col
    base = eps + float(rho) / ac
    sb = math.sqrt(base)
    s2a = sig2_new / ac
    sbs = xp.sqrt(base + s2a)
    cv = xp.astype((-s2a / (sb * sbs * (sb + sbs))) * ug, P.dt)
    # U_new rows = A U_b + w h_b with A = W_top^T (minus w c^T where h is implicit)
    if new_column:
        w = Wk[k, :] / beta
        outer = xp.reshape(w, (keep, 1)) * xp.reshape(c1c, (1, k))
        A = Wk[:k, :].T - (outer if c2 is None else 0.0)
        wt = xp.astype(w, P.dt)
    else:
        A = Wk.T
        wt = xp.zeros((keep,), dtype=P.dt, device=dev)
    return _Core(sig2_new, rho, wt, xp.astype(-A, P.dt), cv, 1.0 / sb)


def _pass_write(
    P: _Passes, core: _Core, c1: Any, c2: Any, H: Any, alloc: Any, overwrite: bool
) -> tuple[Any, Any]:
    """Pass 2: ``U_new`` (one ``(keep, d)`` buffer) and ``p = g / sqrt(base) + U_new cv``.

    With ``overwrite`` ``U_new`` is written over ``U`` (rows): the compiled pass reads a row's
    ``k`` entries before it writes any, the NumPy blocks form a block's product in a scratch
    block before writing the block."""
    ops = P.ops
    keep = int(core.wt.shape[0])
    p = alloc((P.d,))
    W1 = P.Ut if overwrite and keep == P.k else alloc((keep, P.d))
    jit = numba_kernels.sketch_kernels(P.k, keep) if P.compiled and c2 is None else None
    if jit is not None and jit.write is not None:  # compiled up to MAX_SQUARE_RANK
        jit.write(P.Ut, W1, P.g, p, core.wt, core.negA, core.cv, core.inv_sb)
        return W1, p
    rows0 = P.wblocks[0][1] - P.wblocks[0][0]
    T = ops.empty((keep, rows0), P.dt)  # A U_b, before W1_b
    t = ops.empty((rows0,), P.dt)  # U_new cv
    negcv = -core.cv
    for a, b in P.wblocks:
        rows = (slice(None), slice(a, b))
        Fb = P.Ut[:, a:b]
        Tb = T[:, : b - a]
        if c2 is None:  # h_b = g_b - c^T U_b folded into A: W1_b = w g_b^T - (-A) U_b
            ops.residual_into(W1, rows, core.wt, P.g[a:b], core.negA, Fb, Tb)
        else:  # CGS2: h_b = (g_b - c1^T U_b) - c2^T U_b, then W1_b = w h_b^T + A U_b
            hb = _first_residual(P, H, c1, a, b)
            ops.residual_into(H, (0, slice(0, b - a)), 1.0, hb, c2, Fb)
            ops.residual_into(W1, rows, core.wt, H[0, : b - a], core.negA, Fb, Tb)
        ops.residual_into(p, (slice(a, b),), core.inv_sb, P.g[a:b], negcv, W1[:, a:b], t[: b - a])
    return W1, p


def _row_copy(ops: Any, U: Any) -> Any:
    """``U.T`` ``(k, d)`` copied into a row-contiguous buffer."""
    Ut = ops.empty((int(U.shape[1]), int(U.shape[0])), U.dtype)
    ops.copy_into(Ut, (slice(None), slice(None)), U.T)
    return Ut


def _row_contiguous(Ft: Any) -> bool:
    """Whether the ``(k, d)`` host array has unit stride along ``d``."""
    return Ft.strides[1] == Ft.itemsize


def _first_residual(P: _Passes, H: Any, c1: Any, a: int, b: int) -> Any:
    """``h1 = g_b - c1^T U_b`` into ``H[0, :B]`` (the same call in both passes: same bits)."""
    P.ops.residual_into(H, (0, slice(0, b - a)), 1.0, P.g[a:b], c1, P.Ut[:, a:b])
    return H[0, : b - a]
