"""AdaGram with its state split over the processes of a DDP job (``docs/scaling.rst``).

Spawns 2 processes (gloo, CPU). Each trains a ``DistributedDataParallel`` copy of a small MLP
on its half of every batch (DDP averages the gradients, so every process holds the same
parameters), and ``AdaGram(..., shard_state=True)`` keeps only this process's block of rows
of the rank-r factors. Then each process saves ``opt.state_dict()`` and a fresh optimizer
loaded from those files continues bit for bit. Run: ``python docs/examples/ddp_sharded.py``.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lowrank_precond.torch import AdaGram

WORLD = 2  # processes
STEPS = 40
LR = 0.1
N = 256  # training rows, split between the processes


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial parameters on every process
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's rows of a fixed regression task (full batch: one step, one pass)."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(N, 16, generator=gen)
    y = torch.sin(X[:, :4].sum(dim=1, keepdim=True)) + 0.1 * torch.randn(N, 1, generator=gen)
    rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    return X[rows], y[rows]


def train(model, opt, steps: range, rank: int, report: bool = False) -> None:
    X, y = data(rank)
    for step in steps:
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X), y)
        loss.backward()  # DDP all-reduces (averages) the gradients here
        opt.step()  # AdaGram: all-reduces a few small sums, then all-gathers the direction
        mean = loss.detach().clone()
        dist.all_reduce(mean)  # the loss of the whole batch, for the printout
        if report and rank == 0 and (step % 10 == 0 or step == steps[-1]):
            print(f"step {step:3d}  loss {mean.item() / WORLD:.6f}", flush=True)


def in_rank_order(rank: int, text: str) -> None:
    for r in range(WORLD):
        if r == rank:
            print(text, flush=True)
        dist.barrier()


def worker(rank: int, port: int, folder: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group(
        "gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60)
    )
    try:
        model = torch.nn.parallel.DistributedDataParallel(make_model())
        params = list(model.parameters())
        opt = AdaGram(params, lr=LR, rank=4, shard_state=True)
        train(model, opt, range(STEPS), rank, report=True)

        # the group's state sits at its first parameter: this process's rows only
        state, d = opt.state[params[0]], sum(p.numel() for p in params)
        (sent,) = opt.communication()  # what this process sent for the sharded state
        in_rank_order(
            rank,
            f"rank {rank}: holds {state['U'].shape[0]} of the d = {d} rows: "
            f"U {tuple(state['U'].shape)}, V {tuple(state['V'].shape)}; sent "
            f"{sent.allreduce_bytes} bytes in {sent.allreduce_calls} all-reduces and "
            f"{sent.gather_bytes} bytes in {sent.gather_calls} all-gathers",
        )

        # [checkpoint]
        # every process saves its own rows of the state ...
        path = os.path.join(folder, f"adagram-{rank}.pt")
        torch.save(opt.state_dict(), path)
        # ... and a new optimizer (same world size, same parameters) loads them back
        model2 = make_model()
        model2.load_state_dict(model.module.state_dict())
        model2 = torch.nn.parallel.DistributedDataParallel(model2)
        opt2 = AdaGram(model2.parameters(), lr=LR, rank=4, shard_state=True)
        opt2.load_state_dict(torch.load(path, weights_only=True))
        # [/checkpoint]

        train(model, opt, range(STEPS, STEPS + 5), rank)  # the uninterrupted run
        train(model2, opt2, range(STEPS, STEPS + 5), rank)  # the resumed one
        pairs = zip(model.parameters(), model2.parameters(), strict=True)
        same = all(torch.equal(a, b) for a, b in pairs)
        in_rank_order(rank, f"rank {rank}: resumed from the checkpoint bit for bit: {same}")
        if not same:
            raise RuntimeError("the resumed run differs from the uninterrupted one")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    if not (dist.is_available() and dist.is_gloo_available()):
        sys.exit("needs torch.distributed with the gloo backend")
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(worker, args=(free_port(), folder), nprocs=WORLD, join=True)
