"""The sharded torch optimizers on 1, 2 and 4 CPU processes: step time and traffic per step.

One flat float64 parameter of ``d`` numbers (default 1e6; ``torch.nn.Parameter``), rank ``r``
(default 5), replicated on every process like under DDP: every process gets the same gradient
(standard normal, seeded by the step, drawn into one buffer before the step and untimed: a
cycled pool of a few vectors would feed gradients in the span of the stored factors). For
``AdaGram`` (default direction), ``AdaGram(direction="published")`` and ``SketchedAdaGrad``
with ``shard_state=True`` on ``--procs`` processes (gloo, ``torch.multiprocessing.spawn``),
and the plain optimizer (no sharding, no ``torch.distributed``) in one process as the
baseline, the script prints:

* the median step time: every timed ``opt.step()`` is preceded by a barrier so that the
  processes start it together; a step's time is the max over the processes, and the median
  is over the timed steps. The first ``r + 3`` steps (the warm-up of ``r + 1`` steps that
  gathers the rows, and two more) are not timed. The methods are interleaved: each round
  steps every method once, so all see the same load;
* what the process of rank 0 sent per timed step (``opt.communication()[0]``, reset after
  the warm-up): the bytes and calls all-reduced (the fused step's small sums: O(r^2)
  float64 numbers, independent of ``d``), the bytes all-gathered (the direction's rows before
  the update of a replicated parameter: ``d / procs * 8``), and the collectives outside that
  count (the int32 flags on which the processes agree each step);
* the optimizer state per process (``numel * element_size`` of the tensors in
  ``opt.state[p]``): about ``1 / procs`` of the unsharded one.

Every process runs with one torch thread and one BLAS/OpenMP thread (set in the environment
before torch is imported, in this process and so in the spawned ones). On a machine with
fewer cores than processes (4 processes on a 2-core machine, where the script was first
run), the step times of the oversubscribed runs measure time-sharing, not
the sharded step: the point there is the traffic, whose all-reduced bytes stay the same from
``--d 100000`` to ``--d 1000000``.

Usage::

    python asv_bench/scripts/distributed_step.py [--d 1000000] [--rank 5] [--steps 20]
        [--procs 1 2 4] [--json FILE]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/torch are imported, here and in spawned processes

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import lowrank_precond.torch as lpt  # noqa: E402

METHODS = {
    "AdaGram": ("AdaGram", {}),
    "AdaGram published": ("AdaGram", {"direction": "published"}),
    "SketchedAdaGrad": ("SketchedAdaGrad", {}),
}
LR = 1e-3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _AllReduces:
    """Counts every ``torch.distributed.all_reduce`` (calls, bytes), the agreement flags
    included, which the optimizer's ``Traffic`` leaves out (it counts its sums only)."""

    def __init__(self) -> None:
        self.calls = self.bytes = 0
        self.inner = dist.all_reduce

        def counted(t: torch.Tensor, *a: Any, **k: Any) -> Any:
            self.calls += 1
            self.bytes += t.numel() * t.element_size()
            return self.inner(t, *a, **k)

        dist.all_reduce = counted

    def reset(self) -> None:
        self.calls = self.bytes = 0


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size()
        for s in opt.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )


def _run(world: int, d: int, r: int, steps: int) -> dict[str, Any]:
    """Every method on this process; ``world == 0``: unsharded, no ``torch.distributed``."""
    sharded = world > 0
    flags = _AllReduces()
    opts, params = {}, {}
    for label, (cls, kw) in METHODS.items():
        p = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))
        p.grad = torch.zeros_like(p)
        params[label] = p
        opts[label] = getattr(lpt, cls)([p], lr=LR, rank=r, shard_state=sharded, **kw)
    g = torch.empty(d, dtype=torch.float64)
    gen = torch.Generator()
    warm = r + 3
    times: dict[str, list[float]] = {k: [] for k in METHODS}
    impls: dict[str, list[Any]] = {k: [] for k in METHODS}
    every_reduce = {k: [0, 0] for k in METHODS}  # all-reduce calls, bytes (timed steps)
    for step in range(warm + steps):
        gen.manual_seed(1000 + step)  # the same gradient on every process
        torch.randn(d, dtype=torch.float64, generator=gen, out=g)
        if step == warm and sharded:
            for opt in opts.values():
                opt.communication()[0].reset()
        for label, opt in opts.items():
            params[label].grad.copy_(g)
            if sharded:
                dist.barrier()
                flags.reset()
            t0 = time.perf_counter()
            opt.step()
            dt = time.perf_counter() - t0
            if step >= warm:
                times[label].append(dt)
                impls[label].append(opt.state[params[label]].get("last_impl"))
                if sharded:
                    every_reduce[label][0] += flags.calls
                    every_reduce[label][1] += flags.bytes
    traffic: dict[str, dict[str, int]] = {}
    for label, opt in opts.items():
        t = opt.communication()[0] if sharded else None
        traffic[label] = vars(t).copy() if t is not None else {}
        # the all-reduces that Traffic does not count: every one minus those it counts
        traffic[label]["other_calls"] = every_reduce[label][0] - traffic[label].get(
            "allreduce_calls", 0
        )
        traffic[label]["other_bytes"] = every_reduce[label][1] - traffic[label].get(
            "allreduce_bytes", 0
        )
    return {
        "times": times,
        "impls": impls,
        "traffic": traffic,
        "state_bytes": {k: _state_bytes(o) for k, o in opts.items()},
    }


def _worker(rank: int, world: int, port: int, d: int, r: int, steps: int, out: str) -> None:
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        if world == 0:
            res = _run(0, d, r, steps)
            with open(out, "w") as fh:
                json.dump([res], fh)
            return
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group(
            "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300)
        )
        try:
            res = _run(world, d, r, steps)
            every: list[Any] = [None] * world
            dist.all_gather_object(every, res)
            if rank == 0:
                with open(out, "w") as fh:
                    json.dump(every, fh)
        finally:
            dist.destroy_process_group()


def measure(world: int, d: int, r: int, steps: int) -> list[dict[str, Any]]:
    """The results of every process of one run (``world == 0``: the unsharded baseline)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        n = max(world, 1)
        mp.spawn(_worker, args=(world, _free_port(), d, r, steps, out), nprocs=n, join=True)
        with open(out) as fh:
            return json.load(fh)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=1_000_000)
    ap.add_argument("--rank", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (after the warm-up)")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    d, r, steps = args.d, args.rank, args.steps
    rows: dict[str, dict[str, Any]] = {}
    base: dict[str, float] = {}
    for world in [0, *args.procs]:
        every = measure(world, d, r, steps)
        for label in METHODS:
            per_step = [max(p["times"][label][i] for p in every) for i in range(steps)]
            ms = statistics.median(per_step) * 1e3
            if world == 0:
                base[label] = ms
            tr = every[0]["traffic"][label]
            not_fused = sum(x != "fused" for p in every for x in p["impls"][label])
            rows[f"{world} {label}"] = {
                "procs": world if world else 1,
                "sharded": world > 0,
                "method": label,
                "step_ms": ms,
                "vs_unsharded": ms / base[label],
                "allreduce_bytes": tr.get("allreduce_bytes", 0) / steps,
                "allreduce_calls": tr.get("allreduce_calls", 0) / steps,
                "gather_bytes": tr.get("gather_bytes", 0) / steps,
                "gather_calls": tr.get("gather_calls", 0) / steps,
                "flag_calls": tr["other_calls"] / steps,
                "flag_bytes": tr["other_bytes"] / steps,
                "state_mib": max(p["state_bytes"][label] for p in every) / 2**20,
                "timed_steps_not_fused": not_fused,
            }
    cores = os.cpu_count()
    print(
        f"d = {d}, r = {r}, float64, {steps} timed steps after {r + 3} untimed "
        f"(warm-up r + 1 = {r + 1}), methods interleaved; 1 torch + 1 BLAS thread per "
        f"process; gloo on CPU, {cores} cores"
    )
    head = (
        f"{'procs':>5} {'method':<28} {'step ms':>8} {'vs 1p':>6} {'allreduce B':>11} "
        f"{'calls':>5} {'gather B':>10} {'flags':>5} {'state MiB':>9} {'!fused':>6}"
    )
    print(head)
    print("-" * len(head))
    for row in rows.values():
        name = row["method"] + (" sharded" if row["sharded"] else " unsharded")
        print(
            f"{row['procs']:>5} {name:<28} {row['step_ms']:8.2f} {row['vs_unsharded']:6.2f} "
            f"{row['allreduce_bytes']:11.0f} {row['allreduce_calls']:5.1f} "
            f"{row['gather_bytes']:10.0f} {row['flag_calls']:5.1f} {row['state_mib']:9.2f} "
            f"{row['timed_steps_not_fused']:>6}"
        )
    print(
        "step ms: median over the timed steps of the max over the processes (a barrier "
        "before each); vs 1p: against the\n  unsharded optimizer in one process. allreduce B "
        "/ calls, gather B: per step, sent by the process of rank 0 (opt.communication());\n"
        "  flags: the other all-reduces per step (int32 agreement flags, a few bytes each); "
        "state MiB: the largest process's opt.state[p];\n  !fused: timed steps (all "
        "processes) that did not take the fused step."
    )
    if max(args.procs) > (cores or 1):
        print(
            f"note: {max(args.procs)} processes on {cores} cores oversubscribe the machine: "
            "their step times measure time-sharing, not the sharded step;\n  the traffic "
            "columns are exact (counted) whatever the load."
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"d": d, "rank": r, "steps": steps, "rows": rows}, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
