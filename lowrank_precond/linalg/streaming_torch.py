"""One truncated AdaGram step with the KSL integrator as whole-array operations (for GPUs).

:func:`try_ksl_adagram_step_whole` is the step of
:func:`~lowrank_precond.linalg.streaming.try_ksl_adagram_step` (the rank-one increment that a
gradient ``g`` adds to ``M = U S V^T``, the projector-splitting (KSL, Lie--Trotter) step and
the published or symmetric direction of ``M^+``; ``docs/theory.rst``:
:ref:`theory-adagram-step`, :ref:`theory-integrator-ksl`, :ref:`theory-streamed-ksl`,
:ref:`theory-adagram-directions`) with the same mathematics, return types and decline codes,
written against the array namespace of its inputs with whole-array operations only: no row
blocks, no NumPy views, no compiled kernels. It runs where the arrays live (torch CUDA, torch
CPU, NumPy, CuPy, array-api-strict), and is meant for a CUDA device, where the blocked step
declines (code ``"backend"``) and the reference path builds ``k x d`` intermediates with a
device-to-host synchronisation per decision. On the host the blocked step is the faster one.

With ``T`` the ``(2r+1, d)`` array ``[U^T; V^T; g^T]`` (one copy of the factors):

1. ``[c1; |g|^2] = T[r:] g`` (``c1 = V^T g``), ``t = S c1 / sqrt(eps)`` on the device;
2. ``gbar = [-t; 0; 1/sqrt(eps)]^T T = g / sqrt(eps) - U t``, written into ``T``'s last row
   (``T = [U^T; V^T; gbar^T]`` from here on);
3. ``[a1; vg; n] = T gbar`` (``a1 = U^T gbar``, ``vg = V^T gbar``, ``n = |gbar|^2``);
4. everything the decisions need (``S``, ``c1``, ``|g|^2``, ``a1``, ``vg``, ``n``, and for the
   symmetric direction ``C = U^T V``, ``GY = Y^T Y``, ``yg = Y^T gbar`` with ``Y = V - U C``)
   is concatenated on the device into one small vector, **read to the host once**;
5. on the host: the checks, the ``(r+1) x r`` coordinate QRs and gauges of the blocked step
   (``_ksl_core``, ``_gauge``, ``_symmetric_coefficients`` of :mod:`.streaming`), and the
   coefficients of the write, **uploaded in one transfer**;
6. ``[U1^T; V1^T] = K T`` with the ``(2r, 2r+1)`` matrix
   ``K = [[I - v_u m_u^T, 0, v_u / h_u], [0, I - v_v m_v^T, v_v / h_v]]``, the rank-one gauge
   ``U1 = U + (q_u - alpha_u U v_u) v_u^T`` of :mod:`.streaming` with
   ``q_u = (gbar - U a1) / h_u`` expanded (``m_u = a1 / h_u + alpha_u v_u``), and ``V1``
   likewise; the direction ``gbar / s`` (published) or
   ``g / sqrt(eps) + [U V] alpha + coef_g gbar`` scaled to its exact length ``nu / s``
   (symmetric), the scale computed on the device.

**Rounding of the write.** The coefficients of ``K`` are rounded once and then applied to
every row, so their rounding is coherent over ``d`` (that of the blocked step's rank-one
update, entry by entry, is not): each step adds ``~u`` to ``|U^T U - I|``, a random walk
(measured for random gradients at d = 60: ``6e-15`` after 600 float64 steps and ``1e-14``
after 3000, the blocked step ``1e-15`` and ``4e-15``). In float32 that would be ``~6e-8``
per step (``1e-6`` after 400 steps at d = 2e4), so float32 factors are written as
``[U^T; V^T] + (K - [I 0]) T``, whose coefficients are rounded relative to the (small)
change: the blocked step's drift (``3e-8`` there, and ``5e-7`` / ``7e-7`` after 600 / 3000
steps at d = 60, blocked ``4e-7`` / ``1.3e-6``), for one more read of ``[U V]`` and one
more write.

``U1`` and ``V1`` are the transposed halves of one ``(2r, d)`` array, the layout of the blocked
step's outputs (so on the host the blocked step reads them with one call). Per step that is
one copy, three products that read ``T`` (or its ``V`` half) and one that writes the
``(2r, d)`` output (float32: plus the addition of ``[U^T; V^T]``), against the floor of
reading and writing ``U`` and ``V`` once (``asv_bench/scripts/cuda_step.py`` times it).

**Host synchronisations.** Two per step: the one read of the small vector (it waits for
steps 1 to 4 to finish: the decisions need their values) and the one upload of the small
coefficients (an idle stream by then; a synchronous copy on torch). Nothing else converts a
device value to a Python number, and the symmetric direction's rescaling stays on the device.

**What it leaves to the caller's reference path** (declines, same codes as the blocked step):
the blocked step's special paths. A ``gbar`` nearly in ``span U`` or ``span V``
(``h^2 < EXTEND_MIN |gbar|^2``: the blocked step re-orthogonalises with one more pass,
classical Gram--Schmidt twice, which here would cost a second read to the host) declines
``"geometry"``: rare for random gradients, but every step of a stream of repeated or
low-dimensional gradients once ``span U`` holds them. Principal angles in the symmetric
direction's gray zone (between ``SYM_DROP`` and ``SYM_KEEP``) and small matrices that are not
finite decline ``"geometry"`` too; a zero, non-finite or out-of-range ``|gbar|^2``, or a
non-finite ``V^T g`` or ``[U V]^T gbar``, declines ``"gradient"``. There is no ``refresh``:
the step never re-measures ``U^T U``; a caller that refreshes every
:data:`~lowrank_precond.linalg.streaming.REFRESH_EVERY` steps takes its reference path on
those steps (whose QRs return orthonormal bases). Between refreshes ``|U^T U - I|`` grows by
``O(u)`` per step (see the rounding of the write).

**float32 factors on CUDA** use the backend's float32 matrix products: with torch's TF32
matmul precision enabled (``torch.backends.cuda.matmul.allow_tf32``, or
``torch.set_float32_matmul_precision('high')``) those carry a 10-bit mantissa, as every
float32 product of the reference path then does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

from lowrank_precond.backends import array_namespace, asarray, core_dtype, device_of, to_numpy
from lowrank_precond.linalg.lowrank import LowRank
from lowrank_precond.linalg.streaming import (
    EXTEND_MIN,
    Declined,
    StreamedStep,
    _finite,
    _ksl_core,
    _safe_range,
    _Side,
    _symmetric_coefficients,
)

__all__ = ["ksl_adagram_whole_available", "try_ksl_adagram_step_whole"]

_DIRECTIONS = ("published", "symmetric")


def ksl_adagram_whole_available(
    like: Any, d: int, rank: int, *, dtype: Any = None, direction: str = "published"
) -> tuple[bool, str]:
    """Whether :func:`try_ksl_adagram_step_whole` can run, before any step: ``(True, "")`` or
    ``(False, reason)``.

    Static conditions only (any backend and device): the factor ``dtype`` (default
    ``like.dtype``) is float32 or float64 (float64 for the symmetric direction),
    ``d >= 2 rank + 2``, and the direction is ``'published'`` or ``'symmetric'``.

    Examples
    --------
    >>> import numpy as np
    >>> ksl_adagram_whole_available(np.zeros(1), 100, 5)
    (True, '')
    >>> ksl_adagram_whole_available(np.zeros(1), 100, 5, dtype=np.float32, direction="symmetric")
    (False, 'the symmetric direction needs float64 factors')
    """
    dtype = like.dtype if dtype is None else dtype
    declined = _static_decline(array_namespace(like), d, rank, dtype, direction)
    return (True, "") if declined is None else (False, declined.reason)


def _static_decline(xp: Any, d: int, r: int, dtype: Any, direction: str) -> Declined | None:
    if direction not in _DIRECTIONS:
        reason = f"direction {direction!r} has no fused step (only {_DIRECTIONS})"
        return Declined("direction", reason)
    if dtype not in (xp.float32, xp.float64):
        return Declined("dtype", f"factors of dtype {dtype} (the step needs float32 or float64)")
    if direction == "symmetric" and dtype != xp.float64:
        return Declined("dtype", "the symmetric direction needs float64 factors")
    if r < 1 or d < 2 * r + 2:
        reason = (
            f"d = {d} is below 2 rank + 2 = {2 * r + 2} (rank {r}): too small for the fused step"
        )
        return Declined("size", reason)
    return None


def try_ksl_adagram_step_whole(
    lowrank: LowRank,
    g: Any,
    eps: float,
    *,
    direction: str = "published",
    accept: Callable[[float, float], bool] | None = None,
) -> StreamedStep | Declined:
    """Fused AdaGram increment + KSL Lie--Trotter step as whole-array operations, or why not.

    Equivalent to ``info = rank_one_increment(lowrank, g, eps)`` followed by
    ``projector_splitting(lowrank, info.x, info.y)`` (same ``U1 S1 V1^T`` to rounding) and the
    direction of ``M^+``, like
    :func:`~lowrank_precond.linalg.streaming.try_ksl_adagram_step`, with one read of small
    values to the host; see the module notes for the steps and what it declines.

    Parameters
    ----------
    lowrank : LowRank
        ``U, V`` ``(d, r)`` orthonormal, ``S`` ``(r, r)``; float32 or float64, any backend
        and device (all three on the same one).
    g : array, shape (d,)
        Finite gradient, same backend and device; any real floating dtype (cast to the
        factors' dtype first).
    eps : float
        ``> 0``.
    direction : {'published', 'symmetric'}, keyword-only
        Which direction of ``M^+`` to return (the symmetric one needs float64 factors).
    accept : callable, optional, keyword-only
        ``accept(gnorm_sq, nu) -> bool``, called once every check has passed, before the
        write: ``False`` declines the step (code ``"caller"``).

    Returns
    -------
    StreamedStep or Declined
        A :class:`~lowrank_precond.linalg.streaming.StreamedStep` on the inputs' device:
        ``lowrank`` with ``U1``, ``V1`` ``(d, r)`` (the transposed halves of one new
        ``(2r, d)`` array) and ``S1`` ``(r, r)`` in the factors' dtype, the ``(d,)``
        direction, ``nu``, ``s``, ``gnorm_sq`` (``|g|^2`` in the factors' dtype, ``inf`` if it
        overflowed) and ``cgs2 = (False, False)`` (this step never re-orthogonalises). Or a
        :class:`~lowrank_precond.backends.fused.Declined` where the caller must take its
        reference path: ``"dtype"``, ``"size"``, ``"direction"`` (the static conditions of
        :func:`ksl_adagram_whole_available`), ``"gradient"`` (non-finite ``V^T g`` or
        ``[U V]^T gbar``; zero, non-finite or out-of-range ``|gbar|^2``), ``"geometry"``
        (``gbar`` nearly in ``span U`` or ``span V``, symmetric principal angles in the gray
        zone, non-finite small matrices), ``"caller"`` (``accept`` refused). Nothing is
        modified in any case.

    Raises
    ------
    ValueError
        For a ``direction`` other than ``'published'`` or ``'symmetric'``.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import LowRank, projector_splitting, rank_one_increment
    >>> rng = np.random.default_rng(0)
    >>> U, _ = np.linalg.qr(rng.standard_normal((50, 3)))
    >>> V, _ = np.linalg.qr(rng.standard_normal((50, 3)))
    >>> M = LowRank(U, np.diag([1.0, 0.9, 0.8]), V)
    >>> g = rng.standard_normal(50)
    >>> out = try_ksl_adagram_step_whole(M, g, 0.1)
    >>> out.lowrank.U.shape, out.lowrank.S.shape, out.direction.shape
    ((50, 3), (3, 3), (50,))
    >>> info = rank_one_increment(M, g, 0.1)
    >>> ref = projector_splitting(M, info.x, info.y)
    >>> bool(np.allclose(out.lowrank.dense(), ref.dense()))
    True
    >>> bool(np.allclose(out.direction, info.published))
    True
    >>> try_ksl_adagram_step_whole(M, np.zeros(50), 0.1).code
    'gradient'
    >>> try_ksl_adagram_step_whole(M, U @ np.ones(3), 0.1).code  # gbar in span U
    'geometry'
    """
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction: expected 'published' or 'symmetric', got {direction!r}")
    U, S, V = lowrank.U, lowrank.S, lowrank.V
    xp = array_namespace(U)
    d, r = int(U.shape[0]), int(U.shape[1])
    declined = _static_decline(xp, d, r, U.dtype, direction)
    if declined is not None:
        return declined
    with warnings.catch_warnings():
        # |g|^2 or |gbar|^2 may overflow (huge g, tiny eps): the step then declines and the
        # reference path handles it with scaled norms, so NumPy's overflow warning is noise
        warnings.simplefilter("ignore", RuntimeWarning)
        return _step(xp, U, S, V, g, eps, direction == "symmetric", accept)


def _step(
    xp: Any, U: Any, S: Any, V: Any, g: Any, eps: float, symmetric: bool, accept: Any
) -> StreamedStep | Declined:
    """The reductions on the device, the one read, the small algebra, the write."""
    d, r = int(U.shape[0]), int(U.shape[1])
    dt, cdt, dev = U.dtype, core_dtype(U), device_of(U)
    root = math.sqrt(eps)
    inv_root = 1.0 / root
    gc = g if g.dtype == dt else xp.astype(g, dt)

    # steps 1-3 on the device: T = [U^T; V^T; g^T], then [U^T; V^T; gbar^T]
    T = xp.concat([U.T, V.T, xp.reshape(gc, (1, d))], axis=0)
    cg = T[r:, :] @ gc  # [V^T g; |g|^2]
    t = xp.astype((xp.astype(S, cdt) @ xp.astype(cg[:r], cdt)) * inv_root, dt)
    coef = xp.concat(
        [-t, xp.zeros((r,), dtype=dt, device=dev), xp.ones((1,), dtype=dt, device=dev) * inv_root]
    )
    T[2 * r, :] = coef @ T  # gbar
    gbar = T[2 * r, :]
    red = T @ gbar  # [a1; vg; n]
    parts = [xp.reshape(S, (r * r,)), cg, red]
    if symmetric:
        Ut, Vt = T[:r, :], T[r : 2 * r, :]
        C = Ut @ Vt.T  # U^T V
        Yt = Vt - C.T @ Ut  # (V - U C)^T
        parts += [xp.reshape(C, (r * r,)), xp.reshape(Yt @ Yt.T, (r * r,)), Yt @ gbar]
        del Yt

    # step 4: the one read to the host
    small = _read_small(xp.concat([xp.astype(p, cdt) for p in parts]))
    hxp = array_namespace(small)
    hdt = hxp.float32 if dt == xp.float32 else hxp.float64
    delta = dt == xp.float32
    decided = _decide(hxp, hdt, small, r, eps, _safe_range(xp, dt), symmetric, delta)
    if isinstance(decided, Declined):
        return decided
    pack, nu, s, gg = decided
    if accept is not None and not accept(gg, nu):
        return Declined("caller", "the caller's check of |g|^2 and |gbar| refused the step")

    # step 5's upload, step 6 the write
    up = _upload(pack, U)
    k = 2 * r * (2 * r + 1)
    K = xp.reshape(up[:k], (2 * r, 2 * r + 1))
    S1 = xp.reshape(up[k : k + r * r], (r, r))
    W1 = K @ T  # [U1^T; V1^T] (float32: their change, added to [U^T; V^T] below)
    if delta:
        W1 += T[: 2 * r, :]
    if symmetric:
        p = up[k + r * r :] @ T + gc * inv_root
        p = p * _exact_length_scale(xp, p, nu / s)
    else:
        p = gbar * (1.0 / s)
    low = LowRank(W1[:r, :].T, S1, W1[r:, :].T)
    return StreamedStep(low, p, nu, s, gg, (False, False))


def _read_small(x: Any) -> Any:
    """The one device-to-host read of the step (a NumPy array; no copy for NumPy input)."""
    return to_numpy(x)


def _upload(pack: Any, like: Any) -> Any:
    """The one host-to-device transfer of the step: ``pack`` in ``like``'s backend, device
    and dtype."""
    return asarray(pack, like=like)


def _decide(
    hxp: Any,
    hdt: Any,
    small: Any,
    r: int,
    eps: float,
    safe: tuple[float, float],
    symmetric: bool,
    delta: bool,
) -> tuple[Any, float, float, float] | Declined:
    """The checks and the small algebra on the host values ``small``.

    Returns ``(pack, nu, s, |g|^2)`` with ``pack`` the host vector of ``K`` (``(2r, 2r+1)``,
    row-major), ``S1`` and, for the symmetric direction, its row ``[alpha; coef_g]`` on
    ``T``, all in the factors' dtype ``hdt``; or the decline.
    """
    rr = r * r
    Sc = hxp.reshape(small[:rr], (r, r))
    c1 = small[rr : rr + r]
    gg = float(small[rr + r])
    a1 = small[rr + r + 1 : rr + 2 * r + 1]
    vg = small[rr + 2 * r + 1 : rr + 3 * r + 1]
    n = float(small[rr + 3 * r + 1])
    if not math.isfinite(float(hxp.sum(c1))):
        return Declined("gradient", "V^T g is not finite")
    lo, hi = safe
    if not (lo < n < hi):
        return Declined("gradient", f"|gbar|^2 = {n:.3g} is zero, non-finite or out of range")
    if not math.isfinite(float(hxp.sum(a1) + hxp.sum(vg))):
        return Declined("gradient", "[U V]^T gbar is not finite")
    nu = math.sqrt(n)
    s = math.hypot(1.0, nu)
    bcoef = (1.0 / s) * (1.0 / (1.0 + s))
    sides = (_Side(None, a1, n), _Side(None, vg, n))
    if any(sd.h2 < EXTEND_MIN * n for sd in sides):
        reason = (
            "gbar lies nearly in span U or span V: the step needs the re-orthogonalisation "
            "pass (classical Gram-Schmidt twice) that the reference path does"
        )
        return Declined("geometry", reason)
    sym = None
    if symmetric:
        rest = small[rr + 3 * r + 2 :]
        C = hxp.reshape(rest[:rr], (r, r))
        GY = hxp.reshape(rest[rr : 2 * rr], (r, r))
        yg = rest[2 * rr : 2 * rr + r]
        h_u = math.sqrt(max(n - float(a1 @ a1), 0.0))
        sym = _symmetric_coefficients(
            hxp, Sc, c1, a1, a1, h_u, C, GY, yg, n, bcoef, math.sqrt(eps), hxp.float64
        )
        if sym is None:
            reason = (
                "principal angles between SYM_DROP and SYM_KEEP: the symmetric direction "
                "needs the reference path's Householder QR"
            )
            return Declined("geometry", reason)
    S1, gauges = _ksl_core(hxp, sides, Sc, bcoef, r)
    if not _finite(hxp, S1, gauges, sym, [sd.h for sd in sides]):
        return Declined("geometry", "the step's small matrices are not finite")
    K = _write_matrix(hxp, sides, gauges, r, delta)
    parts = [hxp.reshape(K, (-1,)), hxp.reshape(S1, (-1,))]
    if sym is not None:
        alpha, coef_g = sym
        parts += [alpha, hxp.asarray([coef_g], dtype=hxp.float64)]
    pack = hxp.astype(hxp.concat([hxp.astype(x, hxp.float64) for x in parts]), hdt)
    return pack, nu, s, gg


def _write_matrix(hxp: Any, sides: tuple[_Side, _Side], gauges: Any, r: int, delta: bool) -> Any:
    """``K`` ``(2r, 2r+1)`` with ``[U1^T; V1^T] = K [U^T; V^T; gbar^T]`` (``delta``: the
    change ``K - [I 0]``, whose entries are rounded relative to their own size).

    Side ``i`` (basis ``F``, ``F^T gbar = a``, ``h = |gbar - F a|``, gauge ``(v, alpha)``)
    contributes ``F1^T = (I - v m^T) F^T + (v / h) gbar^T`` with ``m = a / h + alpha v``:
    ``F1 = F + (q - alpha F v) v^T``, ``q = (gbar - F a) / h``.
    """
    vu, alpha_u, vv, alpha_v = gauges
    K = hxp.zeros((2 * r, 2 * r + 1), dtype=hxp.float64)
    eye = hxp.zeros((r, r), dtype=hxp.float64) if delta else hxp.eye(r, dtype=hxp.float64)
    for i, (sd, v, alpha) in enumerate(zip(sides, (vu, vv), (alpha_u, alpha_v), strict=True)):
        inv_h = 1.0 / sd.h
        m = sd.coef * inv_h + alpha * v
        rows = slice(i * r, (i + 1) * r)
        K[rows, rows] = eye - hxp.reshape(v, (r, 1)) * hxp.reshape(m, (1, r))
        K[rows, 2 * r] = v * inv_h
    return K


def _exact_length_scale(xp: Any, p: Any, length: float) -> Any:
    """``length / |p|`` as a 0-d device array (``1`` where ``|p|^2`` is zero or not finite):
    the symmetric direction at its exact length ``nu / s``, without reading ``|p|``."""
    pp = xp.vecdot(p, p)
    one = xp.ones_like(pp)
    ok = (pp > 0) & xp.isfinite(pp)
    return xp.where(ok, length / xp.sqrt(xp.where(ok, pp, one)), one)
