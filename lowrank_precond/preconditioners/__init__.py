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

from collections.abc import Callable

# Importing a submodule binds it on this package; the ``from`` imports below then rebind
# the public name to the factory of the same name (``adadiag``, ``asgo``, ``adagram``).
from lowrank_precond.preconditioners.adadiag import adadiag
from lowrank_precond.preconditioners.adagram import adagram, adamgram
from lowrank_precond.preconditioners.asgo import asgo
from lowrank_precond.preconditioners.base import Preconditioner
from lowrank_precond.preconditioners.compose import (
    Transform,
    add_decayed_weights,
    apply_updates,
    chain,
    precondition,
    scale_by,
    scale_by_learning_rate,
)
from lowrank_precond.preconditioners.diagonal import adagrad, adam
from lowrank_precond.preconditioners.full import full_matrix_adagrad
from lowrank_precond.preconditioners.sketched import sketched_adagrad

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

_FACTORIES: dict[str, Callable[..., Preconditioner]] = {
    "adagram": adagram,
    "adamgram": adamgram,
    "sketched_adagrad": sketched_adagrad,
    "adadiag": adadiag,
    "asgo": asgo,
    "adagrad": adagrad,
    "adam": adam,
    "full_matrix_adagrad": full_matrix_adagrad,
}

__all__ = [
    "METHODS",
    "Preconditioner",
    "Transform",
    "add_decayed_weights",
    "apply_updates",
    "chain",
    "precondition",
    "scale_by",
    "scale_by_learning_rate",
    "adadiag",
    "adagrad",
    "adagram",
    "adam",
    "adamgram",
    "asgo",
    "full_matrix_adagrad",
    "get",
    "sketched_adagrad",
]


def get(name: str) -> Callable[..., Preconditioner]:
    """Return the factory of method ``name`` (one of :data:`METHODS`).

    Examples
    --------
    >>> from lowrank_precond import preconditioners as pc
    >>> pc.get("adagram") is pc.adagram
    True
    """
    try:
        return _FACTORIES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"method: unknown preconditioner {name!r}; expected one of {METHODS}"
        ) from None
