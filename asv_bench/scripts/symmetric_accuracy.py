"""Accuracy of the streamed symmetric direction (``ksl_adagram_step(direction="symmetric")``).

For random, low-dimensional, repeated and least-squares gradient streams (d = 200, r = 5,
300 steps, eps = 0.1, 1e-4, 1e-8) prints the worst relative error against a dense SVD of
``I - M^+``, next to the general (Householder) path's, and how many steps declined. ``U^T V``
is carried from step to step (``StreamedStep.C``), as ``adagram`` does.

Usage: ``python asv_bench/scripts/symmetric_accuracy.py``.
"""

import math

import numpy as np

from lowrank_precond.linalg import LowRank, rank_one_increment, symmetric_direction
from lowrank_precond.linalg.streaming import REFRESH_EVERY, ksl_adagram_step

D, R, STEPS = 200, 5, 300


def dense_symmetric(M, g, eps):
    Y0 = M.U @ M.S @ M.V.T
    gbar = (g - Y0 @ g) / math.sqrt(eps)
    s = math.hypot(1.0, np.linalg.norm(gbar))
    Mp = Y0 + np.outer(gbar / (s * (1 + s)), gbar - Y0.T @ gbar)
    _, sig, Wt = np.linalg.svd(np.eye(M.U.shape[0]) - Mp)
    return (Wt.T * sig) @ (Wt @ g) / math.sqrt(eps)


def general_symmetric(M, g, eps):
    info = rank_one_increment(M, g, eps)
    Sp = np.zeros((R + 1, R + 1))
    Sp[:R, :R] = M.S
    Sp[R, R] = 1.0
    plus = LowRank(np.column_stack([M.U, info.x]), Sp, np.column_stack([M.V, info.y]))
    return symmetric_direction(plus, g, eps)


def gradients(kind, rng):
    B = rng.standard_normal((D, 8))
    A = rng.standard_normal((50, D))
    x = rng.standard_normal(D)
    for t in range(STEPS):
        if kind == "random":
            yield rng.standard_normal(D)
        elif kind == "lowdim":
            yield B @ rng.standard_normal(8)
        elif kind == "repeated":
            yield B[:, t % 4].copy()
        else:  # least squares on minibatches of 5 rows, with a small gradient step
            i = rng.integers(0, 50, 5)
            g = A[i].T @ (A[i] @ x - 1.0)
            x = x - 0.01 * g
            yield g


def run(kind, eps):
    rng = np.random.default_rng(1)
    U, _ = np.linalg.qr(rng.standard_normal((D, R)))
    M = LowRank(U, np.diag(np.linspace(1, 0.5, R)) * 0.5, U.copy())
    worst = worst_general = 0.0
    declined = 0
    C = None  # U^T V carried from step to step, as adagram does
    for t, g in enumerate(gradients(kind, rng)):
        refresh = t % REFRESH_EVERY == 0
        out = ksl_adagram_step(M, g, eps, direction="symmetric", refresh=refresh, C=C)
        C = None if out is None else out.C
        if out is None:
            declined += 1
            out = ksl_adagram_step(M, g, eps)
            if out is None:
                continue
        else:
            ref = dense_symmetric(M, g, eps)
            rel = np.linalg.norm(out.direction - ref) / np.linalg.norm(ref)
            rel_general = np.linalg.norm(general_symmetric(M, g, eps) - ref) / np.linalg.norm(ref)
            worst, worst_general = max(worst, rel), max(worst_general, rel_general)
        M = out.lowrank
    return worst, worst_general, declined


if __name__ == "__main__":
    for eps in (0.1, 1e-4, 1e-8):
        for kind in ("random", "lowdim", "repeated", "lsq"):
            worst, general, declined = run(kind, eps)
            print(
                f"eps={eps:g} {kind:9s} worst rel err {worst:.2e} "
                f"(general path {general:.2e}) declined {declined}"
            )
