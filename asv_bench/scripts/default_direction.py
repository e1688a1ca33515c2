"""Measure AdaGram's default direction: published vs symmetric at rank 5 on the bundled data.

For each data set and lr, 300 full-batch steps from zero: relative suboptimality against
L-BFGS-B and the number of uphill steps (g . p < 0). Usage:
``python asv_bench/scripts/default_direction.py``.
"""

import numpy as np
import scipy.optimize as so

from lowrank_precond import preconditioners as pc
from lowrank_precond.glm import datasets, objective

for ds, fam in [
    ("breast_cancer", "logistic"),
    ("diabetes", "least_squares"),
    ("digits", "multinomial"),
]:
    try:
        A, y, info = datasets.load(ds)
    except Exception as e:
        print(ds, e)
        continue
    fun = objective(fam, A, y, lam=1e-3)
    x0 = np.zeros(
        fun.size if hasattr(fun, "size") else (A.shape[1] * (10 if fam == "multinomial" else 1))
    )
    fs = so.minimize(
        fun, x0, jac=True, method="L-BFGS-B", options=dict(maxiter=5000, gtol=1e-12, ftol=1e-15)
    ).fun
    for direction in ("published", "symmetric"):
        best = []
        for lr in (0.01, 0.03, 0.1, 0.3, 1.0):
            pre = pc.adagram(rank=5, direction=direction)
            x = x0.copy()
            st = pre.init(x)
            uphill = 0
            for _ in range(300):
                f, g = fun(x)
                p, st = pre.update(g, st)
                if g @ p < 0:
                    uphill += 1
                x = x - lr * p
            best.append(((fun(x)[0] - fs) / abs(fs), lr, uphill))
        print(ds, direction, [f"{gap:.1e}@{lr:g} up{up}" for gap, lr, up in best])
