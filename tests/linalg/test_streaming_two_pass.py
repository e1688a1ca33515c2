"""The two-pass published step (``two_pass=True`` with ``U^T V`` known).

Pass 1 reads ``[U V]`` and ``g``; ``|gbar|^2``, ``U^T gbar`` and ``V^T gbar`` follow in closed
form and the writing pass forms ``gbar`` itself. It must give the dense step's ``M`` and
direction, skip pass 2 exactly where the closed forms are accurate, and fall back to pass 2
(same results as the three-pass step) where ``gbar`` cancels.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from streaming_states import orth, random_state, rel

from lowrank_precond import preconditioners as pc
from lowrank_precond.linalg import LowRank, projector_splitting, rank_one_increment, streaming
from lowrank_precond.linalg.streaming import EXTEND_MIN, Declined, try_ksl_adagram_step

pytestmark = pytest.mark.usefixtures("pass_kernels")  # the NumPy blocks and the compiled passes


@pytest.fixture
def pass2(monkeypatch):
    """Counts the runs of pass 2 (the ``gbar`` pass)."""
    runs = []
    real = streaming._pass_gbar

    def counted(*args, **kw):
        runs.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(streaming, "_pass_gbar", counted)
    return runs


def _reference(M, g, eps):
    info = rank_one_increment(M, g, eps)
    return projector_splitting(M, info.x, info.y).dense(), info.published


@pytest.mark.parametrize("blocks", ["one", "many"])
def test_two_passes_give_the_dense_step(request, rng, pass2, blocks):
    if blocks == "many":
        request.getfixturevalue("small_blocks")
    d, r, eps = 150, 4, 1e-2
    U, S, V = random_state(rng, d, r)
    M = LowRank(U, S, V)
    C = U.T @ V
    for step in range(30):
        g = rng.standard_normal(d) * rng.uniform(0.1, 10.0)
        Y1, p = _reference(M, g, eps)
        out = try_ksl_adagram_step(M, g, eps, two_pass=True, C=C)
        assert out.cgs2 == (False, False)
        assert rel(out.lowrank.dense(), Y1) < 1e-11, step
        assert rel(out.direction, p) < 1e-12, step
        assert out.gnorm_sq == pytest.approx(g @ g, rel=1e-13)
        assert out.nu == pytest.approx(np.linalg.norm(p) * out.s, rel=1e-12)
        measured = out.lowrank.U.T @ out.lowrank.V
        assert np.max(np.abs(out.C - measured)) <= 1e-13, step
        M, C = out.lowrank, out.C
    assert pass2 == []  # random gradients never cancel: pass 2 never ran


def test_without_c_the_step_measures_it_for_the_next(rng, pass2):
    d, r, eps = 80, 3, 0.1
    U, S, V = random_state(rng, d, r)
    g = rng.standard_normal(d)
    out = try_ksl_adagram_step(LowRank(U, S, V), g, eps, two_pass=True)
    assert len(pass2) == 1  # three passes, the first one measuring U^T V
    measured = out.lowrank.U.T @ out.lowrank.V
    assert np.max(np.abs(out.C - measured)) <= 1e-13
    # without two_pass (nor C) nothing is measured or carried
    assert try_ksl_adagram_step(LowRank(U, S, V), g, eps).C is None


@pytest.mark.parametrize("where", ["cancels", "near_span_u"])
def test_falls_back_to_pass_2_where_the_closed_form_is_not_accurate(rng, pass2, where):
    d, r, eps = 120, 3, 1e-2
    U = orth(rng.standard_normal((d, r)))
    if where == "cancels":
        # M g ~ 0.999 g for g in span U: gbar = (g - M g) / sqrt(eps) cancels 1000-fold
        V, S = U, 0.999 * np.eye(r)
        g = U @ rng.standard_normal(r) + 1e-3 * rng.standard_normal(d)
    else:  # no cancellation, but gbar lies nearly in span U: the implicit q_u would not do
        V, S = orth(rng.standard_normal((d, r))), 0.5 * np.eye(r)
        g = U @ rng.standard_normal(r) + 1e-3 * rng.standard_normal(d)
    M = LowRank(U, S, V)
    n_ratio = eps * np.sum(((g - U @ S @ V.T @ g) / math.sqrt(eps)) ** 2) / (g @ g)
    assert (n_ratio < EXTEND_MIN) == (where == "cancels")
    Y1, p = _reference(M, g, eps)
    out = try_ksl_adagram_step(M, g, eps, two_pass=True, C=U.T @ V)
    three = try_ksl_adagram_step(M, g, eps)
    assert len(pass2) == 2  # the fallback's and the three-pass step's
    # (pass 1 sums V^T g within [U V]^T g: the rounding, not the method, may differ)
    assert rel(out.lowrank.dense(), three.lowrank.dense()) < 1e-12
    assert rel(out.direction, three.direction) < 1e-11
    assert rel(out.lowrank.dense(), Y1) < 1e-10
    assert rel(out.direction, p) < 1e-10


def test_an_eps_whose_inverse_root_overflows_float32_takes_three_passes(rng, pass2, pass_kernels):
    """The writing pass forms gbar with 1/sqrt(eps) in the factor dtype: with eps = 1e-80
    that is inf in float32, so the step takes three passes and writes finite factors (the
    NumPy blocks' float32 |g|^2 underflows here: that step declines, writing nothing)."""
    d, r = 200, 3
    U, S, V = (a.astype(np.float32) for a in random_state(rng, d, r))
    g = (rng.standard_normal(d) * 1e-32).astype(np.float32)
    out = try_ksl_adagram_step(LowRank(U, S, V), g, 1e-80, two_pass=True, C=U.T @ V)
    assert len(pass2) == 1
    if pass_kernels == "blocks":
        assert isinstance(out, Declined) and out.code == "gradient"
    else:
        assert np.isfinite(out.lowrank.U).all() and np.isfinite(out.direction).all()


@pytest.mark.parametrize("two", [True, False])
def test_a_float16_gradient_steps_as_its_cast(rng, two):
    """numba has no float16 arrays: the compiled passes read a float16 gradient cast to the
    factor dtype once, and the step equals that of the cast gradient, bit for bit."""
    d, r, eps = 120, 3, 1e-2
    U, S, V = random_state(rng, d, r)
    g = rng.standard_normal(d).astype(np.float16)
    kw = {"two_pass": two, "C": U.T @ V if two else None}
    half = try_ksl_adagram_step(LowRank(U, S, V), g, eps, **kw)
    cast = try_ksl_adagram_step(LowRank(U, S, V), g.astype(np.float64), eps, **kw)
    np.testing.assert_array_equal(half.direction, cast.direction)
    np.testing.assert_array_equal(half.lowrank.U, cast.lowrank.U)


def test_float32_factors(rng, pass2):
    d, r, eps = 200, 4, 0.05
    U, S, V = random_state(rng, d, r)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    M64, M32 = LowRank(U, S, V), LowRank(f32(U), f32(S), f32(V))
    C = f32(U).astype(np.float64).T @ f32(V).astype(np.float64)
    for step in range(10):
        g = rng.standard_normal(d)
        out = try_ksl_adagram_step(M32, f32(g), eps, two_pass=True, C=f32(C))
        assert pass2 == []  # two passes
        ref = try_ksl_adagram_step(M64, g, eps)
        pass2.clear()
        assert out.lowrank.U.dtype == np.float32 and out.direction.dtype == np.float32
        assert rel(out.lowrank.dense().astype(np.float64), ref.lowrank.dense()) < 1e-5, step
        assert rel(out.direction.astype(np.float64), ref.direction) < 1e-5, step
        M32, M64, C = out.lowrank, ref.lowrank, out.C


def test_in_place_two_passes_give_the_bits_of_a_new_buffer(rng, pass2):
    d, r, eps = 150, 4, 1e-2
    U, S, V = random_state(rng, d, r)
    # a step's outputs: the (2r, d) buffer that the next step may overwrite
    first = try_ksl_adagram_step(LowRank(U, S, V), rng.standard_normal(d), eps, two_pass=True)
    M, C = first.lowrank, first.C
    pass2.clear()
    g = rng.standard_normal(d)
    fresh = try_ksl_adagram_step(M, g, eps, two_pass=True, C=C)
    over = try_ksl_adagram_step(M, g, eps, two_pass=True, C=C, overwrite=True)
    assert pass2 == []
    assert np.shares_memory(over.lowrank.U, M.U)  # written over the input
    np.testing.assert_array_equal(over.lowrank.U, fresh.lowrank.U)
    np.testing.assert_array_equal(over.lowrank.V, fresh.lowrank.V)
    np.testing.assert_array_equal(over.direction, fresh.direction)


def test_float32_factors_stay_orthonormal_over_refreshes(rng):
    """The closed forms assume orthonormal factors and carry U^T V: in float32 their drift
    grows faster than the three-pass step's, and the refresh every REFRESH_EVERY steps must
    hold it (and the carried C) near float32 rounding."""
    d, r = 300, 4
    pre = pc.adagram(rank=r, eps=1e-3, direction="published", impl="fused", factor_dtype="float32")
    state = pre.init(np.zeros(d, dtype=np.float32))
    closed = 0
    real = streaming._closed_form

    def counted(*args):
        nonlocal closed
        found = real(*args)
        closed += found is not None
        return found

    streaming._closed_form = counted
    try:
        for t in range(2 * streaming.REFRESH_EVERY + 20):
            g = rng.standard_normal(d).astype(np.float32) * rng.uniform(0.1, 10.0)
            _, state = pre.update(g, state)
            if t <= r:  # the warm-up, on the reference path
                continue
            assert state.last_impl == "fused", (t, state.last_impl)
            U, V = state.U.astype(np.float64), state.V.astype(np.float64)
            drift = max(np.abs(F.T @ F - np.eye(r)).max() for F in (U, V))
            assert drift <= 1e-6, (t, drift)
            assert np.abs(state.C.astype(np.float64) - U.T @ V).max() <= 2e-6, t
    finally:
        streaming._closed_form = real
    assert closed > 2 * streaming.REFRESH_EVERY - 10  # nearly every step took two passes


@pytest.mark.parametrize("kind", ["random", "repeated", "mixed"])
def test_adagram_published_fused_follows_the_reference(kind, rng, pass2):
    """Over a stream (two passes, fallbacks, re-orthogonalisation, refresh steps), the fused
    published step stays on the reference path's directions."""
    d, r, eps = 160, 3, 1e-3
    basis = rng.standard_normal((d, 2))
    fused = pc.adagram(rank=r, eps=eps, direction="published", impl="fused")
    ref = pc.adagram(rank=r, eps=eps, direction="published", impl="reference")
    sf, sr = fused.init(np.zeros(d)), ref.init(np.zeros(d))
    for t in range(260):  # crosses two refresh steps
        if kind == "random" or (kind == "mixed" and t % 3):
            g = rng.standard_normal(d)
        else:
            g = basis @ rng.standard_normal(2) + 1e-6 * rng.standard_normal(d)
        pf, sf = fused.update(g, sf)
        pr, sr = ref.update(g, sr)
        assert rel(pf, pr) < 1e-8, t
    if kind == "random":  # two passes but on the first fused step and the refresh steps
        assert 0 < len(pass2) <= 4
    elif kind == "repeated":  # gbar cancels: three passes every fused step
        assert len(pass2) > 250
    else:
        assert 0 < len(pass2) < 200
