"""``step()`` checks what it writes, once per step.

A step is non-finite in a group when a gradient has NaN/inf or is too large for the working
dtype, or when the direction (in the parameter's dtype) or the new state comes out NaN/inf.
``nonfinite="raise"``: ``FloatingPointError`` with nothing changed in any group;
``"skip"``: that group skips the step entirely (no weight decay either). The optimizer calls
the preconditioners' unchecked update and syncs with the device once per step.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip(
    "torch", reason="torch not installed: pip install 'lowrank-precond[torch]'"
)

import lowrank_precond.optim.torch as optim_torch  # noqa: E402
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


def _snapshot(opt, params):
    state = {
        id(k): {n: (v.clone() if torch.is_tensor(v) else v) for n, v in s.items()}
        for k, s in opt.state.items()
    }
    return [p.detach().clone() for p in params], state


def _assert_unchanged(opt, params, snap):
    values, state = snap
    assert all(torch.equal(p, q) for p, q in zip(params, values, strict=True))
    assert {id(k) for k in opt.state} == set(state)
    for k, s in opt.state.items():
        for n, v in s.items():
            old = state[id(k)][n]
            if torch.is_tensor(v):  # equal entry for entry, a NaN equal to a NaN
                assert v.shape == old.shape and torch.allclose(
                    v, old, rtol=0, atol=0, equal_nan=True
                ), n
            else:
                assert v == old, n


def test_direction_overflowing_the_half_parameter_raises_and_changes_nothing():
    """The newton direction ``G^{-1} g`` reaches ``1 / (2 sqrt(eps))`` = 5e5 per coordinate,
    finite in float32 (where the preconditioner works) but inf in float16 (what the step
    writes); it used to be written into the parameters."""
    finite = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
    x = torch.nn.Parameter(torch.zeros(4, dtype=torch.float16))
    opt = AdaGram(
        [{"params": [finite]}, {"params": [x]}], lr=1e-3, direction="newton", eps=1e-12, rank=2
    )
    finite.grad = torch.full((3,), 0.5, dtype=torch.float16)
    x.grad = torch.full((4,), 5e-7, dtype=torch.float16)
    snap = _snapshot(opt, [finite, x])
    with pytest.raises(FloatingPointError, match="group 1: the step overflowed") as info:
        opt.step()
    assert "no parameter or optimizer state was changed" in str(info.value)
    _assert_unchanged(opt, [finite, x], snap)

    opt.param_groups[1]["nonfinite"] = "skip"
    opt.step()
    assert torch.equal(x.detach(), snap[0][1]) and x not in opt.state
    assert not torch.equal(finite.detach(), snap[0][0])  # group 0 stepped


def _overflowing_adagrad(**kwargs):
    """AdaGrad in float32 with |g| = 4e18, just below the too-large bound 4.6e18: ``h`` grows
    by 1.6e37 per step and overflows float32 (3.4e38) at the 22nd."""
    x = torch.nn.Parameter(torch.ones(1))
    opt = AdaGrad([x], lr=0.1, **kwargs)
    for _ in range(20):
        x.grad = torch.full((1,), 4e18)
        opt.step()
    assert bool(torch.isfinite(opt.state[x]["h"]).all())
    return x, opt


def test_accumulator_overflow_raises_naming_it():
    x, opt = _overflowing_adagrad()
    snap = _snapshot(opt, [x])
    with pytest.raises(FloatingPointError) as info:
        for _ in range(5):
            x.grad = torch.full((1,), 4e18)
            opt.step()
            snap = _snapshot(opt, [x])
    message = str(info.value)
    assert "group 0" in message and "overflowed" in message and "(h)" in message
    _assert_unchanged(opt, [x], snap)


def test_skip_on_overflow_skips_the_weight_decay_too():
    """With ``nonfinite="skip"`` the preconditioner returned a zero direction and the
    optimizer still applied the weight decay of the skipped step."""
    x, opt = _overflowing_adagrad(nonfinite="skip", weight_decay=0.5)
    for _ in range(5):
        before = x.detach().clone()
        t = opt.state[x]["t"]
        x.grad = torch.full((1,), 4e18)
        opt.step()
        if opt.state[x]["t"] == t:  # the step was skipped
            assert torch.equal(x.detach(), before)
            break
    else:
        raise AssertionError("the accumulator never overflowed")


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (AdaGram, {"rank": 2}),
        (AdamGram, {"rank": None}),
        (SketchedAdaGrad, {"rank": 2}),
        (FullMatrixAdaGrad, {}),
        (AdaDiag, {}),
        (ASGO, {}),
        (AdaGrad, {}),
        (Adam, {}),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
@pytest.mark.parametrize("dtype, value", [(torch.float32, 1e20), (torch.float64, 1e300)])
def test_too_large_gradient_raises_with_a_clear_message(cls, kwargs, dtype, value):
    x = torch.nn.Parameter(torch.ones(2, 3, dtype=dtype))
    opt = cls([x], **kwargs)
    x.grad = torch.ones(2, 3, dtype=dtype)
    opt.step()
    snap = _snapshot(opt, [x])
    x.grad = torch.full((2, 3), value, dtype=dtype)
    with pytest.raises(FloatingPointError, match="group 0: the gradient is too large") as info:
        opt.step()
    message = str(info.value)
    assert f"|grad| = {math.sqrt(6) * value:.3g}" in message and "rescale the loss" in message
    _assert_unchanged(opt, [x], snap)


def test_nan_gradient_into_an_eigendecomposition_is_a_skipped_step():
    """The unchecked update runs on every group's gradients before the one sync; an error it
    raises on a NaN gradient is part of that group's non-finite step."""
    x = torch.nn.Parameter(torch.ones(3, 3, dtype=torch.float64))
    ok = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = FullMatrixAdaGrad(
        [{"params": [x], "nonfinite": "skip"}, {"params": [ok]}], lr=0.1, weight_decay=0.1
    )
    x.grad = torch.full((3, 3), float("nan"), dtype=torch.float64)
    ok.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    assert torch.equal(x.detach(), torch.ones(3, 3, dtype=torch.float64)) and x not in opt.state
    assert opt.state[ok]["t"] == 1


def test_a_real_error_of_the_update_is_not_hidden():
    x = torch.nn.Parameter(torch.ones(5, dtype=torch.float64))
    opt = FullMatrixAdaGrad([x], max_dim=3, nonfinite="skip")
    x.grad = torch.ones(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="max_dim"):
        opt.step()


def test_one_host_sync_per_step(monkeypatch):
    """The finite checks of all groups are fused and read once per step (each group did its
    own ``bool()`` before: a graph break per group under ``torch.compile``)."""
    syncs = []
    for name in ("__bool__", "item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            import sys

            if sys._getframe(1).f_code.co_filename == optim_torch.__file__:
                syncs.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    params = [torch.nn.Parameter(torch.ones(4, 3)) for _ in range(6)]
    groups = [{"params": params[i : i + 2]} for i in range(0, 6, 2)]
    opt = Adam(groups, lr=0.1)
    for _ in range(3):
        for p in params:
            p.grad = torch.ones_like(p)
        syncs.clear()
        opt.step()
        assert syncs == ["tolist"]


@pytest.mark.parametrize("direction", ["published", "symmetric"])
def test_nan_in_a_fused_state_is_caught_though_fused_steps_skip_their_check(direction):
    """The fused AdaGram step certifies its own U, S, V (``verified_fields``), so ``step()``
    does not re-read them; a NaN already in the state must still never pass: the fused step
    declines on it (it reaches V^T g or |gbar|^2), and the reference step's output is checked."""
    torch.manual_seed(0)
    p = torch.zeros(300, dtype=torch.float64, requires_grad=True)
    opt = AdaGram([p], lr=0.1, rank=3, direction=direction)
    for _ in range(20):
        p.grad = torch.randn(300, dtype=torch.float64)
        opt.step()
        if opt.state[p]["last_impl"] == "fused":
            break
    state = opt.state[p]
    assert state["last_impl"] == "fused"
    assert state["state_type"] == "AdaGramState"
    for field in ("U", "V", "S"):
        snap_field = state[field].clone()
        state[field][0, 0] = math.nan
        snap = _snapshot(opt, [p])
        p.grad = torch.randn(300, dtype=torch.float64)
        # (the reference step reports the NaN it meets as an overflowing gbar: ValueError)
        with pytest.raises((FloatingPointError, ValueError)):
            opt.step()
        _assert_unchanged(opt, [p], snap)
        state[field].copy_(snap_field)
    opt.step()  # and the repaired state steps on
    assert torch.isfinite(p).all()


def test_step_rereads_only_what_the_step_did_not_verify(monkeypatch):
    """A fused AdaGram step's U, V are not read again by ``step()`` (a read of the whole
    state); a reference step's are."""
    seen = []
    original = optim_torch._finite_flags

    def spy(tensors):
        seen.append([t.data_ptr() for t in tensors])
        return original(tensors)

    monkeypatch.setattr(optim_torch, "_finite_flags", spy)
    torch.manual_seed(0)
    for impl, checked in (("fused", False), ("reference", True)):
        p = torch.zeros(300, dtype=torch.float64, requires_grad=True)
        opt = AdaGram([p], lr=0.1, rank=3, direction="published", impl=impl)
        for _ in range(6):
            p.grad = torch.randn(300, dtype=torch.float64)
            seen.clear()
            opt.step()
        state = opt.state[p]
        assert state["last_impl"] == impl
        ptrs = {state["U"].data_ptr(), state["V"].data_ptr()}
        assert bool(ptrs & set(seen[-1])) is checked


@pytest.mark.parametrize("bad_first", [True, False])
def test_in_place_step_never_runs_when_another_group_fails(bad_first):
    """The last update of a step may overwrite its state in place; a failure anywhere else
    in the step must still leave every group unchanged."""
    torch.manual_seed(0)
    a = torch.zeros(300, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(20, dtype=torch.float64, requires_grad=True)
    groups = [{"params": [b], "rank": 2}, {"params": [a], "rank": 3}]
    if not bad_first:
        groups.reverse()
    opt = AdaGram(groups, lr=0.1, direction="published")
    for _ in range(6):
        a.grad = torch.randn(300, dtype=torch.float64)
        b.grad = torch.randn(20, dtype=torch.float64)
        opt.step()
    assert opt.state[a]["last_impl"] == "fused"
    snap = _snapshot(opt, [a, b])
    a.grad = torch.randn(300, dtype=torch.float64)
    b.grad = torch.full((20,), math.nan, dtype=torch.float64)
    with pytest.raises(FloatingPointError):
        opt.step()
    _assert_unchanged(opt, [a, b], snap)
    b.grad = torch.randn(20, dtype=torch.float64)
    ptr = opt.state[a]["U"].data_ptr()
    opt.step()  # a healthy step: the last group (a, when b is first) is updated in place
    assert (opt.state[a]["U"].data_ptr() == ptr) is bad_first
