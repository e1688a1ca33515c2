"""glm layer: objective evaluation and fixed-length ``minimize`` runs on bundled data.

``track_final_suboptimality`` records ``f - f*`` after a fixed number of epochs, so a
convergence regression shows up beside a speed regression.
"""

import numpy as np
import scipy.optimize

import lowrank_precond as lp
from lowrank_precond.glm import datasets, objective

from ._common import BACKEND_LABELS, SMOKE, namespace

DATASETS = ["breast_cancer"] if SMOKE else ["breast_cancer", "digits", "randhie"]
METHODS = {
    "adagram": {"lr": 0.5, "rank": 5},
    "sketched_adagrad": {"lr": 0.5, "rank": 5},
    "adagrad": {"lr": 0.5},
    "adam": {"lr": 0.05},
}


def _problem(name):
    A, y, info = datasets.load(name)
    return A, y, info


class Objective:
    params = [BACKEND_LABELS, DATASETS, [None, 64]]
    param_names = ["backend", "dataset", "batch_size"]

    def setup(self, backend, dataset, batch_size):
        xp, device = namespace(backend)
        A, y, info = _problem(dataset)
        self.fun = objective(info["family"], A, y, lam=info["lam"], batch_size=batch_size,
                             fit_intercept=True)
        self.w = xp.asarray(np.zeros(self.fun.shape), device=device)
        self.fun(self.w)  # move the data to the backend once

    def time_value_and_grad(self, backend, dataset, batch_size):
        self.fun(self.w)


class Minimize:
    params = [DATASETS, list(METHODS)]
    param_names = ["dataset", "method"]
    timeout = 300
    epochs = 20

    def setup(self, dataset, method):
        A, y, info = _problem(dataset)
        self.fun = objective(info["family"], A, y, lam=info["lam"], fit_intercept=True)
        self.x0 = np.zeros(self.fun.shape)
        ref = scipy.optimize.minimize(self.fun, self.x0.ravel(), jac=True, method="L-BFGS-B",
                                      options={"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-10})
        self.fstar = ref.fun

    def _run(self, method):
        options = dict(METHODS[method], maxiter=self.epochs)
        return lp.minimize(self.fun, self.x0, method=method, options=options)

    def time_minimize(self, dataset, method):
        self._run(method)

    def track_final_suboptimality(self, dataset, method):
        return float(self._run(method).fun - self.fstar)
