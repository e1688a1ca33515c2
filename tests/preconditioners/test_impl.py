"""``impl=``: the reference and the fused implementation of each method, on every backend.

One matrix, method x impl x backend, against the dense references of ``test_adagram`` and
``test_sketched``: every combination that can run gives the dense directions; ``"fused"``
where it cannot run raises ``ValueError`` naming ``impl`` (never a silent fallback); and
``state.last_impl`` says which implementation ran each step.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_adagram import dense_adagram
from test_sketched import dense_sketched

from lowrank_precond import preconditioners as pc

D, R, EPS, STEPS = 30, 4, 0.05, 24

#: name -> (factory kwargs, dense replay of the directions)
METHODS = {
    "adagram published": (
        dict(rank=R, direction="published"),
        lambda g: dense_adagram(g, EPS, R)[0]["published"],
    ),
    "adagram symmetric": (
        dict(rank=R, direction="symmetric"),
        lambda g: dense_adagram(g, EPS, R)[0]["symmetric"],
    ),
    "adamgram b1=0": (
        dict(rank=R, betas=(0.0, 0.0)),
        lambda g: dense_adagram(g, EPS, R)[0]["symmetric"],
    ),
    "sketched_adagrad": (dict(rank=R), lambda g: dense_sketched(g, EPS, R)[0]),
    "sketched_adagrad ema": (
        dict(rank=R, betas=(0.0, 0.9)),
        lambda g: dense_sketched(g, EPS, R, betas=(0.0, 0.9))[0],
    ),
}

FUSED_BACKENDS = ("numpy", "torch")  # NumPy arrays and torch CPU tensors


def _factory(method):
    return pc.adamgram if method.startswith("adamgram") else pc.get(method.split()[0])


def _stream():
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal(D) for _ in range(STEPS)]
    grads[15] = grads[14].copy()  # a repeated gradient
    grads[18] = np.zeros(D)  # and a zero one
    return grads


@pytest.mark.parametrize("impl", ["reference", "fused", "auto"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_impl_backend_against_dense_reference(xp, method, impl):
    kwargs, dense = METHODS[method]
    pre = _factory(method)(eps=EPS, impl=impl, **kwargs)
    fused_here = xp.name in FUSED_BACKENDS
    if impl == "fused" and not fused_here:
        with pytest.raises(ValueError, match=r"^impl: 'fused' cannot run for this parameter"):
            pre.init(xp.asarray(np.zeros(D)))
        return
    grads = _stream()
    want = dense(grads)
    state = pre.init(xp.asarray(np.zeros(D)))
    ran = []
    for s, g in enumerate(grads):
        p, state = pre.update(xp.asarray(g), state)
        got = xp.to_numpy(p)
        err = np.linalg.norm(got - want[s]) / max(np.linalg.norm(want[s]), 1e-300)
        assert err <= 1e-9, f"step {s}: relative error {err:.2e}"
        ran.append(state.last_impl)
    fused_steps = sum(r == "fused" for r in ran)
    if impl == "reference" or (impl == "auto" and not fused_here):
        assert fused_steps == 0 and all(r == "reference" for r in ran)
    else:  # every step after the warm-up ran fused (the zero gradient is no step at all)
        assert fused_steps >= STEPS - R - 2, ran
        assert ran[0].startswith("reference: ")  # the warm-up says why


@pytest.mark.parametrize(
    "factory,kwargs,match",
    [
        (pc.adagram, dict(direction="newton"), "'published' or 'symmetric'"),
        (pc.adagram, dict(order=2), "projector_splitting"),
        (pc.adagram, dict(integrator="truncated_svd"), "projector_splitting"),
        (pc.adagram, dict(rank=None), "rank must be an int"),
        (pc.adamgram, dict(rank=3, betas=(0.0, 0.0), direction="newton"), "'published'"),
        (pc.adamgram, dict(rank=None, betas=(0.9, 0.0)), "rank must be an int"),
        (pc.sketched_adagrad, dict(betas=(0.9, 0.0)), "moment"),
        (pc.sketched_adagrad, dict(integrator="truncated_svd"), "integrator=None"),
    ],
)
def test_fused_raises_where_the_method_has_no_fused_step(factory, kwargs, match):
    with pytest.raises(ValueError, match=rf"^impl: 'fused' cannot run: .*{match}"):
        factory(impl="fused", **kwargs)
    factory(impl="auto", **kwargs)  # auto takes the reference step there
    factory(impl="reference", **kwargs)


@pytest.mark.parametrize(
    "factory,kwargs,x,match",
    [
        (pc.adagram, dict(rank=5), np.zeros(11), "below 2 rank"),
        (pc.adagram, dict(factor_dtype="float32"), np.zeros(50), "float64"),
        (pc.sketched_adagrad, dict(rank=5), np.zeros(6), "below rank"),
    ],
)
def test_fused_raises_where_the_parameter_cannot_take_it(factory, kwargs, x, match):
    pre = factory(impl="fused", **kwargs)
    with pytest.raises(
        ValueError, match=rf"^impl: 'fused' cannot run for this parameter: .*{match}"
    ):
        pre.init(x)
    factory(impl="auto", **kwargs).init(x)


@pytest.mark.parametrize("factory", [pc.adagram, pc.adamgram, pc.sketched_adagrad])
def test_impl_is_validated(factory):
    with pytest.raises(ValueError, match="^impl"):
        factory(rank=3, impl="fast")


@pytest.mark.parametrize("direction", ["published", "symmetric"])
@pytest.mark.parametrize("kind", ["random", "repeated", "zero_and_repeated"])
def test_fused_equals_reference_on_larger_streams(rng, kind, direction):
    d, r, eps = 300, 4, 1e-3
    pool = [rng.standard_normal(d) for _ in range(3)]
    grads = []
    for t in range(40):
        if kind == "random":
            grads.append(rng.standard_normal(d))
        else:
            grads.append(pool[t % 3] * (1.0 + 0.1 * np.sin(t)))
    if kind == "zero_and_repeated":
        grads[20] = np.zeros(d)
    runs = {}
    for impl in ("fused", "reference"):
        pre = pc.adagram(rank=r, eps=eps, direction=direction, impl=impl)
        state = pre.init(np.zeros(d))
        ps, states = [], []
        for g in grads:
            p, state = pre.update(g, state)
            ps.append(p)
            states.append(state)
        runs[impl] = (ps, states)
    (p1, s1), (p0, s0) = runs["fused"], runs["reference"]
    assert sum(s.last_impl == "fused" for s in s1) >= 30
    for t, (a, b, x, y) in enumerate(zip(p1, p0, s1, s0, strict=True)):
        assert np.linalg.norm(a - b) <= 1e-9 * np.linalg.norm(b), t
        assert (x.t, x.truncated) == (y.t, y.truncated)
        assert x.sumsq == pytest.approx(y.sumsq, rel=1e-12)
        assert x.last_ratio == pytest.approx(y.last_ratio, rel=1e-9)
        if x.truncated:
            Mx, My = x.U @ x.S @ x.V.T, y.U @ y.S @ y.V.T
            assert np.linalg.norm(Mx - My) <= 1e-9 * np.linalg.norm(My), t
    if kind == "zero_and_repeated":
        assert s1[20] is s1[19]  # a zero gradient is no step, on either path


def test_fused_float32_parameter(rng):
    """float32 gradients reach the fused step uncast; the result matches the reference."""
    grads = [rng.standard_normal(200).astype(np.float32) for _ in range(20)]
    out = {}
    for impl in ("fused", "reference"):
        pre = pc.adagram(rank=4, eps=1e-2, impl=impl)
        state = pre.init(np.zeros(200, dtype=np.float32))
        ps = []
        for g in grads:
            p, state = pre.update(g, state)
            ps.append(p)
        out[impl] = (ps, state)
    (p1, s1), (p0, _) = out["fused"], out["reference"]
    assert p1[-1].dtype == np.float32 and s1.U.dtype == np.float64 and s1.last_impl == "fused"
    for a, b in zip(p1, p0, strict=True):
        a, b = a.astype(np.float64), b.astype(np.float64)
        assert np.linalg.norm(a - b) <= 2.0**-22 * np.linalg.norm(b)
