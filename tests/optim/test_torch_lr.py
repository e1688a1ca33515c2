"""A tensor learning rate (``lr=torch.tensor(0.01)``), torch's form for compiled steps.

With a float ``lr`` a compiled ``step`` is specialised on its value and recompiled whenever a
scheduler changes it; torch recommends a 0-d tensor instead, which schedulers update in place.
The classes used to refuse it ("lr: expected a real number"). The patterns follow torch's own
``test_tensor_lr`` and ``test_param_group_with_lrscheduler_goes_right_direction``.
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
    AdamGram,
    FullMatrixAdaGrad,
    SketchedAdaGrad,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CASES = {
    "adagram": (AdaGram, {"rank": 2}),
    "adamgram": (AdamGram, {"rank": None}),
    "sketched": (SketchedAdaGrad, {"rank": 2}),
    "full-matrix": (FullMatrixAdaGrad, {}),
    "adadiag": (AdaDiag, {"update_freq": 2}),
    "asgo": (ASGO, {}),
    "adagrad": (AdaGrad, {}),
    "adam": (Adam, {}),
}


def _problem(seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(10, 5, generator=gen).to(dtype))
    bias = torch.nn.Parameter(torch.randn(10, generator=gen).to(dtype))
    x = torch.randn(5, generator=gen).to(dtype)
    return weight, bias, x


def _closure(opt, weight, bias, x):
    def closure():
        opt.zero_grad()
        loss = (weight.mv(x) + bias).pow(2).sum()
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("case", sorted(CASES))
def test_tensor_lr_steps_like_a_float_lr(case):
    cls, kwargs = CASES[case]
    w1, b1, x = _problem()
    w2, b2 = (torch.nn.Parameter(t.detach().clone()) for t in (w1, b1))
    opt_float = cls([w1, b1], lr=1e-2, weight_decay=0.1, **kwargs)
    lr = torch.tensor(1e-2)
    opt_tensor = cls([w2, b2], lr=lr, weight_decay=0.1, **kwargs)
    assert opt_tensor.param_groups[0]["lr"] is lr
    for _ in range(5):
        opt_float.step(_closure(opt_float, w1, b1, x))
        opt_tensor.step(_closure(opt_tensor, w2, b2, x))
        torch.testing.assert_close(w2, w1)
        torch.testing.assert_close(b2, b1)
    assert not torch.equal(w1, _problem()[0])  # it did move


@pytest.mark.parametrize("case", ["adagram", "adam", "asgo"])
def test_tensor_lr_follows_a_scheduler(case):
    # float64, so that the few float32 roundings in which the two updates differ (``p - lr d``
    # as one fused op or two) are not amplified over the run by ASGO's eps=1e-8 inverse root
    cls, kwargs = CASES[case]
    w1, b1, x = _problem(1, torch.float64)
    w2, b2 = (torch.nn.Parameter(t.detach().clone()) for t in (w1, b1))
    opt_float = cls([w1, b1], lr=0.05, **kwargs)
    lr = torch.tensor(0.05, dtype=torch.float64)
    opt_tensor = cls([w2, b2], lr=lr, **kwargs)
    sched_float = torch.optim.lr_scheduler.StepLR(opt_float, step_size=2, gamma=0.5)
    sched_tensor = torch.optim.lr_scheduler.StepLR(opt_tensor, step_size=2, gamma=0.5)
    for _ in range(6):
        opt_float.step(_closure(opt_float, w1, b1, x))
        opt_tensor.step(_closure(opt_tensor, w2, b2, x))
        sched_float.step()
        sched_tensor.step()
        torch.testing.assert_close(w2, w1)
    assert opt_tensor.param_groups[0]["lr"] is lr  # updated in place, not replaced
    assert float(lr) == pytest.approx(0.05 * 0.5**3)


def test_tensor_lr_validation():
    p = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        Adam(p, lr=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="lr"):
        Adam(p, lr=torch.tensor(-0.1))
    with pytest.raises(ValueError, match="lr"):
        Adam(p, lr=torch.tensor(float("nan")))
    with pytest.raises(TypeError, match="lr"):
        Adam(p, lr=torch.tensor(0.1 + 0.0j))
    # a 1-element tensor of any shape is kept as a 0-d view of it (torch's _to_scalar)
    lr = torch.tensor([0.1])
    opt = AdaGrad(p, lr=lr)
    assert opt.param_groups[0]["lr"].shape == ()
    lr.fill_(0.25)
    assert float(opt.param_groups[0]["lr"]) == 0.25
    # a scalar parameter with a tensor lr (the update broadcasts nothing)
    s = torch.nn.Parameter(torch.tensor(1.0))
    opt = AdaGrad([s], lr=torch.tensor([0.5]))
    s.grad = torch.tensor(2.0)
    opt.step()
    assert s.shape == () and s.item() == pytest.approx(0.5)


def test_tensor_lr_checkpoint_round_trip(tmp_path):
    w, b, x = _problem(2)
    opt = AdaGram([w, b], lr=torch.tensor(0.03), rank=2)
    for _ in range(3):
        opt.step(_closure(opt, w, b, x))
    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(), path)
    w2, b2 = (torch.nn.Parameter(t.detach().clone()) for t in (w, b))
    opt2 = AdaGram([w2, b2], lr=torch.tensor(0.03), rank=2)
    opt2.load_state_dict(torch.load(path, weights_only=True))
    assert torch.is_tensor(opt2.param_groups[0]["lr"])
    for _ in range(3):
        opt.step(_closure(opt, w, b, x))
        opt2.step(_closure(opt2, w2, b2, x))
    assert torch.equal(w, w2) and torch.equal(b, b2)
