"""``torch.optim.Optimizer`` classes backed by the preconditioners of this package.

``from lowrank_precond.torch import AdaGram`` (the public alias of this module). Every class
is the same generic :class:`PreconditionedOptimizer` with its own defaults and factory from
:mod:`lowrank_precond.preconditioners`; the math lives in the factory, this module only
reshapes, keeps the state and applies ``x <- x (1 - lr wd) - lr * direction``.

==========================  ========================  ===============================
class                       preconditioner (factory)  what one preconditioner spans
==========================  ========================  ===============================
:class:`AdaGram`            ``adagram``               the whole param group (default)
:class:`AdamGram`           ``adamgram``              the whole param group (default)
:class:`SketchedAdaGrad`    ``sketched_adagrad``      the whole param group (default)
:class:`FullMatrixAdaGrad`  ``full_matrix_adagrad``   the whole param group (default)
:class:`AdaDiag`            ``adadiag``               each parameter (as a matrix)
:class:`ASGO`               ``asgo``                  each parameter (as a matrix)
:class:`AdaGrad`            ``adagrad``               each parameter (elementwise)
:class:`Adam`               ``adam``                  each parameter (elementwise)
==========================  ========================  ===============================

Rules shared by every class (details in :class:`PreconditionedOptimizer`):

* **Groups.** Every hyper-parameter may differ per param group; each group gets its own
  preconditioner(s), built (and validated) when the group is added.
* **Group-spanning.** The vector methods (AdaGram, AdamGram, SketchedAdaGrad,
  FullMatrixAdaGrad) by default flatten all gradients of a group and concatenate them into one
  vector ``g`` (parameter order), which is what makes them full-matrix across parameters; the
  direction is split back into per-parameter views. ``per_parameter=True`` gives one
  preconditioner per parameter instead.
* **Missing gradients.** A parameter whose ``.grad`` is ``None`` is not updated at all (no
  direction, no weight decay), like ``torch.optim``. In a group-spanning preconditioner its
  block of ``g`` is zero, so the vector keeps its length; a group in which every gradient is
  ``None`` is skipped entirely (the preconditioner's state is not touched).
* **Weight decay** is decoupled (AdamW-style): ``x <- x (1 - lr wd) - lr * direction``.
* **maximize** negates the gradients before they reach the preconditioner.
* **Non-finite gradients** are checked for every group before anything is changed:
  ``nonfinite="raise"`` (default) raises ``FloatingPointError`` and the step changes no
  parameter and no state (in any group); ``"skip"`` skips that group for this step (parameters,
  state and weight decay untouched) while the other groups step normally.
* **Atomic steps.** All directions of a step are computed before any parameter or state is
  written, so an exception in the middle of :meth:`~PreconditionedOptimizer.step` leaves the
  optimizer and the model as they were.
* **State.** The preconditioner's state (a flat dataclass) is kept as a dict of its fields in
  ``optimizer.state[p]`` where ``p`` is the parameter it belongs to -- for a group-spanning
  preconditioner the group's *first* parameter. So ``state_dict()`` / ``load_state_dict()``
  need no custom format, and a run continued from a checkpoint is bit-identical. Unlike
  ``torch.optim``, :meth:`~PreconditionedOptimizer.load_state_dict` keeps the dtype that each
  floating state tensor was saved with (a float64 factor of float32 parameters stays float64);
  tensors are moved to their parameter's device.

References: ALGORITHMS.md sections A-F; DESIGN.md ("torch.optim" wrappers).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from lowrank_precond import preconditioners as pc
from lowrank_precond.backends import check_positive
from lowrank_precond.preconditioners.base import Preconditioner, state_from_dict, state_to_dict

__all__ = [
    "ASGO",
    "AdaDiag",
    "AdaGrad",
    "AdaGram",
    "Adam",
    "AdamGram",
    "FullMatrixAdaGrad",
    "PreconditionedOptimizer",
    "SketchedAdaGrad",
]

#: group keys owned by the optimizer itself (everything else goes to the factory)
_OWN_KEYS = ("lr", "weight_decay", "maximize", "per_parameter")

#: factory -> its parameters (inspect.signature is not free; it is asked every step)
_SIGNATURES: dict[Any, dict[str, inspect.Parameter]] = {}

#: how a parameter is shown to its preconditioner
_LAYOUTS = ("vector", "matrix", "elementwise")


@dataclass
class _GroupCache:
    """The preconditioner built from one group's hyper-parameters (rebuilt when they change)."""

    hyperparams: dict[str, Any]
    pre: Preconditioner
    # id(state-key parameter) -> the state's dataclass type (learnt from ``init``)
    state_types: dict[int, type] = field(default_factory=dict)


@dataclass
class _Unit:
    """One application of a preconditioner in a step."""

    key: torch.Tensor  # the parameter whose ``self.state`` entry holds the state
    grad: torch.Tensor  # the preconditioner's input (layout applied, maximize applied)
    targets: list[tuple[torch.Tensor, int]]  # (parameter, index of its block) to update
    blocks: list[int] | None  # sizes of the blocks of a group-spanning vector, else None
    init_input: Callable[[], torch.Tensor]  # the parameter(s) in the preconditioner's layout


class _KeepDtype:
    """Hides a state tensor from ``Optimizer.load_state_dict``'s cast to the param dtype."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


def _matrix_view(t: torch.Tensor) -> torch.Tensor:
    if t.ndim == 0:
        return t.reshape(1)
    if t.ndim <= 2:
        return t
    return t.reshape(t.shape[0], -1)


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")


class PreconditionedOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that steps ``x <- x (1 - lr wd) - lr * direction``.

    ``direction`` comes from a preconditioner of :mod:`lowrank_precond.preconditioners`
    (``update(grad, state) -> (direction, state)``) built, for each param group, by the
    class's :attr:`factory` from the group's hyper-parameters. Subclasses only declare
    :attr:`factory`, :attr:`layout` and an ``__init__`` with their defaults; this base class
    does the rest (groups, validation, state, closures, checkpoints).

    Parameters
    ----------
    params : iterable of Tensor or of dict
        Parameters or param groups (dicts with ``"params"`` and any hyper-parameter to
        override for that group).
    lr : float, >= 0
        Learning rate.
    weight_decay : float, >= 0
        Decoupled weight decay (AdamW-style): ``x <- x (1 - lr * weight_decay)`` before the
        preconditioned step, only for parameters that have a gradient and are stepped.
    maximize : bool
        Maximize the objective: the gradients are negated before the preconditioner sees them.
    per_parameter : bool or None
        ``layout == "vector"`` only: ``False`` makes one preconditioner span the whole group
        (all gradients flattened and concatenated, parameter order; the group's parameters
        must then share one dtype and one device); ``True``: one preconditioner per parameter
        (its gradient flattened). ``None``: the class's :attr:`default_per_parameter`. Other
        layouts always act per parameter.
    **hyperparams
        Arguments of :attr:`factory` (each may also be set per group); the ones not given take
        the factory's defaults. Every group is validated when it is added (the factory's own
        checks: ``ValueError``/``TypeError`` naming the argument).

    Attributes
    ----------
    factory : str or callable
        Name of a factory in :mod:`lowrank_precond.preconditioners` or a callable returning a
        :class:`~lowrank_precond.preconditioners.base.Preconditioner` (assign it with
        ``staticmethod``). It must accept a ``nonfinite`` argument.
    layout : {"vector", "matrix", "elementwise"}
        How a parameter is shown to the preconditioner: flattened (``"vector"``); as a matrix
        (``"matrix"``: 1-D and 2-D as they are, a 0-D as a 1-element vector, ``k > 2`` dims
        as ``(shape[0], prod(shape[1:]))``, e.g. a conv kernel as ``(out, in*kh*kw)``); or as
        it is (``"elementwise"``).

    Notes
    -----
    Parameters without a gradient, missing gradients in a group-spanning preconditioner,
    non-finite gradients, atomicity and the state layout follow the rules in the module
    docstring of :mod:`lowrank_precond.optim.torch`. Sparse gradients raise ``RuntimeError``.
    Between steps the state of a preconditioner is ``optimizer.state[p]``: a dict of its state
    dataclass's fields, for ``p`` its parameter (group-spanning: the group's first parameter).

    Examples
    --------
    >>> import torch
    >>> from lowrank_precond.torch import AdaGram
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Linear(3, 1)
    >>> opt = AdaGram(model.parameters(), lr=0.1, rank=2)
    >>> X, y = torch.randn(32, 3), torch.randn(32, 1)
    >>> def closure():
    ...     opt.zero_grad()
    ...     loss = torch.nn.functional.mse_loss(model(X), y)
    ...     loss.backward()
    ...     return loss
    >>> first = opt.step(closure).item()
    >>> for _ in range(50):
    ...     last = opt.step(closure).item()
    >>> last < first
    True
    >>> sorted(opt.state[model.weight])  # one state for the group, kept at its first param
    ['P', 'Q', 'S', 'U', 'V', 'last_rho', 'sumsq', 't']
    """

    factory: ClassVar[str | Callable[..., Preconditioner]] = ""
    layout: ClassVar[str] = "vector"
    default_per_parameter: ClassVar[bool] = False

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        *,
        weight_decay: float = 0.0,
        maximize: bool = False,
        per_parameter: bool | None = None,
        **hyperparams: Any,
    ) -> None:
        if self.layout not in _LAYOUTS:
            raise TypeError(f"{type(self).__name__}.layout: expected one of {_LAYOUTS}")
        names = self._factory_arguments()
        unknown = sorted(set(hyperparams) - set(names))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: unexpected argument(s) {unknown}; the preconditioner "
                f"accepts {list(names)} plus {list(_OWN_KEYS)}"
            )
        defaults: dict[str, Any] = {}
        for name, param in names.items():
            if name in hyperparams:
                defaults[name] = hyperparams[name]
            elif param.default is not inspect.Parameter.empty:
                defaults[name] = param.default
            else:
                raise TypeError(f"{type(self).__name__}: missing required argument {name!r}")
        if per_parameter is None:
            per_parameter = self.default_per_parameter if self.layout == "vector" else True
        defaults.update(
            lr=lr, weight_decay=weight_decay, maximize=maximize, per_parameter=per_parameter
        )
        self._cache: dict[int, _GroupCache] = {}
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ construction
    @classmethod
    def _factory(cls) -> Callable[..., Preconditioner]:
        f = cls.factory
        if isinstance(f, str):
            if not f:
                raise TypeError(f"{cls.__name__}: no preconditioner factory declared")
            return pc.get(f)
        return f

    @classmethod
    def _factory_arguments(cls) -> dict[str, inspect.Parameter]:
        factory = cls._factory()
        cached = _SIGNATURES.get(factory)
        if cached is not None:
            return cached
        params = dict(inspect.signature(factory).parameters)
        clash = sorted(set(params) & set(_OWN_KEYS))
        if clash or "nonfinite" not in params:
            raise TypeError(
                f"{cls.__name__}: the factory must accept 'nonfinite' and none of {_OWN_KEYS}"
            )
        _SIGNATURES[factory] = params
        return params

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (filled with the defaults) and validate all of its settings.

        Raises ``ValueError``/``TypeError`` naming the bad argument; the group is then not
        added.
        """
        super().add_param_group(param_group)
        try:
            self._validate_group(self.param_groups[-1], len(self.param_groups) - 1)
        except Exception:
            self.param_groups.pop()
            raise

    def _validate_group(self, group: dict[str, Any], index: int) -> None:
        name = type(self).__name__
        check_positive("lr", group["lr"], allow_zero=True)
        check_positive("weight_decay", group["weight_decay"], allow_zero=True)
        _check_bool("maximize", group["maximize"])
        _check_bool("per_parameter", group["per_parameter"])
        if self.layout != "vector" and not group["per_parameter"]:
            raise ValueError(f"per_parameter: {name} acts on each parameter separately; got False")
        for p in group["params"]:
            if not p.is_floating_point():
                raise TypeError(
                    f"params: {name} needs real floating-point parameters, got {p.dtype}"
                )
        if self._spans_group(group) and group["params"]:
            kinds = {(p.dtype, p.device) for p in group["params"]}
            if len(kinds) > 1:
                raise ValueError(
                    f"per_parameter: a group-spanning {name} concatenates the group's gradients, "
                    f"so its parameters must share one dtype and device (group {index} has "
                    f"{sorted(str(k) for k in kinds)}); split the group or pass "
                    "per_parameter=True"
                )
        try:
            self._preconditioner(group)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{exc} (parameter group {index})") from exc

    def _spans_group(self, group: dict[str, Any]) -> bool:
        return self.layout == "vector" and not group["per_parameter"]

    def _preconditioner(self, group: dict[str, Any]) -> _GroupCache:
        """The group's preconditioner, rebuilt whenever its hyper-parameters changed."""
        hyper = {k: group[k] for k in self._factory_arguments()}
        entry = self._cache.get(id(group))
        if entry is None or entry.hyperparams != hyper:
            entry = _GroupCache(dict(hyper), self._factory()(**hyper))
            self._cache[id(group)] = entry
        return entry

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._cache = {}  # groups are new dicts (load_state_dict, unpickling)

    # ------------------------------------------------------------------ step
    def _view(self, t: torch.Tensor) -> torch.Tensor:
        if self.layout == "vector":
            return t.reshape(-1)
        if self.layout == "matrix":
            return _matrix_view(t)
        return t

    def _units(self, group: dict[str, Any]) -> list[_Unit]:
        params = group["params"]
        name = type(self).__name__
        for p in params:
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError(f"{name} does not support sparse gradients")
        if self._spans_group(group):
            grads = [p.grad for p in params]
            if all(g is None for g in grads):
                return []
            flat = torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for p, g in zip(params, grads, strict=True)
                ]
            )
            if group["maximize"]:
                flat.neg_()
            targets = [(p, i) for i, p in enumerate(params) if p.grad is not None]
            return [
                _Unit(
                    key=params[0],
                    grad=flat,
                    targets=targets,
                    blocks=[p.numel() for p in params],
                    init_input=lambda: torch.cat([p.detach().reshape(-1) for p in params]),
                )
            ]
        units = []
        for p in params:
            if p.grad is None:
                continue
            g = self._view(p.grad)
            if group["maximize"]:
                g = torch.neg(g)
            units.append(
                _Unit(
                    key=p,
                    grad=g,
                    targets=[(p, 0)],
                    blocks=None,
                    init_input=lambda p=p: self._view(p.detach()),
                )
            )
        return units

    @staticmethod
    def _all_finite(tensors: list[torch.Tensor]) -> bool:
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for t in tensors:
            by_device.setdefault(t.device, []).append(torch.isfinite(t).all())
        return all(bool(torch.stack(flags).all()) for flags in by_device.values())

    def _load_state(self, entry: _GroupCache, unit: _Unit) -> Any:
        fields = self.state.get(unit.key)  # .get: a failed step must not leave an empty entry
        if not fields:
            state = entry.pre.init(unit.init_input())
            entry.state_types[id(unit.key)] = type(state)
            return state
        cls = entry.state_types.get(id(unit.key))
        if cls is None:  # after load_state_dict: learn the state's type from init once
            cls = type(entry.pre.init(unit.init_input()))
            entry.state_types[id(unit.key)] = cls
        return state_from_dict(cls, fields)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Do one optimization step; return the closure's loss (``None`` without a closure).

        ``closure`` (re-evaluates the model and returns the loss) runs under
        ``torch.enable_grad()``; the step itself runs under ``torch.no_grad()``.

        Raises
        ------
        FloatingPointError
            A group with ``nonfinite="raise"`` has a NaN/inf gradient; nothing was changed.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # 1. gather every group's inputs and check them before touching anything
        work = []
        for index, group in enumerate(self.param_groups):
            units = self._units(group)
            if not units:
                continue
            if not self._all_finite([u.grad for u in units]):
                if group["nonfinite"] == "skip":
                    continue
                raise FloatingPointError(
                    f"grad: NaN or inf in the gradients of parameter group {index}; no "
                    "parameter or optimizer state was changed (pass nonfinite='skip' to "
                    "skip such steps)"
                )
            work.append((group, self._preconditioner(group), units))

        # 2. compute every direction and new state (pure: nothing is written yet)
        results = []
        for group, entry, units in work:
            for unit in units:
                direction, new_state = entry.pre.update(unit.grad, self._load_state(entry, unit))
                results.append((group, unit, direction, new_state))

        # 3. commit
        for group, unit, direction, new_state in results:
            self.state[unit.key] = state_to_dict(new_state)
            lr, wd = group["lr"], group["weight_decay"]
            chunks = direction.split(unit.blocks) if unit.blocks is not None else (direction,)
            for p, i in unit.targets:
                d = chunks[i].reshape(p.shape)
                if d.dtype != p.dtype:
                    d = d.to(p.dtype)
                if wd != 0:
                    p.mul_(1.0 - lr * wd)
                p.add_(d, alpha=-lr)
        return loss

    # ------------------------------------------------------------------ checkpoints
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`, keeping each floating state tensor's saved dtype.

        ``torch.optim.Optimizer.load_state_dict`` casts floating state tensors to their
        parameter's dtype, which would round a float64 factor kept for float32 parameters
        (``factor_dtype``) and break bit-identical continuation; here they keep their dtype
        and are copied to their parameter's device.
        """
        state_dict = dict(state_dict)
        state_dict["state"] = {
            k: (
                {
                    key: _KeepDtype(v)
                    if isinstance(v, torch.Tensor) and v.is_floating_point()
                    else v
                    for key, v in fields.items()
                }
                if isinstance(fields, dict)
                else fields
            )
            for k, fields in state_dict["state"].items()
        }
        super().load_state_dict(state_dict)
        for key, fields in self.state.items():
            if not isinstance(fields, dict):
                continue
            device = key.device if isinstance(key, torch.Tensor) else None
            for name, v in list(fields.items()):
                if isinstance(v, _KeepDtype):
                    t = v.tensor
                    fields[name] = t.to(device=t.device if device is None else device, copy=True)


# ---------------------------------------------------------------------------- the classes
_COMMON_DOC = """
    weight_decay : float, >= 0
        Decoupled weight decay: ``x <- x (1 - lr * weight_decay) - lr * direction``.
    maximize : bool
        Maximize instead of minimize (the gradient is negated).
    nonfinite : {"raise", "skip"}
        A NaN/inf gradient raises ``FloatingPointError`` with nothing changed, or (``"skip"``)
        skips the group's step (parameters, state and weight decay untouched)."""

_SPAN_DOC = """
    per_parameter : bool
        ``False`` (default): one preconditioner spans the whole param group (the gradients
        flattened and concatenated: full-matrix across parameters; the group's parameters must
        share dtype and device). ``True``: one per parameter."""


class AdaGram(PreconditionedOptimizer):
    factory = "adagram"
    layout = "vector"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        *,
        rank: int | None = None,
        integrator: Any = "projector_splitting",
        direction: str = "published",
        eps: float = 1e-8,
        order: int = 1,
        tol: float = 0.0,
        factor_dtype: Any = None,
        weight_decay: float = 0.0,
        maximize: bool = False,
        per_parameter: bool = False,
        nonfinite: str = "raise",
    ) -> None:
        super().__init__(
            params,
            lr,
            weight_decay=weight_decay,
            maximize=maximize,
            per_parameter=per_parameter,
            rank=rank,
            integrator=integrator,
            direction=direction,
            eps=eps,
            order=order,
            tol=tol,
            factor_dtype=factor_dtype,
            nonfinite=nonfinite,
        )


AdaGram.__doc__ = (
    """AdaGram (arXiv 2508.21106): full-matrix AdaGrad through a rank-one-updated inverse factor.

    ``direction`` is :func:`lowrank_precond.preconditioners.adagram`'s (ALGORITHMS.md A, B):
    with the default ``direction="published"`` it is ``L_t^{-1} g_t`` with ``L_t L_t^T = eps I
    + sum g g^T``, of norm ``< 1``, so a step moves the parameters by less than ``lr``.
    ``rank=None`` keeps the exact factor (memory grows by ``2 d`` per step: short runs only);
    ``rank=r`` keeps ``2 d r`` numbers. No ``d x d`` tensor is ever formed.

    Parameters
    ----------
    params : iterable of Tensor or of dict
        Parameters or param groups (any argument below can be overridden per group).
    lr : float, >= 0
        Learning rate (the step length bound for ``direction="published"``).
    rank, integrator, direction, eps, order, tol, factor_dtype
        As in :func:`lowrank_precond.preconditioners.adagram`. ``factor_dtype=None`` keeps a
        float64 factor for float32 parameters (A.6); checkpoints keep that dtype."""
    + _SPAN_DOC
    + _COMMON_DOC
    + """

    See Also
    --------
    PreconditionedOptimizer : the shared rules (groups, state, checkpoints).

    Examples
    --------
    >>> import torch
    >>> from lowrank_precond.torch import AdaGram
    >>> x = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    >>> opt = AdaGram([x], lr=0.1, rank=5, eps=1e-8)
    >>> x.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    >>> _ = opt.step()  # the first step is lr * g / sqrt(eps + |g|^2): length < lr
    >>> bool(torch.allclose(x, -0.1 * x.grad / (1e-8 + 25.0) ** 0.5, rtol=1e-14))
    True
    >>> opt.state[x]["P"].shape, opt.state[x]["U"].shape  # exact until rank steps
    (torch.Size([2, 1]), torch.Size([2, 0]))
    """
)


class AdamGram(PreconditionedOptimizer):
    factory = "adamgram"
    layout = "vector"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        *,
        rank: int | None = None,
        integrator: Any = "projector_splitting",
        direction: str = "published",
        eps: float = 1e-8,
        betas: tuple[float, float] = (0.9, 0.0),
        order: int = 1,
        tol: float = 0.0,
        factor_dtype: Any = None,
        weight_decay: float = 0.0,
        maximize: bool = False,
        per_parameter: bool = False,
        nonfinite: str = "raise",
    ) -> None:
        super().__init__(
            params,
            lr,
            weight_decay=weight_decay,
            maximize=maximize,
            per_parameter=per_parameter,
            rank=rank,
            integrator=integrator,
            direction=direction,
            eps=eps,
            betas=betas,
            order=order,
            tol=tol,
            factor_dtype=factor_dtype,
            nonfinite=nonfinite,
        )


AdamGram.__doc__ = (
    """AdamGram: AdaGram's factor applied to Adam's bias-corrected first moment.

    ``direction`` is :func:`lowrank_precond.preconditioners.adamgram`'s: the factor is
    AdaGram's (built from the raw gradients), applied to ``m / (1 - b1^t)`` with ``m = b1 m +
    (1 - b1) g``. ``betas=(0.0, 0.0)`` gives AdaGram's iterates.

    Parameters
    ----------
    params : iterable of Tensor or of dict
        Parameters or param groups (any argument below can be overridden per group).
    lr : float, >= 0
        Learning rate.
    rank, integrator, direction, eps, betas, order, tol, factor_dtype
        As in :func:`lowrank_precond.preconditioners.adamgram` (``betas[1]`` must be 0)."""
    + _SPAN_DOC
    + _COMMON_DOC
    + """

    See Also
    --------
    AdaGram, PreconditionedOptimizer

    Examples
    --------
    >>> import torch
    >>> from lowrank_precond.torch import AdamGram
    >>> x = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    >>> opt = AdamGram([x], lr=0.1, rank=2, betas=(0.5, 0.0))
    >>> x.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    >>> _ = opt.step()
    >>> sorted(opt.state[x])[:2]
    ['P', 'Q']
    """
)


class SketchedAdaGrad(PreconditionedOptimizer):
    factory = "sketched_adagrad"
    layout = "vector"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        *,
        rank: int = 5,
        eps: float = 1e-8,
        shrink: bool = True,
        integrator: Any = None,
        betas: tuple[float, float] = (0.0, 0.0),
        weight_decay: float = 0.0,
        maximize: bool = False,
        per_parameter: bool = False,
        nonfinite: str = "raise",
    ) -> None:
        super().__init__(
            params,
            lr,
            weight_decay=weight_decay,
            maximize=maximize,
            per_parameter=per_parameter,
            rank=rank,
            eps=eps,
            shrink=shrink,
            integrator=integrator,
            betas=betas,
            nonfinite=nonfinite,
        )


SketchedAdaGrad.__doc__ = (
    """Full-matrix AdaGrad with a rank-``r`` Frequent-Directions sketch of the Gram matrix.

    ``direction`` is :func:`lowrank_precond.preconditioners.sketched_adagrad`'s
    (ALGORITHMS.md F): ``G_fd^{-1/2} g`` with ``G_fd = (eps + rho) I + U diag(sig2) U^T``, a
    rank-``r`` sketch of ``sum g g^T`` whose discarded mass ``rho`` is added back to the
    diagonal, so ``G_exact <= G_fd <= G_exact + rho I``. Memory ``d r``, O(d r) per step.

    Parameters
    ----------
    params : iterable of Tensor or of dict
        Parameters or param groups (any argument below can be overridden per group).
    lr : float, >= 0
        Learning rate.
    rank, eps, shrink, integrator, betas
        As in :func:`lowrank_precond.preconditioners.sketched_adagrad`."""
    + _SPAN_DOC
    + _COMMON_DOC
    + """

    See Also
    --------
    FullMatrixAdaGrad, PreconditionedOptimizer

    Examples
    --------
    >>> import torch
    >>> from lowrank_precond.torch import SketchedAdaGrad
    >>> x = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    >>> opt = SketchedAdaGrad([x], lr=0.5, rank=2)
    >>> for _ in range(200):
    ...     opt.zero_grad()
    ...     (x * x).sum().backward()
    ...     _ = opt.step()
    >>> bool(x.norm() < 1e-2)
    True
    """
)


class FullMatrixAdaGrad(PreconditionedOptimizer):
    factory = "full_matrix_adagrad"
    layout = "vector"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        *,
        eps: float = 1e-8,
        max_dim: int = 4096,
        weight_decay: float = 0.0,
        maximize: bool = False,
        per_parameter: bool = False,
        nonfinite: str = "raise",
    ) -> None:
        super().__init__(
            params,
            lr,
            weight_decay=weight_decay,
            maximize=maximize,
            per_parameter=per_parameter,
            eps=eps,
            max_dim=max_dim,
            nonfinite=nonfinite,
        )


FullMatrixAdaGrad.__doc__ = (
    """Dense full-matrix AdaGrad (the exact baseline; ``d x d`` memory, O(d^3) per step).

    ``direction = (eps I + sum g g^T)^{-1/2} g`` from
    :func:`lowrank_precond.preconditioners.full_matrix_adagrad` (ALGORITHMS.md E). For a
    group-spanning preconditioner ``d`` is the total size of the group; the first step raises
    ``ValueError`` when ``d > max_dim`` (use :class:`AdaGram` or :class:`SketchedAdaGrad`).

    Parameters
    ----------
    params : iterable of Tensor or of dict
        Parameters or param groups (any argument below can be overridden per group).
    lr : float, >= 0
        Learning rate.
    eps, max_dim
        As in :func:`lowrank_precond.preconditioners.full_matrix_adagrad`."""
    + _SPAN_DOC
    + _COMMON_DOC
    + """

    See Also
    --------
    SketchedAdaGrad, AdaGram, PreconditionedOptimizer

    Examples
    --------
    >>> import torch
    >>> from lowrank_precond.torch import FullMatrixAdaGrad
    >>> x = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    >>> opt = FullMatrixAdaGrad([x], lr=1.0, eps=1e-12)
    >>> x.grad = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)
    >>> _ = opt.step()  # first step: g / |g|
    >>> [round(v, 8) for v in x.tolist()]
    [-0.33333333, -0.66666667, -0.66666667]
    """
)


class AdaDiag(PreconditionedOptimizer):
    factory = "adadiag"
    layout = "matrix"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        *,
        two_sided: bool = False,
        update_freq: int = 100,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        maximize: bool = False,
        nonfinite: str = "raise",
    ) -> None:
        super().__init__(
            params,
            lr,
            weight_decay=weight_decay,
            maximize=maximize,
            two_sided=two_sided,
            update_freq=update_freq,
            betas=betas,
            eps=eps,
            nonfinite=nonfinite,
        )


AdaDiag.__doc__ = (
    """AdaDiag / AdaDiag++ (arXiv 2502.07488): Adam in a refreshed SVD basis of each matrix.

    One preconditioner per parameter, from :func:`lowrank_precond.preconditioners.adadiag`
    (ALGORITHMS.md C). Parameter shapes: 2-D as they are (the smaller side is rotated);
    1-D as a ``1 x d`` row, where one-sided AdaDiag *is* Adam (the factory's rule [C03]; a
    two-sided ``1 x d`` needs a dense ``d x d`` ``Q``); 0-D as a 1-element vector; more than two
    dimensions (conv kernels) as ``(shape[0], prod(shape[1:]))``.

    Parameters
    ----------
    params : iterable of Tensor or of dict
        Parameters or param groups (any argument below can be overridden per group).
    lr : float, >= 0
        Learning rate.
    two_sided, update_freq, betas, eps
        As in :func:`lowrank_precond.preconditioners.adadiag`."""
    + _COMMON_DOC
    + """

    See Also
    --------
    ASGO, PreconditionedOptimizer

    Examples
    --------
    >>> import torch
    >>> from lowrank_precond.torch import AdaDiag
    >>> layer = torch.nn.Linear(4, 3)
    >>> opt = AdaDiag(layer.parameters(), lr=1e-2, update_freq=10)
    >>> layer(torch.ones(2, 4)).sum().backward()
    >>> _ = opt.step()
    >>> opt.state[layer.weight]["P"].shape, opt.state[layer.bias]["P"].shape
    (torch.Size([3, 3]), torch.Size([1, 1]))
    """
)


class ASGO(PreconditionedOptimizer):
    factory = "asgo"
    layout = "matrix"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        *,
        update_freq: int = 1,
        eps: float = 1e-8,
        beta1: float = 0.0,
        beta2: float | None = None,
        side: str = "left",
        weight_decay: float = 0.0,
        maximize: bool = False,
        nonfinite: str = "raise",
    ) -> None:
        super().__init__(
            params,
            lr,
            weight_decay=weight_decay,
            maximize=maximize,
            update_freq=update_freq,
            eps=eps,
            beta1=beta1,
            beta2=beta2,
            side=side,
            nonfinite=nonfinite,
        )


ASGO.__doc__ = (
    """ASGO (arXiv 2503.20762): ``(V + eps I)^{-1/2} G`` with ``V = sum G G^T`` per matrix.

    One preconditioner per parameter, from :func:`lowrank_precond.preconditioners.asgo`
    (ALGORITHMS.md D). Parameter shapes: 2-D as they are (``side`` picks the preconditioned
    side); 1-D as a ``d x 1`` column (the factory's rule): with ``side="left"`` that is
    full-matrix AdaGrad on the vector (a ``d x d`` ``V``), with ``side="right"`` AdaGrad-Norm
    -- put large vectors (biases, norms) in their own param group with ``side="right"`` to avoid
    the ``d x d`` matrix; 0-D as a 1-element vector; more than two dimensions (conv kernels) as
    ``(shape[0], prod(shape[1:]))``.

    Parameters
    ----------
    params : iterable of Tensor or of dict
        Parameters or param groups (any argument below can be overridden per group).
    lr : float, >= 0
        Learning rate.
    update_freq, eps, beta1, beta2, side
        As in :func:`lowrank_precond.preconditioners.asgo`."""
    + _COMMON_DOC
    + """

    See Also
    --------
    AdaDiag, PreconditionedOptimizer

    Examples
    --------
    >>> import torch
    >>> from lowrank_precond.torch import ASGO
    >>> layer = torch.nn.Linear(4, 3)
    >>> opt = ASGO([{"params": [layer.weight]}, {"params": [layer.bias], "side": "right"}])
    >>> layer(torch.ones(2, 4)).sum().backward()
    >>> _ = opt.step()
    >>> opt.state[layer.weight]["V"].shape, opt.state[layer.bias]["V"].shape
    (torch.Size([3, 3]), torch.Size([1, 1]))
    """
)


class AdaGrad(PreconditionedOptimizer):
    factory = "adagrad"
    layout = "elementwise"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        *,
        eps: float = 1e-8,
        eps_inside_sqrt: bool = True,
        weight_decay: float = 0.0,
        maximize: bool = False,
        nonfinite: str = "raise",
    ) -> None:
        super().__init__(
            params,
            lr,
            weight_decay=weight_decay,
            maximize=maximize,
            eps=eps,
            eps_inside_sqrt=eps_inside_sqrt,
            nonfinite=nonfinite,
        )


AdaGrad.__doc__ = (
    """Diagonal AdaGrad (baseline, on the same machinery as the full-matrix methods).

    ``direction = g / sqrt(eps + h)`` (default, the package's AdaGrad-family eps) or
    ``g / (sqrt(h) + eps)`` with ``eps_inside_sqrt=False``, ``h = sum g * g``
    (:func:`lowrank_precond.preconditioners.adagrad`). With ``eps_inside_sqrt=False`` and no
    weight decay the iterates are those of ``torch.optim.Adagrad(lr, eps=eps)`` (its
    ``lr_decay=0``, ``initial_accumulator_value=0``); note that torch's weight decay is an L2
    term, this one is decoupled.

    Parameters
    ----------
    params : iterable of Tensor or of dict
        Parameters or param groups (any argument below can be overridden per group).
    lr : float, >= 0
        Learning rate.
    eps, eps_inside_sqrt
        As in :func:`lowrank_precond.preconditioners.adagrad`."""
    + _COMMON_DOC
    + """

    Examples
    --------
    >>> import torch
    >>> from lowrank_precond.torch import AdaGrad
    >>> x = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    >>> opt = AdaGrad([x], lr=0.1)
    >>> x.grad = torch.tensor([3.0, -4.0], dtype=torch.float64)
    >>> _ = opt.step()
    >>> [round(v, 6) for v in x.tolist()]
    [-0.1, 0.1]
    """
)


class Adam(PreconditionedOptimizer):
    factory = "adam"
    layout = "elementwise"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        maximize: bool = False,
        nonfinite: str = "raise",
    ) -> None:
        super().__init__(
            params,
            lr,
            weight_decay=weight_decay,
            maximize=maximize,
            betas=betas,
            eps=eps,
            nonfinite=nonfinite,
        )


Adam.__doc__ = (
    """Adam with decoupled weight decay (AdamW), on the same machinery as the other classes.

    ``direction`` from :func:`lowrank_precond.preconditioners.adam`; the iterates equal
    ``torch.optim.AdamW(lr, betas, eps, weight_decay)`` (``torch.optim.Adam`` without weight
    decay) to rounding.

    Parameters
    ----------
    params : iterable of Tensor or of dict
        Parameters or param groups (any argument below can be overridden per group).
    lr : float, >= 0
        Learning rate.
    betas, eps
        As in :func:`lowrank_precond.preconditioners.adam`."""
    + _COMMON_DOC
    + """

    Examples
    --------
    >>> import torch
    >>> from lowrank_precond.torch import Adam
    >>> x = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    >>> opt = Adam([x], lr=0.1)
    >>> x.grad = torch.tensor([3.0, -4.0], dtype=torch.float64)
    >>> _ = opt.step()  # the first Adam step is lr * sign(g)
    >>> [round(v, 6) for v in x.tolist()]
    [-0.1, 0.1]
    """
)
