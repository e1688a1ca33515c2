"""Resident memory of an optimizer's state against the state's own size.

For each optimizer, in a fresh process: the parameter and a pool of gradients are allocated
first and the same optimizer runs a few steps on a small parameter (imports, compiled
kernels, allocator pools), then the resident set size (RSS, ``/proc/self/statm``) is read
before the optimizer is built and after ``--steps`` steps. ``state`` is the bytes of the
distinct tensor storages in ``optimizer.state``; ``pooled`` the spare output buffers the
fused steps keep for reuse (:class:`lowrank_precond.backends.blocked.Workspace`); the RSS
growth also holds what the C allocator keeps of freed memory (e.g. the warm-up phase's).
Linux only.

Usage: ``python asv_bench/scripts/resident_memory.py [--d 1000000] [--rank 5] [--steps 30]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

OPTIMIZERS = {
    "AdaGram published": "lpt.AdaGram([p], lr=1e-3, rank={r}, direction='published')",
    "AdaGram symmetric": "lpt.AdaGram([p], lr=1e-3, rank={r})",
    "SketchedAdaGrad": "lpt.SketchedAdaGrad([p], lr=1e-3, rank={r})",
    "torch.optim.Adam": "torch.optim.Adam([p], lr=1e-3)",
}

CHILD = """
import os, torch
import lowrank_precond.torch as lpt
torch.set_num_threads(1)
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * page
d, r, steps = {d}, {r}, {steps}
p = torch.zeros(d, dtype=torch.float64, requires_grad=True)
gen = torch.Generator().manual_seed(0)
# the same optimizer on a small parameter first: imports, compiled kernels, allocator pools
q = torch.zeros(50_000, dtype=torch.float64, requires_grad=True)
warm = {make_small}
for i in range(10):
    q.grad = torch.randn(50_000, dtype=torch.float64, generator=gen)
    warm.step()
del warm, q
base = rss()
opt = {make}
buf = torch.empty(d, dtype=torch.float64)  # one gradient buffer: no allocation per step
for i in range(steps):
    torch.randn(d, dtype=torch.float64, generator=gen, out=buf)
    p.grad = buf
    opt.step()
grown = rss() - base
seen, state = set(), 0
for s in opt.state.values():
    for v in s.values():
        if torch.is_tensor(v) and v.untyped_storage().data_ptr() not in seen:
            seen.add(v.untyped_storage().data_ptr())
            state += v.untyped_storage().nbytes()
import gc
pool = sum(
    x.nbytes
    for o in gc.get_objects()
    if type(o).__name__ == "Workspace"
    for spare in o._spare.values()
    for x in spare
)
print(grown, state, pool)
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=1_000_000)
    ap.add_argument("--rank", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args(argv)
    print(f"d = {args.d}, r = {args.rank}, {args.steps} steps, float64")
    print(
        f"{'optimizer':<20} {'state MiB':>10} {'pooled MiB':>11} {'(state+pool)/state':>19} "
        f"{'RSS growth MiB':>15} {'x state':>8}"
    )
    for name, make in OPTIMIZERS.items():
        code = CHILD.format(
            d=args.d,
            r=args.rank,
            steps=args.steps,
            make=make.format(r=args.rank),
            make_small=make.format(r=args.rank).replace("[p]", "[q]"),
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        ).stdout.split()
        grown, state, pool = (int(x) for x in out[-3:])
        print(
            f"{name:<20} {state / 2**20:10.1f} {pool / 2**20:11.1f} {(state + pool) / state:19.2f} "
            f"{grown / 2**20:15.1f} {grown / state:8.2f}"
        )


if __name__ == "__main__":
    main()
