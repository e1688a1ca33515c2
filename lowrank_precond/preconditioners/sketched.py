"""Sketched full-matrix AdaGrad: a rank-r Frequent-Directions sketch of ``sum g g^T``.

The state is the sketch ``G_fd = (eps + rho) I + U diag(sig2) U^T``
(:ref:`theory-sketched-adagrad`): ``U`` ``(d, k <= r)`` orthonormal, ``sig2 >= 0``, and the
escaped mass ``rho`` that Frequent Directions moves to the diagonal, so that
``G_exact <= G_fd <= G_exact + rho I`` (Loewner order, [F02]). The sketch arithmetic lives in
:mod:`lowrank_precond.linalg.sketch`; this module adds the curvature view of it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from lowrank_precond.backends import array_namespace, check_in, check_int, device_of
from lowrank_precond.backends.blocked import Workspace
from lowrank_precond.backends.fused import Declined
from lowrank_precond.backends.shards import Shards
from lowrank_precond.linalg._unchecked import (
    _gram_sketch,
    _gram_sketch_update,
    _sketch_inverse_sqrt_apply,
)
from lowrank_precond.linalg.integrator_types import as_integrator
from lowrank_precond.linalg.sketch import GramSketch
from lowrank_precond.linalg.streaming_sketch import (
    SKETCH_REFRESH_EVERY,
    fd_sketch_available,
    try_fd_sketch_step,
)
from lowrank_precond.preconditioners._common import (
    IMPLS,
    bias_correction,
    check_betas,
    check_bool,
    check_eps,
    check_factor_dtype,
    check_param,
    factor_dtype_for,
    flat_grad,
)
from lowrank_precond.preconditioners.base import Preconditioner, check_statistic
from lowrank_precond.preconditioners.compose import precondition

__all__ = ["IMPLS", "SketchedAdaGradMomentumState", "SketchedAdaGradState", "sketched_adagrad"]


@dataclass
class SketchedAdaGradState:
    """State of :func:`sketched_adagrad` without momentum (flat: ``dataclasses.asdict`` is a
    checkpoint).

    Attributes
    ----------
    t : int
        Number of sketch steps. With ``b2 = 0`` a zero gradient is no step; with the EMA
        (``b2 > 0``) every finite gradient is one (it is the ``t`` of the bias correction
        ``1 - b2^t``).
    U : array, shape (d, k)
        Orthonormal sketch basis, ``k <= rank`` (``k`` grows by one per step until ``rank``).
    sig2 : array, shape (k,)
        Sketched eigenvalues of the accumulated Gram matrix beyond ``rho`` (``>= 0``).
    rho : array, shape ()
        Escaped mass added to the diagonal (a 0-d array, as
        :class:`~lowrank_precond.linalg.GramSketch` stores it).
    last_impl : str
        Which implementation ran the last step: ``"fused"`` (the two-pass Frequent-Directions
        step of :mod:`lowrank_precond.linalg.streaming_sketch`), ``"reference"``, or
        ``"reference: <why>"`` when ``impl="auto"`` or ``"fused"`` wanted the fused step
        and this step could not take it (the sketch still filling, or a gradient the fused
        kernel leaves to the reference path).

    Arrays have the factor dtype (see ``factor_dtype``) and the parameter's device.
    """

    t: int
    U: Any
    sig2: Any
    rho: Any
    last_impl: str = field(default="reference", kw_only=True)

    def verified_fields(self) -> tuple[str, ...]:
        """The array fields that the step which made this state verified finite itself.

        The fused step certifies ``U``, ``sig2``, ``rho``: a NaN or inf in them or in ``g``
        reaches ``U^T g``, ``|g|^2`` or the small core, which it checks, and its outputs are
        bounded combinations of finite ones. Wrappers that check every new state (the
        ``torch.optim`` classes) skip these fields: a read of the ``d x k`` sketch per step.
        """
        return ("U", "sig2", "rho") if self.last_impl == "fused" else ()

    @property
    def sketch(self) -> GramSketch:
        """The stored sum (or EMA, ``b2 > 0``, not bias-corrected) as a ``GramSketch``."""
        return GramSketch(self.U, self.sig2, self.rho)

    @classmethod
    def upgrade_fields(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Read a checkpoint of the earlier layout, which held an empty ``m`` without momentum."""
        data = dict(data)
        if "m" in data and int(data["m"].shape[0]) == 0:
            del data["m"]
        return data


@dataclass
class SketchedAdaGradMomentumState(SketchedAdaGradState):
    """State of :func:`sketched_adagrad` with momentum (``betas[0] > 0``).

    Attributes
    ----------
    count : int
        Number of moment updates (every finite gradient, zeros included): the ``t`` of the
        bias correction ``1 - b1^count``.
    m : array, shape (d,)
        First moment ``b1 m + (1 - b1) g`` (not bias-corrected), in the factor dtype.
    """

    count: int
    m: Any

    @classmethod
    def upgrade_fields(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Read a checkpoint of the earlier layout, whose ``t`` counted every moment step."""
        data = dict(data)
        data.setdefault("count", data.get("t", 0))
        return data


def _integrator_name(integrator: Any) -> str:
    """The name of a sketch integrator given by name or as a value with default options."""
    value = as_integrator(integrator)
    if value != type(value)():
        raise ValueError(
            f"integrator: the sketch's integrators take no options, got {value!r} "
            f"(use {type(value).__name__}() or {value.name!r})"
        )
    return value.name


class _View:
    """:class:`~lowrank_precond.preconditioners.compose.CurvatureView` of one sketch step."""

    def __init__(self, xp: Any, applied: GramSketch | None, g: Any, eps: float, own: Any = None):
        self.xp, self.applied, self.g, self.eps, self._own = xp, applied, g, eps, own

    def own(self) -> Any:
        if self._own is None:
            self._own = self.apply(self.g)
        return self._own

    def apply(self, v: Any) -> Any:
        return _sketch_inverse_sqrt_apply(self.xp, self.applied, v, self.eps)


class _Curvature:
    """The Gram sketch as a :class:`~lowrank_precond.preconditioners.compose.Curvature`."""

    state_cls, momentum_state_cls = SketchedAdaGradState, SketchedAdaGradMomentumState

    def __init__(self, rank, eps, shrink, integrator, b1, b2, factor_dtype, impl):
        self.rank = check_int("rank", rank, minimum=1)
        self.eps = check_eps("eps", eps)
        self.shrink = check_bool("shrink", shrink)
        self.integrator = None if integrator is None else _integrator_name(integrator)
        if integrator is not None and not shrink:
            raise ValueError(f"integrator: {integrator!r} needs shrink=True")
        self.b2 = b2
        self.factor_dtype = check_factor_dtype("factor_dtype", factor_dtype)
        self.impl = check_in("impl", impl, IMPLS)
        why = None
        if self.integrator is not None:
            why = "the fused step is the Frequent-Directions step: integrator=None"
        elif b1 > 0.0:
            why = "the fused step computes the gradient's own direction, not the moment's"
        if why is not None and self.impl == "fused":
            raise ValueError(f"impl: 'fused' cannot run: {why}")
        self.fused = self.impl != "reference" and why is None
        # output buffers of the fused step, recycled once no state or direction uses them
        self.workspace = Workspace()

    def init(self, x: Any) -> dict[str, Any]:
        xp = check_param("x", x)
        d = math.prod(x.shape)
        dtype = factor_dtype_for(xp, x.dtype, self.factor_dtype)
        if self.impl == "fused":
            ok, why = fd_sketch_available(x, d, min(self.rank, d), dtype=dtype)
            if not ok:
                raise ValueError(f"impl: 'fused' cannot run for this parameter: {why}")
        sketch = GramSketch.empty(d, like=xp.zeros((1,), dtype=dtype, device=device_of(x)))
        return {"t": 0, "U": sketch.U, "sig2": sketch.sig2, "rho": sketch.rho}

    def flat(self, grad: Any, state: SketchedAdaGradState) -> Any:
        g = flat_grad(grad, int(state.U.shape[0]))
        dtype = state.U.dtype
        return g if g.dtype == dtype else array_namespace(g).astype(g, dtype)

    def fields(self, state: SketchedAdaGradState) -> dict[str, Any]:
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(SketchedAdaGradState)}

    #: ``observe(..., overwrite=True)`` may write the new sketch into the old one's memory
    supports_overwrite = True

    #: the fields that hold one row per parameter entry (split by :class:`Shards`)
    row_fields = ("U",)

    def _sketch(self, state: SketchedAdaGradState) -> tuple[GramSketch, float]:
        """The sketch that this step feeds (decayed by ``b2``) and its bias correction."""
        b2 = self.b2
        sketch = _gram_sketch(state.U, state.sig2, state.rho)
        if b2 > 0.0:  # EMA: H <- b2 H + (1 - b2) g g^T
            sketch = _gram_sketch(sketch.U, b2 * sketch.sig2, b2 * sketch.rho)
        return sketch, bias_correction(b2, state.t + 1) if b2 > 0.0 else 1.0

    def _try_fused(
        self, g: Any, state: SketchedAdaGradState, own: bool, overwrite: bool,
        shards: Shards | None,
    ) -> tuple[dict[str, Any], _View] | str:  # fmt: skip
        """The fused step's ``(fields, view)`` for the flat ``g``, or the ``last_impl`` of
        the reference step that must run instead."""
        b2, t = self.b2, state.t + 1
        d = int(g.shape[0]) if shards is None else shards.size
        if not (self.fused and own and fd_sketch_available(g, d, min(self.rank, d))[0]):
            return "reference"
        sketch, scale = self._sketch(state)
        if sketch.rank < min(self.rank, d):
            return "reference: the sketch is filling (the fused step needs it full)"
        res = try_fd_sketch_step(
            sketch,
            g,
            self.eps,
            shrink=self.shrink,
            feed_scale=math.sqrt(1.0 - b2) if b2 > 0.0 else 1.0,
            apply_scale=scale,
            refresh=t % SKETCH_REFRESH_EVERY == 0,
            workspace=self.workspace,
            overwrite=overwrite,
            shards=shards,
        )
        if isinstance(res, Declined):
            return f"reference: the fused step declined ({res.code}: {res.reason})"
        new = res.sketch
        check_statistic("sig2", new.sig2)
        check_statistic("rho", new.rho)
        fields = {"t": t, "U": new.U, "sig2": new.sig2, "rho": new.rho, "last_impl": "fused"}
        return fields, _View(array_namespace(g), None, g, self.eps, res.direction)

    def observe_rows(
        self, grad: Any, state: SketchedAdaGradState, *, own: bool, shards: Shards,
        overwrite: bool = False,
    ) -> tuple[dict[str, Any], _View] | None:  # fmt: skip
        """The step on this process's rows only (``None``: it needs the whole vectors);
        see :mod:`lowrank_precond.preconditioners.sharded`."""
        res = self._try_fused(self.flat(grad, state), state, own, overwrite, shards)
        return None if isinstance(res, str) else res

    def observe(
        self, grad: Any, state: SketchedAdaGradState, *, own: bool, overwrite: bool = False
    ):
        b2, t = self.b2, state.t + 1
        g = self.flat(grad, state)
        d = int(g.shape[0])
        xp = array_namespace(g)
        impl = self._try_fused(g, state, own, overwrite, None)
        if not isinstance(impl, str):
            return impl
        sketch, scale = self._sketch(state)
        fed = _gram_sketch_update(
            xp,
            sketch,
            math.sqrt(1.0 - b2) * g if b2 > 0.0 else g,
            min(self.rank, d),
            shrink=self.shrink,
            integrator=self.integrator,
        )
        if fed is sketch and b2 == 0.0:  # g = 0 and no EMA: no sketch step
            return None, _View(xp, sketch, g, self.eps)
        check_statistic("sig2", fed.sig2)
        check_statistic("rho", fed.rho)
        applied = fed if scale == 1.0 else _gram_sketch(fed.U, fed.sig2 / scale, fed.rho / scale)
        fields = {"t": t, "U": fed.U, "sig2": fed.sig2, "rho": fed.rho, "last_impl": impl}
        return fields, _View(xp, applied, g, self.eps)


def sketched_adagrad(
    rank: int = 5,
    eps: float = 1e-8,
    shrink: bool = True,
    integrator: Any = None,
    betas: tuple[float, float] = (0.0, 0.0),
    nonfinite: str = "raise",
    factor_dtype: Any = None,
    impl: str = "auto",
    shards: Shards | None = None,
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
    integrator : None, or an integrator name or value with its default options
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
    impl : {"auto", "reference", "fused"}
        Which implementation runs a step (as ``foreach=`` / ``fused=`` in ``torch.optim``).
        ``"reference"``: the array-API linear algebra of :mod:`lowrank_precond.linalg`, on
        every backend. ``"fused"``: the full sketch's Frequent-Directions step fused with its
        direction in two row-blocked passes over ``d``
        (:mod:`lowrank_precond.linalg.streaming_sketch`; same numbers to rounding); it needs
        ``integrator=None``, no momentum (``betas[0] = 0``), a NumPy array or a torch CPU
        tensor and ``d >= rank + 2``, and raises ``ValueError`` naming ``impl`` where one of
        these fails (when the preconditioner or its state is created). ``"auto"`` (default)
        takes the fused step where it can run. The first ``rank`` steps (the sketch filling)
        run the reference step; ``state.last_impl`` says which implementation ran the last
        step.
    shards : Shards, optional
        Split the state over processes by rows (:mod:`lowrank_precond.backends.shards`):
        ``init`` and ``update`` then take this process's rows ``[shards.start,
        shards.stop)`` of the flattened parameter and gradient, and return those rows of the
        direction; the state holds only those rows of its ``(d, k)`` arrays (see
        :mod:`lowrank_precond.preconditioners.sharded` and ``docs/scaling.rst``). Every
        process must call ``update`` together (the steps communicate).

    Returns
    -------
    Preconditioner
        ``init(x) -> SketchedAdaGradState`` (``SketchedAdaGradMomentumState`` with momentum);
        ``update(g, state) -> (direction, state)`` with the direction in ``g``'s shape, dtype
        and backend. With ``betas = (0, 0)`` a zero gradient returns a zero direction and the
        same state object.

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
    b1, b2 = check_betas("betas", betas)
    curvature = _Curvature(rank, eps, shrink, integrator, b1, b2, factor_dtype, impl)
    hyper = {
        "rank": curvature.rank,
        "eps": curvature.eps,
        "shrink": curvature.shrink,
        "integrator": curvature.integrator,
        "betas": (b1, b2),
        "nonfinite": nonfinite,
        "factor_dtype": curvature.factor_dtype,
        "impl": curvature.impl,
    }
    return precondition("sketched_adagrad", curvature, hyper, momentum=b1, shards=shards)
