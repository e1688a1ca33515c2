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
LogisticRegression, LeastSquaresRegression, PoissonRegression
             scikit-learn estimators (need scikit-learn), defined in
             :mod:`lowrank_precond.optim.estimators` and loaded on first use

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

import importlib
import importlib.util
from typing import Any

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

# The scikit-learn estimators call ``lowrank_precond.minimize``, which sits above this package
# in the layers (optim > glm); they are defined in ``lowrank_precond.optim.estimators`` and
# imported only when first asked for, so ``import lowrank_precond.glm`` needs neither optim
# nor scikit-learn.
_ESTIMATORS = ("LeastSquaresRegression", "LogisticRegression", "PoissonRegression")
if importlib.util.find_spec("sklearn") is not None:
    __all__ += list(_ESTIMATORS)


def __getattr__(name: str) -> Any:
    if name in _ESTIMATORS:
        value = getattr(importlib.import_module("lowrank_precond.optim.estimators"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lowrank_precond.glm' has no attribute {name!r}")
