"""One truncated AdaGram step with the KSL integrator in three (or two) row-blocked passes.

:func:`try_ksl_adagram_step` fuses :func:`~lowrank_precond.linalg.rank_one_increment` and
:func:`~lowrank_precond.linalg.projector_splitting` (Lie--Trotter) for the rank-one increment
that a gradient ``g`` adds to ``M = U S V^T``, and returns the new ``(U1, S1, V1)`` with the
published direction ``gbar / s`` (``docs/theory.rst``: :ref:`theory-adagram-step`,
:ref:`theory-integrator-ksl`, :ref:`theory-streamed-ksl`). Same mathematics (``U1 S1 V1^T``
and the direction agree to rounding), fewer passes over ``d``:

1. ``c1 = V^T g`` and ``|g|^2`` (reads ``V, g``);
2. ``gbar = g / sqrt(eps) - U (S c1 / sqrt(eps))``, written into the output vector, with
   ``[a1; vg] = [U V]^T gbar`` and ``n = |gbar|^2`` (reads ``U, V, g``);
3. in between, only small matrices: because ``U, V`` are orthonormal, every Gram matrix of
   the K and L steps is an ``r x r`` expression in ``S, a1, vg, n``, so the two QRs are
   Householder QRs of ``(r+1) x r`` coordinate matrices;
4. ``U1``, ``V1`` (both rows of one ``(2r, d)`` buffer) and ``p = gbar / s`` (reads ``U, V,
   gbar``, writes ``U1, V1, p``).

Against the floor (read and write ``U`` and ``V`` once) that is two extra reads of ``V``, one
of ``U``, and a few ``d``-vectors.

**Two passes** (``two_pass=True``, published direction, ``C = U^T V`` known). Pass 2 is only
needed for ``a1``, ``vg`` and ``n``, and with orthonormal ``U, V`` they follow from pass 1
when it also reads ``U``: ``a1 = U^T g / sqrt(eps) - t``, ``vg = V^T g / sqrt(eps) - C^T t``,
``n = |g|^2 / eps - 2 t^T U^T g / sqrt(eps) + |t|^2`` (``t = S c1 / sqrt(eps)``). The writing
pass then forms ``gbar`` row by row itself. The closed form of ``n`` cancels where ``gbar``
is much shorter than ``g / sqrt(eps)`` (``g`` nearly in the span that the factor already
flattens: repeated or low-dimensional gradients), so it is used only where ``n >= EXTEND_MIN
|g|^2 / eps`` and both extensions are implicit (``h^2 >= EXTEND_MIN n``): its error is then
``~u / EXTEND_MIN`` relative to ``n``. Elsewhere pass 2 runs after all (one more read of
``U``, ``V``, ``g``); ``adagram`` asks for two passes only where the previous step's ratio
``eps |gbar|^2 / |g|^2`` was at least :data:`EXTEND_MIN`. ``C`` is carried as for the
symmetric direction (below). That is one extra read of ``[U V]`` (and two of ``g``) against
the floor.

**The symmetric direction** ``G^{-1/2} g`` (:ref:`theory-adagram-directions`) rides on the
same passes: pass 2 forms ``Y = V - U C`` (``C = U^T V``) block by block for the principal
angles between ``span V`` and ``span U`` (see ``_symmetric_coefficients``), and pass 3 writes
``p = g / sqrt(eps) + [U V] alpha + coef gbar`` with the basis update's product. ``C`` comes
from the previous step (``C=``, :attr:`StreamedStep.C`): pass 3 writes ``[U1 V1] = [U V
gbar] Tw^T`` for a small ``Tw``, so ``U1^T V1`` is an ``r x r`` product of ``Tw`` with the Gram
matrix of ``[U V gbar]``, which the passes already have. Without it (the first step, after a
re-orthogonalisation pass, whose ``Tw`` has entries ``~1/h``), and on refresh steps, pass 1
also reads ``U`` and measures ``C``. Measured at d = 1e6, r = 5: 1.25x the published step
(1.55x when pass 1 measured ``C`` every step).

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
low-dimensional gradient streams, without any refresh). The two-pass step's closed forms
assume orthonormal factors and a carried ``C``, so there they do compound, slowly (measured
over 2000 random-gradient steps without refresh at d = 1000, r = 5: ``max|U^T U - I|`` 1.2e-6
against 2e-7 with three passes in float32, 3.3e-15 against 1.6e-15 in float64; with a
refresh every 128 steps at most 1.4e-7 in float32). As a safeguard, and for the two-pass
step, ``refresh=True`` (``adagram`` passes it every :data:`REFRESH_EVERY` accepted steps)
also accumulates ``[U V]^T [U V]`` in pass 2 (the next ``C`` follows from its ``U^T V``) and
folds the Cholesky factors of ``U^T U``, ``V^T V`` into that step (``U = U_o R_u``, ``S ->
R_u S R_v^T``), so the outputs are orthonormal to rounding again at no extra pass. A drift
above :data:`DRIFT_LIMIT` (it would mean the factors were changed outside) makes the function
decline, and the caller's general path (exact Gram matrices per step) takes over.

**Where it runs.** The passes run the in-place kernels that
:func:`~lowrank_precond.backends.fused.fused_kernels` provides (NumPy arrays, and torch CPU
tensors through zero-copy NumPy views; none for other backends, where the step declines),
with BLAS on one thread (hundreds of small calls: a second thread only adds hand-off latency,
and stalls when the other core is busy). Arrays are walked in row blocks of about
:data:`BLOCK_BYTES` per factor in the reading passes and :data:`WRITE_BLOCK_BYTES` in the
writing one, so that the few products of a block run from cache. ``U1`` and ``V1`` are the
transposed halves of one row-contiguous ``(2r, d)`` buffer (from the caller's
:class:`~lowrank_precond.backends.blocked.Workspace` when given); the next step recognises that
layout and reads ``[U V]`` blocks with one call.

**Declining.** :func:`try_ksl_adagram_step` returns a
:class:`~lowrank_precond.backends.fused.Declined` (with a code and a reason) where the fused
step does not apply; :func:`ksl_adagram_available` answers the static part of that (backend,
dtype, ``d`` against the rank, direction) before any step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lowrank_precond.backends import array_namespace, core_dtype, device_of, numba_kernels
from lowrank_precond.backends.blocked import Workspace
from lowrank_precond.backends.fused import Declined, FusedKernels, fused_declined, fused_kernels
from lowrank_precond.backends.shards import Shards
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
    "Declined",
    "StreamedStep",
    "ksl_adagram_available",
    "ksl_adagram_step",
    "try_ksl_adagram_step",
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
#: from this rank the symmetric pass forms ``Y^T Y`` with NumPy's syrk (``Y @ Y.T``); below
#: it a copy and gemm are faster (measured per 1 MiB block over d = 1e6, one thread: r = 5
#: 3.7 ms with gemm against 7.4 with syrk; r = 8 10.2 against 6.3; r = 20 38 against 26)
_SYRK_MIN_RANK = 8
_DIRECTIONS = ("published", "symmetric")


@dataclass(frozen=True)
class StreamedStep:
    """Result of :func:`try_ksl_adagram_step`.

    Attributes
    ----------
    lowrank : LowRank
        ``(U1, S1, V1)``: the KSL step of ``U S V^T + x y^T`` (in the gauge of the module
        notes; ``U1 S1 V1^T`` equals :func:`~lowrank_precond.linalg.projector_splitting`'s).
    direction : array, shape (d,)
        The direction of ``M^+ = M + x y^T`` (before truncation) in the factor dtype:
        ``gbar / s = L_t^{-1} g`` (published) or ``G^{-1/2} g`` (symmetric); see
        :ref:`theory-adagram-directions` in ``docs/theory.rst``. The symmetric one is
        returned at its exact length ``nu / s`` (``|G^{-1/2} g| = |L^{-1} g|``): computed
        through the singular values of ``I - M`` its length would carry a relative error
        ``~u sqrt(lambda_max / eps)``, while ``nu / s`` is exact to rounding.
    nu : float
        ``|gbar|``.
    s : float
        ``hypot(1, nu)``.
    gnorm_sq : float
        ``|g|^2`` (accumulated in pass 1; ``inf`` if it overflowed the dtype).
    cgs2 : tuple of bool
        Whether the ``U`` / ``V`` side needed the explicit re-orthogonalisation pass.
    C : array, shape (r, r), or None
        ``U1^T V1`` of the new factors, from the step's small matrices, where the step knew
        or measured ``U^T V`` (the symmetric direction, ``two_pass``; ``None`` otherwise, and
        after a re-orthogonalisation pass): pass it as ``C`` to the next step, which then
        skips measuring it.
    """

    lowrank: LowRank
    direction: Any
    nu: float
    s: float
    gnorm_sq: float
    cgs2: tuple[bool, bool]
    C: Any = None


def ksl_adagram_available(
    like: Any, d: int, rank: int, *, dtype: Any = None, direction: str = "published"
) -> tuple[bool, str]:
    """Whether :func:`try_ksl_adagram_step` can run, before any step: ``(True, "")`` or
    ``(False, reason)``.

    Static conditions only: the backend and device of ``like`` (any array of the
    parameter's backend) have fused kernels, the factor ``dtype`` (default ``like.dtype``) is
    float32 or float64 (float64 for the symmetric direction), ``d >= 2 rank + 2``, and the
    direction is ``'published'`` or ``'symmetric'``. A step that passes can still decline at
    run time for reasons of the gradient's geometry (reported by
    :func:`try_ksl_adagram_step`).

    Examples
    --------
    >>> import numpy as np
    >>> ksl_adagram_available(np.zeros(1), 100, 5)
    (True, '')
    >>> ksl_adagram_available(np.zeros(1), 10, 5)
    (False, 'd = 10 is below 2 rank + 2 = 12 (rank 5): too small for the fused step')
    """
    declined = _static_decline(like, d, rank, like.dtype if dtype is None else dtype, direction)
    return (True, "") if declined is None else (False, declined.reason)


def _static_decline(like: Any, d: int, r: int, dtype: Any, direction: str) -> Declined | None:
    declined = fused_declined(like, dtype)
    if declined is not None:
        return declined
    if direction not in _DIRECTIONS:
        reason = f"direction {direction!r} has no fused step (only {_DIRECTIONS})"
        return Declined("direction", reason)
    if direction == "symmetric" and dtype != array_namespace(like).float64:
        return Declined("dtype", "the symmetric direction's fused step needs float64 factors")
    if r < 1 or d < 2 * r + 2:
        reason = (
            f"d = {d} is below 2 rank + 2 = {2 * r + 2} (rank {r}): too small for the fused step"
        )
        return Declined("size", reason)
    return None


def ksl_adagram_step(
    lowrank: LowRank,
    g: Any,
    eps: float,
    *,
    refresh: bool = False,
    direction: str = "published",
    workspace: Workspace | None = None,
    C: Any = None,
) -> StreamedStep | None:
    """:func:`try_ksl_adagram_step` with ``None`` in place of its
    :class:`~lowrank_precond.backends.fused.Declined` (the reason is dropped).

    Examples
    --------
    >>> import numpy as np
    >>> U, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((20, 2)))
    >>> ksl_adagram_step(LowRank(U, np.eye(2), U), np.zeros(20), 0.1) is None  # gbar = 0
    True
    """
    res = try_ksl_adagram_step(
        lowrank, g, eps, refresh=refresh, direction=direction, workspace=workspace, C=C
    )
    return None if isinstance(res, Declined) else res


def try_ksl_adagram_step(
    lowrank: LowRank,
    g: Any,
    eps: float,
    *,
    refresh: bool = False,
    direction: str = "published",
    workspace: Workspace | None = None,
    overwrite: bool = False,
    accept: Callable[[float, float], bool] | None = None,
    shards: Shards | None = None,
    C: Any = None,
    two_pass: bool = False,
) -> StreamedStep | Declined:
    """Fused AdaGram increment + KSL Lie--Trotter step in three passes (or two), or why not.

    Equivalent to ``info = rank_one_increment(lowrank, g, eps)`` followed by
    ``projector_splitting(lowrank, info.x, info.y)`` (same ``U1 S1 V1^T`` to rounding) and
    ``info.published``; see the module notes for how and for the cost.

    Parameters
    ----------
    lowrank : LowRank
        ``U, V`` ``(d, r)`` orthonormal, ``S`` ``(r, r)``; float32 or float64.
    g : array, shape (d,)
        Finite gradient, same backend and device; any real floating dtype (cast block by
        block to the factors' dtype, or first as a whole where the backend cannot view it).
    eps : float
        ``> 0``.
    refresh : bool, keyword-only
        Measure ``U^T U``, ``V^T V`` in pass 2 and fold the correction into this step (see
        the module notes); ``adagram`` sets it every :data:`REFRESH_EVERY` steps.
    direction : {'published', 'symmetric'}, keyword-only
        Which direction of ``M^+`` to return (the symmetric one needs float64 factors).
    workspace : Workspace, optional, keyword-only
        Where the outputs (``U1``, ``V1`` and the direction) are allocated: a
        :class:`~lowrank_precond.backends.blocked.Workspace` hands back the memory of outputs
        that no object can reach any more (saves the zero-filling of fresh memory, about a
        quarter of the step at d = 1e6); by default fresh arrays.
    overwrite : bool, keyword-only
        Write the new ``U1``, ``V1`` into the memory of ``U`` and ``V`` when they are the
        halves of one ``(2r, d)`` array (the layout of this function's own outputs): an
        in-place update reads and writes one buffer instead of two (faster, and no second
        ``d x 2r`` buffer). ``lowrank`` must not be used after a step that returns a
        :class:`StreamedStep`; after a :class:`Declined` it is unchanged (every check runs
        before the first write). Default ``False``: nothing is modified.
    accept : callable, optional, keyword-only
        ``accept(gnorm_sq, nu) -> bool``, called once every check has passed and before
        anything is written: ``False`` declines the step (code ``"caller"``). For callers
        that must refuse a step on what it found (e.g. an overflowing running sum) before an
        ``overwrite`` makes it irreversible.
    shards : Shards, optional, keyword-only
        The factors and ``g`` are this process's rows ``[shards.start, shards.stop)`` of
        length-``shards.size`` arrays (:mod:`lowrank_precond.backends.shards`): every pass's
        sums over the rows are completed by ``shards.allreduce`` (one call per pass, ``O(r^2)``
        numbers), the outputs are this process's rows, and every process takes the same
        decisions (they depend only on the reduced sums). Default: all rows here.
    C : array, shape (r, r), optional, keyword-only
        ``U^T V`` of the input factors, as the previous step returned it
        (:attr:`StreamedStep.C`); used by the symmetric direction, which otherwise measures
        it in pass 1 (a read of ``U`` and ``r^2`` products per row: about a quarter of the
        symmetric step at d = 1e6, r = 5), and by ``two_pass``. Refresh steps measure it
        anyway, so its rounding (``O(u)`` per step, as the factors' orthonormality) does not
        accumulate.
    two_pass : bool, keyword-only
        Published direction: with ``C`` known (not on refresh steps), pass 1 also reads ``U``
        and the step skips pass 2 where ``gbar``'s norm and projections follow accurately in
        closed form (no cancellation: ``|gbar|^2 >= EXTEND_MIN |g|^2 / eps``; otherwise pass
        2 runs as usual); without ``C``, pass 1 measures it so that the next step can. Set it
        where that is the expected case (``adagram`` does where the previous step's
        ``eps |gbar|^2 / |g|^2`` was at least :data:`EXTEND_MIN`). Default ``False``.

    Returns
    -------
    StreamedStep or Declined
        :class:`~lowrank_precond.backends.fused.Declined` (``code``, ``reason``) where the
        caller must take the general path: the static conditions of
        :func:`ksl_adagram_available` (codes ``"backend"``, ``"dtype"``, ``"size"``,
        ``"direction"``); factors a torch tensor cannot share with NumPy (``"view"``); a
        non-finite or zero/underflowing/overflowing ``|gbar|^2`` (``"gradient"``: the
        general path skips the step or raises with its scaled norms); a drift above
        :data:`DRIFT_LIMIT` found at a refresh step (``"drift"``); near-degenerate geometry
        that the general path decides (``"geometry"``: a refresh step that also needs the
        re-orthogonalisation pass, principal angles between ``SYM_DROP`` and ``SYM_KEEP``
        for the symmetric direction); the caller's ``accept`` refused (``"caller"``). Inputs
        are not validated beyond that (the caller did it); nothing is modified unless
        ``overwrite`` and the step succeeded.

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
    >>> out = try_ksl_adagram_step(M, g, 0.1)
    >>> info = rank_one_increment(M, g, 0.1)
    >>> ref = projector_splitting(M, info.x, info.y)
    >>> bool(np.allclose(out.lowrank.dense(), ref.dense()))
    True
    >>> bool(np.allclose(out.direction, info.published))
    True
    >>> try_ksl_adagram_step(M, np.zeros(50), 0.1).code
    'gradient'
    """
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction: expected 'published' or 'symmetric', got {direction!r}")
    U = lowrank.U
    d, r = int(U.shape[0]) if shards is None else shards.size, int(U.shape[1])
    declined = _static_decline(U, d, r, U.dtype, direction)
    if declined is not None:
        return declined
    kernels = fused_kernels(U)
    host = _to_host(kernels, lowrank, g)
    if isinstance(host, Declined):
        return host
    if workspace is None:
        ops = kernels.ops

        def alloc(shape: tuple[int, ...]) -> Any:
            return ops.empty(shape, host[0].dtype)
    else:

        def alloc(shape: tuple[int, ...]) -> Any:
            return workspace.empty(shape, host[0])

    with warnings.catch_warnings(), kernels.single_threaded():
        # |g|^2 or |gbar|^2 may overflow (huge g, tiny eps): the step then declines and the
        # general path handles it with scaled norms, so NumPy's overflow warning is noise
        warnings.simplefilter("ignore", RuntimeWarning)
        Ch = None if C is None else kernels.host(C)
        res = _host_step(
            kernels.ops, host, eps, refresh, direction, alloc, overwrite, accept, shards, Ch,
            two_pass,
        )  # fmt: skip
    if isinstance(res, Declined):
        return res
    return _from_host(kernels, res, lowrank)


def _to_host(kernels: FusedKernels, lowrank: LowRank, g: Any) -> tuple[Any, ...] | Declined:
    """``(U, S, V, g)`` as host arrays sharing their memory (``U, V`` that are halves of one
    ``(2r, d)`` array stay halves of one host array); ``g`` is cast first where its dtype
    has no host view. Plain arrays, not a :class:`LowRank`: no validation per step."""
    rows = kernels.host_rows(lowrank.U.T, lowrank.V.T)
    S = kernels.host(lowrank.S)
    gh = kernels.host(g)
    if gh is None:
        gh = kernels.host(array_namespace(g).astype(g, lowrank.U.dtype))
    if rows is None or S is None or gh is None:
        return Declined(
            "view",
            "the factors or the gradient have no NumPy view (e.g. a "
            "tensor with the negative or conjugate bit set)",
        )
    return rows[0].T, S, rows[1].T, gh


@dataclass(frozen=True)
class _HostStep:
    """The host step's outputs: ``W1`` the ``(2r, d)`` new bases (``None``: unchanged)."""

    W1: Any
    S1: Any
    p: Any
    nu: float
    s: float
    gg: float
    cgs2: tuple[bool, bool]
    C1: Any = None


def _from_host(kernels: FusedKernels, res: _HostStep, like: LowRank) -> StreamedStep:
    """The :class:`StreamedStep` in the caller's backend, sharing the host outputs' memory."""
    if res.W1 is None:  # the bases did not change: the caller's own arrays
        U1, V1 = like.U, like.V
    else:  # halves of one (2r, d) buffer: the layout that the next step reads
        W1 = kernels.wrap(res.W1)
        r = int(like.U.shape[1])
        U1, V1 = W1[:r, :].T, W1[r:, :].T
    low = LowRank(U1, kernels.wrap(res.S1), V1)
    C1 = None if res.C1 is None else kernels.wrap(res.C1)
    return StreamedStep(low, kernels.wrap(res.p), res.nu, res.s, res.gg, res.cgs2, C1)


def _row_blocks(d: int, r: int, dtype: Any, xp: Any, *, write: bool) -> list[tuple[int, int]]:
    """Row blocks of a reading (:data:`BLOCK_BYTES`) or the writing pass
    (:data:`WRITE_BLOCK_BYTES`), looked up here so that both streamed steps follow them."""
    block_bytes = WRITE_BLOCK_BYTES if write else BLOCK_BYTES
    itemsize = 4 if dtype == xp.float32 else 8
    rows = max(_MIN_ROWS, min(_MAX_ROWS, block_bytes // (itemsize * max(r, 1))))
    if d <= rows:
        return [(0, d)]
    return [(a, min(a + rows, d)) for a in range(0, d, rows)]


def _safe_range(xp: Any, dtype: Any) -> tuple[float, float]:
    """``(lo, hi)`` for ``|gbar|^2`` summed in ``dtype`` without under/overflow trouble."""
    fi = xp.finfo(dtype)
    return float(fi.smallest_normal) / float(fi.eps), float(fi.max) * float(fi.eps)


# --------------------------------------------------------------------------- the host step


class _Passes:
    """What the passes over ``d`` read (host arrays), and where they write blocks."""

    def __init__(self, ops: Any, U: Any, V: Any, g: Any, eps: float, shards: Shards | None = None):
        xp = self.xp = array_namespace(U)
        self.ops = ops
        self.d, self.r = d, r = int(U.shape[0]), int(U.shape[1])
        #: the rows here are ``shards``'s of ``d_total`` (``None``: all of them)
        self.shards = shards
        self.d_total = d if shards is None else shards.size
        self.dt, self.cdt, self.dev = U.dtype, core_dtype(U), device_of(U)
        # a float16 / bfloat16 gradient: one cast (numba has no such arrays), as in the sketch
        self.g = numba_kernels.readable(g, U.dtype)
        self.root = math.sqrt(eps)
        self.inv_root = 1.0 / self.root
        self.blocks = _row_blocks(d, r, U.dtype, xp, write=False)
        self.wblocks = _row_blocks(d, r, U.dtype, xp, write=True)
        Ut, Vt = U.T, V.T
        W = ops.stacked_parent(Ut, Vt)  # (2r, d) when U, V share one buffer (our own outputs)
        if W is None:
            # Inputs not from our own previous step (first truncated step, a checkpoint loaded
            # into fresh tensors, a fallback step): copy them into one (2r, d) buffer so the
            # arithmetic, and hence the rounding, never depends on how the factors were
            # stored. A checkpoint therefore continues bit-identically.
            W = ops.empty((2 * r, d), U.dtype)
            ops.copy_into(W, (slice(0, r), slice(None)), Ut)
            ops.copy_into(W, (slice(r, 2 * r), slice(None)), Vt)
            Ut, Vt = W[:r, :], W[r:, :]
        self.W, self.Ut, self.Vt = W, Ut, Vt
        #: the compiled passes (``numba``, from ``numba_kernels.MIN_ROWS`` rows), or None
        self.jit = numba_kernels.ksl_kernels(r) if d >= numba_kernels.MIN_ROWS else None

    def reduce(self, *parts: Any) -> tuple[Any, ...]:
        """The sums of ``parts`` (small arrays, floats; ``None`` passes through) over every
        shard's rows: ``parts`` itself when this process holds all rows."""
        if self.shards is None:
            return parts
        summed = iter(self.shards.allreduce([x for x in parts if x is not None]))
        return tuple(None if x is None else next(summed) for x in parts)

    def gblock(self, a: int, b: int) -> Any:
        """``g[a:b]`` in the factor dtype."""
        gb = self.g[a:b]
        return gb if gb.dtype == self.dt else self.xp.astype(gb, self.dt)

    def scratch(self, rows: int) -> Any:
        """An uninitialised ``(rows, B)`` buffer for one writing block."""
        return self.ops.empty((rows, self.wblocks[0][1] - self.wblocks[0][0]), self.dt)

    def zeros(self, *shape: int, core: bool = False) -> Any:
        dtype = self.cdt if core else self.dt
        return self.xp.zeros(shape, dtype=dtype, device=self.dev)


def _host_step(
    ops: Any, host: tuple[Any, ...], eps: float, refresh: bool, direction: str, alloc: Any,
    overwrite: bool = False, accept: Any = None, shards: Shards | None = None, C: Any = None,
    two_pass: bool = False,
) -> _HostStep | Declined:  # fmt: skip
    """The whole step on the host arrays ``(U, S, V, g)``: passes 1 and 2, the small
    algebra, pass 3. ``C``: ``U^T V`` if known; ``two_pass``: see :func:`_reduce`."""
    U, S, V, g = host
    P = _Passes(ops, U, V, g, eps, shards)
    red = _reduce(P, S, direction == "symmetric", refresh, alloc, C, two_pass)
    if isinstance(red, Declined):
        return red
    xp, r, n = P.xp, P.r, red.n
    nu = math.sqrt(n)
    s = math.hypot(1.0, nu)
    bcoef = (1.0 / s) * (1.0 / (1.0 + s))
    Sc, a1c, vgc = red.Sc, red.a1c, red.vgc
    Ru = Rv = None
    if refresh:
        limit = SYMMETRIC_DRIFT_LIMIT if direction == "symmetric" else DRIFT_LIMIT
        folded = _fold_refresh(P, red.G, Sc, a1c, vgc, limit)
        if isinstance(folded, Declined):
            return folded
        Ru, Rv, Sc, a1c, vgc = folded
    sides = (_Side(P.Ut, a1c, n, Ru), _Side(P.Vt, vgc, n, Rv))
    H = A1 = None
    if any(sd.h2 < EXTEND_MIN * n for sd in sides):
        if refresh:  # rare combination: leave it to the general path
            reason = "a refresh step whose gbar also lies nearly in span U or span V"
            return Declined("geometry", reason)
        H, A1 = _pass_reorthogonalise(P, sides, red.p, n, nu)
    sym = None
    if direction == "symmetric":
        sym = _symmetric_from(P, red, sides[0], bcoef)
        if sym is None:
            reason = (
                "principal angles between SYM_DROP and SYM_KEEP: the symmetric direction "
                "needs the general path's Householder QR"
            )
            return Declined("geometry", reason)
    S1, gauges = _ksl_core(xp, sides, Sc, bcoef, r)
    if not _finite(xp, S1, gauges, sym, [sd.h for sd in sides]):
        return Declined("geometry", "the step's small matrices are not finite")
    out = _Outputs(red.p, 1.0 / s, sym, red.t)
    if accept is not None and not accept(red.gg, nu):
        return Declined("caller", "the caller's check of |g|^2 and |gbar| refused the step")
    W1, pp, Tw = _pass_write(P, sides, gauges, (Ru, Rv), H, A1, out, alloc, overwrite)
    # after the re-orthogonalisation pass the write's coefficients are ~1/h (h the small
    # residual): their Gram-matrix product would cancel catastrophically, so C is measured
    # again by the next step instead
    C1 = None if red.C is None or H is not None else _next_C(P, red, Tw)
    if C1 is not None and not _finite(xp, C1):  # e.g. a caller's non-finite C: measure again
        C1 = None
    if sym is not None:
        (pp,) = P.reduce(pp)
    if sym is not None and pp > 0.0 and math.isfinite(pp):
        # the symmetric direction at its exact length |G^{-1/2} g| = |L^{-1} g| = nu / s
        ops.scale_into(red.p, (slice(0, P.d),), (nu / s) / math.sqrt(pp))
    cgs2 = (sides[0].explicit, sides[1].explicit)
    return _HostStep(W1, xp.astype(S1, P.dt), red.p, nu, s, red.gg, cgs2, C1)


def _next_C(P: _Passes, red: _Reduced, Tw: Any) -> Any:
    """``U1^T V1`` from the small matrices (factor dtype), with no pass over ``d``.

    Pass 3 writes ``[U1 V1]^T = Tw [U V gbar]^T`` (``Tw`` is ``(2r, 2r+1)``; ``None``: the
    bases did not change), so ``U1^T V1 = Tw_u G3 Tw_v^T`` with ``G3`` the Gram matrix of
    ``[U V gbar]``: ``[[U^T U, C, a1], [C^T, V^T V, vg], [., ., n]]``, where ``U^T U = V^T V =
    I`` to the factors' rounding (a refresh step measured them: ``red.G``). The result
    carries that rounding, ``O(u)`` per step, until the next refresh measures ``C`` again.
    """
    xp, r, cdt = P.xp, P.r, P.cdt
    C = xp.astype(red.C, cdt)
    if Tw is None:
        return xp.astype(C, P.dt)
    if red.G is not None:
        top = red.G
    else:
        eye = xp.eye(r, dtype=cdt, device=P.dev)
        top = xp.concat([xp.concat([eye, C], axis=1), xp.concat([C.T, eye], axis=1)], axis=0)
    av = xp.reshape(xp.concat([red.a1c, red.vgc]), (2 * r, 1))
    G3 = xp.concat(
        [
            xp.concat([top, av], axis=1),
            xp.concat([av.T, xp.asarray([[red.n]], dtype=cdt, device=P.dev)], axis=1),
        ],
        axis=0,
    )
    T = xp.astype(Tw, cdt)
    return xp.astype(T[:r, :] @ G3 @ T[r:, :].T, P.dt)


def _finite(xp: Any, *parts: Any) -> bool:
    """Whether every small array or float in ``parts`` (nested tuples/lists, ``None``
    skipped) is finite. With finite inputs (which passes 1 and 2 certify: a NaN or inf in
    ``U``, ``S``, ``V`` reaches ``c1`` or ``|gbar|^2``), finite small matrices make every
    output of pass 3 finite: its entries are bounded combinations of them."""
    for x in parts:
        if x is None:
            continue
        if isinstance(x, (tuple, list)):
            if not _finite(xp, *x):
                return False
        elif isinstance(x, float):
            if not math.isfinite(x):
                return False
        elif not math.isfinite(float(xp.sum(xp.abs(x)))):
            return False
    return True


@dataclass(frozen=True)
class _Reduced:
    """What passes 1 and 2 leave (core dtype where small): ``p`` holds ``gbar``, or, where
    pass 2 was skipped, nothing yet (``t`` is set: the writing pass forms ``gbar = g /
    sqrt(eps) - U t`` into it)."""

    Sc: Any
    c1c: Any
    gg: float
    p: Any
    n: float
    a1c: Any
    vgc: Any
    G: Any
    C: Any
    GY: Any
    yg: Any
    t: Any = None


def _reduce(
    P: _Passes, S: Any, symmetric: bool, refresh: bool, alloc: Any, C_known: Any = None,
    two_pass: bool = False,
) -> _Reduced | Declined:  # fmt: skip
    """Passes 1 and 2 and the checks of what they found.

    ``C_known``: ``U^T V`` if known. The symmetric direction needs it in pass 2: pass 1
    measures it where it is not known, and on refresh steps. With ``two_pass`` (published
    direction) and a known ``C`` (not on refresh steps) pass 1 reads ``U`` too and pass 2 is
    skipped where the closed forms are accurate (see :func:`_closed_form`): the writing pass
    then forms ``gbar`` itself (``_Reduced.t``). Without a known ``C`` it is measured for the
    next step: by pass 1, or on a refresh step from pass 2's ``[U V]^T [U V]``."""
    xp, cdt, r = P.xp, P.cdt, P.r
    Sc = xp.astype(S, cdt)
    # (the writing pass forms gbar with 1/sqrt(eps) in the factor dtype: it must fit there)
    fits = P.inv_root < float(xp.finfo(P.dt).max)
    closed = two_pass and not symmetric and not refresh and C_known is not None and fits
    if symmetric:
        measure = C_known is None or refresh
    else:
        measure = two_pass and C_known is None and not refresh
    if closed:
        cw, gg = P.reduce(*_pass_project_both(P))
        c1, C = cw[r:], C_known
    else:
        c1, gg, C = P.reduce(*_pass_project(P, measure))
    if C is None and C_known is not None:
        C = C_known
    if C is not None and C.dtype != P.dt:
        C = xp.astype(C, P.dt)
    c1c = xp.astype(c1, cdt)
    if not math.isfinite(float(xp.sum(c1c))):
        return Declined("gradient", "V^T g is not finite")
    t = xp.astype((Sc @ c1c) * P.inv_root, P.dt)
    p = alloc((P.d,))
    lo, hi = _safe_range(xp, P.dt)
    if closed:
        found = _closed_form(P, xp.astype(cw[:r], cdt), c1c, gg, t, C, (lo, hi))
        if found is not None:
            n, a1c, vgc = found
            return _Reduced(Sc, c1c, gg, p, n, a1c, vgc, None, C, None, None, t)
    av, n, G, GY, yg = P.reduce(*_pass_gbar(P, t, p, C if symmetric else None, refresh))
    if G is not None and not symmetric and (two_pass or C is not None):
        C = xp.astype(G[:r, r:], P.dt)  # a refresh step measured U^T V: carry that
    if not (lo < n < hi):
        return Declined("gradient", f"|gbar|^2 = {n:.3g} is zero, non-finite or out of range")
    a1c, vgc = xp.astype(av[:r], cdt), xp.astype(av[r:], cdt)
    if not math.isfinite(float(xp.sum(a1c) + xp.sum(vgc))):
        return Declined("gradient", "[U V]^T gbar is not finite")
    return _Reduced(Sc, c1c, gg, p, n, a1c, vgc, G, C, GY, yg)


def _closed_form(
    P: _Passes, ug: Any, c1: Any, gg: float, t: Any, C: Any, safe: tuple[float, float]
) -> tuple[float, Any, Any] | None:
    """``(n, a1, vg)`` of ``gbar = g / sqrt(eps) - U t`` from pass 1's ``U^T g``, ``V^T g`` and
    ``|g|^2`` (core dtype), with no pass over ``d``; ``None`` where they would not be accurate.

    With orthonormal ``U, V`` and ``C = U^T V``: ``a1 = U^T g / sqrt(eps) - t``, ``vg = V^T g
    / sqrt(eps) - C^T t`` and ``n = |g|^2 / eps - 2 t^T U^T g / sqrt(eps) + |t|^2``. Each
    term is at most ``|g|^2 / eps``, so their rounding (and the factors' drift from
    orthonormality) errs by ``~u |g|^2 / eps``: relative to ``n`` at most ``u / EXTEND_MIN``
    where ``n >= EXTEND_MIN |g|^2 / eps`` (no cancellation) and both extensions keep
    ``h^2 >= EXTEND_MIN n`` (so the step needs no re-orthogonalisation pass, which reads
    ``gbar``). Otherwise pass 2 measures them.
    """
    xp, cdt = P.xp, P.cdt
    tc = xp.astype(t, cdt)
    inv = P.inv_root
    gs = gg * inv * inv
    n = gs - 2.0 * inv * float(tc @ ug) + float(tc @ tc)
    a1 = ug * inv - tc
    vg = c1 * inv - xp.astype(C, cdt).T @ tc
    lo, hi = safe
    if not (lo < n < hi and math.isfinite(gs) and n >= EXTEND_MIN * gs):
        return None
    if not all(n - float(x @ x) >= EXTEND_MIN * n for x in (a1, vg)):
        return None
    return n, a1, vg


def _symmetric_from(P: _Passes, red: _Reduced, us: _Side, bcoef: float) -> Any:
    """The symmetric direction's ``(alpha, coef_g)`` (or ``None``: gray zone) from the
    passes' reductions, in the input basis (a refresh step re-expressed ``S`` and ``a1``)."""
    xp, cdt, n, a1 = P.xp, P.cdt, red.n, red.a1c
    # U^T gbar and |gbar - U a| as accurately as the published step has them: after CGS2
    # the refined ones; otherwise (also on refresh steps, whose us.coef is in the
    # re-orthonormalised basis) a1 and the closed form, then well conditioned
    a_sym = a1 + us.a2c if us.explicit else a1
    h_sym = us.h if us.explicit else math.sqrt(max(n - float(a1 @ a1), 0.0))
    return _symmetric_coefficients(
        xp, red.Sc, red.c1c, a1, a_sym, h_sym, xp.astype(red.C, cdt), xp.astype(red.GY, cdt),
        xp.astype(red.yg, cdt), n, bcoef, P.root, P.dt,
    )  # fmt: skip


def _pass_project(P: _Passes, measure_C: bool) -> tuple[Any, float, Any]:
    """Pass 1: ``c1 = V^T g``, ``|g|^2`` (and, with ``measure_C``, ``C = U^T V``)."""
    if P.jit is not None and measure_C and P.jit.project_sym is not None:
        c1, gg, C = P.jit.project_sym(P.W, P.g)
        return P.xp.astype(c1, P.dt), gg, P.xp.astype(C, P.dt)
    if P.jit is not None and not measure_C:
        c1, gg = P.jit.project(P.W, P.g)
        return P.xp.astype(c1, P.dt), gg, None
    c1 = P.zeros(P.r)
    C = None
    gg = 0.0
    for a, b in P.blocks:
        gb = P.gblock(a, b)
        Vb = P.Vt[:, a:b]
        c1 = c1 + Vb @ gb
        gg += float(gb @ gb)
        if measure_C:
            Ub = P.Ut[:, a:b]
            C = Ub @ Vb.T if C is None else C + Ub @ Vb.T
    return c1, gg, C


def _pass_project_both(P: _Passes) -> tuple[Any, float]:
    """Pass 1 of the two-pass step: ``[U V]^T g`` (the compiled pass's float64 sums, not
    rounded to the factor dtype: the closed forms subtract them) and ``|g|^2``."""
    if P.jit is not None:
        return P.jit.project_both(P.W, P.g)
    cw = P.zeros(2 * P.r)
    gg = 0.0
    for a, b in P.blocks:
        gb = P.gblock(a, b)
        cw = cw + P.W[:, a:b] @ gb
        gg += float(gb @ gb)
    return cw, gg


def _pass_gbar(P: _Passes, t: Any, p: Any, C: Any, refresh: bool) -> tuple[Any, ...]:
    """Pass 2: ``gbar`` (into ``p``), ``[a1; vg] = [U V]^T gbar``, ``n = |gbar|^2``.

    With ``C`` (the symmetric direction) also ``Y = V - U C`` block by block (its Gram
    matrix ``GY`` gives the principal angles between ``span V`` and ``span U``) and
    ``yg = Y^T gbar``; on refresh steps ``G = [U V]^T [U V]``. Returns
    ``(av, n, G, GY, yg)``.
    """
    xp, ops, r, dt = P.xp, P.ops, P.r, P.dt
    if P.jit is not None and not refresh and C is None:
        av, n = P.jit.gbar(P.W, P.g, t, P.inv_root, p)
        return xp.astype(av, dt), n, None, None, None
    if P.jit is not None and not refresh and P.jit.gbar_sym is not None:
        av, n, GY, yg = P.jit.gbar_sym(P.W, P.g, t, P.inv_root, p, C)
        return xp.astype(av, dt), n, None, xp.astype(GY, dt), xp.astype(yg, dt)
    GY = yg = negCt = Yv = Yv2 = None
    if C is not None:
        negCt = xp.astype(-C.T, dt)
        rows0 = P.blocks[0][1] - P.blocks[0][0]
        Yv = ops.empty((r, rows0), dt)
        Yv2 = ops.empty((r, rows0), dt) if r < _SYRK_MIN_RANK else None
        GY = P.zeros(r, r)
        yg = P.zeros(r)
    av = P.zeros(2 * r)
    G = None
    n = 0.0
    Ut_b = ops.empty((P.blocks[0][1] - P.blocks[0][0],), dt)  # U_b t
    for a, b in P.blocks:
        Ub, Vb = P.Ut[:, a:b], P.Vt[:, a:b]
        _gbar_into(P, p, t, a, b, Ut_b)
        gb = p[a:b]
        av = av + P.W[:, a:b] @ gb
        n += float(gb @ gb)
        if C is not None:
            B = b - a
            ops.lincomb_into(Yv, (slice(None), slice(0, B)), Vb, negCt, Ub)
            if r < _SYRK_MIN_RANK:  # two distinct operands keep NumPy on gemm
                ops.copy_into(Yv2, (slice(None), slice(0, B)), Yv[:, :B])
                GY = GY + Yv[:, :B] @ Yv2[:, :B].T
            else:
                GY = GY + Yv[:, :B] @ Yv[:, :B].T
            yg = yg + Yv[:, :B] @ gb
        if refresh:
            Wbc = xp.astype(xp.concat([Ub, Vb], axis=0), P.cdt)
            G = Wbc @ Wbc.T if G is None else G + Wbc @ Wbc.T
    return av, n, G, GY, yg


def _fold_refresh(
    P: _Passes, G: Any, Sc: Any, a1c: Any, vgc: Any, limit: float
) -> tuple[Any, ...] | Declined:
    """Refresh: ``U = U_o R_u``, ``V = V_o R_v`` with orthonormal ``U_o, V_o``; returns
    ``(R_u, R_v, S, a1, vg)`` in the orthonormal bases, or a decline above ``limit``."""
    xp, r = P.xp, P.r
    eye = xp.eye(r, dtype=P.cdt, device=P.dev)
    GU, GV = G[:r, :r], G[r:, r:]
    drift = max(float(xp.max(xp.abs(GU - eye))), float(xp.max(xp.abs(GV - eye))))
    if not drift <= limit:
        return Declined("drift", f"max|F^T F - I| = {drift:.3g} exceeds {limit:g}")
    Ru = xp.linalg.cholesky((GU + GU.T) / 2).T
    Rv = xp.linalg.cholesky((GV + GV.T) / 2).T
    return Ru, Rv, Ru @ Sc @ Rv.T, xp.linalg.solve(Ru.T, a1c), xp.linalg.solve(Rv.T, vgc)


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


def _pass_reorthogonalise(
    P: _Passes, sides: tuple[_Side, _Side], p: Any, n: float, nu: float
) -> tuple[Any, Any]:
    """The explicit re-orthogonalisation where ``gbar`` lies nearly in span U / span V.

    ``H = gbar - a1 F`` (the first projection, row ``i`` for side ``i``; rows of the other
    sides are ``gbar``) is formed block by block here and again, bitwise identically, in
    pass 3; ``a2 = F^T H`` is the second projection (classical Gram--Schmidt twice). Updates
    the sides that need it; returns ``(H, A1)`` for pass 3.
    """
    xp, dt, r = P.xp, P.dt, P.r
    needs = [sd for sd in sides if sd.h2 < EXTEND_MIN * n]
    drop_tol = 10.0 * float(xp.finfo(dt).eps) * math.sqrt(max(P.d_total, 100)) * nu
    for sd in needs:
        sd.explicit = True
        sd.a_tall = xp.astype(sd.coef, dt)
        sd.a2 = P.zeros(r)
        sd.hh = 0.0
    zt = P.zeros(r)
    A1 = _blockdiag_rows(xp, [sd.a_tall if sd.explicit else zt for sd in sides])
    H = P.scratch(2)
    for a, b in P.wblocks:  # pass 3's blocks: H is recomputed there bit for bit
        _first_projection(P, H, A1, p[a:b], a, b)
        for i, sd in enumerate(sides):
            if sd.explicit:
                hb = H[i, : b - a]
                sd.a2 = sd.a2 + sd.Ft[:, a:b] @ hb
                sd.hh += float(hb @ hb)
    for sd in needs:
        sd.a2, sd.hh = P.reduce(sd.a2, sd.hh)
        a2c = xp.astype(sd.a2, P.cdt)
        h2 = sd.hh - float(a2c @ a2c)
        sd.coef = sd.coef + a2c
        sd.a2c = a2c
        sd.h = math.sqrt(max(h2, 0.0))
        sd.extend = sd.h > drop_tol
    return H, A1


def _ksl_core(
    xp: Any, sides: tuple[_Side, _Side], Sc: Any, bcoef: float, r: int
) -> tuple[Any, tuple[Any, ...]]:
    """The K step, S step and L step on ``(r+1) x r`` coordinates (core dtype), and the
    gauges of both bases: ``(S1, (v_u, alpha_u, v_v, alpha_v))``."""
    us, vs = sides
    cdt, dev = Sc.dtype, device_of(Sc)
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
    return Ou @ Rl.T @ Ov.T, (vu, alpha_u, vv, alpha_v)


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


@dataclass(frozen=True)
class _Outputs:
    """The direction that pass 3 finishes in ``p`` (which holds ``gbar``): ``gbar * inv_s``
    (published) or, with ``sym = (alpha, coef_g)``, the symmetric one. With ``t`` (the
    published direction of the two-pass step) ``p`` does not hold ``gbar`` yet: pass 3 forms
    ``gbar = g / sqrt(eps) - U t`` there, block by block, before it reads it."""

    p: Any
    inv_s: float
    sym: Any
    t: Any = None


def _pass_write(
    P: _Passes, sides: Any, gauges: Any, roots: Any, H: Any, A1: Any, out: _Outputs, alloc: Any,
    overwrite: bool,
) -> tuple[Any, float]:  # fmt: skip
    """Pass 3: ``U1 = U_o + (q - alpha U_o v) v^T``, ``V1`` likewise, and the direction.

    Returns ``(W1, pp)``: both factors in one ``(2r, d)`` buffer (``None`` where neither
    basis changes), and ``|p|^2`` of the symmetric direction (``nan`` for the published one).
    ``W1``: row block = base + ``Vm @ E``, with base the input block (or ``R^{-T}`` times it
    on a refresh step), ``Vm = diag(v_u, v_v)`` (``2r x 2``) and ``E`` the two rows
    ``e_i = inv_h_i (gbar - a1_i F_i) - m_i F_i`` (the first term is ``H``, or ``gbar`` where
    no re-orthogonalisation was needed); a side whose basis does not change has ``v = 0``.
    """
    vu, alpha_u, vv, alpha_v = gauges
    change = [v is not None and sd.extend for sd, v in zip(sides, (vu, vv), strict=True)]
    if not any(change) and roots[0] is None:  # gbar in span U and span V: only S changes
        return None, _direction_only(P, out), None
    coefs = _write_coefficients(P, sides, change, ((vu, alpha_u), (vv, alpha_v)), roots)
    Vm, Mm, hcol, inv_hs, Bm = coefs
    Tw = _write_matrix(P, Vm, Mm, hcol, Bm)
    W1 = P.W if overwrite else alloc((2 * P.r, P.d))
    # the symmetric direction's [U V] alpha + coef_g gbar as a third row of E: one product
    # per block for both (p = g / sqrt(eps) + that row)
    fused = out.sym is not None and H is None
    if fused:
        alpha, coef_g = out.sym
        Mm = P.xp.concat([Mm, P.xp.reshape(-alpha, (1, 2 * P.r))], axis=0)
        hcol = P.xp.concat([hcol, P.xp.asarray([coef_g], dtype=P.dt, device=P.dev)])
    in_place = W1 is P.W
    compiled = in_place or P.r <= numba_kernels.SEPARATE_WRITE_MAX_RANK
    if P.jit is not None and compiled and H is None and Bm is None:
        if fused:
            return W1, P.jit.write_sym(P.W, W1, out.p, P.g, Vm, Mm, hcol, P.inv_root), Tw
        if out.sym is None and out.t is not None:
            # in the factor dtype: float32 arithmetic stays float32 (and vectorised)
            inv_root = P.dt.type(P.inv_root)
            P.jit.write_gbar(P.W, W1, P.g, out.t, inv_root, out.p, Vm, Mm, hcol, out.inv_s)
            return W1, math.nan, Tw
        if out.sym is None:
            P.jit.write(P.W, W1, out.p, Vm, Mm, hcol, out.inv_s)
            return W1, math.nan, Tw
    E = P.scratch(3 if fused else 2) if H is None else H
    Ut_b = None if out.t is None else P.ops.empty((P.wblocks[0][1] - P.wblocks[0][0],), P.dt)
    pp = 0.0
    for a, b in P.wblocks:
        if out.t is not None:  # gbar of the block, as pass 2 would have written it
            _gbar_into(P, out.p, out.t, a, b, Ut_b)
        # the unfused symmetric direction reads [U V]: before the block is written (in place)
        unfused = out.sym is not None and not fused
        before = (lambda a=a, b=b: _symmetric_into(P, out.p, a, b, out.sym)) if unfused else None
        _write_block(P, W1, E, (Vm, Mm, hcol, inv_hs, Bm), sides, H, A1, out.p, a, b, before)
        if out.sym is None:
            P.ops.scale_into(out.p, (slice(a, b),), out.inv_s)
            continue
        if fused:
            P.ops.axpy_into(out.p, (slice(a, b),), P.inv_root, P.gblock(a, b), E[2, : b - a])
        pb = out.p[a:b]
        pp += float(pb @ pb)
    return W1, (pp if out.sym is not None else math.nan), Tw


def _gbar_into(P: _Passes, p: Any, t: Any, a: int, b: int, scratch: Any) -> None:
    """``p[a:b] = g[a:b] / sqrt(eps) - U[a:b] t`` (``scratch``: at least ``b - a`` entries)."""
    Ub = P.Ut[:, a:b]
    P.ops.residual_into(p, (slice(a, b),), P.inv_root, P.gblock(a, b), t, Ub, scratch[: b - a])


def _write_matrix(P: _Passes, Vm: Any, Mm: Any, h: Any, Bm: Any) -> Any:
    """``Tw`` with ``[U1 V1]^T = Tw [U V gbar]^T``, the ``(2r, 2r+1)`` matrix of pass 3
    (without the re-orthogonalisation pass).

    Each block is ``B W + Vm E`` with the rows ``E = h gbar - Mm W`` (``B``: ``I`` or the
    refresh step's ``Bm``), so ``Tw = [B - Vm Mm, Vm h]``. The implicit extension keeps
    ``h^2 >= EXTEND_MIN |gbar|^2``, so ``Tw`` has no large entries.
    """
    xp, r = P.xp, P.r
    B = xp.eye(2 * r, dtype=P.dt, device=P.dev) if Bm is None else Bm
    left = B - Vm @ Mm[:2, :]
    return xp.concat([left, xp.reshape(Vm @ h[:2], (2 * r, 1))], axis=1)


def _direction_only(P: _Passes, out: _Outputs) -> float:
    """The direction when neither basis changes (no factor is written); ``|p|^2`` of the
    symmetric direction (``nan`` for the published one)."""
    if out.t is not None:
        _gbar_into(P, out.p, out.t, 0, P.d, P.ops.empty((P.d,), P.dt))
    if out.sym is None:
        P.ops.scale_into(out.p, (slice(0, P.d),), out.inv_s)
        return math.nan
    pp = 0.0
    for a, b in P.wblocks:
        _symmetric_into(P, out.p, a, b, out.sym)
        pb = out.p[a:b]
        pp += float(pb @ pb)
    return pp


def _write_coefficients(
    P: _Passes, sides: Any, change: list[bool], gauges: Any, roots: Any
) -> tuple[Any, ...]:
    """``(Vm, Mm, hcol, inv_hs, Bm)`` of pass 3 (see :func:`_pass_write`)."""
    xp, r, dt = P.xp, P.r, P.dt
    vcols, ms, inv_hs = [], [], []
    zr = P.zeros(r, core=True)
    for ch, sd, (v, alpha) in zip(change, sides, gauges, strict=True):
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
    hcol = xp.asarray(inv_hs, dtype=dt, device=P.dev)
    Bm = None
    Ru, Rv = roots
    if Ru is not None:  # U_o = U R_u^{-1}: base block = blockdiag(R_u^{-T}, R_v^{-T}) [U; V]
        zrr = P.zeros(r, r, core=True)
        top = xp.concat([xp.linalg.inv(Ru).T, zrr], axis=1)
        bottom = xp.concat([zrr, xp.linalg.inv(Rv).T], axis=1)
        Bm = xp.astype(xp.concat([top, bottom], axis=0), dt)
    return Vm, Mm, hcol, inv_hs, Bm


def _write_block(
    P: _Passes, W1: Any, E: Any, coefs: Any, sides: Any, H: Any, A1: Any, p: Any, a: int, b: int,
    before_write: Callable[[], None] | None = None,
) -> None:  # fmt: skip
    """One block of pass 3: the rows ``E`` (``e_u``, ``e_v`` and, for the fused symmetric
    direction, its row), ``before_write()`` if given (``p[a:b]``, which holds ``gbar``, is no
    longer read), then ``W1[:, a:b] = base + Vm @ E[:2]``."""
    Vm, Mm, hcol, inv_hs, Bm = coefs
    ops, r = P.ops, P.r
    B = b - a
    gb = p[a:b]  # gbar
    if H is None:
        ops.residual_into(E, (slice(None), slice(0, B)), hcol, gb, Mm, P.W[:, a:b])
    else:
        _first_projection(P, H, A1, gb, a, b)
        for i, sd in enumerate(sides):
            ops.residual_into(
                E, (i, slice(0, B)), inv_hs[i], H[i, :B], Mm[i, i * r : (i + 1) * r],
                sd.Ft[:, a:b],
            )  # fmt: skip
    if before_write is not None:
        before_write()
    Wb = P.W[:, a:b]
    rows = (slice(None), slice(a, b))
    if W1 is P.W and Bm is None:  # in place: the base is the destination
        ops.add_into(W1, rows, Vm @ E[:2, :B])
    else:
        ops.lincomb_into(W1, rows, Wb if Bm is None else Bm @ Wb, Vm, E[:2, :B])


def _blockdiag_rows(xp: Any, rows: list[Any]) -> Any:
    """``(2, 2r)`` matrix with ``rows[0]`` in ``[0, :r]`` and ``rows[1]`` in ``[1, r:]``."""
    r = int(rows[0].shape[0])
    z = xp.zeros((1, r), dtype=rows[0].dtype, device=device_of(rows[0]))
    top = xp.concat([xp.reshape(rows[0], (1, r)), z], axis=1)
    bottom = xp.concat([z, xp.reshape(rows[1], (1, r))], axis=1)
    return xp.concat([top, bottom], axis=0)


def _first_projection(P: _Passes, H: Any, A1: Any, gb: Any, a: int, b: int) -> None:
    """``H[i, :B] = gbar_b - a1_i F_i`` for both sides (``a1_i = 0`` where not needed).

    The same call in the re-orthogonalisation pass and in pass 3, so both see the same bits.
    """
    ones = P.xp.ones((2,), dtype=gb.dtype, device=device_of(gb))
    P.ops.residual_into(H, (slice(None), slice(0, b - a)), ones, gb, A1, P.W[:, a:b])


def _symmetric_coefficients(
    xp: Any,
    S: Any,
    c1: Any,
    a1: Any,
    a: Any,
    h: float,
    C: Any,
    GY: Any,
    yg: Any,
    n: float,
    b: float,
    root: float,
    dt: Any,
) -> tuple[Any, Any] | None:
    """``(alpha, coef_g)`` with ``G^{-1/2} g = g / sqrt(eps) + [U V] alpha + coef_g gbar``.

    ``M^+ = U S V^T + b gbar y^T``, ``y = gbar - V S^T a1`` (``a1 = U^T gbar``), acts in
    ``span[U, V, gbar]``. Its orthonormal basis is ``Z = [U, Q]`` with ``Q = Y2 E lam^{-1/2}``
    (never formed), where ``Y2 = [V, gbar/nu] - U P``, ``P = [C, a/nu]`` (``C = U^T V``; ``a``
    the projection of ``gbar`` on ``U``, refined by CGS2 where the published step needed it)
    has the Gram matrix ``E diag(lam) E^T``. The core ``m = Z^T M^+ Z`` and ``Z^T g`` are
    small expressions (``U^T g = sqrt(eps)(a1 + t)``, ``gbar^T g = sqrt(eps)(n + t^T a1)``);
    ``p = eps^{-1/2}(g + Z (|I - m| - I) Z^T g)`` (:ref:`theory-adagram-directions` in
    ``docs/theory.rst``).

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
    (Householder) path to within 2x (both ``~u sqrt(lambda/eps)``)
    and no step fell in between. Earlier versions formed ``Y`` in a separate pass (9 to
    35 ms of a 30 to 60 ms step at d = 1e6, r = 5).
    """
    r = int(S.shape[0])
    cdt = S.dtype
    dev = device_of(S)
    nu = math.sqrt(n)
    inv_nu = 1.0 / nu
    P = xp.concat([C, xp.reshape(a * inv_nu, (r, 1))], axis=1)  # [V, gbar/nu] = U P + Y2
    ygn = xp.reshape(yg * inv_nu, (r, 1))
    G2 = xp.concat(
        [
            xp.concat([GY, ygn], axis=1),
            xp.concat([ygn.T, xp.asarray([[(h * inv_nu) ** 2]], dtype=cdt, device=dev)], axis=1),
        ],
        axis=0,
    )
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
    Zu = xp.concat(
        [xp.eye(r, dtype=cdt, device=dev), xp.zeros((k, r), dtype=cdt, device=dev)], axis=0
    )
    Zv, Zg = Zc[:, :r], Zc[:, r] * nu
    m = Zu @ S @ Zv.T + b * _outer(Zg, Zg - Zv @ (S.T @ a1))
    q = r + k
    _, sig, Wrt = xp.linalg.svd(xp.eye(q, dtype=cdt, device=dev) - m, full_matrices=False)
    t = (S @ c1) / root
    ug = root * (a1 + t)  # U^T g
    Yg = (
        xp.concat([c1, xp.asarray([root * (n + float(t @ a1)) * inv_nu], dtype=cdt, device=dev)])
        - P.T @ ug
    )  # Y2^T g
    zg = xp.concat([ug, (Ek.T @ Yg) / sk])  # Z^T g
    c = Wrt.T @ (sig * (Wrt @ zg)) - zg  # (|I - m| - I) Z^T g
    wq = Ek @ (c[r:] / sk)  # coefficients of the Y2 columns [V, gbar/nu]
    alpha = xp.concat([c[:r] - P @ wq, wq[:r]]) / root  # on [U V]
    return xp.astype(alpha, dt), float(wq[r]) * inv_nu / root


def _symmetric_into(P: _Passes, p: Any, a: int, b: int, sym: Any) -> None:
    """``p[a:b] = g_b / sqrt(eps) + [U V]_b alpha + coef_g gbar_b`` (``p[a:b]`` holds gbar)."""
    alpha, coef_g = sym
    tail = p[a:b] * coef_g  # the gbar term, before p[a:b] (which holds gbar) is overwritten
    rows = (slice(a, b),)
    P.ops.residual_into(p, rows, P.inv_root, P.gblock(a, b), -alpha, P.W[:, a:b])
    P.ops.add_into(p, rows, tail)
