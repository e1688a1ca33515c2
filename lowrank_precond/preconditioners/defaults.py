"""The library's recommended defaults: one table, read by every wrapper.

:func:`lowrank_precond.minimize`, :func:`lowrank_precond.scipy_method`, the
``torch.optim`` classes of :mod:`lowrank_precond.torch` and ``lowrank-precond compare`` all take
their default learning rate from :data:`DEFAULT_LR`, and ``minimize`` its default method from
:data:`DEFAULT_METHOD`; ``docs/choosing.rst`` documents the same numbers (a test checks it).
"""

from __future__ import annotations

__all__ = ["DEFAULT_LR", "DEFAULT_METHOD"]

#: the method :func:`lowrank_precond.minimize` runs when no ``method`` is given: sketched
#: full-matrix AdaGrad at its factory's default rank (5), the low-rank method that
#: ``docs/choosing.rst`` recommends (its truncation never steps further than full-matrix
#: AdaGrad; see ``docs/theory.rst``, "Sketched full-matrix AdaGrad")
DEFAULT_METHOD = "sketched_adagrad"

#: default learning rate of each method (keys: ``lowrank_precond.preconditioners.METHODS``).
#: Each is the smallest lr that won the tuning of ``lowrank-precond compare`` (full batch,
#: 200 epochs, lr grid 1e-3 ... 10 in half decades) over the five bundled standardized data
#: sets, rounded down: a safe start, not a tuned value. Two are measured for the current
#: defaults instead. ``sketched_adagrad`` (rank 5, the default method): 1.0, the largest rate
#: of that grid with which it reached 1e-6 relative suboptimality on all five data sets within
#: 5000 steps (3.16 stalled at 4.1 on randhie; 0.3 took 3.7x and 4.6x the steps of 1.0 to 1e-4
#: on heart_scale and breast_cancer and left digits at 1.7e-2 after 5000 steps). ``adagram``
#: (its default symmetric direction at rank 5): 0.01, which reached 1e-4 within 1000 steps on
#: breast_cancer, diabetes, heart_scale and randhie, where 0.03 (the published direction's
#: rate) did so on heart_scale only.
DEFAULT_LR: dict[str, float] = {
    "adagram": 0.01,
    "adamgram": 0.03,
    "sketched_adagrad": 1.0,
    "adadiag": 0.1,
    "asgo": 0.3,
    "adagrad": 0.3,
    "adam": 0.1,
    "full_matrix_adagrad": 0.3,
}
