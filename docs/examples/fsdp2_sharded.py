"""AdaGram with its state split over the processes of an FSDP2 job (``docs/scaling.rst``).

Spawns 2 processes (gloo, CPU). ``fully_shard`` (FSDP2, torch >= 2.6) turns every parameter
into a DTensor sharded on its first dimension; each process trains on its half of the batch
(FSDP2 averages the gradients into the local shards), and ``AdaGram(..., shard_state=True)``
keeps the rows of the rank-r factors that belong to this process's local shards, so the
update stays local. At the end, the trained parameters are compared with one process
training the same model on the whole batch. Run: ``python docs/examples/fsdp2_sharded.py``.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys

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
    layers = [torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)]
    return torch.nn.Sequential(*layers).double()


def data(rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` of a fixed regression task (full batch: one step, one pass)."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(N, 16, generator=gen, dtype=torch.float64)
    noise = 0.1 * torch.randn(N, 1, generator=gen, dtype=torch.float64)
    y = torch.sin(X[:, :4].sum(dim=1, keepdim=True)) + noise
    return X[rows], y[rows]


def train(model, opt, X, y, report: bool = False) -> None:
    for step in range(STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X), y)
        loss.backward()
        opt.step()
        if report:
            mean = loss.detach().clone()
            dist.all_reduce(mean)  # the loss of the whole batch, for the printout
            if dist.get_rank() == 0 and (step % 10 == 0 or step == STEPS - 1):
                print(f"step {step:3d}  loss {mean.item() / WORLD:.6f}", flush=True)


def in_rank_order(rank: int, text: str) -> None:
    for r in range(WORLD):
        if r == rank:
            print(text, flush=True)
        dist.barrier()


def worker(rank: int, port: int) -> None:
    from torch.distributed.fsdp import fully_shard

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group(
        "gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60)
    )
    try:
        model = make_model()
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(model)  # every parameter is now a DTensor: this process holds a shard
        params = list(model.parameters())
        opt = AdaGram(params, lr=LR, rank=4, shard_state=True)
        X, y = data(slice(rank * N // WORLD, (rank + 1) * N // WORLD))
        train(model, opt, X, y, report=True)

        # this process's rows: its local shards, flattened; the state holds the same rows
        shards = [tuple(p.to_local().shape) for p in params]
        state, d = opt.state[params[0]], sum(p.numel() for p in params)
        (sent,) = opt.communication()
        in_rank_order(
            rank,
            f"rank {rank}: local shards {shards}, {state['U'].shape[0]} of the d = {d} rows: "
            f"U {tuple(state['U'].shape)}, V {tuple(state['V'].shape)}; sent "
            f"{sent.allreduce_bytes} bytes in {sent.allreduce_calls} all-reduces and "
            f"{sent.gather_bytes} bytes in {sent.gather_calls} all-gathers",
        )

        whole = [p.detach().full_tensor() for p in params]  # a collective: every process
        if rank == 0:  # the same training in one process, on the whole batch
            single = make_model()
            train(single, AdaGram(single.parameters(), lr=LR, rank=4), *data())
            single_params = [p.detach() for p in single.parameters()]
            err = max(float((a - b).abs().max()) for a, b in zip(whole, single_params, strict=True))
            print(f"max |difference| to one process: {err:.2g}", flush=True)
            if not err < 1e-10:
                raise RuntimeError("the sharded run differs from the one-process run")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    if not (dist.is_available() and dist.is_gloo_available()):
        sys.exit("needs torch.distributed with the gloo backend")
    mp.spawn(worker, args=(free_port(),), nprocs=WORLD, join=True)
