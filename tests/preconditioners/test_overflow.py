"""Every method treats a step that would overflow like a NaN/inf gradient (one behaviour).

A finite gradient too large for the working dtype, or a step whose direction or accumulated
statistics come out NaN/inf, raises ``FloatingPointError`` with the state bit-identical
(``nonfinite="raise"``), or gives a zero direction and the very same state (``"skip"``).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from lowrank_precond import preconditioners as pc

MATRIX = ("adadiag", "asgo")


def _param(name: str, dtype=np.float64) -> np.ndarray:
    return np.zeros((4, 3) if name in MATRIX else (12,), dtype=dtype)


def _factory(name: str, **kw):
    if name in ("adagram", "adamgram"):
        kw.setdefault("rank", 3)
    if name == "adamgram":
        kw.setdefault("betas", (0.0, 0.0))
    return pc.get(name)(**kw)


def _warm(pre, x, steps=4, seed=0):
    rng = np.random.default_rng(seed)
    state = pre.init(x)
    for _ in range(steps):
        _, state = pre.update(rng.standard_normal(x.shape).astype(x.dtype), state)
    return state


def _snapshot(state):
    return {k: copy.deepcopy(v) for k, v in dataclasses.asdict(state).items()}


def _assert_same(state, snap):
    for k, v in dataclasses.asdict(state).items():
        np.testing.assert_array_equal(np.asarray(v), np.asarray(snap[k]), err_msg=k)


@pytest.mark.parametrize("name", pc.METHODS)
@pytest.mark.parametrize(
    ("dtype", "scale"), [(np.float64, 1e300), (np.float64, 1e160), (np.float32, 1e25)]
)
def test_huge_finite_gradient_raises_and_keeps_state(name, dtype, scale):
    pre = _factory(name)
    x = _param(name, dtype)
    state = _warm(pre, x)
    snap = _snapshot(state)
    with pytest.raises(FloatingPointError, match=r"grad: .*too large.*left unchanged"):
        pre.update(np.full(x.shape, scale, dtype=dtype), state)
    _assert_same(state, snap)


@pytest.mark.parametrize("name", pc.METHODS)
def test_huge_finite_gradient_skip_returns_zero_and_same_state(name):
    pre = _factory(name, nonfinite="skip")
    x = _param(name)
    state = _warm(pre, x)
    p, new = pre.update(np.full(x.shape, 1e300), state)
    assert new is state
    assert np.array_equal(p, np.zeros_like(p))


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("adagrad", np.float32),
        ("asgo", np.float32),
        # float32 parameters get float64 factors in these: no overflow in float32 there
        ("full_matrix_adagrad", np.float64),
        ("sketched_adagrad", np.float64),
        ("adagram", np.float64),
    ],
)
def test_accumulated_overflow_is_a_nonfinite_step(name, dtype):
    # each gradient passes the size check, but the float32 accumulator of g^2 overflows after
    # a few steps: the step that would store inf raises and leaves the state as it was (the
    # EMA methods, adam and adadiag, cannot overflow this way: their average stays <= max g^2)
    pre = _factory(name)
    x = _param(name, dtype)
    state = pre.init(x)
    big = 0.99 * np.sqrt(np.finfo(dtype).max) / 4  # just below the size bound
    for i in range(1000):
        g = np.zeros(x.shape, dtype=dtype)
        g.flat[i % x.size] = big  # every direction in turn: no method sees only repeats
        snap = _snapshot(state)
        try:
            _, state = pre.update(g, state)
        except FloatingPointError as exc:
            assert "overflow" in str(exc)
            _assert_same(state, snap)
            break
        for v in dataclasses.asdict(state).values():
            if not isinstance(v, str):
                assert np.all(np.isfinite(np.asarray(v)))  # no inf ever stored
    else:
        pytest.fail("the accumulator never reached the overflow guard")


@pytest.mark.parametrize("name", pc.METHODS)
def test_nan_and_inf_gradients_are_rejected(name):
    pre = _factory(name)
    x = _param(name)
    state = _warm(pre, x)
    snap = _snapshot(state)
    for bad in (np.nan, np.inf, -np.inf):
        g = np.ones(x.shape)
        g.flat[3] = bad
        with pytest.raises(FloatingPointError, match="grad: contains NaN or inf"):
            pre.update(g, state)
    _assert_same(state, snap)


@pytest.mark.parametrize("name", pc.METHODS)
def test_unchecked_update_is_the_same_step(name):
    pre = _factory(name)
    x = _param(name)
    state = pre.init(x)
    g = np.random.default_rng(1).standard_normal(x.shape)
    p1, s1 = pre.update(g, state)
    p2, s2 = pre.update_unchecked(g, state)
    np.testing.assert_array_equal(p1, p2)
    assert s1.t == s2.t
