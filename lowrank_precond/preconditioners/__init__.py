"""Stateful preconditioners with an explicit-state protocol (``init`` / ``update``).

``from lowrank_precond import preconditioners as pc``; every factory returns a
:class:`~lowrank_precond.preconditioners.base.Preconditioner`::

    pre = pc.adagram(rank=5)
    state = pre.init(x)
    direction, state = pre.update(grad, state)
    x = x - lr * direction

Methods: ``adagram``, ``adamgram`` (AdaGram, arXiv 2508.21106), ``sketched_adagrad``
(Frequent-Directions sketch of full-matrix AdaGrad), ``adadiag`` (AdaDiag / AdaDiag++,
arXiv 2502.07488), ``asgo`` (arXiv 2503.20762) and the baselines ``adagrad``, ``adam`` and
``full_matrix_adagrad`` (dense, small ``d`` only).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_PUBLIC = {
    "Preconditioner": "base",
    "adagram": "adagram",
    "adamgram": "adagram",
    "sketched_adagrad": "sketched",
    "adadiag": "adadiag",
    "asgo": "asgo",
    "adagrad": "diagonal",
    "adam": "diagonal",
    "full_matrix_adagrad": "full",
}

#: every method name accepted by ``lowrank_precond.minimize`` and the torch wrappers
METHODS = (
    "adagram",
    "adamgram",
    "sketched_adagrad",
    "adadiag",
    "asgo",
    "adagrad",
    "adam",
    "full_matrix_adagrad",
)

__all__ = sorted(_PUBLIC) + ["METHODS", "get"]


def get(name: str) -> Any:
    """Return the factory of method ``name`` (one of :data:`METHODS`)."""
    if name not in METHODS:
        raise ValueError(f"method: unknown preconditioner {name!r}; expected one of {METHODS}")
    return globals().get(name) or __getattr__(name)


def __getattr__(name: str) -> Any:
    try:
        module = _PUBLIC[name]
    except KeyError:
        raise AttributeError(
            f"module 'lowrank_precond.preconditioners' has no attribute {name!r}"
        ) from None
    value = getattr(importlib.import_module(f"lowrank_precond.preconditioners.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keep ``pc.adadiag`` (``asgo``, ``adagram``) the factory, not the same-named submodule.

    Importing a submodule makes the import system ``setattr`` it on this package, which
    would shadow the lazily resolved factory of the same name (and ``get``). The factory is
    bound instead; the submodule stays available from ``sys.modules`` (``from
    lowrank_precond.preconditioners.adadiag import AdaDiagState`` works as usual).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _PUBLIC.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
