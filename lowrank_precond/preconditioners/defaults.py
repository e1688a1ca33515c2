"""The library's recommended defaults: one table, read by every wrapper.

:func:`lowrank_precond.minimize`, :func:`lowrank_precond.scipy_method`, the
``torch.optim`` classes of :mod:`lowrank_precond.torch` and ``lowrank-precond compare`` all take
their default learning rate from :data:`DEFAULT_LR`, and ``minimize`` its default method from
:data:`DEFAULT_METHOD`; ``docs/choosing.rst`` documents the same numbers (a test checks it).
"""

from __future__ import annotations

__all__ = ["DEFAULT_LR", "DEFAULT_METHOD"]

#: the method :func:`lowrank_precond.minimize` runs when no ``method`` is given
DEFAULT_METHOD = "sketched_adagrad"

#: default learning rate of each method: the smallest lr that won the tuning of
#: ``lowrank-precond compare`` (full batch, 200 epochs, lr grid 1e-3 ... 10 in half decades) over
#: the five bundled standardized data sets, rounded down; a safe start, not a tuned value.
DEFAULT_LR: dict[str, float] = {
    "adagram": 0.03,
    "adamgram": 0.03,
    "sketched_adagrad": 0.3,
    "adadiag": 0.1,
    "asgo": 0.3,
    "adagrad": 0.3,
    "adam": 0.1,
    "full_matrix_adagrad": 0.3,
}
