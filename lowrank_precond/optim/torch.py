"""``torch.optim.Optimizer`` classes backed by the preconditioners of this package.

``from lowrank_precond.torch import AdaGram`` (the public alias of this module). One generic
optimizer, :class:`PreconditionedOptimizer`, steps with any factory of
:mod:`lowrank_precond.preconditioners`; the named classes are that optimizer bound to one
factory. Their signatures and the ``Parameters`` of their docstrings are *generated* at import
from the factory's signature and docstring (so they cannot drift from it) and their default
``lr`` is ``DEFAULT_LR[factory]`` of :mod:`lowrank_precond.preconditioners.defaults`. The math
lives in the factory; this module only reshapes, keeps the state, checks each step and applies
``x <- x (1 - lr wd) - lr * direction``.

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
  preconditioner(s), built (and validated) when the group is added. Dtype-valued
  hyper-parameters (``factor_dtype=np.float64``) are stored as their names (``"float64"``), so
  a checkpoint loads with ``torch.load(path, weights_only=True)``.
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
* **Half precision.** For float16/bfloat16 parameters the gradient is cast to float32 before
  the preconditioner, which keeps its state in float32 (as torch's fused optimizers do); the
  direction is cast back to the parameter's dtype.
* **Checked steps.** A step is *non-finite* in a group when a gradient has NaN/inf, when it is
  so large that its square overflows the working dtype, or when what the step would write (the
  direction, in the parameter's dtype, or the new state) comes out NaN/inf.
  ``nonfinite="raise"`` (default) then raises ``FloatingPointError`` and the step changes no
  parameter and no state (in any group); ``"skip"`` skips that group for this step
  (parameters, state and weight decay untouched) while the other groups step normally.
* **Atomic steps.** All directions of a step are computed and checked before any parameter or
  state is written, so an exception in the middle of
  :meth:`~PreconditionedOptimizer.step` leaves the optimizer and the model as they were.
* **State.** The preconditioner's state (a flat dataclass) is kept as a dict of its fields in
  ``optimizer.state[p]`` plus two entries that say what it is: ``"state_type"`` (the
  dataclass's name) and ``"spans"`` (how many parameters of the group it covers: 1, or all of
  them for a group-spanning preconditioner, whose state is kept at the group's first
  parameter). :meth:`~PreconditionedOptimizer.load_state_dict` validates a checkpoint against
  the optimizer before loading anything, keeps each state tensor in the dtype the
  preconditioner keeps it in (a float64 factor of float32 parameters stays float64) and moves
  it to its parameter's device; a run continued from a checkpoint is bit-identical.

The methods themselves are described in :ref:`theory` (``docs/theory.rst``).
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
import pkgutil
import re
import textwrap
from collections.abc import Callable, Iterable
from copy import deepcopy
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from itertools import chain
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist

from lowrank_precond import preconditioners as pc
from lowrank_precond.backends import check_positive
from lowrank_precond.optim._distributed import (
    TorchShards,
    Traffic,
    agree,
    is_dtensor,
    local_part,
    local_tensor,
    whole_tensor,
)
from lowrank_precond.preconditioners.base import Preconditioner
from lowrank_precond.preconditioners.defaults import DEFAULT_LR

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

#: factory arguments that the optimizer supplies itself (never group keys)
_RUNTIME_ARGS = ("shards",)

#: entries of ``optimizer.state[p]`` that describe the state instead of holding a field of it
_META_KEYS = ("state_type", "spans")

#: how a parameter is shown to its preconditioner
_LAYOUTS = ("vector", "matrix", "elementwise")

#: the layout of each factory of :mod:`lowrank_precond.preconditioners`
_FACTORY_LAYOUT = {
    "adagram": "vector",
    "adamgram": "vector",
    "sketched_adagrad": "vector",
    "full_matrix_adagrad": "vector",
    "adadiag": "matrix",
    "asgo": "matrix",
    "adagrad": "elementwise",
    "adam": "elementwise",
}

#: parameter dtypes whose preconditioner state is kept in float32
_HALF = (torch.float16, torch.bfloat16)

#: factory -> its parameters (inspect.signature is not free; it is asked every step)
_SIGNATURES: dict[Any, dict[str, inspect.Parameter]] = {}

#: state dataclass name -> class: every class an ``init`` returned in this process, plus the
#: dataclasses of :mod:`lowrank_precond.preconditioners` (looked up when a checkpoint names one)
_STATE_CLASSES: dict[str, type] = {}

#: how ``dataclasses`` marks a real field (not a ClassVar / InitVar pseudo-field)
_DATACLASS_FIELD = next(iter(fields(Preconditioner)))._field_type

#: state dataclass -> its field names (``dataclasses.fields`` is slow and opaque to dynamo)
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        # the fields' names without dataclasses.fields(), which torch.compile cannot trace
        names = tuple(
            n for n, f in cls.__dataclass_fields__.items() if f._field_type is _DATACLASS_FIELD
        )
        clash = sorted(set(names) & set(_META_KEYS))
        if clash:
            raise TypeError(f"{cls.__name__}: state fields {clash} clash with {_META_KEYS}")
        _FIELD_NAMES[cls] = names
        _STATE_CLASSES.setdefault(cls.__name__, cls)
    return names


def _defaulted(cls: type) -> set[str]:
    """The fields of a state dataclass that have a default (may be missing in a checkpoint)."""
    return {
        f.name for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING
    }


def _default_of(cls: type, name: str) -> Any:
    f = next(f for f in fields(cls) if f.name == name)
    return f.default if f.default is not MISSING else f.default_factory()


def _known_state_class(name: Any) -> type | None:
    """The state dataclass called ``name`` (seen in this process or in the package)."""
    if not isinstance(name, str):
        return None
    if name not in _STATE_CLASSES:
        for info in pkgutil.iter_modules(pc.__path__, pc.__name__ + "."):
            module = importlib.import_module(info.name)
            for obj in vars(module).values():
                if isinstance(obj, type) and is_dataclass(obj) and obj.__module__ == info.name:
                    _STATE_CLASSES.setdefault(obj.__name__, obj)
    return _STATE_CLASSES.get(name)


def _plain(value: Any) -> Any:
    """A dtype-like hyper-parameter as its name (``np.float64`` -> ``"float64"``), so that
    ``torch.load(weights_only=True)`` can read the param groups; anything else unchanged."""
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, np.dtype):
        return value.name
    if isinstance(value, type) and issubclass(value, np.generic):
        return np.dtype(value).name
    return value


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _HALF else dtype


def _matrix_view(t: torch.Tensor) -> torch.Tensor:
    if t.ndim == 0:
        return t.reshape(1)
    if t.ndim <= 2:
        return t
    return t.reshape(t.shape[0], -1)


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")


def _check_lr(lr: Any) -> Any:
    """Validate ``lr`` (a real number or a 1-element tensor); a tensor comes back 0-d."""
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError(f"lr: Tensor lr must be 1-element, got shape {tuple(lr.shape)}")
        if lr.is_complex() or lr.dtype == torch.bool:
            raise TypeError(f"lr: expected a real tensor, got {lr.dtype}")
        check_positive("lr", float(lr), allow_zero=True)
        return lr if lr.ndim == 0 else lr.squeeze()  # a view: schedulers' fill_ still reach it
    check_positive("lr", lr, allow_zero=True)
    return lr


def _type_name(value: Any) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


@dataclass
class _Template:
    """What a state built for one input shape looks like (from ``init`` on the meta device).

    ``arrays``: field -> (ndim, sizes, dtype), where a size is ``None`` for an axis that is
    empty after ``init`` and grows with the steps (factor columns, sketch rows).
    """

    cls: type
    names: tuple[str, ...]
    arrays: dict[str, tuple[int, tuple[int | None, ...], torch.dtype]]
    plain: dict[str, type]  # field -> int, float, bool or str (a plain Python value)


@dataclass
class _GroupCache:
    """The preconditioner built from one group's hyper-parameters (rebuilt when they change)."""

    hyperparams: dict[str, Any]
    pre: Preconditioner
    shards: TorchShards | None = None  # the group's rows here (``shard_state=True``)
    # (input shape, dtype) -> template (None when ``init`` does not run on the meta device)
    templates: dict[tuple[tuple[int, ...], torch.dtype], _Template | None] = field(
        default_factory=dict
    )

    def template(self, shape: tuple[int, ...], dtype: torch.dtype) -> _Template | None:
        key = (shape, dtype)
        if key not in self.templates:
            try:
                state = self.pre.init(torch.empty(shape, dtype=dtype, device="meta"))
            except Exception:  # a factory whose init needs real data: no structural checks
                self.templates[key] = None
            else:
                names = _field_names(type(state))
                arrays, scalars = {}, {}
                for name in names:
                    v = getattr(state, name)
                    if isinstance(v, torch.Tensor):
                        sizes = tuple(s if s else None for s in v.shape)
                        arrays[name] = (v.ndim, sizes, v.dtype)
                    elif isinstance(v, bool | str):
                        scalars[name] = type(v)
                    elif isinstance(v, numbers.Integral):
                        scalars[name] = int
                    elif isinstance(v, numbers.Real):
                        scalars[name] = float
                self.templates[key] = _Template(type(state), names, arrays, scalars)
        return self.templates[key]


@dataclass
class _Slot:
    """Where one preconditioner's state lives and what it sees (known without gradients)."""

    key: torch.Tensor  # the parameter whose ``self.state`` entry holds the state
    params: list[torch.Tensor]  # the parameters it covers (group order)
    shape: tuple[int, ...]  # the preconditioner's input shape
    dtype: torch.dtype  # the preconditioner's input dtype (float32 for half parameters)
    position: int  # index of ``key`` in its group


@dataclass
class _Unit:
    """One application of a preconditioner in a step."""

    slot: _Slot
    grad: torch.Tensor  # the preconditioner's input (layout, dtype and maximize applied)
    targets: list[tuple[torch.Tensor, int]]  # (parameter, index of its block) to update
    blocks: list[int] | None  # sizes of the blocks of a group-spanning vector, else None


@dataclass(eq=False)
class _Plan:
    """One group's share of a step."""

    index: int
    group: dict[str, Any]
    entry: _GroupCache
    units: list[_Unit]
    flags: list[torch.Tensor] = field(default_factory=list)  # 0-d bools, all True if fine
    results: list[tuple[_Unit, torch.Tensor, dict[str, Any]]] = field(default_factory=list)
    overflowed: list[str] = field(default_factory=list)  # host-side float fields gone NaN/inf
    error: BaseException | None = None  # the update raised on this group's inputs
    failed: bool = False  # the step's checks failed: raise or skip


def _finite_flags(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """0-d bool tensors, all True iff every tensor is finite.

    ``aminmax`` propagates NaN and inf and cannot overflow (a sum or a 2-norm of large finite
    entries could); on CPU it is also several times faster than ``_foreach_norm(ts, inf)``.
    """
    by_kind: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        if t.numel():
            by_kind.setdefault((t.device, t.dtype), []).append(_memory_order(t))
    return [
        torch.stack([v for t in ts for v in torch.aminmax(t)]).isfinite().all()
        for ts in by_kind.values()
    ]


def _memory_order(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its dims permuted into memory order (a column-major factor as its
    transpose), which reductions read several times faster."""
    if t.ndim < 2 or t.is_contiguous():
        return t
    return t.permute(*sorted(range(t.ndim), key=lambda i: -t.stride(i)))


def _bound(dtype: torch.dtype) -> float:
    """Largest accepted ``|g|``: its square (and a few sums of squares) fit the dtype."""
    return math.sqrt(torch.finfo(dtype).max) / 4.0


def _small_flags(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """0-d bool tensors, all True iff every ``|t| < _bound(dtype)`` (False for NaN/inf)."""
    by_kind: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        by_kind.setdefault((t.device, t.dtype), []).append(t)
    return [
        torch.stack(torch._foreach_norm(ts)).lt(_bound(kind[1])).all()
        for kind, ts in by_kind.items()
    ]


def _host_norm(g: torch.Tensor) -> float:
    """``|g|`` of a finite ``g`` as a Python float, without overflow (for messages)."""
    m = float(g.abs().max()) if g.numel() else 0.0
    return m * float(torch.linalg.vector_norm(g / m)) if m > 0 else 0.0


def _to_host(flags: list[torch.Tensor]) -> list[bool]:
    """The values of 0-d bool tensors: one transfer (host sync) per device."""
    by_device: dict[torch.device, list[int]] = {}
    for i, f in enumerate(flags):
        by_device.setdefault(f.device, []).append(i)
    out = [True] * len(flags)
    for idx in by_device.values():
        for i, v in zip(idx, torch.stack([flags[i] for i in idx]).tolist(), strict=True):
            out[i] = bool(v)
    return out


class PreconditionedOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that steps ``x <- x (1 - lr wd) - lr * direction``.

    ``direction`` comes from a preconditioner of :mod:`lowrank_precond.preconditioners`
    (``update(grad, state) -> (direction, state)``) built, for each param group, by
    ``factory`` from the group's hyper-parameters. The named classes (:class:`AdaGram`, ...)
    are this class bound to one factory; use it directly for any factory, e.g.
    ``PreconditionedOptimizer(model.parameters(), "asgo", lr=0.3, side="right")``, or subclass
    it with a :attr:`factory` of your own.

    Parameters
    ----------
    params : iterable of Tensor or of dict
        Parameters or param groups (dicts with ``"params"`` and any hyper-parameter to
        override for that group).
    factory : str or callable, optional
        Name of a factory in :mod:`lowrank_precond.preconditioners` (e.g. ``"adagram"``) or a
        callable returning a :class:`~lowrank_precond.preconditioners.base.Preconditioner`
        that accepts a ``nonfinite`` argument. Default: the class's :attr:`factory`.
    lr : float or 1-element Tensor, >= 0, optional
        Learning rate. Default: ``DEFAULT_LR[factory]`` of
        :mod:`lowrank_precond.preconditioners.defaults` (required for other factories). A
        tensor (``torch.tensor(0.01)``) stays the group's ``lr`` object, so LR schedulers update
        it in place and a ``torch.compile``-d step is not recompiled when it changes.
    layout : {"vector", "matrix", "elementwise"}, optional
        How a parameter is shown to the preconditioner: flattened (``"vector"``); as a matrix
        (``"matrix"``: 1-D and 2-D as they are, a 0-D as a 1-element vector, ``k > 2`` dims
        as ``(shape[0], prod(shape[1:]))``, e.g. a conv kernel as ``(out, in*kh*kw)``); or as
        it is (``"elementwise"``). Default: the class's :attr:`layout`, else the layout of the
        named factory (``"vector"`` for a callable).
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
        Arguments of ``factory`` (each may also be set per group); the ones not given take
        the factory's defaults. Every group is validated when it is added (the factory's own
        checks: ``ValueError``/``TypeError`` naming the argument). Its ``nonfinite``
        (``"raise"`` or ``"skip"``) applies to the whole group's step (see Notes).

    Attributes
    ----------
    factory : str or callable
        The preconditioner factory (a class attribute; assign a callable with
        ``staticmethod``).
    layout : {"vector", "matrix", "elementwise"}
        How a parameter is shown to the preconditioner (see ``layout`` above).

    Notes
    -----
    Parameters without a gradient, group-spanning preconditioners, half precision and
    atomicity follow the rules in the module docstring of :mod:`lowrank_precond.optim.torch`.
    Sparse and complex gradients are refused.

    *Checks.* The optimizer calls the preconditioner's
    :attr:`~lowrank_precond.preconditioners.base.Preconditioner.update_unchecked` and checks
    each step once itself: every gradient must be finite with ``|g| < sqrt(finfo.max) / 4`` of
    the working dtype (the bound of the preconditioners' own entry point), and the directions
    (in the parameters' dtypes) and the new state's floating tensors and numbers must be
    finite. A failed check in a group with ``nonfinite="raise"`` raises ``FloatingPointError``
    naming the group and what overflowed, with nothing changed; ``"skip"`` skips that group.
    The state of every preconditioner is also checked before it is used (its fields, and that
    each array is a ``torch.Tensor`` of the right shape); a bad one raises ``ValueError``
    naming the field.

    *State.* Between steps the state of a preconditioner is ``optimizer.state[p]``: a dict of
    its state dataclass's fields plus ``"state_type"`` (the dataclass's name) and ``"spans"``
    (the number of the group's parameters it covers), for ``p`` its parameter (group-spanning:
    the group's first parameter). :meth:`load_state_dict` validates a whole checkpoint before
    changing anything and raises ``ValueError`` for the state of another class, of other
    settings (a field with more columns than the group's ``rank``) or of other parameter
    shapes; param-group keys missing from the checkpoint (e.g. an argument added since) take
    the optimizer's defaults, as ``torch.optim`` does.

    *torch.compile.* :meth:`step` synchronises with the device once per step (one
    ``.tolist()`` of all the step's finiteness flags, computed with one fused
    ``torch._foreach_norm`` per group and dtype), which is one graph break of a compiled
    ``step``. The preconditioners add their own: they read scalars (norms, ``rank``
    decisions, Python-float state fields) on the host, and on CPU some run through NumPy
    views, so a compiled step of the matrix methods breaks many times per step; compiling
    pays off for :class:`Adam` and :class:`AdaGrad` at most.

    Examples
    --------
    >>> import torch
    >>> from lowrank_precond.torch import AdaGram, PreconditionedOptimizer
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
    >>> state = opt.state[model.weight]  # one state for the group, kept at its first param
    >>> state["state_type"], state["spans"], sorted(state)[:6]
    ('AdaGramState', 2, ['C', 'P', 'Q', 'S', 'U', 'V'])

    Any factory, by name:

    >>> opt = PreconditionedOptimizer(model.parameters(), "asgo", side="right")
    >>> opt.layout, opt.param_groups[0]["lr"]
    ('matrix', 0.3)
    """

    factory: ClassVar[str | Callable[..., Preconditioner]] = ""
    layout: ClassVar[str | None] = None
    default_per_parameter: ClassVar[bool] = False

    def __init__(
        self,
        params: Iterable[Any],
        factory: str | Callable[..., Preconditioner] | None = None,
        lr: float | torch.Tensor | None = None,
        *,
        layout: str | None = None,
        weight_decay: float = 0.0,
        maximize: bool = False,
        per_parameter: bool | None = None,
        process_group: Any = None,
        shard_state: bool = False,
        **hyperparams: Any,
    ) -> None:
        name = type(self).__name__
        if factory is not None:
            if type(self).factory and factory != type(self).factory:
                raise TypeError(f"factory: {name} is bound to {type(self).factory!r}")
            self.factory = factory  # type: ignore[misc]
        if layout is None:
            layout = type(self).layout
        if layout is None:
            f = self.factory
            layout = _FACTORY_LAYOUT.get(f, "vector") if isinstance(f, str) else "vector"
        if layout not in _LAYOUTS:
            raise ValueError(f"layout: expected one of {_LAYOUTS}, got {layout!r}")
        self.layout = layout  # type: ignore[misc]
        names = self._factory_arguments()
        unknown = sorted(set(hyperparams) - set(names))
        if unknown:
            raise TypeError(
                f"{name}: unexpected argument(s) {unknown}; the preconditioner "
                f"accepts {list(names)} plus {list(_OWN_KEYS)}"
            )
        defaults: dict[str, Any] = {}
        for arg, param in names.items():
            if arg in hyperparams:
                defaults[arg] = _plain(hyperparams[arg])
            elif param.default is not inspect.Parameter.empty:
                defaults[arg] = _plain(param.default)
            else:
                raise TypeError(f"{name}: missing required argument {arg!r}")
        if lr is None:
            f = self.factory
            if not (isinstance(f, str) and f in DEFAULT_LR):
                raise TypeError(f"lr: {name} has no default learning rate; pass lr=")
            lr = DEFAULT_LR[f]
        if per_parameter is None:
            per_parameter = self.default_per_parameter if layout == "vector" else True
        defaults.update(
            lr=lr, weight_decay=weight_decay, maximize=maximize, per_parameter=per_parameter
        )
        self._cache: dict[int, _GroupCache] = {}
        _check_bool("shard_state", shard_state)
        if shard_state:
            if "shards" not in inspect.signature(self._factory()).parameters:
                raise ValueError(
                    f"shard_state: {name}'s preconditioner has no sharded form (only the "
                    "group-spanning AdaGram, AdamGram and SketchedAdaGrad shard their state)"
                )
            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError(
                    "shard_state: needs torch.distributed initialised "
                    "(torch.distributed.init_process_group) before the optimizer is built"
                )
        elif process_group is not None:
            raise ValueError("process_group: only used with shard_state=True")
        self.process_group, self.shard_state = process_group, shard_state
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ construction
    def _factory(self) -> Callable[..., Preconditioner]:
        f = self.factory
        if isinstance(f, str):
            if not f:
                raise TypeError(f"{type(self).__name__}: no preconditioner factory declared")
            return pc.get(f)
        return f

    def _factory_arguments(self) -> dict[str, inspect.Parameter]:
        factory = self._factory()
        cached = _SIGNATURES.get(factory)
        if cached is not None:
            return cached
        params = {
            k: v for k, v in inspect.signature(factory).parameters.items() if k not in _RUNTIME_ARGS
        }
        clash = sorted(set(params) & set(_OWN_KEYS))
        if clash or "nonfinite" not in params:
            raise TypeError(
                f"{type(self).__name__}: the factory must accept 'nonfinite' and none of "
                f"{_OWN_KEYS}"
            )
        _SIGNATURES[factory] = params
        return params

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (filled with the defaults) and validate all of its settings.

        Raises ``ValueError``/``TypeError`` naming the bad argument; the group is then not
        added. Dtype-valued hyper-parameters are stored as their names (``"float64"``).
        """
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._validate_group(group, len(self.param_groups) - 1)
        except Exception:
            self.param_groups.pop()
            raise

    def _validate_group(self, group: dict[str, Any], index: int) -> None:
        name = type(self).__name__
        for arg in self._factory_arguments():
            group[arg] = _plain(group[arg])
        group["lr"] = _check_lr(group["lr"])
        check_positive("weight_decay", group["weight_decay"], allow_zero=True)
        _check_bool("maximize", group["maximize"])
        _check_bool("per_parameter", group["per_parameter"])
        if self.layout != "vector" and not group["per_parameter"]:
            raise ValueError(f"per_parameter: {name} acts on each parameter separately; got False")
        if self.shard_state and group["per_parameter"]:
            raise ValueError(
                "per_parameter: shard_state=True splits a group-spanning state by rows; "
                f"group {index} has per_parameter=True"
            )
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
            shards = entry.shards if entry is not None else None
            if self.shard_state and shards is None and group["params"]:
                shards = self._group_shards(group)
            extra = {} if shards is None else {"shards": shards}
            entry = _GroupCache(dict(hyper), self._factory()(**hyper, **extra), shards)
            self._cache[id(group)] = entry
        return entry

    def _group_shards(self, group: dict[str, Any]) -> TorchShards:
        """This process's rows of the group's flattened gradient (``shard_state=True``).

        Replicated parameters (DDP): the flattened group split into near-equal contiguous
        blocks. DTensor parameters (FSDP2): each process's rows are its local shards,
        flattened and concatenated (one all-gather of the counts); the rows of all processes
        in rank order are then a permutation of the flattened group, which the full-matrix
        methods do not see (their steps commute with permutations of the coordinates).
        """
        params = group["params"]
        kinds = {is_dtensor(p) for p in params}
        if len(kinds) > 1:
            raise ValueError(
                "shard_state: a group mixes DTensor and plain parameters; put them in "
                "separate param groups"
            )
        pg = self.process_group
        world = dist.get_world_size(pg)
        if kinds == {True}:
            mine = torch.tensor([sum(local_tensor(p).numel() for p in params)])
            counts = [torch.zeros_like(mine) for _ in range(world)]
            dist.all_gather(counts, mine, group=pg)
            return TorchShards([int(c) for c in counts], pg)
        d = sum(p.numel() for p in params)
        return TorchShards([(i + 1) * d // world - i * d // world for i in range(world)], pg)

    def communication(self) -> list[Traffic | None]:
        """Per param group, what this process has sent for its sharded state so far
        (:class:`~lowrank_precond.optim._distributed.Traffic`: all-reduce and all-gather calls
        and bytes; ``reset()`` it to count from now), or ``None`` for a group whose state is
        not sharded (``shard_state=False``). The gathers include, for replicated (DDP)
        parameters, the all-gather of the direction's rows before each update (``d /
        world_size`` numbers sent per step, by construction).

        Examples
        --------
        >>> import torch
        >>> from lowrank_precond.torch import AdaGram
        >>> AdaGram([torch.nn.Parameter(torch.zeros(3))]).communication()
        [None]
        """
        out: list[Traffic | None] = []
        for group in self.param_groups:
            entry = self._preconditioner(group) if group["params"] else None
            out.append(entry.shards.traffic if entry is not None and entry.shards else None)
        return out

    def _local_space(self, group: dict[str, Any]) -> bool:
        """Whether the preconditioner sees this process's local shards of DTensor parameters
        (elementwise methods, and the sharded state) or the whole tensors (the others)."""
        return self.layout == "elementwise" or self.shard_state

    def _distributed(self) -> bool:
        """Whether a step's decisions must be agreed between processes."""
        return self.shard_state or any(
            is_dtensor(p) for g in self.param_groups for p in g["params"]
        )

    def _agree(self, flags: list[bool]) -> list[bool]:
        return agree(flags, self.process_group) if self._distributed() else flags

    def _all_hold(self, flags: list[torch.Tensor]) -> bool:
        """Whether every flag holds (on every process sharing a sharded state: those take
        the same step together; elsewhere each process decides on identical inputs)."""
        ok = all(_to_host(flags))
        return agree([ok], self.process_group)[0] if self.shard_state else ok

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        keys = ("factory", "layout", "shard_state")  # not the process group: no pickle
        state.update({k: self.__dict__[k] for k in keys if k in self.__dict__})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.setdefault("shard_state", False)
        self.__dict__.setdefault("process_group", None)
        super().__setstate__(state)
        for group in self.param_groups:  # keys added since the state was saved
            self._fill_defaults(group)
        self._cache = {}  # groups are new dicts (load_state_dict, unpickling)

    def _fill_defaults(self, group: dict[str, Any]) -> None:
        """Give ``group`` the defaults of the keys it lacks (a checkpoint saved before an
        argument existed), as torch's optimizers do for their own flags."""
        for key in (*self._factory_arguments(), *_OWN_KEYS):
            if key in self.defaults:
                group.setdefault(key, self.defaults[key])

    # ------------------------------------------------------------------ layout
    def _view(self, t: torch.Tensor) -> torch.Tensor:
        if self.layout == "vector":
            return t.reshape(-1)
        if self.layout == "matrix":
            return _matrix_view(t)
        return t

    def _slots(self, group: dict[str, Any]) -> list[_Slot]:
        params = group["params"]
        if not params:
            return []
        if self._spans_group(group):
            if self.shard_state:
                d = self._preconditioner(group).shards.rows
            else:
                d = sum(p.numel() for p in params)
            return [_Slot(params[0], list(params), (d,), _work_dtype(params[0].dtype), 0)]
        local = self._local_space(group)

        def shaped(p: torch.Tensor) -> torch.Tensor:  # the tensor the preconditioner sees
            if local or not is_dtensor(p):
                return local_tensor(p)
            return torch.empty(p.shape, device="meta")  # the whole one (no DTensor reshape)

        return [
            _Slot(p, [p], tuple(self._view(shaped(p)).shape), _work_dtype(p.dtype), i)
            for i, p in enumerate(params)
        ]

    def _flat_input(self, group: dict[str, Any], tensors: list[torch.Tensor | None],
                    params: list[torch.Tensor]) -> tuple[torch.Tensor, bool]:  # fmt: skip
        """The group-spanning input from one tensor per parameter (``None``: zeros), and
        whether it is a fresh tensor: the whole flattened group, or this process's rows of it
        with ``shard_state``."""
        sharded = self.shard_state
        dt = sharded and is_dtensor(params[0])
        parts = []
        for p, t in zip(params, tensors, strict=True):
            if t is None:
                t = torch.zeros_like(local_tensor(p) if dt else whole_tensor(p))
            else:
                t = local_tensor(t) if dt else whole_tensor(t)
            parts.append(t.reshape(-1))
        flat, fresh = (parts[0], False) if len(parts) == 1 else (torch.cat(parts), True)
        if sharded and not dt:
            shards = self._preconditioner(group).shards
            flat = flat[shards.start : shards.stop]
        return flat, fresh

    def _deliver(self, plan: _Plan, unit: _Unit, direction: torch.Tensor) -> list[Any]:
        """``(tensor to update, its update)`` for every target of ``unit``: the local shard
        of a DTensor parameter, else the parameter; a sharded group's rows are gathered
        first (replicated parameters) or are the local shards' own (DTensor)."""
        out = []
        if unit.blocks is None:
            ((p, _),) = unit.targets
            if self._local_space(plan.group):
                return [(local_tensor(p), direction.reshape(local_tensor(p).shape))]
            return [(local_tensor(p), local_part(p, direction.reshape(p.shape)))]
        params = unit.slot.params
        if self.shard_state and is_dtensor(params[0]):
            chunks = direction.split([local_tensor(p).numel() for p in params])
            for p, i in unit.targets:
                out.append((local_tensor(p), chunks[i].reshape(local_tensor(p).shape)))
            return out
        if self.shard_state:
            direction = plan.entry.shards.gather(direction)
        chunks = direction.split(unit.blocks)
        for p, i in unit.targets:
            out.append((local_tensor(p), local_part(p, chunks[i].reshape(p.shape))))
        return out

    def _units(self, group: dict[str, Any]) -> list[_Unit]:
        params = group["params"]
        name = type(self).__name__
        for p in params:
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError(f"{name} does not support sparse gradients")
        spans = self._spans_group(group)
        local = self._local_space(group)
        units = []
        for slot in self._slots(group):
            if spans:
                grads = [p.grad for p in slot.params]
                if all(g is None for g in grads):
                    continue
                # one parameter: a view, not a copy (torch.cat always copies)
                g, fresh = self._flat_input(group, grads, slot.params)
                targets = [(p, i) for i, p in enumerate(slot.params) if p.grad is not None]
                blocks: list[int] | None = [p.numel() for p in slot.params]
            else:
                p = slot.key
                if p.grad is None:
                    continue
                grad = local_tensor(p.grad) if local else whole_tensor(p.grad)
                if grad.numel() == 0:  # an empty local shard (FSDP2, few rows): no state
                    continue
                # the local shard shares the gradient's memory; the whole tensor is new
                g, fresh = self._view(grad), is_dtensor(p.grad) and not local
                targets, blocks = [(p, 0)], None
            if g.dtype != slot.dtype:
                g, fresh = g.to(slot.dtype), True
            if group["maximize"]:
                g = g.neg_() if fresh else torch.neg(g)
            units.append(_Unit(slot, g, targets, blocks))
        return units

    def _init_input(self, group: dict[str, Any], slot: _Slot) -> torch.Tensor:
        params = [p.detach() for p in slot.params]
        if self._spans_group(group):
            x, _ = self._flat_input(group, list(params), params)
        else:
            p = params[0]
            x = local_tensor(p) if self._local_space(group) else whole_tensor(p)
            x = self._view(x).reshape(slot.shape)
        return x.to(slot.dtype) if x.dtype != slot.dtype else x

    # ------------------------------------------------------------------ state
    def _where(self, slot: _Slot, index: int) -> str:
        return f"the optimizer state of parameter {slot.position} of group {index}"

    def _state_class(self, fields_: dict[str, Any], template: _Template | None, where: str) -> type:
        """Check a stored state against what the group's preconditioner keeps; its class."""
        name = type(self).__name__
        recorded = fields_.get("state_type")
        if template is not None:
            cls = template.cls
            if recorded is not None and recorded != cls.__name__:
                raise ValueError(
                    f"{where} is of type {recorded}, but {name} with these settings keeps a "
                    f"{cls.__name__} there: the state comes from another optimizer or other "
                    "settings"
                )
        else:
            cls = _known_state_class(recorded)
            if cls is None:
                raise ValueError(
                    f"{where}: unknown state type {recorded!r} (expected the name of the "
                    "preconditioner's state dataclass)"
                )
        expected = _field_names(cls)
        have = set(fields_) - set(_META_KEYS)
        # a field with a default may be missing (a checkpoint written before it existed)
        if not set(expected) - _defaulted(cls) <= have <= set(expected):
            raise ValueError(
                f"{where} has the fields {sorted(have)}, but {name} with these settings keeps a "
                f"{cls.__name__} with the fields {sorted(expected)}: the state comes from "
                "another optimizer or other settings"
            )
        for field_name in expected:
            if field_name not in fields_:
                continue
            v = fields_[field_name]
            spec = template.arrays.get(field_name) if template is not None else None
            if spec is None:
                kind = template.plain.get(field_name) if template is not None else None
                if kind is int:
                    ok = isinstance(v, int) and not isinstance(v, bool)
                elif kind is float:
                    ok = isinstance(v, int | float) and not isinstance(v, bool)
                elif kind is not None:
                    ok = isinstance(v, kind)
                else:  # unknown: anything a checkpoint may hold but a NumPy (or other) array
                    ok = v is None or isinstance(v, torch.Tensor | int | float | str)
                if not ok:
                    want = f"a Python {kind.__name__}" if kind else "a torch.Tensor or a number"
                    raise ValueError(
                        f"{where}: field {field_name!r} is a {_type_name(v)}, expected {want} "
                        "(the torch optimizers keep torch tensors and plain Python values)"
                    )
                continue
            if not isinstance(v, torch.Tensor):
                raise ValueError(
                    f"{where}: field {field_name!r} is a {_type_name(v)}, expected a "
                    "torch.Tensor (the torch optimizers keep their arrays as tensors)"
                )
            ndim, sizes, _ = spec
            if v.ndim != ndim or any(
                s is not None and s != n for s, n in zip(sizes, v.shape, strict=True)
            ):
                want = "(" + ", ".join("k" if s is None else str(s) for s in sizes) + ")"
                raise ValueError(
                    f"{where}: field {field_name!r} has shape {tuple(v.shape)}, expected {want} "
                    "for this parameter: the state belongs to a parameter of another shape"
                )
        return cls

    def _old_state(self, plan: _Plan, unit: _Unit) -> tuple[dict[str, Any] | None, Any]:
        """``(stored fields or None, state dataclass)`` of a unit (``init`` on first use)."""
        slot = unit.slot
        stored = self.state.get(slot.key)  # .get: a failed step must not leave an empty entry
        if not stored:
            state = plan.entry.pre.init(self._init_input(plan.group, slot))
            _field_names(type(state))
            return None, state
        where = self._where(slot, plan.index)
        spans = stored.get("spans", len(slot.params))
        if spans != len(slot.params):
            raise ValueError(
                f"{where} spans {spans} parameter(s), but this group's preconditioner spans "
                f"{len(slot.params)} (per_parameter={plan.group['per_parameter']})"
            )
        cls = self._state_class(stored, plan.entry.template(slot.shape, slot.dtype), where)
        return stored, cls(**{n: stored[n] for n in _field_names(cls)})

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Do one optimization step; return the closure's loss (``None`` without a closure).

        ``closure`` (re-evaluates the model and returns the loss) runs under
        ``torch.enable_grad()``; the step itself runs under ``torch.no_grad()``.

        Raises
        ------
        FloatingPointError
            In a group with ``nonfinite="raise"``: a NaN/inf gradient, one too large for the
            working dtype, or an overflow of the direction or the state; nothing was changed.
        ValueError
            A stored state that does not fit its parameter (the message names the field).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # 1. every group's inputs, and a lazy flag: all gradients finite and not too large
        plans = []
        for index, group in enumerate(self.param_groups):
            units = self._units(group)
            if units:
                plan = _Plan(index, group, self._preconditioner(group), units)
                plan.flags = _small_flags([u.grad for u in units])
                plans.append(plan)
        distributed = self._distributed()
        if not plans and not distributed:  # (a process with nothing to do still agrees)
            return loss

        # 2. every direction and new state, flags on them. Pure (nothing is written yet),
        # except that the very last update may overwrite its old state in place, once every
        # other check of the step has passed (see _compute)
        for i, plan in enumerate(plans):
            earlier = [f for p in plans[:i] for f in p.flags] if i == len(plans) - 1 else None
            self._compute(plan, earlier)

        # 3. one host sync for all flags (agreed between processes when the step spans
        # several); raise, or skip the groups that failed
        host = _to_host([f for plan in plans for f in plan.flags])
        oks = [True] * len(self.param_groups)  # per group: the same length on every process
        for plan in plans:
            ok, host = host[: len(plan.flags)], host[len(plan.flags) :]
            oks[plan.index] = all(ok) and not plan.overflowed and plan.error is None
        oks = self._agree(oks)
        for plan in plans:
            plan.failed = not oks[plan.index]
        mine = {plan.index: plan for plan in plans}
        for index, (group, ok) in enumerate(zip(self.param_groups, oks, strict=True)):
            if ok or group["nonfinite"] == "skip":
                continue
            if index not in mine:  # failed on another process only
                raise FloatingPointError(
                    f"parameter group {index}: the step failed on another process (its error "
                    "names the cause); no parameter or optimizer state was changed"
                )
            plan = mine[index]
            raise FloatingPointError(self._nonfinite_message(plan)) from plan.error

        # 4. commit
        for plan in plans:
            if plan.failed:
                continue
            # a tensor lr steps exactly as a float of its value (as torch's own optimizers,
            # which read it with .item() unless capturable)
            lr, wd = float(plan.group["lr"]), plan.group["weight_decay"]
            for unit, direction, record in plan.results:
                self.state[unit.slot.key] = record
                for p, d in self._deliver(plan, unit, direction):
                    if wd != 0:
                        p.mul_(1.0 - lr * wd)
                    p.add_(d, alpha=-lr)
        return loss

    def _compute(self, plan: _Plan, earlier: list[torch.Tensor] | None = None) -> None:
        """Every update of ``plan`` (``earlier``: the flags of the groups before it when this
        is the step's last group, else ``None``).

        The step's last update runs in place (``update_overwriting``: one buffer read and
        written, no second copy of the state) when the method has such a step, its tensors
        are on the CPU (the flags are then read without a device sync), and every flag so far
        holds: nothing after it can fail the step, since an in-place update checks its own
        output before writing it (``verified_fields``) and raises with its state unchanged.
        """
        pre = plan.entry.pre
        written = []
        for j, unit in enumerate(plan.units):
            old, state = self._old_state(plan, unit)
            update = pre.update_unchecked
            if (
                earlier is not None
                and j == len(plan.units) - 1
                and pre.update_overwriting is not None
                and old is not None
                and unit.grad.device.type == "cpu"
                and self._all_hold(earlier + plan.flags + _finite_flags(written))
            ):
                update = pre.update_overwriting
            try:
                direction, new = update(unit.grad, state)
            except Exception as exc:
                # an overflow the step detected itself is a non-finite step; so is any error
                # on bad gradients (flagged in step 1: read only on this slow path)
                if not isinstance(exc, FloatingPointError) and all(_to_host(plan.flags)):
                    raise
                plan.error = exc
                plan.results.clear()
                return
            dtype = unit.targets[0][0].dtype
            if direction.dtype != dtype:
                direction = direction.to(dtype)
            written.append(direction)
            names = _field_names(type(new))
            record = {n: getattr(new, n) for n in names}
            verified = getattr(new, "verified_fields", tuple)()  # finite by the step itself
            for n in names:
                v = record[n]
                if isinstance(v, torch.Tensor):
                    if (
                        v.is_floating_point()
                        and n not in verified
                        and (old is None or v is not old.get(n))
                    ):
                        written.append(v)
                elif isinstance(v, float) and not math.isfinite(v):
                    plan.overflowed.append(n)
            record["state_type"] = type(new).__name__
            record["spans"] = len(unit.slot.params)
            plan.results.append((unit, direction, record))
        plan.flags = plan.flags + _finite_flags(written)

    def _nonfinite_message(self, plan: _Plan) -> str:
        """What went wrong in a failed group (slow path: recomputes what it reports)."""
        grads = [u.grad for u in plan.units]
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            what = "the gradient contains NaN or inf"
        else:
            norms = [(_host_norm(g), g.dtype) for g in grads]
            big = [(n, dt) for n, dt in norms if n >= _bound(dt)]
            if big:
                n, dt = max(big, key=lambda t: t[0])
                what = (
                    f"the gradient is too large for {str(dt).removeprefix('torch.')} arithmetic "
                    f"(|grad| = {n:.3g}; its square overflows, the largest accepted norm is "
                    f"{_bound(dt):.3g}): rescale the loss or clip the gradients"
                )
            elif plan.error is not None:  # a FloatingPointError of the step itself
                what = f"the step overflowed ({plan.error}); rescale the loss or clip the gradients"
            else:
                bad_state = list(plan.overflowed)
                bad_direction = False
                for _, direction, record in plan.results:
                    if not bool(torch.isfinite(direction).all()):
                        bad_direction = True
                    bad_state += [
                        n
                        for n, v in record.items()
                        if isinstance(v, torch.Tensor)
                        and v.is_floating_point()
                        and not bool(torch.isfinite(v).all())
                    ]
                if bad_direction:
                    what = (
                        "the step overflowed: the preconditioned direction came out NaN or inf "
                        "(the gradient is too large for the preconditioner's arithmetic or the "
                        "parameters' dtype); rescale the loss or clip the gradients"
                    )
                else:
                    what = (
                        "the gradient overflowed the accumulated statistics of the "
                        f"preconditioner ({', '.join(sorted(set(bad_state)))}) to NaN or inf; "
                        "rescale the loss or clip the gradients"
                    )
        return (
            f"parameter group {plan.index}: {what}; no parameter or optimizer state was changed "
            "(pass nonfinite='skip' to skip such steps)"
        )

    # ------------------------------------------------------------------ checkpoints
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`, validated in full before anything is changed.

        As ``torch.optim.Optimizer.load_state_dict`` (pre- and post-hooks included), except:

        * the checkpoint is checked against this optimizer first, and a mismatch raises
          ``ValueError`` naming the group, parameter and field, with the optimizer unchanged:
          another class's state (an ``Adam`` state dict into :class:`AdaGram`), a state for
          other settings or parameter shapes, a field with more columns than the group's
          ``rank``, NumPy arrays or other non-tensors where the state keeps tensors, bad
          hyper-parameters;
        * param-group keys missing from the checkpoint take this optimizer's defaults;
        * each state tensor gets the dtype the preconditioner keeps it in (torch would cast
          to the parameter's dtype, rounding e.g. AdaGram's float64 factor of float32
          parameters and breaking bit-identical continuation) and is copied to its
          parameter's device.
        """
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result

        groups = self.param_groups
        saved_groups = deepcopy(state_dict["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for g, s in zip(groups, saved_groups, strict=True):
            if len(g["params"]) != len(s["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't match the size "
                    "of optimizer's group"
                )
        id_map = dict(
            zip(
                chain.from_iterable(g["params"] for g in saved_groups),
                chain.from_iterable(g["params"] for g in groups),
                strict=True,
            )
        )
        saved_ids = [list(s["params"]) for s in saved_groups]
        new_groups = []
        for index, (group, saved) in enumerate(zip(groups, saved_groups, strict=True)):
            saved["params"] = group["params"]
            if "param_names" in group and "param_names" not in saved:
                saved["param_names"] = group["param_names"]
            self._fill_defaults(saved)
            try:
                self._validate_group(saved, index)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"loaded param group {index}: {exc}") from exc
            new_groups.append(saved)

        saved_state = state_dict["state"]
        unknown = sorted(str(k) for k in saved_state if k not in id_map)
        if unknown:
            raise ValueError(
                f"loaded state dict has state for {unknown}, which are not parameters of its "
                "param groups"
            )
        state: dict[torch.Tensor, Any] = {}
        for index, (group, ids) in enumerate(zip(new_groups, saved_ids, strict=True)):
            entry = self._preconditioner(group)
            slots = {id(s.key): s for s in self._slots(group)}
            for position, (pid, p) in enumerate(zip(ids, group["params"], strict=True)):
                if pid not in saved_state:
                    continue
                fields_ = saved_state[pid]
                where = f"state_dict['state'][{pid!r}] (parameter {position} of group {index})"
                slot = slots.get(id(p))
                if slot is None:
                    raise ValueError(
                        f"{where} is a per-parameter state, but group {index} has one "
                        "preconditioner spanning all its parameters (per_parameter=False), "
                        "kept at its first parameter"
                    )
                if not isinstance(fields_, dict):
                    raise ValueError(
                        f"{where}: expected a dict of state fields, got {_type_name(fields_)}"
                    )
                state[p] = self._load_fields(entry, group, slot, fields_, where)
        self.__setstate__({"state": state, "param_groups": new_groups})
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _load_fields(
        self,
        entry: _GroupCache,
        group: dict[str, Any],
        slot: _Slot,
        fields_: dict[str, Any],
        where: str,
    ) -> dict[str, Any]:
        """A checked copy of one saved state, its tensors on the slot's device and dtypes."""
        spans = fields_.get("spans", len(slot.params))
        if spans != len(slot.params):
            raise ValueError(
                f"{where} spans {spans} parameter(s), but the group's preconditioner spans "
                f"{len(slot.params)} (per_parameter={group['per_parameter']}): the state was "
                "saved with other settings"
            )
        template = entry.template(slot.shape, slot.dtype)
        cls = self._state_class(fields_, template, where)
        rank = group.get("rank")
        out: dict[str, Any] = {}
        for name in _field_names(cls):
            if name not in fields_:  # a defaulted field the checkpoint predates
                spec = template.arrays.get(name) if template is not None else None
                if spec is not None:  # what init keeps there (empty where it grows)
                    shape = [0 if s is None else s for s in spec[1]]
                    out[name] = torch.zeros(shape, dtype=spec[2], device=slot.key.device)
                else:
                    out[name] = _default_of(cls, name)
                continue
            v = fields_[name]
            spec = template.arrays.get(name) if template is not None else None
            if isinstance(v, torch.Tensor):
                dtype = v.dtype
                if spec is not None:
                    if isinstance(rank, int) and not isinstance(rank, bool):
                        grown = [n for s, n in zip(spec[1], v.shape, strict=True) if s is None]
                        if any(n > rank for n in grown):
                            raise ValueError(
                                f"{where}: field {name!r} has shape {tuple(v.shape)}, more "
                                f"than the group's rank={rank} allows: the state was saved "
                                "with another rank"
                            )
                    if v.is_floating_point() and spec[2].is_floating_point:
                        dtype = spec[2]
                v = v.to(device=slot.key.device, dtype=dtype, copy=True)
            out[name] = v
        out["state_type"] = cls.__name__
        out["spans"] = len(slot.params)
        return out


# ---------------------------------------------------------------------------- the classes
#: the optimizer's own entries of a named class's ``Parameters`` ({lr} / {factory} filled in)
_OWN_DOCS = {
    "params": """params : iterable of Tensor or of dict
    Parameters or param groups (dicts with ``"params"`` and any argument below to override
    for that group).""",
    "lr": """lr : float or 1-element Tensor, >= 0
    Learning rate; default ``DEFAULT_LR["{factory}"]`` = {lr} of
    :mod:`lowrank_precond.preconditioners.defaults`. A tensor (``torch.tensor(0.01)``) stays
    the group's ``lr``, so LR schedulers update it in place and a ``torch.compile``-d step is
    not recompiled when it changes.""",
    "nonfinite": """nonfinite : {{"raise", "skip"}}
    What a non-finite step of a param group does: a NaN/inf gradient, one whose square
    overflows the working dtype, or a direction or new state that overflowed. ``"raise"``:
    ``FloatingPointError`` naming the group, with no parameter or state changed (in any
    group); ``"skip"``: that group skips the step (parameters, state and weight decay
    untouched), the others step.""",
    "weight_decay": """weight_decay : float, >= 0
    Decoupled weight decay: ``x <- x (1 - lr * weight_decay) - lr * direction``.""",
    "maximize": """maximize : bool
    Maximize instead of minimize (the gradient is negated).""",
    "process_group": """process_group : ProcessGroup or None
    With ``shard_state=True``: the processes that share the state (``None``: the default
    group).""",
    "shard_state": """shard_state : bool
    ``True``: every process of ``process_group`` keeps only its block of rows of the
    group-spanning state (``docs/scaling.rst``). With replicated parameters (DDP, gradients
    already averaged) the blocks are near-equal slices of the flattened group and each
    process's rows of the direction are all-gathered before the update; with DTensor
    parameters (FSDP2's ``fully_shard``) a process's rows are its local shards and the update
    stays local. The fused steps all-reduce only small sums (``O(rank^2)`` numbers per pass);
    the warm-up and the rare steps that the fused step declines gather the rows. Needs
    ``per_parameter=False``, ``torch.distributed`` initialised, and every process calling
    :meth:`step` together. ``optimizer.state_dict()`` then holds this process's rows: save and
    load one per process (same world size and parameters).""",
    "per_parameter": """per_parameter : bool
    ``False`` (default): one preconditioner spans the whole param group (the gradients
    flattened and concatenated: full-matrix across parameters; the group's parameters must
    share dtype and device). ``True``: one per parameter.""",
}

_SECTION_RE = re.compile(r"^([A-Z][A-Za-z ]+)\n-{3,}\n", re.MULTILINE)


def _parameter_docs(factory: Callable[..., Any]) -> dict[str, str]:
    """``name -> entry`` (header and indented description) of a numpydoc ``Parameters``."""
    doc = inspect.cleandoc(factory.__doc__ or "")
    sections = list(_SECTION_RE.finditer(doc))
    out: dict[str, str] = {}
    for i, m in enumerate(sections):
        if m.group(1).strip() != "Parameters":
            continue
        end = sections[i + 1].start() if i + 1 < len(sections) else len(doc)
        lines = doc[m.end() : end].rstrip().splitlines()
        entries: list[list[str]] = []
        for line in lines:
            if line and not line[0].isspace():
                entries.append([line])
            elif entries:
                entries[-1].append(line)
        for entry in entries:
            names = entry[0].split(" : ", 1)[0]
            text = "\n".join(entry).rstrip()
            for name in (n.strip() for n in names.split(",")):
                out[name] = text
    return out


def _named(factory: str) -> Callable[[type], type]:
    """Bind a :class:`PreconditionedOptimizer` subclass to ``factory``: its layout, an
    ``__init__`` whose signature is the factory's arguments plus the optimizer's own, and the
    ``Parameters`` section of its docstring (from the factory's docstring)."""

    def bind(cls: type) -> type:
        fn = pc.get(factory)
        layout = _FACTORY_LAYOUT[factory]
        cls.factory = factory
        cls.layout = layout
        lr_default = DEFAULT_LR[factory]
        own = {
            "weight_decay": (0.0, "float"),
            "maximize": (False, "bool"),
        }
        if layout == "vector":
            own["per_parameter"] = (cls.default_per_parameter, "bool")
        fsig = inspect.signature(fn).parameters
        if "shards" in fsig:
            own["process_group"] = (None, "ProcessGroup | None")
            own["shard_state"] = (False, "bool")
        fparams = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in fsig.values()
            if p.name not in _RUNTIME_ARGS
        ]
        kw = inspect.Parameter.KEYWORD_ONLY
        sig = inspect.Signature(
            [
                inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                inspect.Parameter(
                    "params", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="Iterable[Any]"
                ),
                inspect.Parameter(
                    "lr",
                    inspect.Parameter.POSITIONAL_OR_KEYWORD,
                    default=lr_default,
                    annotation="float | torch.Tensor",
                ),
                *fparams,
                *(inspect.Parameter(k, kw, default=v, annotation=a) for k, (v, a) in own.items()),
            ],
            return_annotation=None,
        )

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            bound = sig.bind(self, *args, **kwargs).arguments
            del bound["self"]
            params = bound.pop("params")
            lr = bound.pop("lr", lr_default)
            PreconditionedOptimizer.__init__(self, params, None, lr, **bound)

        __init__.__signature__ = sig  # type: ignore[attr-defined]
        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        __init__.__module__ = cls.__module__
        cls.__init__ = __init__

        docs = _parameter_docs(fn)
        entries, seen = [], set()

        def add(text: str) -> None:
            if text not in seen:
                seen.add(text)
                entries.append(text)

        add(_OWN_DOCS["params"])
        add(_OWN_DOCS["lr"].format(factory=factory, lr=lr_default))
        for p in fparams:
            if p.name == "nonfinite":
                add(_OWN_DOCS["nonfinite"].format())
            else:
                add(docs.get(p.name) or f"{p.name}\n    See :func:`{fn.__module__}.{factory}`.")
        for k in own:
            add(_OWN_DOCS[k])
        mine = ", ".join(f"``{k}``" for k in ("params", "lr", "nonfinite", *own))
        note = textwrap.fill(
            f"The arguments other than {mine} are those of "
            f":func:`lowrank_precond.preconditioners.{factory}`, described below in its own "
            "words; every argument but ``params`` may differ per param group.",
            width=92,
            break_on_hyphens=False,
        )
        params_section = "Parameters\n----------\n" + "\n".join(entries)
        body = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
        m = _SECTION_RE.search(body)
        head, tail = (body[: m.start()].rstrip(), body[m.start() :]) if m else (body, "")
        cls.__doc__ = "\n\n".join(x for x in (head, note, params_section, tail) if x)
        return cls

    return bind


@_named("adagram")
class AdaGram(PreconditionedOptimizer):
    """AdaGram (arXiv 2508.21106): full-matrix AdaGrad through a rank-one-updated inverse factor.

    ``direction`` is :func:`lowrank_precond.preconditioners.adagram`'s
    (:ref:`theory-adagram`): the full-matrix AdaGrad step ``G_t^{-1/2} g_t``
    (``"symmetric"``) or AdaGram's published ``L_t^{-1} g_t`` (``"published"``), with
    ``L_t L_t^T = G_t = eps I + sum g g^T``; both have norm ``< 1``, so a step moves the
    parameters by less than ``lr``. A finite ``rank=r`` keeps ``2 d r`` numbers; no ``d x d``
    tensor is ever formed. ``factor_dtype=None`` keeps a float64 factor for float32 parameters
    (:ref:`theory-adagram-numerics`); checkpoints keep that dtype.

    See Also
    --------
    PreconditionedOptimizer : the shared rules (groups, checks, state, checkpoints).

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


@_named("adamgram")
class AdamGram(PreconditionedOptimizer):
    """AdamGram: AdaGram's factor applied to Adam's bias-corrected first moment.

    ``direction`` is :func:`lowrank_precond.preconditioners.adamgram`'s
    (:ref:`theory-adamgram`): the factor is AdaGram's (built from the raw gradients), applied
    to ``m / (1 - b1^t)`` with ``m = b1 m + (1 - b1) g``. ``betas=(0.0, 0.0)`` gives AdaGram's
    iterates.

    See Also
    --------
    AdaGram, PreconditionedOptimizer

    Examples
    --------
    >>> import torch
    >>> from lowrank_precond.torch import AdamGram
    >>> x = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    >>> opt = AdamGram([x], lr=0.1, rank=None, betas=(0.5, 0.0))  # exact: memory grows
    >>> x.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    >>> _ = opt.step()
    >>> opt.state[x]["state_type"], opt.state[x]["m"].shape
    ('AdamGramState', torch.Size([2]))
    """


@_named("sketched_adagrad")
class SketchedAdaGrad(PreconditionedOptimizer):
    """Full-matrix AdaGrad with a rank-``r`` Frequent-Directions sketch of the Gram matrix.

    ``direction`` is :func:`lowrank_precond.preconditioners.sketched_adagrad`'s
    (:ref:`theory-sketched-adagrad`): ``G_fd^{-1/2} g`` with ``G_fd = (eps + rho) I + U
    diag(sig2) U^T``, a rank-``r`` sketch of ``sum g g^T`` whose discarded mass ``rho`` is added
    back to the diagonal, so ``G_exact <= G_fd <= G_exact + rho I``. Memory ``d r``, O(d r) per
    step.

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


@_named("full_matrix_adagrad")
class FullMatrixAdaGrad(PreconditionedOptimizer):
    """Dense full-matrix AdaGrad (the exact baseline; ``d x d`` memory, O(d^3) per step).

    ``direction = (eps I + sum g g^T)^{-1/2} g`` from
    :func:`lowrank_precond.preconditioners.full_matrix_adagrad`
    (:ref:`theory-full-matrix-adagrad`). For a group-spanning preconditioner ``d`` is the total
    size of the group; the first step raises ``ValueError`` when ``d > max_dim`` (use
    :class:`AdaGram` or :class:`SketchedAdaGrad`).

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


@_named("adadiag")
class AdaDiag(PreconditionedOptimizer):
    """AdaDiag / AdaDiag++ (arXiv 2502.07488): Adam in a refreshed SVD basis of each matrix.

    One preconditioner per parameter, from :func:`lowrank_precond.preconditioners.adadiag`
    (:ref:`theory-adadiag`). Parameter shapes: 2-D as they are (the smaller side is rotated);
    1-D as a ``1 x d`` row, where one-sided AdaDiag *is* Adam (a two-sided ``1 x d`` needs a
    dense ``d x d`` ``Q``); 0-D as a 1-element vector; more than two dimensions (conv kernels)
    as ``(shape[0], prod(shape[1:]))``.

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


@_named("asgo")
class ASGO(PreconditionedOptimizer):
    """ASGO (arXiv 2503.20762): ``(V + eps I)^{-1/2} G`` with ``V = sum G G^T`` per matrix.

    One preconditioner per parameter, from :func:`lowrank_precond.preconditioners.asgo`
    (:ref:`theory-asgo`). Parameter shapes: 2-D as they are (``side`` picks the preconditioned
    side); 1-D as a ``d x 1`` column (the factory's rule): with ``side="left"`` that is
    full-matrix AdaGrad on the vector (a ``d x d`` ``V``), with ``side="right"`` AdaGrad-Norm
    -- put large vectors (biases, norms) in their own param group with ``side="right"`` to avoid
    the ``d x d`` matrix; 0-D as a 1-element vector; more than two dimensions (conv kernels) as
    ``(shape[0], prod(shape[1:]))``.

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


@_named("adagrad")
class AdaGrad(PreconditionedOptimizer):
    """Diagonal AdaGrad (baseline, on the same machinery as the full-matrix methods).

    ``direction = g / sqrt(eps + h)`` (default, the package's AdaGrad-family eps) or
    ``g / (sqrt(h) + eps)`` with ``eps_inside_sqrt=False``, ``h = sum g * g``
    (:func:`lowrank_precond.preconditioners.adagrad`, :ref:`theory-baselines`). With
    ``eps_inside_sqrt=False`` and no weight decay the iterates are those of
    ``torch.optim.Adagrad(lr, eps=eps)`` (its ``lr_decay=0``, ``initial_accumulator_value=0``);
    note that torch's weight decay is an L2 term, this one is decoupled.

    See Also
    --------
    Adam, PreconditionedOptimizer

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


@_named("adam")
class Adam(PreconditionedOptimizer):
    """Adam with decoupled weight decay (AdamW), on the same machinery as the other classes.

    ``direction`` from :func:`lowrank_precond.preconditioners.adam` (:ref:`theory-baselines`);
    the iterates equal ``torch.optim.AdamW(lr, betas, eps, weight_decay)``
    (``torch.optim.Adam`` without weight decay) to rounding.

    See Also
    --------
    AdaGrad, PreconditionedOptimizer

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
