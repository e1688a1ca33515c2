"""PyTorch's own optimizer conformance checks, run on the classes of ``lowrank_precond.torch``.

torch ships the optimizer database (``torch.testing._internal.common_optimizers``) but not the
tests that use it (``test/test_optim.py``), and importing the database needs ``expecttest``,
which is not a dependency here; so the checks are replicated: same problems, same steps, same
assertions, named after torch's tests. Every class runs with its defaults (plus
AdamGram's required ``rank``), on torch's harness seed (1234).
"""

from __future__ import annotations

import copy
import functools
import io
import warnings

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

#: class -> its required arguments (the defaults are what is under test)
CLASSES = {
    AdaGram: {},
    AdamGram: {"rank": None},
    SketchedAdaGrad: {},
    FullMatrixAdaGrad: {},
    AdaDiag: {},
    ASGO: {},
    AdaGrad: {},
    Adam: {},
}
IDS = [c.__name__ for c in CLASSES]
SEED = 1234  # torch's TestCase seeds every test with it

parametrize_classes = pytest.mark.parametrize("cls", list(CLASSES), ids=IDS)


def _make(cls, params, **kwargs):
    return cls(params, **{**CLASSES[cls], **kwargs})


def _assert_equal(a, b, where="state_dict"):
    """``TestCase.assertEqual`` of torch's tests on nested state dicts (tensors, strings,
    numbers, containers)."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b), where
        torch.testing.assert_close(a, b, msg=where)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            _assert_equal(u, v, f"{where}[{i}]")
    else:
        assert a == b, where


def _fwd_bwd(opt, w, b, x):
    opt.zero_grad()
    loss = (w.mv(x) + b).pow(2).sum()
    loss.backward()
    return loss


def _linear(contiguous=True):
    torch.manual_seed(SEED)
    if contiguous:
        weight = torch.nn.Parameter(torch.randn(10, 5))
        bias = torch.nn.Parameter(torch.randn(10))
    else:
        weight = torch.nn.Parameter(torch.randn(10, 5, 2)[..., 0])
        bias = torch.nn.Parameter(torch.randn(10, 2)[..., 0])
    return weight, bias, torch.randn(5)


SCHEDULERS = {
    "none": [],
    "steplr": [lambda opt: torch.optim.lr_scheduler.StepLR(opt, gamma=0.9, step_size=10)],
    "plateau": [lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt)],
}


@parametrize_classes
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
def test_forloop_goes_right_direction(cls, scheduler, contiguous, maximize):
    weight, bias, x = _linear(contiguous)
    opt = _make(cls, [weight, bias], maximize=maximize)
    schedulers = [make(opt) for make in SCHEDULERS[scheduler]]

    def closure():
        opt.zero_grad()
        loss = (weight.mv(x) + bias).pow(2).sum()
        loss.backward()
        return loss

    initial = closure().item()
    for _ in range(20):
        loss = closure()
        opt.step()
        for s in schedulers:
            if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau):
                s.step(loss.detach())
            else:
                s.step()
    if maximize:
        assert closure().item() > initial
    else:
        assert closure().item() < initial


@parametrize_classes
def test_param_groups_with_different_settings(cls):
    """torch's ``test_param_groups_weight_decay`` / ``test_param_groups_lr``: each group its
    own settings, the loss still falls, and each group keeps what it was given."""
    weight, bias, x = _linear()
    opt = _make(
        cls,
        [{"params": [weight], "weight_decay": 0.1}, {"params": [bias], "lr": 0.01}],
    )
    initial = _fwd_bwd(opt, weight, bias, x).item()
    for _ in range(20):
        opt.step(functools.partial(_fwd_bwd, opt, weight, bias, x))
    assert _fwd_bwd(opt, weight, bias, x).item() < initial
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert opt.param_groups[1]["lr"] == 0.01
    assert opt.param_groups[0]["lr"] == opt.defaults["lr"]


@parametrize_classes
def test_state_dict_deterministic(cls):
    """A copy of the state dict (``deepcopy``) continues the run exactly, and the state dicts
    of equal (not identical) optimizers are equal."""
    torch.manual_seed(SEED)
    weight = torch.nn.Parameter(torch.randn(2, 3))
    bias = torch.nn.Parameter(torch.randn(2))
    x = torch.randn(3)
    opt = _make(cls, [weight, bias])
    for _ in range(3):
        opt.step(functools.partial(_fwd_bwd, opt, weight, bias, x))
    weight_c = torch.nn.Parameter(weight.detach().clone())
    bias_c = torch.nn.Parameter(bias.detach().clone())
    opt_c = _make(cls, [weight_c, bias_c])
    opt_c.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(10):
        opt.step(functools.partial(_fwd_bwd, opt, weight, bias, x))
        opt_c.step(functools.partial(_fwd_bwd, opt_c, weight_c, bias_c, x))
        torch.testing.assert_close(weight, weight_c)
        torch.testing.assert_close(bias, bias_c)
    _assert_equal(opt.state_dict(), opt_c.state_dict())
    # repeated param groups have identical representations
    opt_c.param_groups.extend(opt_c.param_groups)
    assert opt.state_dict()["param_groups"][-1] == opt_c.state_dict()["param_groups"][-1]


@parametrize_classes
def test_save_load_equality_with_weights_only(cls):
    weight, bias, x = _linear()
    opt = _make(cls, [weight, bias])
    for _ in range(3):
        opt.step(functools.partial(_fwd_bwd, opt, weight, bias, x))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    _assert_equal(loaded, opt.state_dict())
    opt2 = _make(cls, [weight, bias])
    opt2.load_state_dict(loaded)
    _assert_equal(opt2.state_dict(), opt.state_dict())


@parametrize_classes
def test_can_load_older_state_dict(cls):
    """A state dict whose param groups lack keys (flags added later) loads; missing keys take
    the defaults and the optimizer steps on."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 2, 1, stride=2), torch.nn.BatchNorm2d(2, eps=1e-05, momentum=0.1)
    )
    x = torch.rand(1, 4, 16, 16)
    opt = _make(cls, model.parameters())

    def fwd_bwd():
        opt.zero_grad()
        loss = model(x).sum()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(fwd_bwd)
    old = copy.deepcopy(opt.state_dict())
    newer = ("maximize", "nonfinite", "weight_decay", "per_parameter")
    for group in old["param_groups"]:
        for key in newer:
            group.pop(key, None)
    opt.load_state_dict(old)
    assert all(key in opt.param_groups[0] for key in newer if key in opt.defaults)
    opt.step(fwd_bwd)


@parametrize_classes
def test_step_with_closure_returns_its_loss_and_calls_it_once(cls):
    weight, bias, x = _linear()
    opt = _make(cls, [weight, bias])
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        return _fwd_bwd(opt, weight, bias, x)

    with torch.no_grad():
        loss = opt.step(closure)
    assert calls == [True] and torch.is_tensor(loss) and loss.requires_grad
    assert opt.step() is None


@parametrize_classes
def test_zero_grad_set_to_none(cls):
    weight, bias, x = _linear()
    opt = _make(cls, [weight, bias])
    opt.step(functools.partial(_fwd_bwd, opt, weight, bias, x))
    opt.zero_grad(set_to_none=False)
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    assert torch.equal(bias.grad, torch.zeros_like(bias))
    opt.zero_grad()
    assert weight.grad is None and bias.grad is None


@parametrize_classes
def test_step_is_noop_when_params_have_no_grad(cls):
    params = [torch.nn.Parameter(torch.randn(2, 3)) for _ in range(2)]
    before = [p.detach().clone() for p in params]
    opt = _make(cls, params, weight_decay=0.1)
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before, strict=True))
    assert not opt.state


@parametrize_classes
def test_tensor_lr(cls):
    """A 0-d tensor lr steps like the same float lr (torch's ``test_tensor_lr``)."""
    weight, bias, x = _linear()
    weight_c = torch.nn.Parameter(weight.detach().clone())
    bias_c = torch.nn.Parameter(bias.detach().clone())
    opt_r = _make(cls, [weight, bias], lr=1e-3)
    opt = _make(cls, [weight_c, bias_c], lr=torch.tensor(1e-3))
    for _ in range(5):
        opt_r.step(functools.partial(_fwd_bwd, opt_r, weight, bias, x))
        opt.step(functools.partial(_fwd_bwd, opt, weight_c, bias_c, x))
        torch.testing.assert_close(weight, weight_c)
        torch.testing.assert_close(bias, bias_c)


@parametrize_classes
def test_complex_params_are_refused_clearly(cls):
    with pytest.raises(TypeError, match="real floating-point parameters, got torch.complex64"):
        _make(cls, [torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))])


@parametrize_classes
def test_errors_for_all_optims(cls):
    """torch's ``get_error_inputs_for_all_optims``: the errors every optimizer raises."""
    p1, p2 = torch.nn.Parameter(torch.randn(1, 1)), torch.nn.Parameter(torch.randn(1, 1))
    with pytest.raises(TypeError, match="params argument given to the optimizer should be"):
        _make(cls, p1)
    with pytest.warns(UserWarning, match="a parameter group with duplicate parameters"):
        _make(cls, [p1, p1])
    with pytest.raises(ValueError, match="some parameters appear in more than one"):
        _make(cls, [{"params": p1}, {"params": p1}])
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        _make(cls, [p1], lr=torch.tensor([0.001, 0.001]))
    with pytest.raises(ValueError, match="all optimizer params should be with/without names"):
        _make(cls, [("weight", p1), p2])


@parametrize_classes
def test_named_parameters_and_their_names_survive_loading(cls):
    torch.manual_seed(SEED)
    model = torch.nn.Linear(3, 2)
    opt = _make(cls, model.named_parameters())
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    assert saved["param_groups"][0]["param_names"] == ["weight", "bias"]
    opt2 = _make(cls, model.named_parameters())
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["param_names"] == ["weight", "bias"]


@parametrize_classes
def test_hooks_run(cls):
    """step pre/post hooks and the state-dict / load-state-dict hooks (``load_state_dict``
    is this package's own: it must keep torch's hook protocol)."""
    weight, bias, x = _linear()
    opt = _make(cls, [weight, bias])
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: seen.append("post"))
    opt.register_state_dict_post_hook(lambda o, sd: sd.setdefault("extra", 1) and None)

    def load_pre(o, sd):
        seen.append("load_pre")
        sd = dict(sd)
        sd.pop("extra", None)
        return sd

    opt.register_load_state_dict_pre_hook(load_pre)
    opt.register_load_state_dict_post_hook(lambda o: seen.append("load_post"))
    opt.step(functools.partial(_fwd_bwd, opt, weight, bias, x))
    saved = opt.state_dict()
    assert saved["extra"] == 1
    opt.load_state_dict(saved)
    assert seen == ["pre", "post", "load_pre", "load_post"]


@parametrize_classes
def test_deepcopy_copies_all_public_attrs(cls):
    weight, bias, x = _linear()
    opt = _make(cls, [weight, bias])
    opt.step(functools.partial(_fwd_bwd, opt, weight, bias, x))
    public = {k for k in vars(opt) if not k.startswith("_")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clone = copy.deepcopy(opt)
    assert public == {k for k in vars(clone) if not k.startswith("_")}
    assert "Parameter Group 0" in repr(clone)
