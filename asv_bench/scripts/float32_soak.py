"""float32 soak: float32 parameters against the same run in float64, over many steps.

For each method, gradients ``g = scale * B z`` with ``B`` a fixed ``(d, k)`` orthonormal basis
(a low-dimensional gradient subspace) or ``k = d`` (generic), ``z`` standard normal and
``scale`` log-uniform in ``[1e-4, 1e4]``, fed to a float32 and a float64 state. Reported:

* ``drift``: max over steps of ``|p32 - p64| / |p64|`` (the float64 run is the reference);
* ``|p|/bound``: max over steps of ``|p32|`` divided by the method's step bound (1 for the
  full-matrix family, ``G^{-1/2} g`` with ``G >= g g^T``), float64 on the same line;
* ``orth``: max over checked steps of ``|U^T U - I|_max`` of the float32 run's basis
  (sketch and truncated AdaGram; "-" for the others).

Usage: ``python asv_bench/scripts/float32_soak.py [--steps 100000] [--dim 200]``.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from tqdm import tqdm

from lowrank_precond import preconditioners as pc

#: name -> (the float32 run's preconditioner, the float64 reference's); the "factor32" rows
#: show what the float64 default factor buys (a float32 factor against the float64 run)
METHODS = {
    "sketched_adagrad r5": (pc.sketched_adagrad(rank=5),) * 2,
    "sketched_adagrad r5 factor32": (
        pc.sketched_adagrad(rank=5, factor_dtype="float32"),
        pc.sketched_adagrad(rank=5),
    ),
    "adagram r5 symmetric": (pc.adagram(rank=5),) * 2,
    "adagram r5 symmetric factor32": (
        pc.adagram(rank=5, factor_dtype="float32"),
        pc.adagram(rank=5),
    ),
    "adagram r5 published": (pc.adagram(rank=5, direction="published"),) * 2,
    "full_matrix_adagrad": (pc.full_matrix_adagrad(),) * 2,
}


def _orth(state) -> float:
    U = getattr(state, "U", None)
    if U is None or U.shape[1] == 0:
        return math.nan
    U = np.asarray(U, dtype=np.float64)
    return float(np.max(np.abs(U.T @ U - np.eye(U.shape[1]))))


def soak(name: str, d: int, k: int, steps: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, k)))[0]
    pre, ref = METHODS[name]
    s32, s64 = pre.init(np.zeros(d, np.float32)), ref.init(np.zeros(d))
    drift = p32max = p64max = 0.0
    orth = 0.0
    every = max(1, steps // 200)
    for t in tqdm(range(steps), desc=f"{name}, k={k}", leave=False):
        g = (10.0 ** rng.uniform(-4, 4)) * (basis @ rng.standard_normal(k))
        g32 = g.astype(np.float32)
        p32, s32 = pre.update(g32, s32)
        p64, s64 = ref.update(g32.astype(np.float64), s64)
        n64 = float(np.linalg.norm(p64))
        if n64 > 0:
            drift = max(drift, float(np.linalg.norm(p32 - p64)) / n64)
        p32max = max(p32max, float(np.linalg.norm(p32.astype(np.float64))))
        p64max = max(p64max, n64)
        if t % every == 0:
            o = _orth(s32)
            orth = o if math.isnan(orth) else max(orth, o) if not math.isnan(o) else orth
    return {"drift": drift, "p32": p32max, "p64": p64max, "orth": orth}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=200)
    ap.add_argument(
        "--full-steps",
        type=int,
        default=5_000,
        help="steps for the dense full_matrix_adagrad (an eigh per step)",
    )
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    print(f"d = {args.dim}, scales 1e-4..1e4 (log-uniform), float32 vs float64 states")
    print(
        f"{'method':32s} {'subspace':>8s} {'steps':>7s} {'drift':>9s} "
        f"{'|p32|/bound':>12s} {'|p64|/bound':>12s} {'orth':>9s}"
    )
    for name in args.methods.split(","):
        steps = args.full_steps if name == "full_matrix_adagrad" else args.steps
        for k in (4, args.dim):
            r = soak(name, args.dim, k, steps)
            orth = "-" if math.isnan(r["orth"]) else f"{r['orth']:.1e}"
            print(
                f"{name:32s} {k:8d} {steps:7d} {r['drift']:9.2e} {r['p32']:12.6f} "
                f"{r['p64']:12.6f} {orth:>9s}",
                flush=True,
            )


if __name__ == "__main__":
    main()
