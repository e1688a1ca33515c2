"""Composition: methods built from a curvature estimate, a first moment and outer transforms.

Two layers, each one mechanism used by every method.

**A curvature and what it is applied to.** The full-matrix methods split into a *curvature*
-- what the method learns from each gradient (AdaGram's inverse factor, the Gram sketch) and
how it applies what it learnt to a vector -- and the vector it is applied to: the gradient
itself, or Adam's bias-corrected first moment ``m_hat``. :func:`precondition` composes the
two::

    adagram(...)                          = precondition(AdaGram curvature)
    adamgram(..., betas=(b1, 0))          = precondition(AdaGram curvature, momentum=b1)
    sketched_adagrad(..., betas=(0, b2))  = precondition(sketch curvature)
    sketched_adagrad(..., betas=(b1, b2)) = precondition(sketch curvature, momentum=b1)

so the first moment, its bias correction and the zero-gradient rules are written once.

**Outer transforms** (optax-style, one signature ``update(updates, state, params=None) ->
(updates, state)``): :func:`scale_by` (a preconditioner), :func:`add_decayed_weights`
(decoupled weight decay), :func:`scale_by_learning_rate` and :func:`chain`, applied with
:func:`apply_updates`. ``lowrank_precond.minimize`` steps with exactly
``chain(scale_by(pre), add_decayed_weights(wd), scale_by_learning_rate(lr))``.

See ``docs/architecture.rst`` for where a new method goes.

Examples
--------
>>> import numpy as np
>>> from lowrank_precond import preconditioners as pc
>>> from lowrank_precond.preconditioners.compose import (
...     add_decayed_weights, apply_updates, chain, scale_by, scale_by_learning_rate)
>>> opt = chain(scale_by(pc.adagrad()), add_decayed_weights(0.1), scale_by_learning_rate(0.5))
>>> x = np.array([1.0, -2.0])
>>> state = opt.init(x)
>>> updates, state = opt.update(np.array([3.0, -4.0]), state, x)
>>> apply_updates(x, updates)  # x - 0.5 * (g / sqrt(eps + g^2) + 0.1 x)
array([ 0.45, -1.4 ])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from lowrank_precond.backends import array_namespace, check_positive
from lowrank_precond.backends.shards import Shards
from lowrank_precond.preconditioners._common import as_direction, bias_correction, ema
from lowrank_precond.preconditioners.base import Preconditioner, make_preconditioner
from lowrank_precond.preconditioners.sharded import ShardedCurvature

__all__ = [
    "Curvature",
    "CurvatureView",
    "Transform",
    "add_decayed_weights",
    "apply_updates",
    "chain",
    "precondition",
    "scale_by",
    "scale_by_learning_rate",
]


# --------------------------------------------------------------------------- curvature


class CurvatureView(Protocol):
    """The preconditioner after one observed gradient (what :meth:`Curvature.observe` returns).

    ``own()`` is the direction of the observed gradient itself (often cheaper than ``apply``
    of it: AdaGram's published direction is ``gbar / s``); ``apply(v)`` preconditions any
    ``(d,)`` vector in the factor dtype. Both return ``(d,)`` arrays in the factor dtype.

    Examples
    --------
    A view that scales by a constant (``own`` and ``apply`` agree on the observed ``g``):

    >>> import numpy as np
    >>> class Scaled:
    ...     def __init__(self, g, c): self.g, self.c = g, c
    ...     def own(self): return self.c * self.g
    ...     def apply(self, v): return self.c * v
    >>> Scaled(np.ones(2), 0.5).own()
    array([0.5, 0.5])
    """

    def own(self) -> Any: ...

    def apply(self, v: Any) -> Any: ...


class Curvature(Protocol):
    """What a full-matrix method learns from gradients, and how it applies it.

    Attributes
    ----------
    state_cls : type
        The flat state dataclass whose fields :meth:`init` and :meth:`observe` return.
    momentum_state_cls : type
        ``state_cls`` plus the fields ``count: int`` and ``m`` (the first moment).

    Examples
    --------
    A new method is a curvature plus :func:`precondition`; see :doc:`/architecture` for a
    worked example. The library's own curvatures are behind ``adagram`` and
    ``sketched_adagrad``:

    >>> from lowrank_precond import preconditioners as pc
    >>> pc.sketched_adagrad(rank=2, betas=(0.9, 0.0)).name
    'sketched_adagrad'
    """

    state_cls: type
    momentum_state_cls: type

    def init(self, x: Any) -> dict[str, Any]:
        """The fields of a new state for parameter ``x``."""
        ...

    def flat(self, grad: Any, state: Any) -> Any:
        """``grad`` as a ``(d,)`` vector in the state's factor dtype."""
        ...

    def observe(self, grad: Any, state: Any, *, own: bool) -> tuple[dict | None, CurvatureView]:
        """Learn from ``grad``: the new state's fields (``None``: nothing changed) and the view.

        ``own=False`` promises that only ``view.apply`` will be called (a fused step that
        computes only the gradient's own direction must not be used then). A curvature with
        a true class attribute ``supports_overwrite`` also takes ``overwrite=True``: it may
        then write the new fields into the memory of ``state``'s arrays, which the caller
        promises never to read again once ``observe`` returns (if it raises, ``state`` must
        be unchanged).
        """
        ...

    def fields(self, state: Any) -> dict[str, Any]:
        """The curvature's fields of ``state`` (without the moment's)."""
        ...


def precondition(
    name: str,
    curvature: Curvature,
    hyperparams: dict[str, Any],
    *,
    momentum: float = 0.0,
    shards: Shards | None = None,
) -> Preconditioner:
    """The :class:`Preconditioner` that applies ``curvature`` to the gradient or its moment.

    With ``momentum = b1 = 0`` each step is ``direction = view.own()`` of the observed
    gradient, and a gradient the curvature ignores (it returns no new fields, e.g. ``g = 0``)
    gives a zero direction and the very same state. With ``b1 > 0``::

        m = b1 m + (1 - b1) g;   count += 1;   direction = view.apply(m / (1 - b1^count))

    every finite gradient is a moment step (a zero one too: ``m`` decays), and the state is
    ``curvature.momentum_state_cls`` (the curvature's fields plus ``count`` and ``m``, in the
    factor dtype).

    Parameters
    ----------
    name : str
        The method's name (``Preconditioner.name``).
    curvature : Curvature
        See :class:`Curvature`.
    hyperparams : dict
        The factory's validated arguments (must hold ``"nonfinite"``).
    momentum : float in [0, 1)
        ``b1`` above (validated by the factory).
    shards : Shards, optional
        Split the curvature's row fields over processes
        (:class:`~lowrank_precond.preconditioners.sharded.ShardedCurvature`); the moment ``m``
        then holds this process's rows too.

    Examples
    --------
    :func:`~lowrank_precond.preconditioners.adamgram` is this composition:

    >>> import numpy as np
    >>> from lowrank_precond import preconditioners as pc
    >>> pre = pc.adamgram(rank=None, eps=1.0, betas=(0.5, 0.0))
    >>> state = pre.init(np.zeros(2))
    >>> p, state = pre.update(np.array([3.0, 4.0]), state)
    >>> state.count, state.m
    (1, array([1.5, 2. ]))
    """
    b1 = momentum
    if shards is not None:
        curvature = ShardedCurvature(curvature, shards)
    if b1 == 0.0:
        state_cls = curvature.state_cls

        def init(x: Any) -> Any:
            return state_cls(**curvature.init(x))

        def step(grad: Any, state: Any, **overwrite: bool) -> tuple[Any, Any]:
            fields, view = curvature.observe(grad, state, own=True, **overwrite)
            if fields is None:
                return array_namespace(grad).zeros_like(grad), state
            return as_direction(view.own(), grad), state_cls(**fields)

        def update(grad: Any, state: Any) -> tuple[Any, Any]:
            return step(grad, state)

        overwriting = None
        if getattr(curvature, "supports_overwrite", False):

            def overwriting(grad: Any, state: Any) -> tuple[Any, Any]:
                return step(grad, state, overwrite=True)

        return make_preconditioner(name, init, update, hyperparams, overwriting, shards)

    moment_cls = curvature.momentum_state_cls

    def init_moment(x: Any) -> Any:
        fields = curvature.init(x)
        state = curvature.state_cls(**fields)
        xp = array_namespace(x)
        m = xp.zeros_like(curvature.flat(xp.reshape(x, (-1,)), state))
        return moment_cls(**fields, count=0, m=m)

    def update_moment(grad: Any, state: Any) -> tuple[Any, Any]:
        fields, view = curvature.observe(grad, state, own=False)
        if fields is None:  # no curvature step: keep its fields as they are
            fields = curvature.fields(state)
        count = state.count + 1
        m = ema(state.m, curvature.flat(grad, state), b1)
        p = view.apply(m / bias_correction(b1, count))
        return as_direction(p, grad), moment_cls(**fields, count=count, m=m)

    return make_preconditioner(name, init_moment, update_moment, hyperparams, shards=shards)


# --------------------------------------------------------------------------- transforms


@dataclass(frozen=True)
class Transform:
    """A pair ``init(params) -> state``, ``update(updates, state, params=None) -> (updates,
    state)`` (optax's ``GradientTransformation``), composable with :func:`chain`.

    Examples
    --------
    >>> import numpy as np
    >>> double = Transform(lambda params: (), lambda u, s, params=None: (2 * u, s))
    >>> double.update(np.ones(2), double.init(None))[0]
    array([2., 2.])
    """

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]


def scale_by(pre: Preconditioner) -> Transform:
    """A preconditioner as a transform: ``updates -> pre.update(updates, state)``.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond import preconditioners as pc
    >>> t = scale_by(pc.adagrad(eps=1e-300))
    >>> t.update(np.array([2.0, -3.0]), t.init(np.zeros(2)))[0]
    array([ 1., -1.])
    """

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        return pre.update(updates, state)

    return Transform(pre.init, update)


def add_decayed_weights(weight_decay: float) -> Transform:
    """Decoupled weight decay: ``updates + weight_decay * params`` (stateless).

    Placed after the preconditioner and before :func:`scale_by_learning_rate`, the step is
    ``x <- x - lr (p + weight_decay x)`` (AdamW's form).

    Examples
    --------
    >>> import numpy as np
    >>> add_decayed_weights(0.1).update(np.zeros(2), (), np.array([1.0, 2.0]))[0]
    array([0.1, 0.2])
    """
    wd = check_positive("weight_decay", weight_decay, allow_zero=True)

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        if wd == 0.0:
            return updates, state
        if params is None:
            raise ValueError("params: add_decayed_weights needs the parameters")
        return updates + wd * params, state

    return Transform(lambda params: (), update)


def scale_by_learning_rate(lr: float) -> Transform:
    """``updates -> -lr * updates`` (stateless), so that :func:`apply_updates` descends.

    Examples
    --------
    >>> import numpy as np
    >>> scale_by_learning_rate(0.5).update(np.array([1.0, -2.0]), ())[0]
    array([-0.5,  1. ])
    """
    rate = check_positive("lr", lr, allow_zero=True)

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        return -rate * updates, state

    return Transform(lambda params: (), update)


def chain(*transforms: Transform) -> Transform:
    """Apply ``transforms`` in order; the state is the tuple of their states.

    Examples
    --------
    >>> import numpy as np
    >>> t = chain(add_decayed_weights(1.0), scale_by_learning_rate(0.1))
    >>> t.update(np.zeros(1), t.init(None), np.array([2.0]))[0]
    array([-0.2])
    """

    def init(params: Any) -> tuple[Any, ...]:
        return tuple(t.init(params) for t in transforms)

    def update(updates: Any, state: tuple[Any, ...], params: Any = None) -> tuple[Any, Any]:
        new = []
        for t, s in zip(transforms, state, strict=True):
            updates, s = t.update(updates, s, params)
            new.append(s)
        return updates, tuple(new)

    return Transform(init, update)


def apply_updates(params: Any, updates: Any) -> Any:
    """``params + updates`` (a new array).

    Examples
    --------
    >>> import numpy as np
    >>> apply_updates(np.ones(2), np.array([-0.5, 0.5]))
    array([0.5, 1.5])
    """
    return params + updates
