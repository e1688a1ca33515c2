"""float16 / bfloat16 parameters: the preconditioner works in float32, the step in half.

torch's linalg has no half-precision SVD/eigh on CPU, so before, AdaGram crashed once its
factor was truncated (after ``rank`` steps) and the other matrix methods at the first step.
Now the gradient is cast to float32 before the preconditioner, whose state stays float32 (or
float64 where the method keeps a float64 factor), and the direction is cast back, as torch's
fused optimizers keep float32 state for half parameters.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip(
    "torch", reason="torch not installed: pip install 'lowrank-precond[torch]'"
)

from lowrank_precond.torch import (  # noqa: E402
    ASGO,
    AdaDiag,
    AdaGrad,
    AdaGram,
    Adam,
    AdamGram,
    FullMatrixAdaGrad,
    SketchedAdaGrad,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CASES = {
    # rank 2 < 5 steps: the truncated factor (the SVD that crashed in half precision)
    "adagram": (AdaGram, {"rank": 2}),
    "adagram-per-parameter": (AdaGram, {"rank": 2, "per_parameter": True}),
    "adamgram": (AdamGram, {"rank": None}),
    "sketched": (SketchedAdaGrad, {"rank": 2}),
    "full-matrix": (FullMatrixAdaGrad, {}),
    "adadiag": (AdaDiag, {"update_freq": 2}),
    "adadiag++": (AdaDiag, {"update_freq": 2, "two_sided": True}),
    "asgo": (ASGO, {}),
    "adagrad": (AdaGrad, {}),
    "adam": (Adam, {}),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_half_precision_linear_trains(case, dtype):
    cls, kwargs = CASES[case]
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(64, 6, generator=gen)
    y = X @ torch.randn(6, 3, generator=gen)
    torch.manual_seed(1)
    model = torch.nn.Linear(6, 3).to(dtype)
    opt = cls(model.parameters(), lr=0.02, weight_decay=0.01, **kwargs)
    Xh, yh = X.to(dtype), y.to(dtype)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(Xh), yh)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(float(torch.nn.functional.mse_loss(model(Xh), yh)))
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0], losses
    for p in model.parameters():
        assert p.dtype == dtype and bool(torch.isfinite(p).all())
    for fields in opt.state.values():
        for name, v in fields.items():
            if torch.is_tensor(v) and v.is_floating_point():
                assert v.dtype in (torch.float32, torch.float64), (name, v.dtype)


def test_half_precision_steps_follow_the_float32_run():
    """The half run is the float32 run on half-rounded gradients, rounded once per step."""
    gen = torch.Generator().manual_seed(3)
    x32 = torch.nn.Parameter(torch.randn(12, generator=gen))
    x16 = torch.nn.Parameter(x32.detach().to(torch.bfloat16))
    opt32, opt16 = AdaGram([x32], lr=0.05, rank=3), AdaGram([x16], lr=0.05, rank=3)
    for _ in range(6):
        g = torch.randn(12, generator=gen).to(torch.bfloat16)
        x32.grad, x16.grad = g.float(), g
        x32.data.copy_(x16.detach().float())  # the same iterate: compare one step at a time
        opt32.step()
        opt16.step()
        # one bfloat16 rounding of the direction and one of the update
        assert torch.allclose(x16.detach().float(), x32.detach(), rtol=1e-2, atol=1e-3)
    assert opt16.state[x16]["U"].dtype == torch.float64  # float32 work: float64 factor
    assert torch.equal(opt16.state[x16]["U"], opt32.state[x32]["U"])
