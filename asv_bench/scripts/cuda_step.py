"""The whole-array AdaGram KSL step on a CUDA device against the memory floor.

Times :func:`lowrank_precond.linalg.streaming_torch.try_ksl_adagram_step_whole` at ``d``
(default 1e6) and rank ``r`` (default 5), float64 and float32 factors, against the floor of
a rank-``r`` step: one read and one write of ``U`` and ``V`` (``W2.copy_(W)`` on a ``(2r, d)``
tensor of the dtype), and against the reference path (``rank_one_increment`` +
``projector_splitting`` + the published direction) on the same device. Interleaved rounds
(each round times every contender once, so all see the same device state); every timing is
bracketed by ``torch.cuda.synchronize()``. Each step gets a fresh gradient (drawn untimed)
and feeds its outputs to the next. Printed per contender: the median and best ms and the
ratio of medians (and of bests) to the floor of the same dtype.

Without a CUDA device it prints one line saying so and exits 0; ``--device cpu`` runs the
same measurement on the CPU (torch CPU tensors, ``--threads`` intra-op threads), to check the
script and to compare with ``step_vs_floor.py``.

Usage::

    python asv_bench/scripts/cuda_step.py [--d 1000000] [--rank 5] [--rounds 20]
        [--device cuda|cpu] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from lowrank_precond.backends.fused import Declined
from lowrank_precond.linalg import LowRank, projector_splitting, rank_one_increment
from lowrank_precond.linalg.streaming_torch import try_ksl_adagram_step_whole


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _floor(dtype: Any, d: int, r: int, device: torch.device) -> Callable[[], None]:
    W = torch.ones((2 * r, d), dtype=dtype, device=device)
    W2 = torch.empty_like(W)
    return lambda: W2.copy_(W)


def _state(dtype: Any, d: int, r: int, device: torch.device, gen: torch.Generator) -> LowRank:
    """Orthonormal ``U, V`` (QR on the CPU in float64, then moved) and a core with singular
    values in ``[0.5, 0.9]``, as after AdaGram's warm-up."""
    U = torch.linalg.qr(torch.randn((d, r), dtype=torch.float64, generator=gen))[0]
    V = torch.linalg.qr(torch.randn((d, r), dtype=torch.float64, generator=gen))[0]
    S = torch.diag(torch.linspace(0.9, 0.5, r, dtype=torch.float64))
    return LowRank(*(x.to(device=device, dtype=dtype) for x in (U, S, V)))


class _Stepper:
    """One contender: ``prepare()`` draws the next gradient (untimed), ``run()`` takes the
    step and keeps its outputs as the next state."""

    def __init__(self, kind: str, dtype: Any, d: int, r: int, device: torch.device, eps: float):
        self.gen = torch.Generator().manual_seed(0)
        self.M = _state(dtype, d, r, device, self.gen)
        self.g = torch.empty(d, dtype=dtype, device=device)
        self.kind, self.eps, self.device = kind, eps, device
        self.declined = 0

    def prepare(self) -> None:
        self.g.copy_(torch.randn(self.g.shape, dtype=self.g.dtype, generator=self.gen))

    def run(self) -> None:
        if self.kind == "reference":
            info = rank_one_increment(self.M, self.g, self.eps)
            self.M = projector_splitting(self.M, info.x, info.y)
            self.p = info.published
            return
        out = try_ksl_adagram_step_whole(self.M, self.g, self.eps, direction=self.kind)
        if isinstance(out, Declined):
            self.declined += 1
            return
        self.M, self.p = out.lowrank, out.direction


def contenders(d: int, r: int, device: torch.device) -> dict[str, tuple[str, Any]]:
    """label -> (floor label, (untimed prepare, timed run))."""
    out: dict[str, tuple[str, Any]] = {}
    eps = 1e-3
    for name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        floor = f"floor {name}"
        out[floor] = (floor, (lambda: None, _floor(dtype, d, r, device)))
        # the symmetric direction needs float64 factors
        kinds = ("published", "symmetric") if name == "float64" else ("published",)
        for kind in (*kinds, "reference"):
            s = _Stepper(kind, dtype, d, r, device, eps)
            label = "reference published" if kind == "reference" else f"whole {kind}"
            out[f"{label} {name}"] = (floor, (s.prepare, s.run, s))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=1_000_000)
    ap.add_argument("--rank", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("cuda_step: no CUDA device (torch.cuda.is_available() is False); nothing timed")
        return {}
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {name}, torch {torch.__version__}, d = {args.d}, r = {args.rank}, "
        f"{args.rounds} rounds after {args.warmup} warm-up, threads {args.threads}"
    )
    cons = contenders(args.d, args.rank, device)
    times: dict[str, list[float]] = {label: [] for label in cons}
    for rnd in range(args.warmup + args.rounds):
        for label, (_, fns) in cons.items():
            prepare, run = fns[0], fns[1]
            prepare()
            _sync(device)
            t0 = time.perf_counter()
            run()
            _sync(device)
            if rnd >= args.warmup:
                times[label].append(1e3 * (time.perf_counter() - t0))
    results: dict[str, Any] = {}
    for label, (floor, fns) in cons.items():
        med, best = statistics.median(times[label]), min(times[label])
        fmed, fbest = statistics.median(times[floor]), min(times[floor])
        declined = fns[2].declined if len(fns) > 2 else 0
        results[label] = {"median_ms": med, "best_ms": best, "ratio": med / fmed}
        note = f"  ({declined} declined)" if declined else ""
        print(
            f"{label:32s} median {med:9.3f} ms  best {best:9.3f} ms  "
            f"x floor {med / fmed:6.2f} (best {best / fbest:6.2f}){note}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
