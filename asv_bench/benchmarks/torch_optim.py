"""torch.optim wrappers: ``optimizer.step()`` of AdaGram / SketchedAdaGrad vs torch's own."""

import importlib.util

from ._common import BACKENDS, DTYPES, SMOKE, namespace

if importlib.util.find_spec("torch") is not None:
    # A torch.optim optimizer's first ``step()`` imports torch._dynamo (~1 s, 800 modules).
    # Imported here, it is imported once in asv's forkserver instead of in every benchmark
    # process (an import only: no tensor op, no thread, no CUDA before the fork).
    import torch._dynamo  # noqa: F401

    import lowrank_precond.torch  # noqa: F401


def _torch_devices():
    return [dev for label, name, dev in BACKENDS if name == "torch"] or ["cpu"]


class Step:
    params = [
        _torch_devices(),
        ["torch.Adagrad", "torch.Adam", "AdaGram", "SketchedAdaGrad"],
        [10_000, 100_000] if SMOKE else [10_000, 100_000, 1_000_000],
        DTYPES,
    ]
    param_names = ["device", "optimizer", "d", "dtype"]
    timeout = 120

    def setup(self, device, optimizer, d, dtype):
        namespace("torch-cpu" if device == "cpu" else "torch-cuda")  # skips a missing backend
        import torch

        import lowrank_precond.torch as lpt

        gen = torch.Generator().manual_seed(0)
        dt = getattr(torch, dtype)
        self.p = torch.nn.Parameter(torch.randn(d, generator=gen, dtype=dt).to(device))
        # distinct gradients, cycled: each timed step sees a direction outside the span of the
        # rank-5 factors (four cycled gradients would time the degenerate in-span case). Rolled
        # copies of one Gaussian vector are as good and cost no random numbers.
        base = torch.randn(d, generator=gen, dtype=dt).to(device)
        self.grads = [torch.roll(base, 7919 * k) for k in range(24)]
        self.i = 0
        factories = {
            "torch.Adagrad": lambda ps: torch.optim.Adagrad(ps, lr=0.1),
            "torch.Adam": lambda ps: torch.optim.Adam(ps, lr=0.1),
            "AdaGram": lambda ps: lpt.AdaGram(ps, lr=0.1, rank=5),
            "SketchedAdaGrad": lambda ps: lpt.SketchedAdaGrad(ps, lr=0.1, rank=5),
        }
        self.opt = factories[optimizer]([self.p])
        for i in range(8):  # past the exact warm-up
            self.p.grad = self.grads[i]
            self.opt.step()
        self.i = 8
        self.sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def time_step(self, device, optimizer, d, dtype):
        self.p.grad = self.grads[self.i % len(self.grads)]
        self.i += 1
        self.opt.step()
        self.sync()


class StepOverFloor:
    """``optimizer.step()`` over the in-place floor of its state's dtype, each measured in
    interleaved rounds in one process (``lowrank_precond.cli.bench``): a ratio that means
    something even from one asv sample, unlike two separately timed cells."""

    params = [
        ["adagram ksl published", "adagram ksl symmetric", "sketched_adagrad"],
        [100_000] if SMOKE else [100_000, 1_000_000],
        ["float64"] if SMOKE else DTYPES,
    ]
    param_names = ["method", "d", "dtype"]
    timeout = 300
    number = 1
    repeat = 1

    def setup(self, method, d, dtype):
        namespace("torch-cpu")  # skips where torch is missing

    def track_step_over_floor(self, method, d, dtype):
        from lowrank_precond.cli.bench import run

        rows = run(backend="torch", dims=[d], ranks=[5], dtypes=[dtype], methods=[method], repeat=7)
        (row,) = [r for r in rows if r.timed == "optimizer.step"]
        return row.ratio_floor

    track_step_over_floor.unit = "x floor"
