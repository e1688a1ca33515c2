"""The torch.optim wrappers (lowrank_precond.optim.torch, public as lowrank_precond.torch).

References are built inside the tests: torch.optim.Adagrad/Adam/AdamW, a dense AdaGram
recursion, and the preconditioner factories run by hand on the same gradient stream.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torch not installed: pip install 'lowrank-precond[torch]'"
)

from lowrank_precond import preconditioners as pc  # noqa: E402
from lowrank_precond.torch import (  # noqa: E402
    ASGO,
    AdaDiag,
    AdaGrad,
    AdaGram,
    Adam,
    AdamGram,
    FullMatrixAdaGrad,
    PreconditionedOptimizer,
    SketchedAdaGrad,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


F64 = torch.float64


def _quadratic_grads(params, t, seed=0):
    """A gradient stream that depends on the iterate: grad of sum_i 0.5 |A_i x_i|^2 + noise."""
    gen = torch.Generator().manual_seed(seed * 1000 + t)
    for k, p in enumerate(params):
        n = p.numel()
        A = torch.linspace(0.5, 2.0, n, dtype=p.dtype) * (1 + 0.1 * k)
        noise = torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype)
        p.grad = (A * A * p.detach().reshape(-1)).reshape(p.shape) + 0.3 * noise


def _make_params(dtype=F64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    W = torch.nn.Parameter(torch.randn(3, 4, generator=gen, dtype=F64).to(dtype))
    b = torch.nn.Parameter(torch.randn(3, generator=gen, dtype=F64).to(dtype))
    return [W, b]


def _run(opt, params, steps, start=0, seed=0):
    for t in range(start, start + steps):
        _quadratic_grads(params, t, seed)
        opt.step()


def _rel(a, b):
    return float((a - b).norm() / max(b.norm(), 1e-300))


# --------------------------------------------------------------------------- baselines vs torch
def test_adagrad_equals_torch_adagrad():
    ours, theirs = _make_params(), _make_params()
    opt1 = AdaGrad(ours, lr=0.05, eps=1e-10, eps_inside_sqrt=False)
    opt2 = torch.optim.Adagrad(theirs, lr=0.05, eps=1e-10)
    for t in range(50):
        _quadratic_grads(ours, t)
        _quadratic_grads(theirs, t)
        opt1.step()
        opt2.step()
    for p, q in zip(ours, theirs, strict=True):
        assert _rel(p.detach(), q.detach()) <= 1e-12
    # and the package's default (eps inside the root) is a different method
    other = _make_params()
    opt3 = AdaGrad(other, lr=0.05, eps=1e-2)
    _run(opt3, other, 50)
    assert _rel(other[0].detach(), theirs[0].detach()) > 1e-6


@pytest.mark.parametrize(
    "kwargs, reference",
    [
        ({}, lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-8)),
        (
            {"weight_decay": 0.1},
            lambda ps: torch.optim.AdamW(
                ps, lr=0.01, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1
            ),
        ),
        (
            {"maximize": True},
            lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-8, maximize=True),
        ),
    ],
    ids=["adam", "adamw", "maximize"],
)
def test_adam_equals_torch_adam(kwargs, reference):
    ours, theirs = _make_params(), _make_params()
    opt1 = Adam(ours, lr=0.01, betas=(0.8, 0.99), eps=1e-8, **kwargs)
    opt2 = reference(theirs)
    for t in range(50):
        _quadratic_grads(ours, t)
        _quadratic_grads(theirs, t)
        opt1.step()
        opt2.step()
    for p, q in zip(ours, theirs, strict=True):
        assert _rel(p.detach(), q.detach()) <= 1e-12
    assert opt1.state[ours[0]]["t"] == 50


# ------------------------------------- AdaGram vs the dense recursion (docs/theory.rst, AdaGram)
@pytest.mark.parametrize("rank", [None, 40])
def test_adagram_exact_equals_dense_recursion(rank):
    d, eps, lr = 12, 1e-3, 0.1
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(d, generator=gen, dtype=F64)
    x = torch.nn.Parameter(x0.clone())
    opt = AdaGram([x], lr=lr, rank=rank, eps=eps, direction="published")
    A = torch.randn(d, d, generator=gen, dtype=F64) / 3
    H = A @ A.T + 0.1 * torch.eye(d, dtype=F64)
    noise = torch.randn(30, d, generator=gen, dtype=F64)
    xr = x0.numpy().copy()
    L = np.sqrt(eps) * np.eye(d)
    Hn = H.numpy()
    for t in range(30):
        x.grad = H @ x.detach() + 0.1 * noise[t]
        opt.step()
        g = Hn @ xr + 0.1 * noise[t].numpy()
        gbar = np.linalg.solve(L, g)
        s = np.hypot(1.0, np.linalg.norm(gbar))
        L = L @ (np.eye(d) + np.outer(gbar, gbar) / (1.0 + s))
        xr = xr - lr * np.linalg.solve(L, g)
    assert np.linalg.norm(x.detach().numpy() - xr) <= 1e-9 * np.linalg.norm(xr)
    if rank is None:
        assert opt.state[x]["P"].shape == (d, 30)
    else:  # d <= rank: the factory keeps rank d, which is exact
        assert opt.state[x]["U"].shape == (d, d)


# --------------------------------------------------------------------------- group-spanning
def _manual(pre, grads_per_step, lr):
    """Run ``pre`` by hand on a list of gradient vectors, return the summed update."""
    state, total = None, 0.0
    for g in grads_per_step:
        if state is None:
            state = pre.init(torch.zeros_like(g))
        p, state = pre.update(g, state)
        total = total - lr * p
    return total, state


@pytest.mark.parametrize(
    "cls, factory, kwargs",
    [
        (AdaGram, "adagram", {"rank": 3}),
        (SketchedAdaGrad, "sketched_adagrad", {"rank": 3}),
        (FullMatrixAdaGrad, "full_matrix_adagrad", {}),
    ],
)
def test_group_spanning_equals_concatenated_vector(cls, factory, kwargs):
    gen = torch.Generator().manual_seed(5)
    steps = [
        (torch.randn(3, 4, generator=gen, dtype=F64), torch.randn(3, generator=gen, dtype=F64))
        for _ in range(8)
    ]
    lr = 0.1

    def run(per_parameter):
        W = torch.nn.Parameter(torch.zeros(3, 4, dtype=F64))
        b = torch.nn.Parameter(torch.zeros(3, dtype=F64))
        opt = cls([W, b], lr=lr, per_parameter=per_parameter, eps=1e-4, **kwargs)
        for gW, gb in steps:
            W.grad, b.grad = gW.clone(), gb.clone()
            opt.step()
        return W.detach(), b.detach(), opt

    W1, b1, opt1 = run(False)
    pre = pc.get(factory)(eps=1e-4, **kwargs)
    span, _ = _manual(pre, [torch.cat([gW.reshape(-1), gb]) for gW, gb in steps], lr)
    assert _rel(torch.cat([W1.reshape(-1), b1]), span) <= 1e-12
    # one state, kept at the group's first parameter
    assert set(opt1.state) == {opt1.param_groups[0]["params"][0]}

    W2, b2, opt2 = run(True)
    refW, _ = _manual(pre, [gW.reshape(-1) for gW, _ in steps], lr)
    refb, _ = _manual(pre, [gb for _, gb in steps], lr)
    assert _rel(W2.reshape(-1), refW) <= 1e-12
    assert _rel(b2, refb) <= 1e-12
    assert len(opt2.state) == 2
    # the two modes are different methods
    assert _rel(W1, W2) > 1e-3


def test_missing_grad_is_zero_block_and_param_untouched():
    gen = torch.Generator().manual_seed(6)
    W = torch.nn.Parameter(torch.randn(2, 3, generator=gen, dtype=F64))
    b = torch.nn.Parameter(torch.randn(2, generator=gen, dtype=F64))
    b0 = b.detach().clone()
    W0 = W.detach().clone()
    opt = AdaGram([W, b], lr=0.1, eps=1e-3)
    grads = [torch.randn(2, 3, generator=gen, dtype=F64) for _ in range(4)]
    for g in grads:
        W.grad, b.grad = g.clone(), None
        opt.step()
    assert torch.equal(b.detach(), b0)  # no direction, no weight decay
    ref, state = _manual(
        pc.adagram(eps=1e-3),
        [torch.cat([g.reshape(-1), torch.zeros(2, dtype=F64)]) for g in grads],
        0.1,
    )
    assert _rel(W.detach().reshape(-1) - W0.reshape(-1), ref[:6]) <= 1e-12
    assert opt.state[W]["P"].shape == (8, 4)
    # all gradients None: the group is skipped, the state is not touched
    W.grad = b.grad = None
    before = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[W].items()}
    opt.step()
    for k, v in opt.state[W].items():
        assert torch.equal(v, before[k]) if torch.is_tensor(v) else v == before[k]


# --------------------------------------------------------------------------- groups
def test_param_groups_have_their_own_hyperparameters():
    gen = torch.Generator().manual_seed(7)
    a = torch.nn.Parameter(torch.randn(10, generator=gen, dtype=F64))
    b = torch.nn.Parameter(torch.randn(4, 3, generator=gen, dtype=F64))
    c = torch.nn.Parameter(torch.randn(5, generator=gen, dtype=F64))
    opt = AdaGram(
        [{"params": [a], "rank": 2, "lr": 0.5}, {"params": [b, c], "rank": 3}],
        lr=0.01,
        rank=4,
        integrator="truncated_svd",
    )
    opt.add_param_group({"params": [], "rank": 5})  # an empty group is allowed and ignored
    _run(opt, [a, b, c], 6)
    assert opt.state[a]["U"].shape == (10, 2)
    assert opt.state[b]["U"].shape == (17, 3)
    assert c not in opt.state
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.01, 0.01]
    assert [g["rank"] for g in opt.param_groups] == [2, 3, 5]

    # a group's lr only scales its own step
    ref = _make_params()
    x1 = torch.nn.Parameter(ref[0].detach().clone())
    x2 = torch.nn.Parameter(ref[0].detach().clone())
    opt = AdaGram([{"params": [x1], "lr": 0.2}, {"params": [x2], "lr": 0.1}], eps=1e-3)
    x1.grad = x2.grad = torch.ones(3, 4, dtype=F64)
    opt.step()
    assert torch.allclose(x1 - ref[0], 2 * (x2 - ref[0]), rtol=1e-13, atol=0)

    # changing a group's hyper-parameter rebuilds its preconditioner
    y = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    opt = AdaGrad([y], lr=1.0, eps=1e-8)
    y.grad = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    opt.step()
    opt.param_groups[0]["eps"] = 3.0
    y.grad = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    opt.step()
    assert y[0].item() == pytest.approx(-1 / np.sqrt(1 + 1e-8) - 1 / np.sqrt(2 + 3.0), rel=1e-14)


def test_mixed_layouts_and_shapes():
    conv = torch.nn.Parameter(torch.randn(4, 2, 3, 3, dtype=F64))
    scalar = torch.nn.Parameter(torch.tensor(1.5, dtype=F64))
    for cls in (AdaDiag, ASGO):
        opt = cls([conv, scalar], lr=1e-2)
        _run(opt, [conv, scalar], 3)
        assert conv.shape == (4, 2, 3, 3) and scalar.shape == ()
    assert opt.state[conv]["V"].shape == (4, 4)  # ASGO left side of the (4, 18) matrix
    opt = AdaGram([conv, scalar], lr=1e-2, per_parameter=True, rank=2)
    _run(opt, [conv, scalar], 3)
    assert opt.state[conv]["U"].shape == (72, 2)


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "cls, kwargs",
    [(AdaGram, {"rank": 2}), (ASGO, {}), (AdaDiag, {"update_freq": 2}), (AdaGrad, {})],
)
def test_weight_decay_is_decoupled(cls, kwargs):
    lr, wd = 0.05, 0.3
    ps_wd, ps = _make_params(), _make_params()
    opt_wd = cls(ps_wd, lr=lr, weight_decay=wd, **kwargs)
    opt = cls(ps, lr=lr, **kwargs)
    for t in range(5):
        # the same gradients for both runs, so the directions are identical
        _quadratic_grads(ps, t)
        for p, q in zip(ps_wd, ps, strict=True):
            p.grad = q.grad.clone()
        x_before = [p.detach().clone() for p in ps_wd]
        y_before = [p.detach().clone() for p in ps]
        opt_wd.step()
        opt.step()
        for p, x0, q, y0 in zip(ps_wd, x_before, ps, y_before, strict=True):
            direction = (y0 - q.detach()) / lr
            expected = x0 * (1 - lr * wd) - lr * direction
            assert _rel(p.detach(), expected) <= 1e-13
        # the next gradients follow the decayed iterate: keep both runs on the same gradients
        for p, q in zip(ps, ps_wd, strict=True):
            p.data.copy_(q.detach())


@pytest.mark.parametrize("cls", [AdaGram, SketchedAdaGrad, ASGO, AdaDiag, FullMatrixAdaGrad])
def test_maximize_negates_the_gradient(cls):
    ps_max, ps = _make_params(), _make_params()
    opt_max, opt = cls(ps_max, lr=0.05, maximize=True), cls(ps, lr=0.05)
    for t in range(6):
        _quadratic_grads(ps, t)
        for p, q in zip(ps_max, ps, strict=True):
            p.grad = -q.grad
        opt_max.step()
        opt.step()
    for p, q in zip(ps_max, ps, strict=True):
        assert torch.equal(p, q)


def test_closure_returns_loss_and_runs_with_grad():
    x = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=F64))
    opt = AdaGram([x], lr=0.1)
    seen = {}

    def closure():
        seen["grad_enabled"] = torch.is_grad_enabled()
        opt.zero_grad()
        loss = (x * x).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert seen["grad_enabled"] is True
    assert loss.item() == 5.0
    assert x.grad is not None and not torch.equal(x.detach(), torch.tensor([1.0, 2.0], dtype=F64))
    assert opt.step() is None
    opt.zero_grad()
    assert x.grad is None


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda ps: AdaGram(ps, lr=-1.0), "lr"),
        (lambda ps: AdaGram(ps, lr=float("nan")), "lr"),
        (lambda ps: AdaGram(ps, weight_decay=-0.1), "weight_decay"),
        (lambda ps: AdaGram(ps, rank=0), "rank"),
        (lambda ps: AdaGram(ps, eps=0.0), "eps"),
        (lambda ps: AdaGram(ps, direction="sideways"), "direction"),
        (lambda ps: AdaGram(ps, nonfinite="ignore"), "nonfinite"),
        (lambda ps: AdaGram([{"params": ps[:1]}, {"params": ps[1:], "rank": -2}]), "rank"),
        (lambda ps: AdaGram([{"params": ps, "lr": -3}]), "lr"),
        (lambda ps: SketchedAdaGrad(ps, rank=0), "rank"),
        (lambda ps: AdaDiag(ps, update_freq=0), "update_freq"),
        (lambda ps: AdaDiag(ps, betas=(0.9, 1.0)), "betas"),
        (lambda ps: AdaDiag([{"params": ps, "per_parameter": False}]), "per_parameter"),
        (lambda ps: ASGO(ps, side="up"), "side"),
        (lambda ps: ASGO(ps, betas=(1.5, None)), "betas"),
        (lambda ps: Adam(ps, betas=(1.0, 0.9)), "betas"),
        (lambda ps: FullMatrixAdaGrad(ps, max_dim=0), "max_dim"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make(_make_params())


def test_bad_types_and_layouts():
    ps = _make_params()
    with pytest.raises(TypeError, match="maximize"):
        AdaGram(ps, maximize=1)
    with pytest.raises(TypeError, match="unexpected"):
        AdaGram(_make_params(), rankk=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected"):
        PreconditionedOptimizer.__init__(AdaGrad.__new__(AdaGrad), ps, betas=(0.9, 0.9))
    mixed = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, dtype=F64))]
    with pytest.raises(ValueError, match="per_parameter"):
        AdaGram(mixed)
    AdaGram(mixed, per_parameter=True)  # fine per parameter
    with pytest.raises(TypeError, match="params"):
        AdaGram([torch.zeros(2, dtype=torch.int64)])
    # a failed add_param_group leaves the optimizer as it was
    opt = AdaGram(_make_params()[:1])
    with pytest.raises(ValueError, match="rank"):
        opt.add_param_group({"params": _make_params()[1:], "rank": 0})
    assert len(opt.param_groups) == 1
    # FullMatrixAdaGrad refuses a group larger than max_dim at its first step
    opt = FullMatrixAdaGrad(ps, max_dim=10)
    _quadratic_grads(ps, 0)
    before = [p.detach().clone() for p in ps]
    with pytest.raises(ValueError, match="max_dim"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, before, strict=True)) and not opt.state
    # sparse gradients are refused
    emb = torch.nn.Embedding(5, 2, sparse=True)
    opt = AdaGram(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


# --------------------------------------------------------------------------- non-finite gradients
def _snapshot(opt, params):
    state = {
        id(k): {n: (v.clone() if torch.is_tensor(v) else v) for n, v in s.items()}
        for k, s in opt.state.items()
    }
    return [p.detach().clone() for p in params], state


def _assert_same(opt, params, snap):
    values, state = snap
    assert all(torch.equal(p, q) for p, q in zip(params, values, strict=True))
    assert {id(k) for k in opt.state} == set(state)
    for k, s in opt.state.items():
        for n, v in s.items():
            assert torch.equal(v, state[id(k)][n]) if torch.is_tensor(v) else v == state[id(k)][n]


@pytest.mark.parametrize(
    "cls, kwargs",
    [(AdaGram, {"rank": 2}), (SketchedAdaGrad, {"rank": 2}), (ASGO, {}), (AdaDiag, {}), (Adam, {})],
)
def test_nonfinite_gradient_raises_and_changes_nothing(cls, kwargs):
    ps = _make_params()
    extra = torch.nn.Parameter(torch.ones(4, dtype=F64))
    opt = cls([{"params": [extra]}, {"params": ps}], lr=0.1, weight_decay=0.1, **kwargs)
    _run(opt, ps + [extra], 3)
    snap = _snapshot(opt, ps + [extra])
    _quadratic_grads(ps + [extra], 3)
    ps[1].grad[0] = float("nan")
    with pytest.raises(FloatingPointError, match="group 1"):
        opt.step()
    # nothing changed, in the finite group 0 either
    _assert_same(opt, ps + [extra], snap)

    # skip: the NaN group is skipped (no weight decay either), the finite group steps
    opt.param_groups[1]["nonfinite"] = "skip"
    opt.step()
    values, _ = snap
    assert all(torch.equal(p, q) for p, q in zip(ps, values[:2], strict=True))
    assert not torch.equal(extra.detach(), values[2])
    for n, v in opt.state[ps[0]].items():
        old = snap[1][id(ps[0])][n]
        assert torch.equal(v, old) if torch.is_tensor(v) else v == old


def test_nonfinite_skip_with_inf_in_group_spanning_adagram():
    ps = _make_params()
    opt = AdaGram(ps, lr=0.1, nonfinite="skip")
    _run(opt, ps, 2)
    snap = _snapshot(opt, ps)
    _quadratic_grads(ps, 2)
    ps[0].grad[1, 1] = float("-inf")
    opt.step()
    _assert_same(opt, ps, snap)
    _run(opt, ps, 1, start=3)
    assert opt.state[ps[0]]["t"] == 3


# --------------------------------------------------------------------------- state isolation
@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (AdaGram, {"rank": 2}),
        (AdamGram, {"rank": None}),
        (SketchedAdaGrad, {"rank": 2}),
        (ASGO, {}),
        (ASGO, {"betas": (0.5, None)}),
        (AdaDiag, {"two_sided": True}),
        (FullMatrixAdaGrad, {}),
        (AdaGrad, {}),
        (Adam, {}),
    ],
)
def test_state_does_not_alias_the_gradients(cls, kwargs):
    ps = _make_params()
    opt = (
        cls(ps, lr=0.01, per_parameter=True, **kwargs)
        if "per_parameter" in inspect.signature(cls).parameters
        else cls(ps, lr=0.01, **kwargs)
    )
    _run(opt, ps, 3)
    snap = _snapshot(opt, ps)
    for p in ps:
        p.grad.add_(1.0)  # what backward() does to .grad without zero_grad
    _assert_same(opt, ps, snap)


# --------------------------------------------------------------------------- signatures
@pytest.mark.parametrize(
    "cls", [AdaGram, AdamGram, SketchedAdaGrad, FullMatrixAdaGrad, AdaDiag, ASGO, AdaGrad, Adam]
)
def test_class_defaults_match_their_factory(cls):
    factory = pc.get(cls.factory)
    fsig = dict(inspect.signature(factory).parameters)
    csig = inspect.signature(cls).parameters
    sharded = fsig.pop("shards", None) is not None  # supplied by the optimizer itself
    for name, param in fsig.items():
        assert name in csig, f"{cls.__name__} lacks the factory argument {name}"
        assert csig[name].default == param.default, name
    own = set(csig) - set(fsig)
    assert own <= {"params", "lr", "weight_decay", "maximize", "per_parameter", "process_group",
                   "shard_state"}  # fmt: skip
    assert ("per_parameter" in csig) == (cls.layout == "vector")
    assert ("shard_state" in csig) == ("process_group" in csig) == sharded


def test_custom_subclass_with_callable_factory():
    class Sign(PreconditionedOptimizer):
        """Sign descent via the AdaGrad factory at tiny eps (a subclass needs only this)."""

        factory = staticmethod(
            lambda eps=1e-30, nonfinite="raise": pc.adagrad(eps, False, nonfinite)
        )
        layout = "elementwise"

    x = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    opt = Sign([x], lr=0.5)
    x.grad = torch.tensor([2.0, -3.0, 0.5], dtype=F64)
    opt.step()
    assert x.tolist() == [-0.5, 0.5, -0.5]
    assert opt.param_groups[0]["eps"] == 1e-30


# --------------------------------------------------------------------------- dtypes and devices
ALL_CLASSES = [
    (AdaGram, {"rank": 2}),
    (AdaGram, {"rank": 2, "direction": "symmetric", "integrator": "truncated_svd"}),
    (AdamGram, {"rank": None}),
    (SketchedAdaGrad, {"rank": 2}),
    (FullMatrixAdaGrad, {}),
    (AdaDiag, {"update_freq": 2}),
    (AdaDiag, {"update_freq": 2, "two_sided": True}),
    (ASGO, {"betas": (0.5, None)}),
    (AdaGrad, {}),
    (Adam, {}),
]
IDS = [f"{c.__name__}-{i}" for i, (c, _) in enumerate(ALL_CLASSES)]


@pytest.mark.parametrize("cls, kwargs", ALL_CLASSES, ids=IDS)
def test_float32_params_follow_the_float64_run(cls, kwargs):
    p32 = _make_params(torch.float32)
    p64 = [torch.nn.Parameter(p.detach().to(F64)) for p in p32]
    opt32 = cls(p32, lr=0.02, eps=1e-4, **kwargs)
    opt64 = cls(p64, lr=0.02, eps=1e-4, **kwargs)
    for t in range(8):
        _quadratic_grads(p64, t)
        for p, q in zip(p32, p64, strict=True):
            p.grad = q.grad.to(torch.float32)
        opt32.step()
        opt64.step()
        for p, q in zip(p32, p64, strict=True):
            assert p.dtype == torch.float32
            # the float32 run tracks the float64 one (the gradients are shared, so errors
            # do not compound through the iterate)
            assert _rel(p.detach().to(F64), q.detach()) <= 1e-5
            q.data.copy_(p.detach().to(F64))


@pytest.mark.gpu
@pytest.mark.parametrize("cls, kwargs", ALL_CLASSES, ids=IDS)
def test_cuda_matches_cpu(cls, kwargs):
    if not torch.cuda.is_available():
        pytest.skip("torch-cuda: no CUDA device (torch.cuda.is_available() is False)")
    cpu = _make_params()
    gpu = [torch.nn.Parameter(p.detach().cuda()) for p in cpu]
    opt_cpu, opt_gpu = cls(cpu, lr=0.02, **kwargs), cls(gpu, lr=0.02, **kwargs)
    for t in range(6):
        _quadratic_grads(cpu, t)
        for p, q in zip(gpu, cpu, strict=True):
            p.grad = q.grad.cuda()
        opt_cpu.step()
        opt_gpu.step()
    for p, q in zip(gpu, cpu, strict=True):
        assert p.is_cuda
        assert _rel(p.detach().cpu(), q.detach()) <= 1e-9
    for fields in opt_gpu.state.values():
        assert all(v.is_cuda for v in fields.values() if torch.is_tensor(v))


def test_works_with_lr_schedulers_and_step_hooks():
    x = torch.nn.Parameter(torch.zeros(2, dtype=F64))
    opt = AdaGrad([x], lr=1.0, eps=1e-30)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    calls = []
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append(o.param_groups[0]["lr"]))
    moves = []
    for _ in range(3):
        before = x.detach().clone()
        x.grad = torch.tensor([1.0, 0.0], dtype=F64)
        opt.step()
        sched.step()
        moves.append((before - x.detach())[0].item())
    # AdaGrad with a constant gradient: lr_t / sqrt(t), lr_t = 0.5^(t-1)
    assert moves == pytest.approx([1.0, 0.5 / np.sqrt(2), 0.25 / np.sqrt(3)], rel=1e-14)
    assert calls == [1.0, 0.5, 0.25]
