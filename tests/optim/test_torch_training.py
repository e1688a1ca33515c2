"""The torch optimizers train small models (CPU; seeded synthetic data; float32 models).

A 2-layer MLP regression and a logistic regression, full batch. Each method runs at a
learning rate that suits it; the tests check that the loss falls substantially.

AdamGram is not here: with ``rank`` below the number of steps its direction jumps to the
``eps^{-1/2}`` scale once the factor is truncated (the moment keeps gradient directions that
the truncated factor no longer holds), so it diverges on these problems at any tested lr.
"""

from __future__ import annotations

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
    FullMatrixAdaGrad,
    SketchedAdaGrad,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# (class, kwargs): lr per method (the published AdaGram step is bounded by lr)
METHODS = {
    "adagram": (AdaGram, {"lr": 0.03, "rank": 5}),
    "adagram-symmetric": (AdaGram, {"lr": 0.05, "rank": 5, "direction": "symmetric"}),
    "adagram-per-parameter": (AdaGram, {"lr": 0.1, "rank": 5, "per_parameter": True}),
    "sketched": (SketchedAdaGrad, {"lr": 0.05, "rank": 5}),
    "adadiag": (AdaDiag, {"lr": 0.02, "update_freq": 10}),
    "adadiag++": (AdaDiag, {"lr": 0.02, "update_freq": 10, "two_sided": True}),
    "asgo": (ASGO, {"lr": 0.05}),
    "full-matrix": (FullMatrixAdaGrad, {"lr": 0.05}),
    "adagrad": (AdaGrad, {"lr": 0.05}),
    "adam": (Adam, {"lr": 0.02}),
}


def _train(model, opt, loss_fn, steps):
    def closure():
        opt.zero_grad()
        loss = loss_fn(model)
        loss.backward()
        return loss

    first = opt.step(closure).item()
    for _ in range(steps - 1):
        last = opt.step(closure).item()
    with torch.no_grad():
        final = float(loss_fn(model))
    assert final <= last * 1.5  # the last step did not blow up
    return first, final


@pytest.mark.parametrize("name", sorted(METHODS))
def test_mlp_regression_trains(name):
    cls, kwargs = METHODS[name]
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(256, 8, generator=gen)
    teacher_W = torch.randn(8, 3, generator=gen)
    y = torch.tanh(X @ teacher_W).sum(1, keepdim=True) + 0.05 * torch.randn(256, 1, generator=gen)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = cls(model.parameters(), **kwargs)
    first, final = _train(model, opt, lambda m: torch.nn.functional.mse_loss(m(X), y), 150)
    assert final <= 0.25 * first, (first, final)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_logistic_regression_trains(name):
    cls, kwargs = METHODS[name]
    gen = torch.Generator().manual_seed(2)
    # correlated, badly scaled features: where full-matrix preconditioning helps
    X = torch.randn(400, 12, generator=gen) @ torch.randn(12, 12, generator=gen)
    w = torch.randn(12, generator=gen)
    y = (torch.sigmoid(X @ w) > torch.rand(400, generator=gen)).float().unsqueeze(1)
    model = torch.nn.Linear(12, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    opt = cls(model.parameters(), **kwargs)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    first, final = _train(model, opt, lambda m: loss_fn(m(X), y), 150)
    assert first == pytest.approx(0.6931471805599453, rel=1e-6)  # log 2 at w = 0
    assert final <= 0.6 * first, (first, final)
