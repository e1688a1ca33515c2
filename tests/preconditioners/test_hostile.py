"""Hostile inputs at every public entry point of the preconditioners (``init``, ``update``,
the factories, ``state_from_dict``).

For each input the outcome is either a clear error -- ``ValueError``/``TypeError``/
``FloatingPointError`` whose message starts with the argument's name -- with the state
bit-identical, or a documented behaviour (``nonfinite="skip"``: zero direction, the same
state; a zero gradient: a zero direction).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from lowrank_precond import preconditioners as pc
from lowrank_precond.preconditioners.base import state_from_dict, state_to_dict

MATRIX = ("adadiag", "asgo")
KWARGS = {"adagram": {"rank": 3}, "adamgram": {"rank": None}}


def _make(name, **kw):
    return pc.get(name)(**{**KWARGS.get(name, {}), **kw})


def _param(name, dtype=np.float64):
    return np.zeros((4, 3) if name in MATRIX else (12,), dtype=dtype)


def _warm(pre, x, steps=5):
    rng = np.random.default_rng(0)
    state = pre.init(x)
    for _ in range(steps):
        _, state = pre.update(rng.standard_normal(x.shape).astype(x.dtype), state)
    return state


def _frozen(state):
    return copy.deepcopy(state_to_dict(state))


def _assert_unchanged(state, before):
    for k, v in state_to_dict(state).items():
        np.testing.assert_array_equal(np.asarray(v), np.asarray(before[k]), err_msg=k)


def _bad_gradients(x):
    shape = x.shape
    nan = np.ones(shape)
    nan.flat[0] = np.nan
    inf = np.ones(shape)
    inf.flat[-1] = -np.inf
    return {
        "nan": (nan, FloatingPointError, "grad: contains NaN or inf"),
        "inf": (inf, FloatingPointError, "grad: contains NaN or inf"),
        "huge": (np.full(shape, 1e300), FloatingPointError, "grad: .*too large"),
        "int": (np.ones(shape, dtype=np.int64), TypeError, "grad"),
        "complex": (np.ones(shape, dtype=np.complex128), TypeError, "grad"),
        "list": (np.ones(shape).tolist(), TypeError, "grad"),
        "size": (np.ones(x.size + 1), ValueError, "grad"),
    }


@pytest.mark.parametrize("name", pc.METHODS)
@pytest.mark.parametrize("case", ["nan", "inf", "huge", "int", "complex", "list", "size"])
def test_bad_gradient_is_a_clear_error_and_the_state_is_untouched(name, case):
    pre = _make(name)
    x = _param(name)
    state = _warm(pre, x)
    before = _frozen(state)
    g, exc, match = _bad_gradients(x)[case]
    with pytest.raises(exc, match=match):
        pre.update(g, state)
    _assert_unchanged(state, before)


@pytest.mark.parametrize("name", MATRIX)
def test_transposed_gradient_of_a_matrix_method(name):
    pre = _make(name)
    state = _warm(pre, np.zeros((4, 3)))
    before = _frozen(state)
    with pytest.raises(ValueError, match=r"grad: shape \(3, 4\) does not match .*\(4, 3\)"):
        pre.update(np.ones((3, 4)), state)
    with pytest.raises(ValueError, match="grad"):
        pre.update(np.ones((4, 5)), state)  # ASGO without momentum could not tell before
    _assert_unchanged(state, before)


MOMENTUM = ("adamgram", "adam", "adadiag")  # a zero gradient still moves along the momentum


@pytest.mark.parametrize("name", pc.METHODS)
def test_zero_and_subnormal_gradients(name):
    pre = _make(name)
    x = _param(name)
    state = _warm(pre, x)
    for g in (np.zeros(x.shape), np.full(x.shape, 5e-324)):
        p, state = pre.update(g, state)
        assert np.all(np.isfinite(p)) and p.shape == x.shape
        # no blow-up from a tiny gradient: without momentum the step is tiny too
        bound = 10.0 if name in MOMENTUM else 1e-3
        assert float(np.max(np.abs(p))) <= bound


@pytest.mark.parametrize("name", pc.METHODS)
def test_skip_returns_zero_and_the_same_state(name):
    pre = _make(name, nonfinite="skip")
    x = _param(name)
    state = _warm(pre, x)
    for case in ("nan", "inf", "huge"):
        g = _bad_gradients(x)[case][0]
        p, new = pre.update(g, state)
        assert new is state and not np.any(p)


@pytest.mark.parametrize("name", pc.METHODS)
def test_bad_parameters_at_init(name):
    pre = _make(name)
    with pytest.raises(TypeError, match="x"):
        pre.init(np.zeros(4, dtype=np.int32))
    with pytest.raises(TypeError, match="x"):
        pre.init([0.0, 1.0])
    with pytest.raises(ValueError, match="x"):
        pre.init(np.zeros((0,) if name not in MATRIX else (0, 3)))


@pytest.mark.parametrize("name", pc.METHODS)
@pytest.mark.parametrize(
    "arg,value",
    [
        ("eps", 0.0),
        ("eps", -1.0),
        ("eps", float("nan")),
        ("eps", float("inf")),
        ("eps", "1e-8"),
        ("nonfinite", "ignore"),
        ("nonfinite", None),
    ],
)
def test_bad_hyperparameters_name_the_argument(name, arg, value):
    with pytest.raises((ValueError, TypeError), match=rf"^{arg}"):
        _make(name, **{arg: value})


@pytest.mark.parametrize(
    "name,arg,value",
    [
        ("adagram", "rank", 0),
        ("adagram", "rank", 2.5),
        ("adagram", "rank", True),
        ("adagram", "factor_dtype", "float16"),
        ("sketched_adagrad", "rank", -1),
        ("sketched_adagrad", "betas", (0.9, 1.0)),
        ("sketched_adagrad", "factor_dtype", "int8"),
        ("full_matrix_adagrad", "max_dim", 0),
        ("full_matrix_adagrad", "factor_dtype", 3),
        ("adam", "betas", (1.5, 0.9)),
        ("adam", "betas", 0.9),
        ("adadiag", "update_freq", 0),
        ("asgo", "side", "top"),
        ("asgo", "betas", (-0.1, None)),
    ],
)
def test_bad_method_arguments_name_the_argument(name, arg, value):
    with pytest.raises((ValueError, TypeError), match=rf"^{arg}"):
        _make(name, **{arg: value})


@pytest.mark.parametrize("name", pc.METHODS)
def test_corrupted_checkpoints_are_clear_errors(name):
    pre = _make(name)
    state = _warm(pre, _param(name))
    cls = type(state)
    data = state_to_dict(state)
    assert dataclasses.asdict(state_from_dict(cls, data)).keys() == data.keys()
    missing = dict(data)
    missing.pop("t")
    with pytest.raises(ValueError, match=r"data: .* needs the fields \['t'\]"):
        state_from_dict(cls, missing)
    with pytest.raises(ValueError, match="data: unknown fields"):
        state_from_dict(cls, {**data, "bogus": 1})
    array_field = next(k for k, v in data.items() if hasattr(v, "shape"))
    with pytest.raises(TypeError, match=rf"data\['{array_field}'\]"):
        state_from_dict(cls, {**data, array_field: "garbage"})
    with pytest.raises(TypeError, match=r"data\['t'\]"):
        state_from_dict(cls, {**data, "t": 1.5})
