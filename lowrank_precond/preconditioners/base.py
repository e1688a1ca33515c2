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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lowrank_precond.backends import all_finite, array_namespace, check_floating, check_in

__all__ = [
    "NONFINITE",
    "Preconditioner",
    "guard_nonfinite",
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

    def __post_init__(self) -> None:
        if self.update_unchecked is None:
            object.__setattr__(self, "update_unchecked", self.update)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams.items())
        return f"{self.name}({args})"


def guard_nonfinite(update: UpdateFn, nonfinite: str) -> UpdateFn:
    """Wrap ``update`` so that a gradient with NaN/inf never reaches the state.

    Parameters
    ----------
    update : callable
        ``update(grad, state) -> (direction, state)``, called only on finite gradients.
    nonfinite : {"raise", "skip"}
        ``"raise"``: ``FloatingPointError``; ``"skip"``: return ``zeros_like(grad)`` and the
        unchanged ``state`` (the same object, so it is bit-identical).
    """
    check_in("nonfinite", nonfinite, NONFINITE)

    def guarded(grad: Any, state: Any) -> tuple[Any, Any]:
        check_floating("grad", grad)
        if all_finite(grad):
            return update(grad, state)
        if nonfinite == "raise":
            raise FloatingPointError(
                "grad: contains NaN or inf; the preconditioner state was left unchanged "
                "(pass nonfinite='skip' to skip such steps)"
            )
        xp = array_namespace(grad)
        return xp.zeros_like(grad), state

    guarded.__doc__ = update.__doc__
    guarded.__name__ = getattr(update, "__name__", "update")
    return guarded


def state_to_dict(state: Any) -> dict[str, Any]:
    """A flat ``dict`` of the state's fields (arrays are not copied)."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}


def state_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a state of dataclass type ``cls`` from :func:`state_to_dict` output."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"data: unknown fields {sorted(unknown)} for {cls.__name__}")
    return cls(**data)
