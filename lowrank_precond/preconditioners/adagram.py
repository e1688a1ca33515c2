"""AdaGram and AdamGram: full-matrix AdaGrad through a rank-one-updated inverse factor.

AdaGram (arXiv 2508.21106) keeps ``L_t^{-1} = eps^{-1/2} (I - M_t)`` with ``L_t L_t^T = G_t =
eps I + sum_s g_s g_s^T`` and ``M_t = M_{t-1} + x y^T`` (:ref:`theory-adagram`). ``M`` is either
kept exactly (``P Q^T``, one column pair per accepted step) or, past ``rank`` columns, as a
rank-``r`` ``U S V^T`` advanced by a low-rank integrator (:ref:`theory-integrators`). The
two factories share one mechanism: :func:`adagram` applies the updated factor to the
gradient, :func:`adamgram` applies the same factor to an Adam-style bias-corrected first moment
of the gradients.

All of the linear algebra lives in :mod:`lowrank_precond.linalg` (``factorization`` and
``integrators``); this module is the bookkeeping around it: flattening, dtypes, warm-up,
truncation policy, moments and the state.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lowrank_precond.backends import (
    array_namespace,
    check_in,
    check_int,
    check_positive,
    device_of,
    on_host,
)
from lowrank_precond.backends.blocked import Workspace
from lowrank_precond.backends.fused import Declined
from lowrank_precond.backends.shards import Shards
from lowrank_precond.linalg._unchecked import (
    _factored,
    _inverse_factor_update,
    _lowrank,
    _newton_direction,
    _published_direction,
    _rank_one_increment,
    _recompress,
    _symmetric_direction,
)
from lowrank_precond.linalg.integrator_types import (
    INTEGRATOR_NAMES,
    BasisUpdateGalerkin,
    ProjectorSplitting,
    TruncatedSVD,
)
from lowrank_precond.linalg.lowrank import Factored, LowRank
from lowrank_precond.linalg.streaming import (
    EXTEND_MIN,
    REFRESH_EVERY,
    ksl_adagram_available,
    try_ksl_adagram_step,
)
from lowrank_precond.linalg.streaming_torch import (
    ksl_adagram_whole_available,
    try_ksl_adagram_step_whole,
)
from lowrank_precond.preconditioners._common import (
    IMPLS,
    check_betas,
    check_eps,
    check_factor_dtype,
    check_param,
    factor_dtype_for,
    flat_grad,
    safe_norm,
)
from lowrank_precond.preconditioners.base import NonFiniteStep, Preconditioner, check_statistic
from lowrank_precond.preconditioners.compose import precondition

__all__ = [
    "DIRECTIONS",
    "IMPLS",
    "INTEGRATORS",
    "AdaGramState",
    "AdamGramState",
    "adagram",
    "adamgram",
]

#: accepted values of ``direction``
DIRECTIONS = ("published", "symmetric", "newton")
#: accepted names of ``integrator`` (a callable ``f(lowrank, x, y) -> LowRank`` also works)
INTEGRATORS = INTEGRATOR_NAMES
INTEGRATOR_TYPES = (TruncatedSVD, ProjectorSplitting, BasisUpdateGalerkin)

Integrator = Callable[[LowRank, Any, Any], LowRank]


# --------------------------------------------------------------------------- state


@dataclass
class AdaGramState:
    """State of :func:`adagram` (flat: ``dataclasses.asdict`` is a checkpoint).

    ``M`` is stored in exactly one of two forms; the arrays of the other form are empty
    (``(d, 0)`` / ``(0, 0)``), so every field always exists and the state stays flat.

    Attributes
    ----------
    t : int
        Number of accepted steps (gradients with ``gbar != 0``; a zero gradient is no step).
    sumsq : float
        ``sum_s |g_s|^2`` over the accepted steps (for the health bound
        ``sv(I - M) in [sqrt(eps / (eps + sumsq)), 1]``, [A10]).
    last_ratio : float
        ``rho_t = eps |gbar_t|^2 / |g_t|^2`` of the last accepted step (``0.0`` before the
        first). On an exact factor ``rho_t <= 1`` always [B14]; ``rho_t > 1`` certifies that a
        truncated ``M`` has ``sigma_max(I - M) > 1``, i.e. ``G_r >= eps I`` failed
        (:ref:`theory-truncation`). Free:
        both norms are computed by the step anyway.
    P, Q : array, shape (d, k)
        Exact form ``M = P Q^T`` (``k <= rank``, or unbounded for ``rank=None``); ``(d, 0)``
        once truncated.
    U, V : array, shape (d, r)
        Truncated form ``M = U S V^T`` (orthonormal columns); ``(d, 0)`` while exact.
    S : array, shape (r, r)
        Core of the truncated form (diagonal only for ``integrator="truncated_svd"``);
        ``(0, 0)`` while exact.
    last_impl : str
        Which implementation ran the last step: ``"fused"`` (the row-blocked KSL step of
        :mod:`lowrank_precond.linalg.streaming`), ``"reference"``, or ``"reference: <why>"``
        when ``impl="auto"`` or ``"fused"`` wanted the fused step and this step could not
        take it (the warm-up steps before truncation, or a gradient whose geometry the fused
        kernel leaves to the reference path).

    C : array, shape (r, r) or (0, 0)
        ``U^T V``, kept by the fused step for the next one (the symmetric direction then
        does not measure it, the published one skips a pass; re-measured every
        :data:`~lowrank_precond.linalg.streaming.REFRESH_EVERY` steps); empty after any
        other step (``None`` in checkpoints written before it existed).

    All arrays have the factor dtype (see ``factor_dtype`` in :func:`adagram`) and the
    parameter's device. :attr:`factor` returns ``M`` as a ``Factored`` or ``LowRank``, e.g. for
    :func:`lowrank_precond.linalg.factor_health`.
    """

    t: int
    sumsq: float
    last_ratio: float
    P: Any
    Q: Any
    U: Any
    S: Any
    V: Any
    last_impl: str = field(default="reference", kw_only=True)
    C: Any = field(default=None, kw_only=True)

    @classmethod
    def upgrade_fields(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Read a checkpoint of the earlier layout, which called ``last_ratio`` ``last_rho``."""
        data = dict(data)
        if "last_rho" in data:
            data.setdefault("last_ratio", data.pop("last_rho"))
        return data

    def verified_fields(self) -> tuple[str, ...]:
        """The array fields that the step which made this state verified finite itself.

        The fused step certifies ``U``, ``S``, ``V``: its passes propagate any NaN or inf of
        its inputs into the small quantities it checks, and its outputs are bounded
        combinations of finite ones (:ref:`theory-streamed-ksl`). Wrappers that check every
        new state (the ``torch.optim`` classes) skip these fields, which saves a read of the
        whole ``d x 2r`` state per step.
        """
        return ("U", "S", "V", "C") if self.last_impl == "fused" else ()

    @property
    def truncated(self) -> bool:
        """True once ``M`` is held as ``U S V^T`` (after the warm-up of ``rank`` steps)."""
        return int(self.U.shape[1]) > 0

    @property
    def factor(self) -> Factored | LowRank:
        """``M`` as ``LowRank(U, S, V)`` when :attr:`truncated`, else ``Factored(P, Q)``."""
        if self.truncated:
            return LowRank(self.U, self.S, self.V)
        return Factored(self.P, self.Q)


@dataclass
class AdamGramState(AdaGramState):
    """State of :func:`adamgram`: :class:`AdaGramState`'s fields plus the first moment.

    Attributes
    ----------
    count : int
        Number of moment updates (every finite gradient, zeros included), the ``t`` of the
        bias correction ``1 - b1^count``. ``t`` still counts accepted factor updates.
    m : array, shape (d,)
        ``m = b1 m + (1 - b1) g`` (not bias-corrected), in the factor dtype.
    """

    count: int
    m: Any


# --------------------------------------------------------------------------- shared mechanism


def _resolve_integrator(integrator: Any, order: int, tol: float) -> Any:
    """The integrator as a value (or the caller's own callable).

    ``integrator`` is a value (``ProjectorSplitting(order=2)``, ...), a name plus the older
    ``order`` / ``tol`` options (checked against it), or a callable
    ``f(lowrank, x, y) -> LowRank``.
    """
    if isinstance(integrator, INTEGRATOR_TYPES) or (
        callable(integrator) and not isinstance(integrator, str)
    ):
        if order != 1 or tol != 0.0:
            raise ValueError(
                "order/tol: options of the named integrators 'projector_splitting' (order) "
                "and 'basis_update_galerkin' (tol); with an integrator value set them on it "
                "(ProjectorSplitting(order=2), BasisUpdateGalerkin(tol=...)), and a callable "
                "integrator takes neither"
            )
        return integrator
    check_in("integrator", integrator, INTEGRATORS)
    if order != 1 and integrator != "projector_splitting":
        raise ValueError(
            f"order: {order} is only meaningful for integrator='projector_splitting', "
            f"got integrator={integrator!r}"
        )
    if tol != 0.0 and integrator != "basis_update_galerkin":
        raise ValueError(
            f"tol: {tol} is only meaningful for integrator='basis_update_galerkin' "
            f"(rank-adaptive BUG), got integrator={integrator!r}"
        )
    if integrator == "projector_splitting":
        return ProjectorSplitting(order=order)
    if integrator == "basis_update_galerkin":
        return BasisUpdateGalerkin(tol=tol)
    return TruncatedSVD()


def _make_integrator(integrator: Any, rank: int, xp: Any) -> Integrator:
    """``f(lowrank, x, y) -> LowRank`` at the rank budget ``rank`` (a value runs unchecked)."""
    if isinstance(integrator, INTEGRATOR_TYPES):
        return lambda low, x, y: integrator(low, x, y, rank, xp=xp)
    return integrator


class _Updated:
    """The updated matrix ``M^+ = M_old + x y^T`` of one step, before any truncation
    (:ref:`theory-integrators-warmup`).

    Holds what the directions need without building anything they do not use: the published
    and newton directions of ``g`` itself are O(d) / one ``rmatvec`` of the old ``M``; the
    ``Factored`` form (``[P, x], [Q, y]`` or ``[U S, x], [V, y]``) is built only on demand.
    ``info is None`` marks a skipped step (``gbar = 0``): then ``M^+ = M_old``.
    """

    def __init__(self, xp: Any, old: Factored | LowRank, info: Any, plus: Factored | None = None):
        self.xp, self.old, self.info, self._plus = xp, old, info, plus

    def matrix(self) -> Factored | LowRank:
        if self.info is None:
            return self.old
        if self._plus is None:
            xp = self.xp
            old = self.old
            x, y = xp.reshape(self.info.x, (-1, 1)), xp.reshape(self.info.y, (-1, 1))
            self._plus = _factored(
                xp.concat([old.U @ old.S, x], axis=1), xp.concat([old.V, y], axis=1)
            )
        return self._plus

    def rmatvec(self, v: Any) -> Any:
        """``(M^+)^T v = M_old^T v + y (x . v)``."""
        if self.info is None:
            return self.old.rmatvec(v)
        return self.old.rmatvec(v) + self.info.y * self.xp.vecdot(self.info.x, v)


def _empty_factors(xp: Any, d: int, dtype: Any, device: Any) -> dict[str, Any]:
    z = xp.zeros((d, 0), dtype=dtype, device=device)
    z0 = xp.zeros((0, 0), dtype=dtype, device=device)
    return {"P": z, "Q": z, "U": z, "S": z0, "V": z, "C": z0}


def _known_C(state: AdaGramState) -> Any:
    """``state.C`` where it is ``U^T V`` of the state's factors, else ``None``."""
    C, r = state.C, int(state.U.shape[1])
    return C if C is not None and r > 0 and tuple(C.shape) == (r, r) else None


def _counters(state: AdaGramState, gnorm: float, nu: float, eps: float) -> dict[str, Any]:
    """``t``, ``sumsq`` and ``last_ratio`` after an accepted step (``g != 0``)."""
    sumsq = state.sumsq + gnorm * gnorm
    check_statistic("sumsq", sumsq)
    ratio = math.sqrt(eps) * nu / gnorm
    return {"t": state.t + 1, "sumsq": sumsq, "last_ratio": ratio * ratio}


def _accept_counting(
    state: AdaGramState, g: Any, eps: float, counters: dict[str, Any], whole: bool = True
) -> Callable[[float, float], bool]:
    """The fused steps' ``accept``: the new counters into ``counters``, or ``False`` (decline,
    nothing written) where they would overflow -- or, for a shard's rows (``whole=False``),
    where ``|g|^2`` underflowed and needs the scaled norm of the whole vector."""

    def accept(gg: float, nu: float) -> bool:
        summed = gg > 1e-280 and math.isfinite(gg)
        if not summed and not whole:
            return False
        gnorm = math.sqrt(gg) if summed else safe_norm(g)
        try:
            counters.update(_counters(state, gnorm, nu, eps))
        except NonFiniteStep:  # the reference path raises it, with nothing written
            return False
        return True

    return accept


def _fused(
    state: AdaGramState,
    g: Any,
    eps: float,
    direction: str,
    workspace: Workspace,
    overwrite: bool = False,
    shards: Shards | None = None,
) -> tuple[dict[str, Any], Any] | Declined:
    """The truncated KSL step with its direction in a few row-blocked passes over ``d``.

    :func:`~lowrank_precond.linalg.streaming.try_ksl_adagram_step` fuses
    ``rank_one_increment`` + ``projector_splitting`` + the published or symmetric direction
    (same ``M``, same direction, to rounding). Returns the new fields and the direction, or
    the :class:`~lowrank_precond.backends.fused.Declined` of a step it leaves to the reference
    path. ``g`` may still be in the parameter's dtype. ``overwrite``: the new factors may be
    written into the old ones' memory (``state`` must not be used after a step that returns
    fields; the counters are checked before anything is written, so a step that would
    overflow them declines and leaves ``state`` as it was). ``shards``: the state and ``g``
    are this process's rows (see :func:`try_ksl_adagram_step`).
    """
    old = _lowrank(state.U, state.S, state.V)
    refresh = state.t % REFRESH_EVERY == 0
    counters: dict[str, Any] = {}
    accept = _accept_counting(state, g, eps, counters, whole=shards is None)
    res = try_ksl_adagram_step(
        old,
        g,
        eps,
        refresh=refresh,
        direction=direction,
        workspace=workspace,
        overwrite=overwrite,
        accept=accept,
        shards=shards,
        C=_known_C(state),
        # two passes where the last step's gbar did not cancel (the usual case: g mostly
        # outside span U, V); where it did, three passes are cheaper (pass 1 then reads only
        # V and measures no U^T V; a C already known is still carried)
        two_pass=state.last_ratio >= EXTEND_MIN,
    )
    if isinstance(res, Declined):
        return res
    fields = _truncated_fields(state, res.lowrank, res.C)
    fields.update(counters, last_impl="fused")
    return fields, res.direction  # the symmetric one at its exact length, as in _View.own


def _truncated_fields(state: AdaGramState, new: LowRank, C: Any = None) -> dict[str, Any]:
    """The factor fields of a state whose truncated factor is ``new`` (``C``: its ``U^T V``
    if the step computed it, else the empty ``(0, 0)`` array)."""
    if C is None:
        C = array_namespace(new.S).zeros((0, 0), dtype=new.S.dtype, device=device_of(new.S))
    return {"P": state.P, "Q": state.Q, "U": new.U, "S": new.S, "V": new.V, "C": C}


def _fused_whole(
    state: AdaGramState, g: Any, eps: float, direction: str
) -> tuple[dict[str, Any], Any] | Declined:
    """:func:`_fused` off the host: the whole-array step of
    :func:`~lowrank_precond.linalg.streaming_torch.try_ksl_adagram_step_whole` (two host
    synchronisations per step). It has no refresh: every :data:`REFRESH_EVERY`-th step takes
    the reference path, whose QRs return orthonormal bases."""
    if state.t % REFRESH_EVERY == 0:
        return Declined("refresh", "a refresh step: the reference path re-orthonormalises")
    counters: dict[str, Any] = {}
    accept = _accept_counting(state, g, eps, counters)
    old = _lowrank(state.U, state.S, state.V)
    res = try_ksl_adagram_step_whole(old, g, eps, direction=direction, accept=accept)
    if isinstance(res, Declined):
        return res
    fields = _truncated_fields(state, res.lowrank)
    fields.update(counters, last_impl="fused")
    return fields, res.direction


def _advance(
    xp: Any, state: AdaGramState, g: Any, *, rank: int | None, integrate: Integrator, eps: float
) -> tuple[_Updated, dict[str, Any] | None]:
    """One factor step on the flat gradient ``g`` (factor dtype, namespace ``xp``).

    Returns ``(updated, fields)``: ``updated`` is ``M^+`` (what the directions use) and
    ``fields`` the new state's factor fields and counters, or ``None`` when ``gbar = 0`` (the
    state must then be returned unchanged).
    """
    d = int(g.shape[0])
    if state.truncated:
        old = _lowrank(state.U, state.S, state.V)
        info = _rank_one_increment(xp, old, g, eps)
        if info.skipped:
            return _Updated(xp, old, None), None
        plus = None
        factors = _truncated_fields(state, integrate(old, info.x, info.y))
    else:
        old = _factored(state.P, state.Q)
        plus, info = _inverse_factor_update(xp, old, g, eps)
        if info.skipped:
            return _Updated(xp, old, None), None
        if rank is None or old.rank < rank:  # exact growth (warm-up, or rank=None)
            factors = {
                "P": plus.P, "Q": plus.Q, "U": state.U, "S": state.S, "V": state.V, "C": state.C,
            }  # fmt: skip
        else:  # k would be rank + 1: recompress, then integrate (theory-integrators-warmup)
            new = integrate(_recompress(xp, old, rank), info.x, info.y)
            factors = _empty_factors(xp, d, g.dtype, device_of(g))
            factors.update(U=new.U, S=new.S, V=new.V)
    fields = dict(factors)
    fields.update(_counters(state, safe_norm(g), info.nu, eps))  # g != 0, since gbar != 0
    return _Updated(xp, old, info, plus), fields


def _direction(updated: _Updated, v: Any, kind: str, eps: float, *, v_is_g: bool) -> Any:
    """Apply the preconditioner of ``M^+`` to ``v`` (:ref:`theory-adagram-directions`).

    ``published``: ``L^{-1} v = eps^{-1/2} (v - M^+ v)``; ``symmetric``: ``G^{-1/2} v``;
    ``newton``: ``G^{-1} v = L^{-T} L^{-1} v``. When ``v`` is the step's own gradient the
    published direction is ``gbar / s`` [A05] and newton is ``L^{-T}`` of it, one ``rmatvec``.
    """
    info, xp = updated.info, updated.xp
    if kind == "symmetric":
        return _symmetric_direction(xp, updated.matrix(), v, eps)
    if v_is_g and info is None:  # gbar = 0: both cheap directions vanish
        return xp.zeros_like(v)
    if kind == "published":
        if v_is_g:
            return info.published
        return _published_direction(xp, updated.matrix(), v, eps)
    if v_is_g:
        p = info.published
        return (p - updated.rmatvec(p)) / math.sqrt(eps)
    return _newton_direction(xp, updated.matrix(), v, eps)


def _with_norm(p: Any, norm: float) -> Any:
    """``p`` rescaled to the length ``norm`` (``p`` itself when it is zero)."""
    n = safe_norm(p)
    return p if n == 0.0 or not math.isfinite(n) else p * (norm / n)


class _View:
    """:class:`~lowrank_precond.preconditioners.compose.CurvatureView` of one AdaGram step.

    The symmetric direction of the gradient itself is returned at its exact length
    ``|G^{-1/2} g| = |L^{-1} g| = nu / s`` [A06] (which holds after truncation too, since the
    step's update is exact relative to the truncated state [B12]): computed through the
    singular values of ``I - M``, which are ``sqrt(eps / lambda)``, its length would carry
    the relative error ``~u sqrt(lambda_max / eps)`` (measured: 1e10 for ``|g| ~ 1e20`` at
    ``eps = 1e-8`` in float64), while ``nu / s`` is exact to rounding.
    """

    def __init__(self, updated: _Updated | None, g: Any, direction: str, eps: float, own=None):
        self.updated, self.g, self.kind, self.eps, self._own = updated, g, direction, eps, own

    def own(self) -> Any:
        if self._own is None:  # the reference step: from M^+ and its by-products
            p = _direction(self.updated, self.g, self.kind, self.eps, v_is_g=True)
            info = self.updated.info
            if self.kind == "symmetric" and info is not None:
                p = _with_norm(p, info.nu / math.hypot(1.0, info.nu))
            self._own = p
        return self._own

    def apply(self, v: Any) -> Any:
        return _direction(self.updated, v, self.kind, self.eps, v_is_g=False)


class _Curvature:
    """AdaGram's inverse factor as a :class:`~lowrank_precond.preconditioners.compose.Curvature`.

    Validates the shared arguments once, and picks the implementation of each step:
    ``impl="fused"`` is checked up front (here for the method, in :meth:`init` for the
    backend, dtype and size), ``"auto"`` takes the fused step wherever those hold.
    """

    def __init__(self, rank, integrator, direction, eps, order, tol, factor_dtype, impl, b1):
        self.rank = None if rank is None else check_int("rank", rank, minimum=1)
        self.direction = check_in("direction", direction, DIRECTIONS)
        self.eps = check_eps("eps", eps)
        order = check_in("order", check_int("order", order), (1, 2))
        tol = check_positive("tol", tol, allow_zero=True)
        self.integrator = _resolve_integrator(integrator, order, tol)
        self.factor_dtype = check_factor_dtype("factor_dtype", factor_dtype)
        self.impl = check_in("impl", impl, IMPLS)
        # only the truncated KSL step of the gradient's own direction has a fused form
        why = None
        if self.integrator != ProjectorSplitting(order=1):
            why = "the fused step is the KSL step: integrator='projector_splitting', order=1"
        elif self.direction not in ("published", "symmetric"):
            why = "the fused step computes the 'published' or 'symmetric' direction"
        elif self.rank is None:
            why = "the fused step advances a truncated factor: rank must be an int"
        elif b1 > 0.0:
            why = "the fused step computes the gradient's own direction, not the moment's"
        if why is not None and self.impl == "fused":
            raise ValueError(f"impl: 'fused' cannot run: {why}")
        self.fused = self.impl != "reference" and why is None
        # output buffers of the fused step, recycled once no state or direction uses them
        self.workspace = Workspace()
        self.state_cls, self.momentum_state_cls = AdaGramState, AdamGramState

    def hyperparams(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "integrator": self.integrator,
            "direction": self.direction,
            "eps": self.eps,
            "factor_dtype": self.factor_dtype,
            "impl": self.impl,
        }

    def _available(self, like: Any, d: int, dtype: Any) -> tuple[bool, str]:
        """Whether a fused step can run for arrays like ``like``: the row-blocked one on the
        host, the whole-array one elsewhere (CUDA)."""
        available = ksl_adagram_available if on_host(like) else ksl_adagram_whole_available
        return available(like, d, min(self.rank, d), dtype=dtype, direction=self.direction)

    def init(self, x: Any) -> dict[str, Any]:
        xp = check_param("x", x)
        d = math.prod(x.shape)
        dtype = factor_dtype_for(xp, x.dtype, self.factor_dtype)
        if self.impl == "fused":
            ok, why = self._available(x, d, dtype)
            if not ok:
                raise ValueError(f"impl: 'fused' cannot run for this parameter: {why}")
        fields = _empty_factors(xp, d, dtype, device_of(x))
        fields.update(t=0, sumsq=0.0, last_ratio=0.0)
        return fields

    def flat(self, grad: Any, state: AdaGramState, cast: bool = True) -> Any:
        """``grad`` flattened to ``(d,)`` in the factor dtype (checked against the state)."""
        xp = array_namespace(grad)
        g = flat_grad(grad, int(state.P.shape[0]))
        if not cast:
            return g
        return g if g.dtype == state.P.dtype else xp.astype(g, state.P.dtype)

    def fields(self, state: AdaGramState) -> dict[str, Any]:
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(AdaGramState)}

    #: ``observe(..., overwrite=True)`` may write the new factors into the old ones
    supports_overwrite = True

    #: the fields that hold one row per parameter entry (split by :class:`Shards`)
    row_fields = ("P", "Q", "U", "V")

    def _try_fused(
        self, grad: Any, state: AdaGramState, own: bool, overwrite: bool, shards: Shards | None
    ) -> tuple[dict[str, Any], _View] | str:
        """The fused step's ``(fields, view)``, or the ``last_impl`` of the reference step
        that must run instead."""
        U = state.U
        d = int(U.shape[0]) if shards is None else shards.size
        host = on_host(U)
        if not (self.fused and own and (host or shards is None)):
            return "reference"
        if not self._available(U, d, U.dtype)[0]:
            return "reference"
        if not state.truncated:
            return "reference: warm-up (the fused step needs a truncated factor)"
        # raw flat gradient: the fused step casts it block by block
        g = self.flat(grad, state, cast=False)
        if host:
            res = _fused(state, g, self.eps, self.direction, self.workspace, overwrite, shards)
        else:
            res = _fused_whole(state, g, self.eps, self.direction)
        if isinstance(res, Declined):
            return f"reference: the fused step declined ({res.code}: {res.reason})"
        fields, direction = res
        return fields, _View(None, None, self.direction, self.eps, own=direction)

    def observe_rows(
        self, grad: Any, state: AdaGramState, *, own: bool, shards: Shards, overwrite: bool = False
    ) -> tuple[dict[str, Any], _View] | None:
        """The step on this process's rows only (``None``: it needs the whole vectors);
        see :mod:`lowrank_precond.preconditioners.sharded`."""
        res = self._try_fused(grad, state, own, overwrite, shards)
        return None if isinstance(res, str) else res

    def observe(self, grad: Any, state: AdaGramState, *, own: bool, overwrite: bool = False):
        impl = self._try_fused(grad, state, own, overwrite, None)
        if not isinstance(impl, str):
            return impl
        g = self.flat(grad, state)
        d = int(g.shape[0])
        # the state's own d bounds the rank: with d <= rank, rank d is exact
        rank = None if self.rank is None else min(self.rank, d)
        xp = array_namespace(g)
        integrate = _make_integrator(self.integrator, rank or d, xp)
        updated, fields = _advance(xp, state, g, rank=rank, integrate=integrate, eps=self.eps)
        if fields is not None:
            fields["last_impl"] = impl
        return fields, _View(updated, g, self.direction, self.eps)


_ARGS_DOC = """
    rank : int >= 1 or None
        ``None``: exact, growing ``M = P Q^T`` (memory ``2 d t``, O(d t) per step: for short
        runs and tests; never the default). An int ``r``: exact growth for the first ``r``
        accepted steps, then at the step that would make ``k = r + 1`` the exact state is
        converted with ``recompress(P Q^T, r)`` and from then on the integrator advances
        ``U S V^T`` every step (memory ``2 d r``, O(d r^2) per step;
        :ref:`theory-integrators-warmup`). A parameter with ``d <= rank`` uses rank
        ``d``, which is exact.
    integrator : integrator value, name, or callable
        How a rank-``r`` ``M`` absorbs ``x y^T`` (:ref:`theory-integrators-methods`):
        ``ProjectorSplitting(order=1)`` (default; KSL, Lie-Trotter, or Strang with
        ``order=2``), ``TruncatedSVD()`` (best rank-``r`` truncation of ``M + x y^T``) or
        ``BasisUpdateGalerkin(tol=0.0, max_rank=None)`` (BUG; rank-adaptive with ``tol > 0``),
        from :mod:`lowrank_precond.linalg.integrator_types`. A name
        (``"projector_splitting"``, ``"truncated_svd"``, ``"basis_update_galerkin"``) means
        that integrator's default value. A callable ``f(lowrank, x, y) -> LowRank`` is used as
        given (it must keep the rank bounded). Unused when ``rank=None``.
    direction : {"symmetric", "published", "newton"}
        ``"symmetric"`` (default): ``G_t^{-1/2} v``, the true full-matrix AdaGrad step, always
        a descent direction (O(d k^2) per step); ``"published"``: ``L_t^{-1} v`` (AdaGram as
        published, for reproducing the paper; not symmetric, can point uphill [A13]: measured
        on the bundled data at rank 5, 16 of 300 steps uphill on diabetes least squares and 8
        of 300 on digits, against none for ``"symmetric"``, which also reached a lower
        objective on diabetes and digits); ``"newton"``: ``G_t^{-1} v`` (ONS-like, other
        units: own ``lr``).
        Always computed from ``M^+ = M_{t-1} + x y^T`` *before* truncation
        (:ref:`theory-integrators-warmup`).
    eps : float > 0
        ``G_0 = eps I`` (inside the root, the same eps as full-matrix AdaGrad).
    order : {1, 2}
        The older spelling of ``integrator=ProjectorSplitting(order=...)``: only with the name
        ``"projector_splitting"``.
    tol : float >= 0
        The older spelling of ``integrator=BasisUpdateGalerkin(tol=...)``: only with the name
        ``"basis_update_galerkin"``. ``> 0`` keeps the smallest rank ``r1 <= rank`` whose
        discarded singular values have norm ``<= tol`` (for a rank-one increment this equals
        SVD truncation [B07]).
    nonfinite : {"raise", "skip"}
        A gradient with NaN/inf raises ``FloatingPointError`` before touching the state, or
        (``"skip"``) gives a zero direction and the very same state.
    factor_dtype : None, "float32", "float64" (or that dtype object)
        dtype of the stored factor and of the step's arithmetic. ``None``: float64 when the
        parameter is float32, else the parameter's dtype. Directions are cast back to the
        parameter's dtype. Why: ``I - M`` has singular values ``sqrt(eps / lambda_i(G))``
        [A10], so ``g - M g`` cancels and the direction's relative error is about
        ``0.4 u sqrt(lambda_max(G) / eps)`` (``u`` the unit roundoff of the factor dtype) [A15]:
        with a float32 factor (``u = 6e-8``) and ``eps = 1e-8`` that is already ``2e-3`` at
        ``lambda_max = 100``, and tens of percent for the authors' ``eps = 1e-10`` at
        ``lambda_max ~ 1e4``; a float64 factor keeps it below ~1e-9 there, so the float32
        output is then exact to float32 rounding.
        Choose ``"float32"`` only when ``eps >= ~1e-6 lambda_max(G)`` (half the memory).
        It is also the faster choice only for ``direction="published"``: the fused step of
        the symmetric direction needs float64 factors (its principal-angle test resolves
        sines down to 1e-7), so float32 factors send it to the reference path. Measured at
        d = 1e6, r = 5 (published, torch step): 18.8 ms with float32 factors, 23.2 ms with
        float64 ones (``docs/benchmarks.rst``).
    impl : {"auto", "reference", "fused"}
        Which implementation runs a step (as ``foreach=`` / ``fused=`` in ``torch.optim``).
        ``"reference"``: the array-API linear algebra of :mod:`lowrank_precond.linalg`, on
        every backend. ``"fused"``: the truncated KSL step and its direction in three
        row-blocked passes over ``d`` (:mod:`lowrank_precond.linalg.streaming`; same numbers to
        rounding, about 1.5-2x faster at large ``d``) for host arrays (NumPy, torch CPU), and
        off the host (torch CUDA, CuPy) its whole-array form with two host synchronisations
        per step (:mod:`lowrank_precond.linalg.streaming_torch`; its refresh steps, every
        :data:`~lowrank_precond.linalg.streaming.REFRESH_EVERY`, and gradients nearly in
        ``span U`` run the reference step); it needs
        ``integrator="projector_splitting"``, ``order=1``, the published or symmetric
        direction, a finite ``rank``, no momentum, float64
        factors for the symmetric direction and ``d >= 2 rank + 2``, and raises
        ``ValueError`` naming ``impl`` where one of these fails (when the preconditioner or
        its state is created). ``"auto"`` (default) takes the fused step where it can run.
        The warm-up steps before truncation, and steps whose gradient geometry the fused
        kernel leaves to the reference path, run the reference step; ``state.last_impl``
        says which implementation ran the last step.
    shards : Shards, optional
        Split the state over processes by rows (:mod:`lowrank_precond.backends.shards`):
        ``init`` and ``update`` then take this process's rows ``[shards.start,
        shards.stop)`` of the flattened parameter and gradient, and return those rows of the
        direction; the state holds only those rows of its ``(d, k)`` arrays (see
        :mod:`lowrank_precond.preconditioners.sharded` and ``docs/scaling.rst``). Every
        process must call ``update`` together (the steps communicate).
"""


def _fill_doc(func: Any) -> Any:
    """Insert :data:`_ARGS_DOC` (the shared parameters) into ``func``'s docstring."""
    doc = inspect.cleandoc(func.__doc__)
    args = inspect.cleandoc(_ARGS_DOC)
    func.__doc__ = doc.replace("%(adagram_args)s", args)
    return func


# --------------------------------------------------------------------------- adagram


@_fill_doc
def adagram(
    rank: int | None = 5,
    integrator: Any = "projector_splitting",
    direction: str = "symmetric",
    eps: float = 1e-8,
    order: int = 1,
    tol: float = 0.0,
    nonfinite: str = "raise",
    factor_dtype: Any = None,
    impl: str = "auto",
    shards: Shards | None = None,
) -> Preconditioner:
    """AdaGram: full-matrix AdaGrad through a rank-one-updated inverse factor.

    The parameter is flattened to ``d = x.size`` entries. Each accepted step, with the old
    ``M``::

        gbar = eps^{-1/2} (g - M g);  nu = |gbar|;  s = hypot(1, nu);  b = 1 / (s (1 + s))
        M^+ = M + x y^T,   x = b gbar,   y = gbar - M^T gbar                     [A04]
        direction: published  L^{-1} g = gbar / s                               [A05]
                   symmetric  G^{-1/2} g = eps^{-1/2} |I - M^+| g                [A07]
                   newton     G^{-1} g  = eps^{-1/2} (p - M^+^T p),  p = gbar/s  [A08]

    with ``L^{-1} = eps^{-1/2} (I - M^+)`` and ``G = eps I + sum g g^T``. Then ``M^+`` is
    stored exactly or, past the warm-up, truncated to rank ``r`` by ``integrator`` (the
    direction above is always that of ``M^+``, before truncation). ``|published| =
    |symmetric| = nu / s < 1``, so a step never exceeds ``lr`` [A06]. ``g = 0`` (or ``gbar =
    0``) is no step: zero direction, the same state object back [A09].

    Parameters
    ----------
    %(adagram_args)s

    Returns
    -------
    Preconditioner
        ``init(x) -> AdaGramState``; ``update(g, state) -> (direction, AdaGramState)`` with
        the direction in ``g``'s shape, dtype and backend. ``state.last_ratio`` is a free health
        check (``<= 1`` on exact states, :ref:`theory-truncation`);
        ``factor_health(state.factor)`` is the O(d r^2) one.

    Raises
    ------
    ValueError, TypeError
        For a bad argument (the message names it); ``FloatingPointError`` from ``update`` for
        a non-finite gradient with ``nonfinite="raise"``.

    References
    ----------
    AdaGram, arXiv 2508.21106. Lubich & Oseledets 2014 (projector splitting); Ceruti & Lubich
    2022 (BUG). :ref:`theory-adagram`, :ref:`theory-integrators`.

    Examples
    --------
    The exact published and symmetric directions against dense full-matrix formulas:

    >>> import numpy as np
    >>> from lowrank_precond import preconditioners as pc
    >>> rng = np.random.default_rng(0)
    >>> grads = rng.standard_normal((4, 6))
    >>> G, L = 0.1 * np.eye(6), np.sqrt(0.1) * np.eye(6)
    >>> pub = pc.adagram(rank=None, eps=0.1, direction="published")
    >>> sym = pc.adagram(rank=None, eps=0.1)  # exact; the symmetric direction is the default
    >>> s1, s2 = pub.init(np.zeros(6)), sym.init(np.zeros(6))
    >>> for g in grads:
    ...     gbar = np.linalg.solve(L, g)
    ...     L = L @ (np.eye(6) + np.outer(gbar, gbar) / (1 + np.hypot(1, np.linalg.norm(gbar))))
    ...     G += np.outer(g, g)
    ...     p1, s1 = pub.update(g, s1)
    ...     p2, s2 = sym.update(g, s2)
    >>> w, E = np.linalg.eigh(G)
    >>> sym_ref = E @ (E.T @ g / np.sqrt(w))
    >>> bool(np.allclose(p1, np.linalg.solve(L, g))), bool(np.allclose(p2, sym_ref))
    (True, True)
    >>> s1.t, s1.P.shape
    (4, (6, 4))

    With ``rank=2`` the state is truncated after two steps:

    >>> pre = pc.adagram(rank=2, eps=0.1, direction="published")
    >>> state = pre.init(np.zeros(6))
    >>> for g in grads:
    ...     p, state = pre.update(g, state)
    >>> state.truncated, state.U.shape, state.P.shape, bool(np.linalg.norm(p) < 1)
    (True, (6, 2), (6, 0), True)
    """
    curvature = _Curvature(rank, integrator, direction, eps, order, tol, factor_dtype, impl, b1=0.0)
    hyper = curvature.hyperparams()
    hyper["nonfinite"] = nonfinite
    return precondition("adagram", curvature, hyper, shards=shards)


# --------------------------------------------------------------------------- adamgram


@_fill_doc
def adamgram(
    rank: int | None,
    integrator: Any = "projector_splitting",
    direction: str = "symmetric",
    eps: float = 1e-8,
    betas: tuple[float, float] = (0.9, 0.0),
    order: int = 1,
    tol: float = 0.0,
    nonfinite: str = "raise",
    factor_dtype: Any = None,
    impl: str = "auto",
    shards: Shards | None = None,
) -> Preconditioner:
    """AdamGram: AdaGram's preconditioner applied to a bias-corrected first moment.

    Exactly this, per finite gradient ``g`` (flattened, factor dtype)::

        factor:  the AdaGram step of :func:`adagram` with the RAW g: G_t = eps I + sum g g^T,
                 M^+ = M_{t-1} + x y^T (skipped, M^+ = M_{t-1}, when gbar = 0)
        moment:  m = b1 m + (1 - b1) g;   count += 1;   m_hat = m / (1 - b1^count)
        output:  published  L^{-1} m_hat = eps^{-1/2} (m_hat - M^+ m_hat)
                 symmetric  G^{-1/2} m_hat
                 newton     G^{-1} m_hat

    i.e. Adam's first moment (bias-corrected) preconditioned by full-matrix AdaGrad's factor
    in place of Adam's diagonal second moment, the factor being computed from ``M^+`` before
    truncation, as in :func:`adagram`. There is no second-moment EMA (``betas[1]`` must be
    ``0``): the Gram matrix is accumulated exactly as in AdaGram. With ``b1 = 0`` the
    directions equal :func:`adagram`'s (to rounding). A zero gradient is a moment step (``m``
    decays, the direction is the preconditioned ``m_hat``) but no factor step. The moment
    ``m`` is kept in the factor dtype.

    Step bound: ``|L^{-1} v| = |G^{-1/2} v|`` for any ``v``, and on an exact factor
    ``G_t >= G_s`` with ``g_s^T G_s^{-1} g_s < 1`` [A06], so ``m_hat``, a convex combination of
    past gradients, gives ``|published| = |symmetric| < 1`` as in AdaGram. After truncation
    ``G_t >= G_s`` can fail (:ref:`theory-truncation`) and the bound is not guaranteed.

    .. note::
       ``rank`` has no default, and a finite ``rank`` with momentum (``betas[0] > 0``) is
       refused: directions dropped by the truncation revert to the ``eps^{-1/2}`` scale
       :ref:`theory-truncation`, and ``m_hat`` still has
       components along them, so steps jump to ``~|m_hat| / sqrt(eps)`` (measured: step norms
       ~1e4 at ``eps = 1e-8``, d = 40, rank 5; least-squares loss from 1e2 to 1e21..1e26 in 20
       steps at rank 2 and 5). Use ``rank=None`` (exact), or the momentum variant of
       :func:`~lowrank_precond.preconditioners.sketched_adagrad`, whose sketch never drops
       curvature below the exact one. With ``betas[0] = 0`` any rank works (it is
       :func:`adagram`).

    Parameters
    ----------
    %(adagram_args)s
    betas : (float, float)
        ``(b1, 0.0)`` with ``b1`` in ``[0, 1)``: the first-moment decay; ``b2`` must be ``0``
        (there is no second moment to average).

    Returns
    -------
    Preconditioner
        ``init(x) -> AdamGramState``; ``update(g, state) -> (direction, AdamGramState)``.

    References
    ----------
    AdaGram / AdamGram, arXiv 2508.21106; Adam, Kingma & Ba 2015. :ref:`theory-adagram`,
    :ref:`theory-baselines`.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond import preconditioners as pc
    >>> g = np.array([3.0, 4.0])
    >>> pre = pc.adamgram(rank=None, eps=1.0, betas=(0.5, 0.0))
    >>> state = pre.init(np.zeros(2))
    >>> p, state = pre.update(g, state)        # first step: m_hat = g, as AdaGram
    >>> bool(np.allclose(p, g / np.sqrt(26.0)))
    True
    >>> p, state = pre.update(np.zeros(2), state)  # m = g/4, m_hat = m/(1 - 1/4) = g/3
    >>> bool(np.allclose(p, g / (3 * np.sqrt(26.0)))), state.t, state.count
    (True, 1, 2)
    """
    b1, b2 = check_betas("betas", betas)
    curvature = _Curvature(rank, integrator, direction, eps, order, tol, factor_dtype, impl, b1)
    if b2 != 0.0:
        raise ValueError(
            f"betas: AdamGram has no second-moment average (the Gram matrix is accumulated "
            f"exactly, G = eps I + sum g g^T); betas[1] must be 0.0, got {betas[1]!r}"
        )
    if curvature.rank is not None and b1 > 0.0:
        raise ValueError(
            f"rank: AdamGram with a finite rank ({curvature.rank}) and momentum (betas[0] = {b1}) "
            "is unstable: the truncation drops directions that then revert to the "
            "eps^{-1/2} scale, and the momentum still has components along them (measured: "
            "least-squares loss 1e2 -> 1e21..1e26 in 20 steps at rank 2 and 5). Use "
            "rank=None (exact AdamGram, memory 2 d t), sketched_adagrad(rank=..., "
            "betas=(b1, 0.0)) for momentum at a fixed rank, or betas=(0.0, 0.0) (= adagram)"
        )

    hyper = curvature.hyperparams()
    hyper.update(betas=(b1, b2), nonfinite=nonfinite)
    return precondition("adamgram", curvature, hyper, momentum=b1, shards=shards)
