"""The optimizer step against the in-place memory floor, every figure paired with its floor.

At ``d`` (default 1e6) and rank ``r`` (default 5), one process, one BLAS thread and one torch
thread for every contender, interleaved rounds (each round times every contender once, so all
see the same machine load). The floor of a dtype is an in-place read + write of two ``d x r``
arrays of that dtype (``U2[...] = U; V2[...] = V``): a rank-r method reads and writes at
least that much per step. Printed per contender: the median and best ms, and the ratio of
medians to the floor of the same dtype (and of bests).

Usage::

    python asv_bench/scripts/step_vs_floor.py [--d 1000000] [--rank 5] [--rounds 15]
        [--only SUBSTRING ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

import lowrank_precond.torch as lpt
from lowrank_precond import preconditioners as pc


def _floor(dtype: Any, d: int, r: int) -> tuple[Callable[[], None], Callable[[], None]]:
    U = torch.ones((d, r), dtype=dtype)
    V = torch.ones((d, r), dtype=dtype)
    U2, V2 = torch.empty_like(U), torch.empty_like(V)

    def run() -> None:
        U2.copy_(U)
        V2.copy_(V)

    return lambda: None, run


class _Gradients:
    """A new standard-normal gradient per step (``next()``, untimed), in one reused buffer:
    a cycled pool would feed gradients that lie in the span of the stored factors."""

    def __init__(self, dtype: Any, d: int):
        self.gen = torch.Generator().manual_seed(0)
        self.buf = [torch.empty(d, dtype=dtype) for _ in range(2)]
        self.i = 0

    def next(self) -> torch.Tensor:
        self.i += 1
        g = self.buf[self.i % 2]
        torch.randn(g.shape, dtype=g.dtype, generator=self.gen, out=g)
        return g


def _optimizer_step(
    make: Callable[[Any], Any], dtype: Any, d: int, r: int
) -> tuple[Callable[[], None], Callable[[], None]]:
    p = torch.zeros(d, dtype=dtype, requires_grad=True)
    opt = make(p)
    grads = _Gradients(dtype, d)

    def prepare() -> None:
        p.grad = grads.next()

    for _ in range(r + 4):  # past the exact phase: the rank-r step is timed
        prepare()
        opt.step()
    return prepare, opt.step


def _numpy_update(
    factory: str, kwargs: dict[str, Any], d: int, r: int
) -> tuple[Callable[[], None], Callable[[], None]]:
    pre = pc.get(factory)(**kwargs)
    grads = _Gradients(torch.float64, d)
    box = {"state": pre.init(np.zeros(d)), "g": None}

    def prepare() -> None:
        box["g"] = grads.next().numpy()

    def run() -> None:
        _, box["state"] = pre.update(box["g"], box["state"])

    for _ in range(r + 4):
        prepare()
        run()
    return prepare, run


def contenders(d: int, r: int) -> dict[str, tuple[str, Any]]:
    """label -> (floor label, (untimed prepare, timed step))."""
    f64, f32 = torch.float64, torch.float32
    lr = 1e-3
    pub = {"direction": "published"}
    return {
        "floor float64": ("floor float64", _floor(f64, d, r)),
        "floor float32": ("floor float32", _floor(f32, d, r)),
        "numpy adagram published": (
            "floor float64",
            _numpy_update("adagram", {"rank": r, **pub}, d, r),
        ),
        "numpy adagram symmetric": ("floor float64", _numpy_update("adagram", {"rank": r}, d, r)),
        "numpy sketched_adagrad": (
            "floor float64",
            _numpy_update("sketched_adagrad", {"rank": r}, d, r),
        ),
        "torch AdaGram published f64": (
            "floor float64",
            _optimizer_step(lambda p: lpt.AdaGram([p], lr=lr, rank=r, **pub), f64, d, r),
        ),
        "torch AdaGram symmetric f64": (
            "floor float64",
            _optimizer_step(lambda p: lpt.AdaGram([p], lr=lr, rank=r), f64, d, r),
        ),
        "torch SketchedAdaGrad f64": (
            "floor float64",
            _optimizer_step(lambda p: lpt.SketchedAdaGrad([p], lr=lr, rank=r), f64, d, r),
        ),
        "torch AdaGram published f32 (f64 factors)": (
            "floor float32",
            _optimizer_step(lambda p: lpt.AdaGram([p], lr=lr, rank=r, **pub), f32, d, r),
        ),
        "torch AdaGram published f32 (f32 factors)": (
            "floor float32",
            _optimizer_step(
                lambda p: lpt.AdaGram([p], lr=lr, rank=r, factor_dtype="float32", **pub), f32, d, r
            ),
        ),
        "torch SketchedAdaGrad f32 (f32 factors)": (
            "floor float32",
            _optimizer_step(
                lambda p: lpt.SketchedAdaGrad([p], lr=lr, rank=r, factor_dtype="float32"), f32, d, r
            ),
        ),
        "torch.optim.Adam f64": (
            "floor float64",
            _optimizer_step(lambda p: torch.optim.Adam([p], lr=lr), f64, d, r),
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=1_000_000)
    ap.add_argument("--rank", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--only", nargs="*", default=None, help="substrings of labels to keep")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        all_ = contenders(args.d, args.rank)
        if args.only:
            keep = {k: v for k, v in all_.items() if any(s in k for s in args.only)}
            for fl in {v[0] for v in keep.values()}:
                keep.setdefault(fl, all_[fl])
            all_ = keep
        times: dict[str, list[float]] = {k: [] for k in all_}
        for _ in range(args.rounds):
            for k, (_, (prepare, fn)) in all_.items():
                prepare()
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    best = {k: min(v) * 1e3 for k, v in times.items()}
    print(f"d = {args.d}, r = {args.rank}, {args.rounds} interleaved rounds, 1 BLAS/torch thread")
    print(f"{'contender':<44} {'median ms':>10} {'best ms':>9} {'x floor':>8} {'(best)':>7}")
    rows = {}
    for k, (fl, _) in all_.items():
        ratio, ratio_best = med[k] / med[fl], best[k] / best[fl]
        rows[k] = {
            "median_ms": med[k],
            "best_ms": best[k],
            "floor": fl,
            "ratio": ratio,
            "ratio_best": ratio_best,
        }
        print(f"{k:<44} {med[k]:10.2f} {best[k]:9.2f} {ratio:8.2f} {ratio_best:7.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"d": args.d, "rank": args.rank, "rows": rows}, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
