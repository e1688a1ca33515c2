"""The processes of ``test_torch_distributed.py`` (spawned; gloo on CPU), and the same
training run in one process for the reference.

A scenario is ``(wrapper, optimizer class name, keyword arguments)``: ``wrapper`` is
``"ddp"`` (DistributedDataParallel: replicated parameters, gradients averaged), ``"fsdp"``
(FSDP2's ``fully_shard``: DTensor parameters sharded on dim 0) or ``"single"`` (the
reference, one process). Every process trains on the same batches, so the averaged
gradients equal the single-process ones exactly (world sizes are powers of two).
"""

from __future__ import annotations

import datetime
import os
import traceback

import torch

import lowrank_precond.torch as lpt

STEPS = 30
D_IN, D_HIDDEN, D_OUT = 40, 30, 5  # d = 40*30 + 30 + 30*5 + 5 = 1385 in one group

SCENARIOS = {
    # the sharded state (shard_state=True): fused steps after the warm-up
    "adagram": ("AdaGram", {"rank": 3, "eps": 1e-3, "shard_state": True}),
    "adagram-published": (
        "AdaGram",
        {"rank": 3, "eps": 1e-3, "direction": "published", "shard_state": True},
    ),
    "sketched": ("SketchedAdaGrad", {"rank": 3, "eps": 1e-3, "shard_state": True}),
    "adamgram-momentum": (  # the moment's direction: the gathering path every step
        "AdamGram",
        {"rank": None, "eps": 1e-3, "betas": (0.9, 0.0), "shard_state": True},
    ),
    # unchanged methods: per-parameter state (local shards for the elementwise ones)
    "adagrad": ("AdaGrad", {}),
    "adam": ("Adam", {}),
    "adadiag": ("AdaDiag", {}),
    "asgo": ("ASGO", {}),
    "adagram-replicated": ("AdaGram", {"rank": 3, "eps": 1e-3}),
    "adagram-per-parameter": ("AdaGram", {"rank": 3, "eps": 1e-3, "per_parameter": True}),
}
LR = {"AdaGram": 0.05, "AdamGram": 0.05, "SketchedAdaGrad": 0.05}


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(D_IN, D_HIDDEN), torch.nn.Tanh(), torch.nn.Linear(D_HIDDEN, D_OUT)
    ).double()


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    X = torch.randn(64, D_IN, dtype=torch.float64, generator=g)
    y = torch.randn(64, D_OUT, dtype=torch.float64, generator=g)
    return X, y


def make_optimizer(name: str, params, *, single: bool):
    cls_name, kwargs = SCENARIOS[name]
    kwargs = dict(kwargs)
    if single:
        kwargs.pop("shard_state", None)
    cls = getattr(lpt, cls_name)
    lr = LR.get(cls_name)
    return cls(params, **({"lr": lr} if lr else {}), **kwargs)


def wrap(model: torch.nn.Module, wrapper: str) -> torch.nn.Module:
    if wrapper == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    if wrapper == "fsdp":
        from torch.distributed.fsdp import fully_shard

        fully_shard(model)
    return model


def train(model, opt, steps, start: int = 0, record: list | None = None):
    for step in range(start, start + steps):
        X, y = batch(step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(X), y).backward()
        opt.step()
        if record is not None:
            state = opt.state[next(iter(opt.state))] if opt.state else {}
            record.append(state.get("last_impl"))


def whole_params(model) -> list[torch.Tensor]:
    out = []
    for p in model.parameters():
        p = p.detach()
        out.append((p.full_tensor() if hasattr(p, "full_tensor") else p).clone())
    return out


def reference(name: str, steps: int = STEPS) -> list[torch.Tensor]:
    model = make_model()
    opt = make_optimizer(name, model.parameters(), single=True)
    train(model, opt, steps)
    return whole_params(model)


def run_scenario(wrapper: str, name: str) -> dict:
    model = wrap(make_model(), wrapper)
    opt = make_optimizer(name, model.parameters(), single=False)
    impls: list = []
    train(model, opt, STEPS, record=impls)
    out = {"params": whole_params(model), "impls": impls}
    state = opt.state[next(iter(opt.state))]
    out["rows"] = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    entry = next(iter(opt._cache.values()))
    if entry.shards is not None:
        out["shards"] = (entry.shards.start, entry.shards.stop, entry.shards.size)
        out["traffic"] = vars(entry.shards.traffic).copy()
    return out


def run_checkpoint(wrapper: str, path: str) -> dict:
    """15 steps, state_dict saved by each process, a new model and optimizer loaded from
    it, 15 more steps: against 30 uninterrupted steps (bit for bit)."""
    rank = torch.distributed.get_rank()
    model = wrap(make_model(), wrapper)
    opt = make_optimizer("adagram", model.parameters(), single=False)
    train(model, opt, STEPS // 2)
    torch.save(opt.state_dict(), f"{path}-{rank}.pt")
    saved = [p.detach().clone() for p in whole_params(model)]
    model2 = make_model()
    with torch.no_grad():
        for p, v in zip(model2.parameters(), saved, strict=True):
            p.copy_(v)
    model2 = wrap(model2, wrapper)
    opt2 = make_optimizer("adagram", model2.parameters(), single=False)
    opt2.load_state_dict(torch.load(f"{path}-{rank}.pt", weights_only=True))
    train(model2, opt2, STEPS - STEPS // 2, start=STEPS // 2)
    train(model, opt, STEPS - STEPS // 2, start=STEPS // 2)
    return {"resumed": whole_params(model2), "straight": whole_params(model)}


def run_gather() -> dict:
    """TorchShards.gather and allreduce with equal and unequal blocks, float64 and int."""
    from lowrank_precond.optim._distributed import TorchShards

    world = torch.distributed.get_world_size()
    out = {}
    for label, counts in (("equal", [3] * world), ("unequal", [2 + i for i in range(world)])):
        sh = TorchShards(counts)
        rows = torch.arange(sh.start, sh.stop, dtype=torch.float64)
        out[label] = (
            sh.gather(rows.reshape(-1, 1).repeat(1, 2)),
            sh.gather(rows.numpy()),
            sh.allreduce([rows.sum().item(), rows.numpy()[:1] * 0 + 1.0]),
            sum(counts),
        )
    return out


def worker(rank: int, world: int, port: int, outdir: str, jobs: list) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    # a process that fails leaves the others waiting: time the collectives out
    torch.distributed.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    try:
        for wrapper, name in jobs:
            try:
                if name == "gather":
                    res = run_gather()
                elif name == "checkpoint":
                    res = run_checkpoint(wrapper, os.path.join(outdir, f"ckpt-{wrapper}"))
                else:
                    res = run_scenario(wrapper, name)
            except Exception:  # reported by the test, per scenario
                res = {"error": traceback.format_exc()}
            torch.save(res, os.path.join(outdir, f"{wrapper}-{name}-{rank}.pt"))
            torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()
