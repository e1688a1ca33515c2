"""ms per ``optimizer.step()`` at d = 1e6 (one parameter tensor), best of 20 after 10 warm-up.

Usage: ``python asv_bench/scripts/torch_optimizer_step.py``.
"""

import time

import torch

import lowrank_precond.torch as lpt

D = 1_000_000
OPTIMIZERS = {
    "lowrank_precond AdaGram(rank=5)": lambda p: lpt.AdaGram([p], lr=0.01, rank=5),
    "lowrank_precond SketchedAdaGrad(rank=5)": lambda p: lpt.SketchedAdaGrad([p], lr=0.01, rank=5),
    "torch.optim.Adagrad": lambda p: torch.optim.Adagrad([p], lr=0.01),
    "torch.optim.Adam": lambda p: torch.optim.Adam([p], lr=0.01),
}


def best_step_ms(make, dtype) -> float:
    p = torch.zeros(D, dtype=dtype, requires_grad=True)
    opt = make(p)
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(D, dtype=dtype, generator=gen) for _ in range(30)]
    best = float("inf")
    for i, g in enumerate(grads):
        p.grad = g
        t0 = time.perf_counter()
        opt.step()
        if i >= 10:
            best = min(best, time.perf_counter() - t0)
    return best * 1e3


if __name__ == "__main__":
    for dtype in (torch.float64, torch.float32):
        for name, make in OPTIMIZERS.items():
            print(f"{str(dtype):14s} {name:42s} {best_step_ms(make, dtype):8.2f} ms")
