"""The preconditioner protocol shared by every method.

A preconditioner is a pair of pure functions (optax-style, explicit state)::

    state = pre.init(x)                      # x: the parameter (any shape)
    direction, state = pre.update(g, state)  # g: gradient, same shape and backend as x
    x = x - lr * direction                   # the caller's job (and weight decay too)

``state`` is a *flat* dataclass whose fields are arrays, Python ints and floats (no nested
dataclasses), so ``dataclasses.asdict(state)`` is a checkpoint and
``type(state)(**d)`` restores it; moving a state to another device is
``to_device`` on each array field.

Non-finite gradients are handled once, here, by :func:`guard_nonfinite`: ``"raise"``
(default) raises ``FloatingPointError`` before the state is touched; ``"skip"`` returns a
zero direction and the very same state object.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lowrank_precond.backends import (
    all_finite,
    array_namespace,
    check_floating,
    check_in,
    device_of,
    name_of,
    quiet_floating_point,
)
from lowrank_precond.backends.shards import Shards
from lowrank_precond.preconditioners._common import safe_norm

__all__ = [
    "NONFINITE",
    "NonFiniteStep",
    "check_statistic",
    "Preconditioner",
    "guard_nonfinite",
    "make_preconditioner",
    "state_from_dict",
    "state_to_dict",
]

NONFINITE = ("raise", "skip")

InitFn = Callable[[Any], Any]
UpdateFn = Callable[[Any, Any], tuple[Any, Any]]


@dataclass(frozen=True)
class Preconditioner:
    """A named pair ``(init, update)`` plus the hyper-parameters it was built with.

    Attributes
    ----------
    name : str
        The factory's name, e.g. ``"adagram"``.
    init : callable
        ``init(x) -> state``.
    update : callable
        ``update(grad, state) -> (direction, state)``; ``direction`` has ``grad``'s shape,
        dtype and backend.
    hyperparams : dict
        The validated arguments of the factory (for logging and ``repr``).
    update_unchecked : callable
        ``update`` without the checks of the public entry point (finite gradient of the
        state's size, finite direction): for wrappers that have already checked their inputs
        once (the ``torch.optim`` classes check every group's gradients together). Defaults
        to ``update``.
    update_overwriting : callable or None
        ``update_unchecked`` that may write the new state into the memory of the old one's
        arrays (an in-place step: one buffer read and written instead of two, and no second
        copy of the state). The caller must not read the old state after it returns; if it
        raises, the old state is unchanged. ``None`` where the method has no such step.
        The ``torch.optim`` classes use it for the last update of a step, once every other
        check of that step has passed.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond import preconditioners as pc
    >>> pre = pc.adagrad(eps=1e-8)
    >>> pre.name, pre.hyperparams["eps"]
    ('adagrad', 1e-08)
    >>> state = pre.init(np.zeros(2))
    >>> direction, state = pre.update(np.array([3.0, -4.0]), state)
    >>> bool(np.allclose(direction, [1.0, -1.0]))  # g / sqrt(eps + g^2) on the first step
    True
    """

    name: str
    init: InitFn
    update: UpdateFn
    hyperparams: dict[str, Any] = field(default_factory=dict)
    update_unchecked: UpdateFn | None = field(default=None, repr=False, compare=False)
    update_overwriting: UpdateFn | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.update_unchecked is None:
            object.__setattr__(self, "update_unchecked", self.update)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams.items())
        return f"{self.name}({args})"


def _overflow_bound(xp: Any, dtype: Any) -> float:
    """Largest ``|g|`` whose square (and a few sums of squares) the working dtype can hold."""
    halves = [getattr(xp, name) for name in ("float16", "bfloat16") if hasattr(xp, name)]
    if any(dtype == h for h in halves):
        dtype = xp.float32  # half-precision arithmetic is done in float32
    return math.sqrt(float(xp.finfo(dtype).max)) / 4.0


class NonFiniteStep(FloatingPointError):
    """Raised inside a step whose accumulated statistics overflowed (see :func:`check_statistic`).

    :func:`guard_nonfinite` turns it into the method's ``nonfinite`` behaviour; it never
    reaches a caller of a checked ``update``.
    """


def check_statistic(name: str, value: Any) -> None:
    """Raise :class:`NonFiniteStep` unless the new statistic ``value`` (array or float) is finite.

    Called by a step right after it accumulates ``g^2`` or ``g g^T`` into ``value``, before
    anything is derived from it (an eigendecomposition of a matrix holding ``inf`` would fail
    with a less useful error).
    """
    ok = math.isfinite(value) if isinstance(value, (int, float)) else all_finite(value)
    if not ok:
        raise NonFiniteStep(f"grad: the accumulated statistics ({name}) overflowed to inf")


def _check_same_kind(grad: Any, state: Any) -> None:
    """``TypeError``/``ValueError`` naming ``grad`` unless it is of the state's kind and device."""
    for f in dataclasses.fields(state):
        held = getattr(state, f.name)
        if isinstance(held, (int, float)) or not hasattr(held, "shape"):
            continue
        if name_of(grad) != name_of(held):
            raise TypeError(
                f"grad: a {name_of(grad)} array, but the state holds {name_of(held)} arrays "
                "(initialise the state from a parameter of the gradient's kind)"
            )
        if str(device_of(grad)) != str(device_of(held)):
            raise ValueError(
                f"grad: on device {device_of(grad)}, but the state is on {device_of(held)} "
                "(move one of them)"
            )
        return


def guard_nonfinite(update: UpdateFn, nonfinite: str, shards: Shards | None = None) -> UpdateFn:
    """Wrap ``update`` (the unchecked step) in the checks of the public entry point.

    One mechanism for every method, so that a bad step is one event with one behaviour:

    1. ``grad`` must be a real floating array of the state's kind (NumPy, torch, ...) and
       device (``TypeError`` / ``ValueError`` naming ``grad`` otherwise);
    2. a *non-finite step* is a gradient with NaN/inf, a finite gradient so large that its
       square overflows the working dtype (``|g| >= sqrt(finfo.max) / 4``: every method
       accumulates ``g g^T`` or ``g^2``), a step whose accumulated statistics overflow
       (the step raises :class:`NonFiniteStep`, see :func:`check_statistic`), or a step whose
       direction comes out NaN/inf;
    3. on a non-finite step, ``nonfinite="raise"`` raises ``FloatingPointError`` and
       ``"skip"`` returns ``zeros_like(grad)`` and the very same ``state`` object; either way
       the state is bit-identical (``update`` never writes into the state it receives).

    Parameters
    ----------
    update : callable
        ``update(grad, state) -> (direction, state)``, the method's step without checks.
    nonfinite : {"raise", "skip"}
        What a non-finite step does (above).
    shards : Shards, optional
        ``grad`` and the direction are this process's rows: the checks are decided on the
        whole vectors (one ``shards.allreduce`` of two numbers before the step and one
        after), so that every process takes the same decision.
    """
    check_in("nonfinite", nonfinite, NONFINITE)

    def norm_verdict(xp: Any, grad: Any) -> tuple[bool, float, float]:
        """``(finite, |grad|, bound)`` of the whole gradient."""
        n = safe_norm(grad) if math.prod(grad.shape) else 0.0
        bound = _overflow_bound(xp, grad.dtype)
        if shards is None:
            return math.isfinite(n), n, bound
        ok = math.isfinite(n)
        # the whole norm, scaled by the bound so that the sum of squares cannot overflow
        scaled = min(n / bound, 1.0) ** 2 if ok else 0.0
        bad, total = shards.allreduce([0.0 if ok else 1.0, scaled])
        return bad == 0.0, bound * math.sqrt(total), bound

    def direction_finite(direction: Any) -> bool:
        ok = all_finite(direction) if math.prod(direction.shape) else True
        if shards is None:
            return ok
        return shards.allreduce([0.0 if ok else 1.0])[0] == 0.0

    def reject(grad: Any, state: Any, why: str) -> tuple[Any, Any]:
        if nonfinite == "raise":
            raise FloatingPointError(
                f"{why}; the preconditioner state was left unchanged (pass "
                "nonfinite='skip' to skip such steps)"
            )
        return array_namespace(grad).zeros_like(grad), state

    def guarded(grad: Any, state: Any) -> tuple[Any, Any]:
        xp = check_floating("grad", grad)
        _check_same_kind(grad, state)
        finite, n, bound = norm_verdict(xp, grad)
        if not finite:
            return reject(grad, state, "grad: contains NaN or inf")
        if n >= bound:
            return reject(
                grad,
                state,
                f"grad: |grad| = {n:.3g} is too large for {grad.dtype} arithmetic (its square "
                f"overflows; the largest accepted norm is {bound:.3g}): rescale the loss",
            )
        try:
            with quiet_floating_point(grad):
                direction, new = update(grad, state)
        except NonFiniteStep as exc:
            return reject(grad, state, str(exc))  # noqa: B904 (re-raised below, chained)
        if not direction_finite(direction):
            return reject(grad, state, "direction: the step overflowed to NaN or inf")
        return direction, new

    guarded.__doc__ = update.__doc__
    guarded.__name__ = getattr(update, "__name__", "update")
    return guarded


def make_preconditioner(
    name: str,
    init: InitFn,
    update: UpdateFn,
    hyperparams: dict[str, Any],
    update_overwriting: UpdateFn | None = None,
    shards: Shards | None = None,
) -> Preconditioner:
    """The :class:`Preconditioner` of a factory: ``update`` checked once, at this entry point.

    ``update`` is the method's unchecked step (it becomes
    :attr:`Preconditioner.update_unchecked`); the public ``update`` is
    :func:`guard_nonfinite` of it with ``hyperparams["nonfinite"]``.
    ``update_overwriting``: its in-place form, if any (:attr:`Preconditioner.update_overwriting`).
    """
    guarded = guard_nonfinite(update, hyperparams["nonfinite"], shards)
    return Preconditioner(
        name,
        init,
        guarded,
        hyperparams,
        update_unchecked=update,
        update_overwriting=update_overwriting,
    )


def state_to_dict(state: Any) -> dict[str, Any]:
    """A flat ``dict`` of the state's fields (arrays are not copied)."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}


def state_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a state of dataclass type ``cls`` from :func:`state_to_dict` output.

    Raises ``ValueError`` naming ``data`` for unknown or missing fields, and ``TypeError`` for
    a field whose value is not of its declared kind (an array, an ``int`` or a ``float``), so
    that a corrupted or foreign checkpoint fails here and not inside the next step.

    Examples
    --------
    >>> from lowrank_precond.preconditioners.diagonal import AdaGradState
    >>> state_from_dict(AdaGradState, {"t": 1})
    Traceback (most recent call last):
    ...
    ValueError: data: AdaGradState needs the fields ['h'], which are missing
    """
    upgrade = getattr(cls, "upgrade_fields", None)
    if upgrade is not None:  # a state class that reads checkpoints of an earlier layout
        data = upgrade(data)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"data: unknown fields {sorted(unknown)} for {cls.__name__}")
    missing = [
        name
        for name, f in fields.items()
        if name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"data: {cls.__name__} needs the fields {missing}, which are missing")
    for name, value in data.items():
        _check_field(cls.__name__, name, fields[name].type, value)
    return cls(**data)


def _check_field(owner: str, name: str, declared: Any, value: Any) -> None:
    kind = declared if isinstance(declared, str) else getattr(declared, "__name__", "")
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:  # an array field
        ok = hasattr(value, "shape") and hasattr(value, "dtype")
    if not ok:
        want = kind if kind in ("int", "float", "str") else "an array"
        raise TypeError(
            f"data[{name!r}]: {owner}.{name} must be {want}, got {type(value).__name__}"
        )
