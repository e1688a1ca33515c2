"""One truncated AdaGram step with the KSL integrator in three row-blocked passes (B.4).

:func:`ksl_adagram_step` fuses :func:`~lowrank_precond.linalg.rank_one_increment` (A.3) and
:func:`~lowrank_precond.linalg.projector_splitting` (Lie--Trotter, B.2.2) for the rank-one
increment that a gradient ``g`` adds to ``M = U S V^T``, and returns the new ``(U1, S1, V1)``
with the published direction ``gbar / s``. Same mathematics (``U1 S1 V1^T`` and the direction
agree to rounding), fewer passes over ``d``:

1. ``c1 = V^T g`` and ``|g|^2`` (reads ``V, g``);
2. ``gbar = g / sqrt(eps) - U (S c1 / sqrt(eps))``, written into the output vector, with
   ``[a1; vg] = [U V]^T gbar`` and ``n = |gbar|^2`` (reads ``U, V, g``);
3. in between, only small matrices: because ``U, V`` are orthonormal, every Gram matrix of
   the K and L steps is an ``r x r`` expression in ``S, a1, vg, n`` (B.4), so the two QRs are
   Householder QRs of ``(r+1) x r`` coordinate matrices;
4. ``U1``, ``V1`` (both rows of one ``(2r, d)`` buffer) and ``p = gbar / s`` (reads ``U, V,
   gbar``, writes ``U1, V1, p``).

Against the floor (read and write ``U`` and ``V`` once) that is two extra reads of ``V``, one
of ``U``, and a few ``d``-vectors.

**The symmetric direction** ``G^{-1/2} g`` (A.4.2) rides on the same passes: pass 1 also reads
``U`` for ``C = U^T V``, pass 2 forms ``Y = V - U C`` block by block for the principal angles
between ``span V`` and ``span U`` (see ``_symmetric_coefficients``), and pass 4 writes ``p =
g / sqrt(eps) + [U V] alpha + coef gbar`` with the basis update's product (measured at d = 1e6,
r = 5: 1.55x the published step).

**Bases without a tall QR.** ``K = U S + x w^T`` lies in ``span[U, gbar]`` and ``U`` is
orthonormal, so ``[U, q_u]`` with ``q_u = (gbar - U a1) / h_u``, ``h_u^2 = n - |a1|^2``, is an
orthonormal basis of that span and ``K = [U, q_u] T`` with the ``(r+1) x r`` coordinates
``T = [[S + b a1 w^T], [b h_u w^T]]``: ``qr(K) = [U, q_u] qr(T)``, exact for every rank (a
rank-deficient ``S``, e.g. after repeated gradients, is completed inside ``span[U, gbar]``,
as in :mod:`.integrators`). The same holds for ``L = V A + gbar z^T`` in ``span[V, gbar]``.

**Rank-one basis update.** ``U1 = [U, q_u] Q`` for an orthonormal ``(r+1) x r`` ``Q``, and KSL
fixes ``U1`` only up to ``U1 -> U1 G`` (``G`` orthogonal, ``S1 -> G^T S1``). With the polar
decomposition ``Q[:r] = P O``, ``G = O^T`` gives ``U1 G = U + (q_u - alpha U v) v^T``,
``v = O Q[r]``, ``alpha = 1/(1 + sqrt(1 - |v|^2))``: the old basis plus a rank-one term (a
rotation in the plane of ``U v`` and ``q_u``), O(d r) flops instead of a ``d x r`` by
``r x r`` product. ``M1`` is unchanged by the gauge.

**When the implicit ``q_u`` is not accurate.** ``h_u^2 = n - |a1|^2`` cancels when ``gbar``
lies nearly in ``span U`` (repeated or low-dimensional gradients): its rounding ``u n`` costs
``q_u`` an orthogonality error ``~ u n / h_u^2``. Below ``h_u^2 < EXTEND_MIN * n`` one more
reduction pass forms ``H = gbar - U a1`` block by block and projects it once more (classical
Gram--Schmidt twice; pass 4 recomputes ``H`` bit for bit), and when
``|H| <= 10 u sqrt(d) |gbar|`` the extension is dropped: ``gbar`` is in ``span U`` and ``U1``
spans ``U`` (both sides unchanged: no write at all, only ``S`` moves).

**Orthonormality over many steps.** Each step adds ``O(u)`` to ``|U^T U - I|`` and the errors
do not compound (measured: ``<= 2e-15`` after 3000 steps of random, repeated and
low-dimensional gradient streams, without any refresh). As a safeguard, ``refresh=True``
(``adagram`` passes it every :data:`REFRESH_EVERY` accepted steps) also accumulates
``[U V]^T [U V]`` in pass 2 and folds the Cholesky factors of ``U^T U``, ``V^T V`` into that
step (``U = U_o R_u``, ``S -> R_u S R_v^T``), so the outputs are orthonormal to rounding again
at no extra pass. A drift above :data:`DRIFT_LIMIT` (it would mean the factors were changed
outside) makes the function decline, and the caller's general path (exact Gram matrices per
step) takes over.

**Blocks and layout.** CPU arrays (NumPy, torch) are walked in row blocks of about
:data:`BLOCK_BYTES` per factor in the reading passes and :data:`WRITE_BLOCK_BYTES` in the
writing one, so that the few products of a block run from cache; other devices use one
block. ``U1`` and ``V1`` are the transposed halves of one row-contiguous ``(2r, d)`` buffer
(from the caller's :class:`~lowrank_precond.backends.blocked.Workspace` when given, which
recycles the buffers of states nobody holds any more); the next step recognises that layout
(:func:`~lowrank_precond.backends.blocked.stacked_parent`) and reads ``[U V]`` blocks with one
call. In-place block writes (NumPy ``out=``, torch ``addmm``) come from
:mod:`lowrank_precond.backends.blocked`, with plain array-API fallbacks, and NumPy's BLAS
runs single-threaded during the step (hundreds of small calls: a second thread only adds
hand-off latency, and stalls when the other core is busy).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

from lowrank_precond.backends import array_namespace, core_dtype, device_of, name_of
from lowrank_precond.backends.blocked import (
    Workspace,
    add_into,
    axpy_into,
    copy_into,
    empty,
    from_numpy_view,
    lincomb_into,
    numpy_views,
    residual_into,
    scale_into,
    single_threaded_blas,
    stacked_parent,
)
from lowrank_precond.linalg.lowrank import LowRank

__all__ = [
    "BLOCK_BYTES",
    "WRITE_BLOCK_BYTES",
    "DRIFT_LIMIT",
    "EXTEND_MIN",
    "REFRESH_EVERY",
    "SYMMETRIC_DRIFT_LIMIT",
    "SYM_DROP",
    "SYM_KEEP",
    "StreamedStep",
    "ksl_adagram_step",
]

#: bytes of one factor block in the reading passes (rows = BLOCK_BYTES // (itemsize * r),
#: clamped): large blocks, few calls
BLOCK_BYTES = 1 << 20
#: the same in the writing pass: the block of ``[U V]`` it reads twice and the block of the
#: output it writes should stay in a core's L2 cache (measured at d = 1e6, r = 5 on a 2 MiB
#: L2: 10.3 ms per pass with 0.5 MiB, 11.7 ms with 1 MiB, 17.7 ms with 2.5 MiB)
WRITE_BLOCK_BYTES = 1 << 19
#: smallest ``h^2 / |gbar|^2`` for the implicit extension vector (error <~ u / EXTEND_MIN)
EXTEND_MIN = 0.25
#: ``adagram`` re-measures ``U^T U``, ``V^T V`` every this many accepted truncated steps
REFRESH_EVERY = 128
#: ``max|U^T U - I|`` at a refresh step above which the streamed path declines
DRIFT_LIMIT = 1e-6
#: the same for ``direction="symmetric"`` (its basis of ``span[U, V, gbar]`` assumes
#: orthonormal ``U, V``; the measured drift is ``~1e-15``)
SYMMETRIC_DRIFT_LIMIT = 1e-12
#: principal-angle sines kept / dropped by the symmetric direction (see ``_symmetric_coefficients``)
SYM_KEEP, SYM_DROP = 1e-6, 1e-7
_MIN_ROWS, _MAX_ROWS = 1024, 1 << 16


@dataclass(frozen=True)
class StreamedStep:
    """Result of :func:`ksl_adagram_step`.

    Attributes
    ----------
    lowrank : LowRank
        ``(U1, S1, V1)``: the KSL step of ``U S V^T + x y^T`` (in the gauge of the module
        notes; ``U1 S1 V1^T`` equals :func:`~lowrank_precond.linalg.projector_splitting`'s).
    direction : array, shape (d,)
        The direction of ``M^+ = M + x y^T`` (before truncation, B.1) in the factor dtype:
        ``gbar / s = L_t^{-1} g`` (published, A.5) or ``G^{-1/2} g`` (symmetric, A.4.2).
    nu : float
        ``|gbar|``.
    s : float
        ``hypot(1, nu)``.
    gnorm_sq : float
        ``|g|^2`` (accumulated in pass 1; ``inf`` if it overflowed the dtype).
    cgs2 : tuple of bool
        Whether the ``U`` / ``V`` side needed the explicit re-orthogonalisation pass.
    """

    lowrank: LowRank
    direction: Any
    nu: float
    s: float
    gnorm_sq: float
    cgs2: tuple[bool, bool]


def _row_blocks(d: int, r: int, like: Any, *, write: bool) -> list[tuple[int, int]]:
    """Row blocks of a reading (:data:`BLOCK_BYTES`) or the writing pass
    (:data:`WRITE_BLOCK_BYTES`), looked up here so that both streamed steps follow them."""
    block_bytes = WRITE_BLOCK_BYTES if write else BLOCK_BYTES
    xp = array_namespace(like)
    if name_of(like) not in ("numpy", "torch") or "cpu" not in str(device_of(like)).lower():
        return [(0, d)]
    itemsize = 4 if like.dtype == xp.float32 else 8
    rows = max(_MIN_ROWS, min(_MAX_ROWS, block_bytes // (itemsize * max(r, 1))))
    if d <= rows:
        return [(0, d)]
    return [(a, min(a + rows, d)) for a in range(0, d, rows)]


def _safe_range(xp: Any, dtype: Any) -> tuple[float, float]:
    """``(lo, hi)`` for ``|gbar|^2`` summed in ``dtype`` without under/overflow trouble."""
    fi = xp.finfo(dtype)
    return float(fi.smallest_normal) / float(fi.eps), float(fi.max) * float(fi.eps)


def _gauge(xp: Any, Q: Any, r: int) -> tuple[Any, Any, float]:
    """``(O, v, alpha)`` with ``Q[:r] = (I - alpha v v^T) O`` (polar) and ``v = O Q[r]``."""
    top = Q[:r, :]
    W, _, Zt = xp.linalg.svd(top, full_matrices=False)
    O = W @ Zt
    if int(Q.shape[0]) == r:
        return O, None, 0.0
    v = O @ Q[r, :]
    nv2 = float(v @ v)
    alpha = 1.0 / (1.0 + math.sqrt(max(1.0 - nv2, 0.0)))
    return O, v, alpha


def _outer(a: Any, b: Any) -> Any:
    xp = array_namespace(a)
    return xp.reshape(a, (-1, 1)) * xp.reshape(b, (1, -1))


class _Side:
    """One factor (``U`` with ``a1`` or ``V`` with ``vg``) and its extension ``q``."""

    def __init__(self, Ft: Any, coef: Any, n: float, root: Any = None):
        self.Ft = Ft  # (r, d) view
        self.coef = coef  # F^T gbar in the (possibly re-orthonormalised) basis, core dtype
        self.R = root  # Cholesky factor of F^T F (refresh steps) or None
        self.h2 = n - float(coef @ coef)
        self.h = math.sqrt(max(self.h2, 0.0))  # |gbar - F F^T gbar|
        self.extend = True  # False: gbar lies in span F (no new direction)
        # explicit re-orthogonalisation (CGS2) state
        self.explicit = False
        self.a_tall = None  # first projection coefficients, tall dtype
        self.a2 = None  # second projection F^T H, tall dtype, then core dtype (a2c)
        self.a2c = None
        self.hh = 0.0  # |H|^2


def ksl_adagram_step(
    lowrank: LowRank,
    g: Any,
    eps: float,
    *,
    refresh: bool = False,
    direction: str = "published",
    workspace: Workspace | None = None,
) -> StreamedStep | None:
    """Fused AdaGram increment (A.3) + KSL Lie--Trotter step (B.2.2) in three passes (B.4).

    Equivalent to ``info = rank_one_increment(lowrank, g, eps)`` followed by
    ``projector_splitting(lowrank, info.x, info.y)`` (same ``U1 S1 V1^T`` to rounding) and
    ``info.published``; see the module notes for how and for the cost.

    Parameters
    ----------
    lowrank : LowRank
        ``U, V`` ``(d, r)`` orthonormal, ``S`` ``(r, r)``; float32 or float64.
    g : array, shape (d,)
        Finite gradient, same backend and device; any real floating dtype (cast block by
        block to the factors' dtype).
    eps : float
        ``> 0``.
    refresh : bool, keyword-only
        Measure ``U^T U``, ``V^T V`` in pass 2 and fold the correction into this step (see
        the module notes); ``adagram`` sets it every :data:`REFRESH_EVERY` steps.
    direction : {'published', 'symmetric'}, keyword-only
        Which direction of ``M^+`` to return (the symmetric one needs float64 factors).
    workspace : Workspace, optional, keyword-only
        Where the outputs (``U1``, ``V1`` and the direction) are allocated: a
        :class:`~lowrank_precond.backends.blocked.Workspace` hands back buffers that nothing
        references any more (saves the zero-filling of fresh memory, about a quarter of the
        step at d = 1e6); by default fresh arrays.

    Returns
    -------
    StreamedStep or None
        ``None`` when this path does not apply and the caller must use the general one:
        ``d < 2 r + 2``, a non-finite or zero/underflowing/overflowing ``|gbar|^2`` (the
        general path skips the step or raises with the scaled norms of A.6), or a drift
        above :data:`DRIFT_LIMIT` found at a refresh step. Inputs are not validated beyond
        that (the caller did it); nothing is modified.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import LowRank, projector_splitting, rank_one_increment
    >>> rng = np.random.default_rng(0)
    >>> U, _ = np.linalg.qr(rng.standard_normal((50, 3)))
    >>> V, _ = np.linalg.qr(rng.standard_normal((50, 3)))
    >>> M = LowRank(U, np.diag([1.0, 0.9, 0.8]), V)
    >>> g = rng.standard_normal(50)
    >>> out = ksl_adagram_step(M, g, 0.1)
    >>> info = rank_one_increment(M, g, 0.1)
    >>> ref = projector_splitting(M, info.x, info.y)
    >>> bool(np.allclose(out.lowrank.dense(), ref.dense()))
    True
    >>> bool(np.allclose(out.direction, info.published))
    True
    """
    with warnings.catch_warnings(), single_threaded_blas(lowrank.U):
        # |g|^2 or |gbar|^2 may overflow (huge g, tiny eps): the step then declines and the
        # general path handles it with scaled norms, so NumPy's overflow warning is noise
        warnings.simplefilter("ignore", RuntimeWarning)
        host = _numpy_views(lowrank, g)
        if host is None:
            return _step(lowrank, g, eps, refresh, direction, workspace)
        res = _step(host[0], host[1], eps, refresh, direction, workspace)
        return None if res is None else _as_torch(res, lowrank, host[0])


def _numpy_views(lowrank: LowRank, g: Any) -> tuple[LowRank, Any] | None:
    """``(lowrank, g)`` as NumPy views of torch CPU tensors (no copy), else ``None``.

    ``U`` and ``V`` that are halves of one ``(2r, d)`` tensor become halves of one NumPy
    array, so that :func:`~lowrank_precond.backends.blocked.stacked_parent` still sees it.
    """
    U, S, V = lowrank.U, lowrank.S, lowrank.V
    W = stacked_parent(U.T, V.T)
    views = numpy_views(U if W is None else W, V, S, g)
    if views is None:
        return None
    Un, Vn, Sn, gn = views
    if W is not None:  # Un is the (2r, d) buffer
        r = int(U.shape[1])
        Un, Vn = Un[:r, :].T, Un[r:, :].T
    return LowRank(Un, Sn, Vn), gn


def _as_torch(res: StreamedStep, like: LowRank, host: LowRank) -> StreamedStep:
    """``res`` (computed on :func:`_numpy_views`) with torch tensors sharing its memory."""
    low = res.lowrank
    if low.U is host.U:  # the bases did not change: the caller's own tensors
        U1, V1 = like.U, like.V
    else:  # halves of one (2r, d) buffer: keep that layout for the next step
        W1 = from_numpy_view(stacked_parent(low.U.T, low.V.T))
        r = int(low.U.shape[1])
        U1, V1 = W1[:r, :].T, W1[r:, :].T
    low1 = LowRank(U1, from_numpy_view(low.S), V1)
    return dataclasses.replace(res, lowrank=low1, direction=from_numpy_view(res.direction))


def _step(
    lowrank: LowRank, g: Any, eps: float, refresh: bool, direction: str,
    workspace: Workspace | None,
) -> StreamedStep | None:
    U, S, V = lowrank.U, lowrank.S, lowrank.V
    xp = array_namespace(U)
    d, r = int(U.shape[0]), int(U.shape[1])
    if direction not in ("published", "symmetric"):
        raise ValueError(f"direction: expected 'published' or 'symmetric', got {direction!r}")
    symmetric = direction == "symmetric"
    if r < 1 or d < 2 * r + 2 or (symmetric and U.dtype != xp.float64):
        return None
    dt = U.dtype
    cdt = core_dtype(U)
    dev = device_of(U)
    Ut, Vt = U.T, V.T
    Sc = xp.astype(S, cdt)
    root = math.sqrt(eps)
    inv_root = 1.0 / root
    blocks = _row_blocks(d, r, U, write=False)
    wblocks = _row_blocks(d, r, U, write=True)

    def alloc(shape: tuple[int, ...]) -> Any:
        return empty(shape, U) if workspace is None else workspace.empty(shape, U)

    def gblock(a: int, b: int) -> Any:
        gb = g[a:b]
        return gb if gb.dtype == dt else xp.astype(gb, dt)

    W = stacked_parent(Ut, Vt)  # (2r, d) when U, V share one buffer (our own outputs)
    if W is None:
        # Inputs not from our own previous step (first truncated step, a checkpoint loaded
        # into fresh tensors, a fallback step): copy them into one (2r, d) buffer so the
        # arithmetic, and hence the rounding, never depends on how the factors were stored.
        # A checkpoint therefore continues bit-identically.
        W = stacked_parent(*_stack(xp, Ut, Vt))
        if W is not None:
            Ut, Vt = W[:r, :], W[r:, :]

    # ---- pass 1: c1 = V^T g, |g|^2 (and C = U^T V for the symmetric direction)
    c1 = xp.zeros((r,), dtype=dt, device=dev)
    C = None
    gg = 0.0
    for a, b in blocks:
        gb = gblock(a, b)
        Vb = Vt[:, a:b]
        c1 = c1 + Vb @ gb
        gg += float(gb @ gb)
        if symmetric:
            Ub = Ut[:, a:b]
            C = Ub @ Vb.T if C is None else C + Ub @ Vb.T
    c1c = xp.astype(c1, cdt)
    if not math.isfinite(float(xp.sum(c1c))):
        return None
    t = xp.astype((Sc @ c1c) * inv_root, dt)

    # ---- pass 2: gbar (into p), [a1; vg] = [U V]^T gbar, n = |gbar|^2; for the symmetric
    # direction also Y = V - U C (explicitly: its Gram matrix GY gives the principal angles
    # between span V and span U) and yg = Y^T gbar
    if symmetric:
        negCt = xp.astype(-C.T, dt)
        rows0 = blocks[0][1] - blocks[0][0]
        Yv, Yv2 = empty((r, rows0), U), empty((r, rows0), U)
        GY = xp.zeros((r, r), dtype=dt, device=dev)
        yg = xp.zeros((r,), dtype=dt, device=dev)
    p = alloc((d,))
    av = xp.zeros((2 * r,), dtype=dt, device=dev)
    G = None
    n = 0.0
    for a, b in blocks:
        Ub, Vb = Ut[:, a:b], Vt[:, a:b]
        residual_into(p, (slice(a, b),), inv_root, gblock(a, b), t, Ub)
        gb = p[a:b]
        if W is not None:
            av = av + W[:, a:b] @ gb
        else:
            av = av + xp.concat([Ub @ gb, Vb @ gb])
        n += float(gb @ gb)
        if symmetric:
            B = b - a
            lincomb_into(Yv, (slice(None), slice(0, B)), Vb, negCt, Ub)
            # two distinct operands keep NumPy on gemm (its syrk is 1.4x slower here)
            copy_into(Yv2, (slice(None), slice(0, B)), Yv[:, :B])
            GY = GY + Yv[:, :B] @ Yv2[:, :B].T
            yg = yg + Yv[:, :B] @ gb
        if refresh:
            Wbc = xp.astype(xp.concat([Ub, Vb], axis=0), cdt)
            G = Wbc @ Wbc.T if G is None else G + Wbc @ Wbc.T
    a1, vg = av[:r], av[r:]
    lo, hi = _safe_range(xp, dt)
    if not (lo < n < hi):
        return None
    a1c, vgc = xp.astype(a1, cdt), xp.astype(vg, cdt)
    if not math.isfinite(float(xp.sum(a1c) + xp.sum(vgc))):
        return None
    nu = math.sqrt(n)
    s = math.hypot(1.0, nu)
    bcoef = (1.0 / s) * (1.0 / (1.0 + s))

    S_in, a1_in = Sc, a1c  # in the input basis (a refresh step re-expresses them below)

    # ---- refresh: U = U_o R_u, V = V_o R_v with orthonormal U_o, V_o
    Ru = Rv = None
    if refresh:
        eye = xp.eye(r, dtype=cdt, device=dev)
        GU, GV = G[:r, :r], G[r:, r:]
        drift = max(float(xp.max(xp.abs(GU - eye))), float(xp.max(xp.abs(GV - eye))))
        if not drift <= (SYMMETRIC_DRIFT_LIMIT if symmetric else DRIFT_LIMIT):
            return None
        Ru = xp.linalg.cholesky((GU + GU.T) / 2).T
        Rv = xp.linalg.cholesky((GV + GV.T) / 2).T
        a1c = xp.linalg.solve(Ru.T, a1c)
        vgc = xp.linalg.solve(Rv.T, vgc)
        Sc = Ru @ Sc @ Rv.T
    us = _Side(Ut, a1c, n, Ru)
    vs = _Side(Vt, vgc, n, Rv)

    # ---- explicit re-orthogonalisation where gbar lies nearly in span U / span V
    # H = gbar - a1 F (the first projection, row i for side i; rows of other sides are gbar)
    # is formed block by block here and again, bitwise identically, in pass 3; a2 = F^T H is
    # the second projection (classical Gram-Schmidt twice).
    sides = (us, vs)
    needs = [sd for sd in sides if sd.h2 < EXTEND_MIN * n]
    H = A1 = None
    if needs:
        if refresh:
            return None  # rare combination: leave it to the general path
        drop_tol = 10.0 * float(xp.finfo(dt).eps) * math.sqrt(max(d, 100)) * nu
        for sd in needs:
            sd.explicit = True
            sd.a_tall = xp.astype(sd.coef, dt)
            sd.a2 = xp.zeros((r,), dtype=dt, device=dev)
            sd.hh = 0.0
        zt = xp.zeros((r,), dtype=dt, device=dev)
        A1 = _blockdiag_rows(xp, [sd.a_tall if sd.explicit else zt for sd in sides])
        H = empty((2, wblocks[0][1] - wblocks[0][0]), U)
        for a, b in wblocks:  # pass 3's blocks: H is recomputed there bit for bit
            _first_projection(H, W, sides, A1, p[a:b], a, b)
            for i, sd in enumerate(sides):
                if sd.explicit:
                    hb = H[i, : b - a]
                    sd.a2 = sd.a2 + sd.Ft[:, a:b] @ hb
                    sd.hh += float(hb @ hb)
        for sd in needs:
            a2c = xp.astype(sd.a2, cdt)
            h2 = sd.hh - float(a2c @ a2c)
            sd.coef = sd.coef + a2c
            sd.a2c = a2c
            sd.h = math.sqrt(max(h2, 0.0))
            sd.extend = sd.h > drop_tol

    # ---- symmetric direction: a basis of span[U, V, gbar] from pass 2's reductions
    sym = None
    if symmetric:
        # U^T gbar and |gbar - U a| as accurately as the published step has them: after
        # CGS2 the refined ones; otherwise (also on refresh steps, whose us.coef is in the
        # re-orthonormalised basis) a1 and the closed form, then well conditioned
        a_sym = a1_in + us.a2c if us.explicit else a1_in
        h_sym = us.h if us.explicit else math.sqrt(max(n - float(a1_in @ a1_in), 0.0))
        sym = _symmetric_coefficients(
            xp, S_in, c1c, a1_in, a_sym, h_sym, xp.astype(C, cdt), xp.astype(GY, cdt),
            xp.astype(yg, cdt), n, bcoef, root, dt,
        )
        if sym is None:
            return None  # sines in (SYM_DROP, SYM_KEEP): Householder in the general path

    # ---- small algebra (core dtype): K step, S step, L step, gauges
    w = vs.coef - Sc.T @ us.coef  # V^T y
    Tk = Sc + bcoef * _outer(us.coef, w)
    if us.extend:
        Tk = xp.concat([Tk, xp.reshape((bcoef * us.h) * w, (1, r))], axis=0)
        xk = xp.concat([us.coef, xp.asarray([us.h], dtype=cdt, device=dev)])
    else:
        xk = us.coef
    Qk, Rk = xp.linalg.qr(Tk)
    z = bcoef * (Qk.T @ xk)  # U1^T x
    Stil = Rk - _outer(z, w)
    Tl = Stil.T + _outer(w, z)
    if vs.extend:
        Tl = xp.concat([Tl, xp.reshape(vs.h * z, (1, r))], axis=0)
    Ql, Rl = xp.linalg.qr(Tl)
    Ou, vu, alpha_u = _gauge(xp, Qk, r)
    Ov, vv, alpha_v = _gauge(xp, Ql, r)
    S1 = Ou @ Rl.T @ Ov.T

    # ---- pass 3: U1 = U_o + (q - alpha U_o v) v^T, V1 likewise, p = gbar / s
    # Both factors go to one (2r, d) buffer: row block = base + Vm @ E, with base the input
    # block (or R^{-T} times it on a refresh step), Vm = diag(v_u, v_v) (2r x 2) and E the two
    # rows e_i = inv_h_i (gbar - a1_i F_i) - m_i F_i (the first term is H, or gbar where no
    # re-orthogonalisation was needed); a side whose basis does not change has v = 0 (a copy).
    inv_s = 1.0 / s
    change = [v is not None and sd.extend for sd, v in ((us, vu), (vs, vv))]
    if not any(change) and Ru is None:  # gbar in span U and span V: only S changes
        if sym is None:
            scale_into(p, (slice(0, d),), inv_s)
        else:
            for a, b in wblocks:
                _symmetric_into(xp, p, a, b, gblock(a, b), inv_root, sym, W, Ut, Vt)
        low = LowRank(U, xp.astype(S1, dt), V)
        return StreamedStep(low, p, nu, s, gg, (us.explicit, vs.explicit))
    vcols, ms, inv_hs = [], [], []
    zr = xp.zeros((r,), dtype=cdt, device=dev)
    for ch, sd, v, alpha in ((change[0], us, vu, alpha_u), (change[1], vs, vv, alpha_v)):
        if not ch:
            vcols.append(zr)
            ms.append(zr)
            inv_hs.append(0.0)
            continue
        inv_h = 1.0 / sd.h
        if sd.explicit:  # after H: subtract (a2 + alpha h v) F, scaled by 1/h
            m = (sd.a2c + (alpha * sd.h) * v) * inv_h
        else:
            m = sd.coef * inv_h + alpha * v
            if sd.R is not None:
                m = xp.linalg.solve(sd.R, m)
        vcols.append(v)
        ms.append(m)
        inv_hs.append(inv_h)
    Vm = xp.astype(_blockdiag_rows(xp, vcols).T, dt)  # (2r, 2)
    Mm = xp.astype(_blockdiag_rows(xp, ms), dt)  # (2, 2r)
    hcol = xp.asarray(inv_hs, dtype=dt, device=dev)
    Bm = None
    if Ru is not None:  # U_o = U R_u^{-1}: base block = blockdiag(R_u^{-T}, R_v^{-T}) [U; V]
        zrr = xp.zeros((r, r), dtype=cdt, device=dev)
        Bm = xp.astype(xp.concat([
            xp.concat([xp.linalg.inv(Ru).T, zrr], axis=1),
            xp.concat([zrr, xp.linalg.inv(Rv).T], axis=1),
        ], axis=0), dt)
    W1 = alloc((2 * r, d))
    # the symmetric direction's [U V] alpha + coef_g gbar as a third row of E: one product
    # per block for both (p = g / sqrt(eps) + that row)
    fused = sym is not None and H is None and W is not None
    if fused:
        alpha, coef_g = sym
        Mm = xp.concat([Mm, xp.reshape(-alpha, (1, 2 * r))], axis=0)
        hcol = xp.concat([hcol, xp.asarray([coef_g], dtype=dt, device=dev)])
    E = empty((3 if fused else 2, wblocks[0][1] - wblocks[0][0]), U) if H is None else H
    for a, b in wblocks:
        B = b - a
        gb = p[a:b]
        cols = (slice(None), slice(0, B))
        rows = (slice(None), slice(a, b))
        if H is None:
            if W is not None:
                residual_into(E, cols, hcol, gb, Mm, W[:, a:b])
            else:
                for i, sd in enumerate(sides):
                    residual_into(E, (i, slice(0, B)), inv_hs[i], gb, Mm[i, i * r:(i + 1) * r],
                                  sd.Ft[:, a:b])
        else:
            _first_projection(H, W, sides, A1, gb, a, b)
            for i, sd in enumerate(sides):
                residual_into(E, (i, slice(0, B)), inv_hs[i], H[i, :B], Mm[i, i * r:(i + 1) * r],
                              sd.Ft[:, a:b])
        e = E[:2, :B]
        if W is not None:
            Wb = W[:, a:b]
            lincomb_into(W1, rows, Wb if Bm is None else Bm @ Wb, Vm, e)
        else:
            for i, sd in enumerate(sides):
                lo_, hi_ = i * r, (i + 1) * r
                Fb = sd.Ft[:, a:b]
                base = Fb if Bm is None else Bm[lo_:hi_, lo_:hi_] @ Fb
                lincomb_into(W1, (slice(lo_, hi_), slice(a, b)), base, Vm[lo_:hi_, i:i + 1],
                             e[i:i + 1, :])
        if sym is None:
            scale_into(p, (slice(a, b),), inv_s)
        elif fused:
            axpy_into(p, (slice(a, b),), inv_root, gblock(a, b), E[2, :B])
        else:
            _symmetric_into(xp, p, a, b, gblock(a, b), inv_root, sym, W, Ut, Vt)
    low = LowRank(W1[:r, :].T, xp.astype(S1, dt), W1[r:, :].T)
    return StreamedStep(low, p, nu, s, gg, (us.explicit, vs.explicit))


def _blockdiag_rows(xp: Any, rows: list[Any]) -> Any:
    """``(2, 2r)`` matrix with ``rows[0]`` in ``[0, :r]`` and ``rows[1]`` in ``[1, r:]``."""
    r = int(rows[0].shape[0])
    z = xp.zeros((1, r), dtype=rows[0].dtype, device=device_of(rows[0]))
    top = xp.concat([xp.reshape(rows[0], (1, r)), z], axis=1)
    bottom = xp.concat([z, xp.reshape(rows[1], (1, r))], axis=1)
    return xp.concat([top, bottom], axis=0)


def _stack(xp: Any, Ut: Any, Vt: Any) -> tuple[Any, Any]:
    """``Ut, Vt`` ``(r, d)`` copied into the two halves of one row-contiguous buffer."""
    r = int(Ut.shape[0])
    both = xp.concat([Ut, Vt], axis=0)
    return both[:r, :], both[r:, :]


def _first_projection(H: Any, W: Any, sides: Any, A1: Any, gb: Any, a: int, b: int) -> None:
    """``H[i, :B] = gbar_b - a1_i F_i`` for both sides (``a1_i = 0`` where not needed).

    The same call in the re-orthogonalisation pass and in pass 3, so both see the same bits.
    """
    B = b - a
    if W is not None:
        xp = array_namespace(gb)
        ones = xp.ones((2,), dtype=gb.dtype, device=device_of(gb))
        residual_into(H, (slice(None), slice(0, B)), ones, gb, A1, W[:, a:b])
        return
    r = int(A1.shape[1]) // 2
    for i, sd in enumerate(sides):
        residual_into(H, (i, slice(0, B)), 1.0, gb, A1[i, i * r:(i + 1) * r], sd.Ft[:, a:b])


def _symmetric_coefficients(
    xp: Any, S: Any, c1: Any, a1: Any, a: Any, h: float, C: Any, GY: Any, yg: Any, n: float,
    b: float, root: float, dt: Any,
) -> tuple[Any, Any] | None:
    """``(alpha, coef_g)`` with ``G^{-1/2} g = g / sqrt(eps) + [U V] alpha + coef_g gbar`` (A.4.2).

    ``M^+ = U S V^T + b gbar y^T``, ``y = gbar - V S^T a1`` (``a1 = U^T gbar``), acts in
    ``span[U, V, gbar]``. Its orthonormal basis is ``Z = [U, Q]`` with ``Q = Y2 E lam^{-1/2}``
    (never formed), where ``Y2 = [V, gbar/nu] - U P``, ``P = [C, a/nu]`` (``C = U^T V``; ``a``
    the projection of ``gbar`` on ``U``, refined by CGS2 where the published step needed it)
    has the Gram matrix ``E diag(lam) E^T``. The core ``m = Z^T M^+ Z`` and ``Z^T g`` are
    small expressions (``U^T g = sqrt(eps)(a1 + t)``, ``gbar^T g = sqrt(eps)(n + t^T a1)``);
    ``p = eps^{-1/2}(g + Z (|I - m| - I) Z^T g)`` as in A.4.2.

    **The Gram matrix of Y2, without a pass of its own.** ``sqrt(lam)`` are the sines of the
    principal angles between ``span[V, gbar/nu]`` and ``span U``. In AdaGram they are tiny:
    ``span V`` equals ``span U`` in exact arithmetic (measured sines ``<= 2e-8`` on random
    streams, i.e. rounding), so ``I - C^T C`` (the closed form) cancels to nothing and cannot
    tell zero sines from small true ones at d = 1e6 (``U^T U - I ~ 5e-14`` after a QR there
    puts them at ``~2e-7``). Instead pass 1 measures ``C`` and pass 2 forms ``Y = V - U C``
    block by block with ``GY = Y^T Y`` and ``yg = Y^T gbar``: small columns whose Gram matrix
    is resolved relative to its own size. ``Y`` is the ``V`` part of ``Y2`` up to ``U D``,
    ``D = U^T Y = (I - U^T U) C ~ 1e-13``, so ``D^T D`` is far below the smallest eigenvalue
    that matters (``SYM_DROP^2 = 1e-14``). The ``gbar`` column is ``(gbar - U a)/nu``, of norm
    ``h/nu``, and its products with ``Y`` are ``yg/nu`` (up to ``D^T a``, as small). So::

        G2 = [[GY, yg/nu], [yg^T/nu, (h/nu)^2]]

    A symmetric eigensolver resolves sines only down to ``~sqrt(u) = 1.5e-8`` (absolute error
    ``u |G2|`` on ``lam``), which is why directions that coincide exactly show up there. A
    direction with ``sqrt(lam) >= SYM_KEEP`` is kept (its basis vector carries an
    orthogonality error ``<~ u / sqrt(lam) <= 2e-10``); one with ``sqrt(lam) <= SYM_DROP`` is
    dropped, a backward perturbation of ``V`` (or ``gbar / nu``) of at most that size. In
    between, ``None``: the caller's Householder path decides.

    Measured against dense SVD references (random, least-squares, low-dimensional and
    repeated gradient streams, d = 200, r = 5, 300 steps, eps = 0.1, 1e-4, 1e-8;
    ``asv_bench/scripts/symmetric_accuracy.py``) the errors are those of the general
    (Householder) path to within 2x (both ``~u sqrt(lambda/eps)``,
    A.15) and no step fell in between. Earlier versions formed ``Y`` in a separate pass (9 to
    35 ms of a 30 to 60 ms step at d = 1e6, r = 5).
    """
    r = int(S.shape[0])
    cdt = S.dtype
    dev = device_of(S)
    nu = math.sqrt(n)
    inv_nu = 1.0 / nu
    P = xp.concat([C, xp.reshape(a * inv_nu, (r, 1))], axis=1)  # [V, gbar/nu] = U P + Y2
    ygn = xp.reshape(yg * inv_nu, (r, 1))
    G2 = xp.concat([
        xp.concat([GY, ygn], axis=1),
        xp.concat([ygn.T, xp.asarray([[(h * inv_nu) ** 2]], dtype=cdt, device=dev)], axis=1),
    ], axis=0)
    lam, E = xp.linalg.eigh((G2 + G2.T) / 2)
    sv = xp.sqrt(xp.clip(lam, min=0.0))
    gray = (sv > SYM_DROP) & (sv < SYM_KEEP)
    if bool(xp.any(gray)):
        return None
    kept = [i for i in range(r + 1) if float(sv[i]) >= SYM_KEEP]
    k = len(kept)
    idx = xp.asarray(kept, dtype=xp.int64, device=dev)
    Ek = xp.take(E, idx, axis=1)  # (r+1, k)
    sk = xp.take(sv, idx)  # (k,)
    # coordinates in Z = [U, Q] of U, V and gbar (Y2 = Q diag(sk) Ek^T)
    Zc = xp.concat([P, xp.reshape(sk, (k, 1)) * Ek.T], axis=0)  # (r+k, r+1)
    Zu = xp.concat([xp.eye(r, dtype=cdt, device=dev), xp.zeros((k, r), dtype=cdt, device=dev)],
                   axis=0)
    Zv, Zg = Zc[:, :r], Zc[:, r] * nu
    m = Zu @ S @ Zv.T + b * _outer(Zg, Zg - Zv @ (S.T @ a1))
    q = r + k
    _, sig, Wrt = xp.linalg.svd(xp.eye(q, dtype=cdt, device=dev) - m, full_matrices=False)
    t = (S @ c1) / root
    ug = root * (a1 + t)  # U^T g
    Yg = xp.concat([c1, xp.asarray([root * (n + float(t @ a1)) * inv_nu], dtype=cdt,
                                   device=dev)]) - P.T @ ug  # Y2^T g
    zg = xp.concat([ug, (Ek.T @ Yg) / sk])  # Z^T g
    c = Wrt.T @ (sig * (Wrt @ zg)) - zg  # (|I - m| - I) Z^T g
    wq = Ek @ (c[r:] / sk)  # coefficients of the Y2 columns [V, gbar/nu]
    alpha = xp.concat([c[:r] - P @ wq, wq[:r]]) / root  # on [U V]
    return xp.astype(alpha, dt), float(wq[r]) * inv_nu / root



def _symmetric_into(
    xp: Any, p: Any, a: int, b: int, gb: Any, inv_root: float, sym: Any, W: Any, Ut: Any,
    Vt: Any,
) -> None:
    """``p[a:b] = g_b / sqrt(eps) + [U V]_b alpha + coef_g gbar_b`` (``p[a:b]`` holds gbar)."""
    alpha, coef_g = sym
    r = int(Ut.shape[0])
    tail = p[a:b] * coef_g  # the gbar term, before p[a:b] (which holds gbar) is overwritten
    rows = (slice(a, b),)
    if W is not None:
        residual_into(p, rows, inv_root, gb, -alpha, W[:, a:b])
    else:
        residual_into(p, rows, inv_root, gb, -alpha[:r], Ut[:, a:b])
        add_into(p, rows, Vt[:, a:b].T @ alpha[r:])
    add_into(p, rows, tail)
