"""Baselines (ALGORITHMS.md section E): adagrad, adam, full_matrix_adagrad."""

from __future__ import annotations

import numpy as np
import pytest
from dense_reference import (
    assert_directions_close,
    check_float32,
    check_nonfinite,
    check_roundtrip,
    dense_adagrad_init,
    dense_adagrad_step,
    dense_adam_init,
    dense_adam_step,
    dense_full_adagrad_init,
    dense_full_adagrad_step,
    gradient_stream,
    run_preconditioner,
    run_reference,
)

from lowrank_precond import preconditioners as pc
from lowrank_precond.preconditioners.diagonal import AdaGradState, AdamState
from lowrank_precond.preconditioners.full import FullMatrixAdaGradState

STEPS = 120


# --------------------------------------------------------------------------- adagrad


@pytest.mark.parametrize("eps_inside_sqrt", [True, False])
@pytest.mark.parametrize("shape", [(40,), (6, 7), ()])
def test_adagrad_matches_reference(rng, eps_inside_sqrt, shape):
    grads = gradient_stream(rng, shape, STEPS)
    eps = 1e-3  # large enough that the two conventions differ visibly
    want, ref = run_reference(
        dense_adagrad_step,
        dense_adagrad_init(shape),
        grads,
        eps=eps,
        eps_inside_sqrt=eps_inside_sqrt,
    )
    got, state = run_preconditioner(
        pc.adagrad(eps=eps, eps_inside_sqrt=eps_inside_sqrt), np.zeros(shape), grads
    )
    assert_directions_close(got, want, 1e-13)
    assert state.t == STEPS
    np.testing.assert_allclose(state.h, ref["h"], rtol=1e-14)
    # the two conventions really differ (so this test can tell them apart)
    other, _ = run_reference(
        dense_adagrad_step,
        dense_adagrad_init(shape),
        grads,
        eps=eps,
        eps_inside_sqrt=not eps_inside_sqrt,
    )
    assert np.linalg.norm(other[0] - want[0]) > 1e-6 * np.linalg.norm(want[0])


def _quadratic(rng, d):
    """Gradient oracle of 0.5 x^T A x - b^T x plus a seeded noise stream (depends on x)."""
    X = rng.standard_normal((d, d))
    A = X @ X.T / d + 0.1 * np.eye(d)
    b = rng.standard_normal(d)
    noise = [0.3 * rng.standard_normal(d) for _ in range(STEPS)]
    return lambda x, s: A @ x - b + noise[s]


def _torch_iterates(torch_opt_cls, x0, oracle, **kwargs):
    torch = pytest.importorskip("torch")
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    opt = torch_opt_cls([x], **kwargs)
    out = []
    for s in range(STEPS):
        opt.zero_grad()
        x.grad = torch.tensor(oracle(x.detach().numpy(), s), dtype=torch.float64)
        opt.step()
        out.append(x.detach().numpy().copy())
    return out


def _our_iterates(pre, x0, oracle, lr):
    x = x0.copy()
    state = pre.init(x)
    out = []
    for s in range(STEPS):
        p, state = pre.update(oracle(x, s), state)
        x = x - lr * p
        out.append(x.copy())
    return out


def test_adagrad_equals_torch_adagrad(rng):
    torch = pytest.importorskip("torch")
    d, lr, eps = 30, 0.3, 1e-6
    oracle = _quadratic(rng, d)
    x0 = rng.standard_normal(d)
    theirs = _torch_iterates(
        torch.optim.Adagrad, x0, oracle, lr=lr, lr_decay=0.0, initial_accumulator_value=0.0, eps=eps
    )
    ours = _our_iterates(pc.adagrad(eps=eps, eps_inside_sqrt=False), x0, oracle, lr)
    for s, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert np.linalg.norm(a - b) <= 1e-12 * np.linalg.norm(b), s
    assert np.linalg.norm(ours[-1] - x0) > 0.1  # the iterates actually moved


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.9), (0.0, 0.99)])
def test_adam_equals_torch_adam(rng, betas):
    torch = pytest.importorskip("torch")
    d, lr, eps = 30, 0.05, 1e-8
    oracle = _quadratic(rng, d)
    x0 = rng.standard_normal(d)
    theirs = _torch_iterates(torch.optim.Adam, x0, oracle, lr=lr, betas=betas, eps=eps)
    ours = _our_iterates(pc.adam(betas=betas, eps=eps), x0, oracle, lr)
    for s, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert np.linalg.norm(a - b) <= 1e-12 * np.linalg.norm(b), s
    assert np.linalg.norm(ours[-1] - x0) > 0.1


@pytest.mark.parametrize("shape", [(40,), (5, 8), ()])
def test_adam_matches_reference(rng, shape):
    grads = gradient_stream(rng, shape, STEPS)
    betas, eps = (0.8, 0.95), 1e-8
    want, ref = run_reference(dense_adam_step, dense_adam_init(shape), grads, betas=betas, eps=eps)
    got, state = run_preconditioner(pc.adam(betas=betas, eps=eps), np.zeros(shape), grads)
    assert_directions_close(got, want, 1e-13)
    assert state.t == STEPS
    np.testing.assert_allclose(state.m, ref["m"], rtol=1e-13)
    np.testing.assert_allclose(state.v, ref["v"], rtol=1e-13)


def test_adam_constant_gradient_E02(rng):
    g = rng.standard_normal(10)
    state = pc.adam(eps=1e-8).init(np.zeros(10))
    pre = pc.adam(eps=1e-8)
    for _ in range(25):
        p, state = pre.update(g, state)
        np.testing.assert_allclose(p, g / (np.abs(g) + 1e-8), rtol=1e-12)


# --------------------------------------------------------------------------- full matrix


@pytest.mark.parametrize("eps", [1e-4, 1e-8])
@pytest.mark.parametrize("shape", [(30,), (5, 6)])
def test_full_matrix_adagrad_matches_reference(rng, shape, eps):
    d = int(np.prod(shape))
    grads = gradient_stream(rng, shape, STEPS)
    want, ref = run_reference(dense_full_adagrad_step, dense_full_adagrad_init(d, eps), grads)
    got, state = run_preconditioner(pc.full_matrix_adagrad(eps=eps), np.zeros(shape), grads)
    # While fewer than d gradients were seen, eps I + G has eigenvalues ~eps in the unseen
    # directions and the step is as ill-conditioned as eps^{-1/2}: rounding ~u |G| in the
    # eigenvectors is amplified to ~1e-9 relative at eps = 1e-8 in *both* dense float64
    # computations (checked against the GGT thin-SVD form [A14]). So the warm-up is compared
    # at eps = 1e-4, and eps = 1e-8 once G has full rank (steps >= 2d).
    start = 0 if eps >= 1e-4 else 2 * d
    assert_directions_close(got[start:], want[start:], 1e-10)
    assert state.t == STEPS and state.G.shape == (d, d)
    np.testing.assert_allclose(state.G + eps * np.eye(d), ref["G"], rtol=1e-13, atol=1e-13)


def test_full_matrix_adagrad_equals_diagonal_for_coordinate_gradients_E01(rng):
    d, eps = 12, 1e-8
    grads = []
    for _ in range(STEPS):
        g = np.zeros(d)
        g[rng.integers(d)] = rng.standard_normal() * 3.0
        grads.append(g)
    full, _ = run_preconditioner(pc.full_matrix_adagrad(eps=eps), np.zeros(d), grads)
    diag, _ = run_preconditioner(pc.adagrad(eps=eps), np.zeros(d), grads)
    assert_directions_close(full, diag, 1e-13)
    # and for generic gradients it does not (the test can fail)
    generic = gradient_stream(rng, (d,), 5)
    full, _ = run_preconditioner(pc.full_matrix_adagrad(eps=eps), np.zeros(d), generic)
    diag, _ = run_preconditioner(pc.adagrad(eps=eps), np.zeros(d), generic)
    assert np.linalg.norm(full[-1] - diag[-1]) > 1e-3 * np.linalg.norm(diag[-1])


def test_full_matrix_adagrad_refuses_large_d():
    pre = pc.full_matrix_adagrad(max_dim=100)
    pre.init(np.zeros((10, 10)))  # d = 100 is accepted
    msg = r"d=101 exceeds max_dim=100.*'adagram'.*'sketched_adagrad'"
    with pytest.raises(ValueError, match=msg):
        pre.init(np.zeros(101))
    with pytest.raises(ValueError, match="max_dim=4096"):
        pc.full_matrix_adagrad().init(np.zeros(4097))


def test_full_matrix_adagrad_rejects_wrong_gradient_size():
    pre = pc.full_matrix_adagrad()
    state = pre.init(np.zeros(5))
    with pytest.raises(ValueError, match="grad"):
        pre.update(np.ones(6), state)


# --------------------------------------------------------------------------- protocol

FACTORIES = {
    "adagrad": (pc.adagrad, {"eps": 1e-6}, AdaGradState),
    "adagrad_torch_eps": (pc.adagrad, {"eps": 1e-6, "eps_inside_sqrt": False}, AdaGradState),
    "adam": (pc.adam, {"betas": (0.8, 0.99)}, AdamState),
    # eps = 1e-4: see test_full_matrix_adagrad_matches_reference on the warm-up conditioning
    "full_matrix_adagrad": (pc.full_matrix_adagrad, {"eps": 1e-4}, FullMatrixAdaGradState),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_backends_agree(xp, rng, name):
    factory, kwargs, _ = FACTORIES[name]
    shape = (4, 6)
    grads = gradient_stream(rng, shape, 30)
    want, _ = run_preconditioner(factory(**kwargs), np.zeros(shape), grads)
    got, _ = run_preconditioner(factory(**kwargs), np.zeros(shape), grads, xp=xp)
    assert_directions_close(got, want, 1e-10)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_float32_runs_finite(xp, rng, name):
    factory, kwargs, _ = FACTORIES[name]
    shape = (4, 6)
    grads = gradient_stream(rng, shape, 30)
    want, _ = run_preconditioner(factory(**kwargs), np.zeros(shape), grads)
    got = check_float32(factory(**kwargs), np.zeros(shape), grads, xp)
    assert_directions_close(got, want, 1e-3)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_nonfinite(rng, name):
    factory, kwargs, _ = FACTORIES[name]
    check_nonfinite(factory, np.zeros((3, 4)), gradient_stream(rng, (3, 4), 6), **kwargs)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_roundtrip(rng, name):
    factory, kwargs, cls = FACTORIES[name]
    check_roundtrip(factory(**kwargs), cls, np.zeros((3, 4)), gradient_stream(rng, (3, 4), 40), 17)


def test_update_does_not_mutate_state(rng):
    for factory, kwargs, _ in FACTORIES.values():
        pre = factory(**kwargs)
        grads = gradient_stream(rng, (5,), 3)
        _, s1 = run_preconditioner(pre, np.zeros(5), grads[:2])
        before = {k: np.array(v, copy=True) for k, v in vars(s1).items()}
        pre.update(grads[2], s1)
        for k, v in vars(s1).items():
            np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize(
    "call, match, exc",
    [
        (lambda: pc.adagrad(eps=0.0), "eps", ValueError),
        (lambda: pc.adagrad(eps=-1e-8), "eps", ValueError),
        (lambda: pc.adagrad(eps=float("nan")), "eps", ValueError),
        (lambda: pc.adagrad(eps="1e-8"), "eps", TypeError),
        (lambda: pc.adagrad(eps_inside_sqrt=1), "eps_inside_sqrt", TypeError),
        (lambda: pc.adagrad(nonfinite="ignore"), "nonfinite", ValueError),
        (lambda: pc.adam(betas=(1.0, 0.999)), r"betas\[0\]", ValueError),
        (lambda: pc.adam(betas=(0.9, -0.1)), r"betas\[1\]", ValueError),
        (lambda: pc.adam(betas=(0.9,)), "betas", ValueError),
        (lambda: pc.adam(betas=0.9), "betas", TypeError),
        (lambda: pc.adam(eps=0), "eps", ValueError),
        (lambda: pc.adam(nonfinite=None), "nonfinite", ValueError),
        (lambda: pc.full_matrix_adagrad(eps=0.0), "eps", ValueError),
        (lambda: pc.full_matrix_adagrad(max_dim=0), "max_dim", ValueError),
        (lambda: pc.full_matrix_adagrad(max_dim=10.5), "max_dim", TypeError),
        (lambda: pc.full_matrix_adagrad(nonfinite="nan"), "nonfinite", ValueError),
    ],
)
def test_bad_arguments(call, match, exc):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_bad_inputs(name):
    factory, kwargs, _ = FACTORIES[name]
    pre = factory(**kwargs)
    with pytest.raises(TypeError, match="x"):
        pre.init(np.zeros(3, dtype=np.int64))
    state = pre.init(np.zeros(3))
    with pytest.raises(TypeError, match="grad"):
        pre.update(np.zeros(3, dtype=np.int64), state)
    with pytest.raises(ValueError, match="grad"):
        pre.update(np.zeros(4), state)


def test_registry_and_repr():
    assert pc.get("adagrad") is pc.adagrad and pc.get("adam") is pc.adam
    assert pc.get("full_matrix_adagrad") is pc.full_matrix_adagrad
    pre = pc.adam(betas=(0.8, 0.9))
    assert pre.name == "adam" and pre.hyperparams["betas"] == (0.8, 0.9)
    assert repr(pre) == "adam(betas=(0.8, 0.9), eps=1e-08, nonfinite='raise')"
