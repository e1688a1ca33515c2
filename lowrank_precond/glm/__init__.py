"""Generalized linear models: families, objectives ``fun(w) -> (loss, grad)``, real data sets.

Theory: :ref:`theory-glm-losses`. The losses are written against the array API standard, so NumPy,
PyTorch, CuPy (and ``array_api_strict``) arrays go in and the same kind comes out.

Public names
------------
objective    ``objective(family, A, y, lam=0.0, batch_size=None, rng=None,
             fit_intercept=False) -> Objective`` (a callable ``fun(w) -> (loss, grad)``)
Objective    the class of those callables
family       ``family(name, **options) -> Family``
FAMILIES     read-only mapping name -> family with default options
Logistic, Multinomial, LeastSquares, Poisson, Family
             the family classes
datasets     module: ``datasets.load(name, split=None, ...) -> (A, y, info)``,
             ``datasets.names()``, ``datasets.train_test_split``

Note that ``lowrank_precond.glm.objective`` is the *function*; the module that defines it
is reached with ``from lowrank_precond.glm.objective import Objective``.

Examples
--------
>>> import numpy as np
>>> from lowrank_precond.glm import datasets, objective
>>> A, y, info = datasets.load("breast_cancer")
>>> fun = objective(info["family"], A, y, lam=info["lam"], fit_intercept=True)
>>> loss, grad = fun(fun.zeros())
>>> bool(np.isclose(loss, np.log(2.0))), grad.shape
(True, (31,))
"""

from __future__ import annotations

from lowrank_precond.glm import datasets
from lowrank_precond.glm.families import (
    FAMILIES,
    Family,
    LeastSquares,
    Logistic,
    Multinomial,
    Poisson,
    family,
)
from lowrank_precond.glm.objective import Objective, objective

__all__ = [
    "FAMILIES",
    "Family",
    "LeastSquares",
    "Logistic",
    "Multinomial",
    "Objective",
    "Poisson",
    "datasets",
    "family",
    "objective",
]
