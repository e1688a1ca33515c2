"""Wall time of the scikit-learn estimators of ``lowrank_precond.glm`` against scikit-learn.

On each bundled data set (standardized, all rows, scikit-learn's default penalty C = 1 /
alpha = 1) it fits our estimator with its defaults (sketched AdaGrad, rank 5, lr 1.0) and
scikit-learn's lbfgs, saga and sag (where the estimator offers them) at the same ``tol``, and
prints the median wall time of ``--repeats`` fits, the iterations (epochs) and the relative
distance of the coefficients (intercept included) to a tight reference (scikit-learn lbfgs at
tol 1e-12; Ridge's exact Cholesky solve). The meaning of ``tol`` differs: ours and lbfgs
bound ``max|grad|`` of the same scaled objective, sag/saga bound the largest change of the
coefficients in one epoch relative to their size, so the error column says what each
reached. All fits use one BLAS thread (the machine is shared). Usage::

    python asv_bench/scripts/sklearn_walltime.py [--tol 1e-4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression as SkLogistic
from sklearn.linear_model import PoissonRegressor, Ridge
from threadpoolctl import threadpool_limits

from lowrank_precond.glm import (
    LeastSquaresRegression,
    LogisticRegression,
    PoissonRegression,
    datasets,
)

#: data set -> (our estimator, scikit-learn's, its solvers compared, the reference solver)
CASES = {
    "breast_cancer": (LogisticRegression, SkLogistic, ("lbfgs", "saga", "sag"), "lbfgs"),
    "digits": (LogisticRegression, SkLogistic, ("lbfgs", "saga", "sag"), "lbfgs"),
    "heart_scale": (LogisticRegression, SkLogistic, ("lbfgs", "saga", "sag"), "lbfgs"),
    "diabetes": (LeastSquaresRegression, Ridge, ("saga", "sag"), "cholesky"),
    "randhie": (PoissonRegression, PoissonRegressor, ("lbfgs",), "lbfgs"),
}
#: Ridge's lbfgs needs positive=True (another problem); PoissonRegressor has no sag/saga
NOT_OFFERED = {"diabetes": ("lbfgs",), "randhie": ("saga", "sag")}


def _coefs(est) -> np.ndarray:
    return np.concatenate([np.ravel(est.coef_), np.ravel(est.intercept_)])


def _iters(est) -> int:
    return int(np.max(np.atleast_1d(est.n_iter_))) if est.n_iter_ is not None else 0


def _time(cls, params, A, y, repeats):
    """Median wall time of ``repeats`` fits of ``cls(**params)`` and the last estimator."""
    times, est = [], None
    for _ in range(repeats):
        est = cls(**params)
        t = time.perf_counter()
        est.fit(A, y)
        times.append(time.perf_counter() - t)
    return statistics.median(times), est


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    rows = []
    for name, (ours_cls, sk_cls, solvers, ref_solver) in CASES.items():
        try:
            A, y, _ = datasets.load(name)
        except (ImportError, FileNotFoundError) as exc:
            print(f"{name}: skipped ({exc})")
            continue
        ref_kw = {} if ref_solver == "cholesky" else {"tol": 1e-12, "max_iter": 100000}
        w_ref = _coefs(sk_cls(solver=ref_solver, **ref_kw).fit(A, y))

        def rel(est, w_ref=w_ref):
            return np.linalg.norm(_coefs(est) - w_ref) / np.linalg.norm(w_ref)

        t, est = _time(ours_cls, {"tol": args.tol}, A, y, args.repeats)
        rows.append((name, "lowrank_precond", t, _iters(est), rel(est)))
        for solver in solvers:
            params = {"solver": solver, "tol": args.tol}
            if sk_cls is not Ridge:
                params["max_iter"] = 100000
            t, est = _time(sk_cls, params, A, y, args.repeats)
            rows.append((name, f"sklearn {solver}", t, _iters(est), rel(est)))
        for solver in NOT_OFFERED.get(name, ()):
            rows.append((name, f"sklearn {solver}", None, None, None))
    print(f"tol = {args.tol:g}, median of {args.repeats} fits, one BLAS thread")
    print(f"{'data set':<14} {'solver':<16} {'time [ms]':>10} {'iters':>7} {'rel. error':>11}")
    for name, solver, t, it, err in rows:
        if t is None:
            print(f"{name:<14} {solver:<16} {'n/a':>10} {'':>7} {'':>11}")
        else:
            print(f"{name:<14} {solver:<16} {1e3 * t:>10.1f} {it:>7d} {err:>11.1e}")


if __name__ == "__main__":
    with threadpool_limits(limits=1):
        main()
