"""AdaDiag / AdaDiag++ (ALGORITHMS.md section C) against a dense float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
from dense_reference import (
    assert_directions_close,
    check_float32,
    check_nonfinite,
    check_roundtrip,
    dense_adadiag_init,
    dense_adadiag_step,
    dense_adam_init,
    dense_adam_step,
    dense_polar_factor,
    gradient_stream,
    run_preconditioner,
    run_reference,
)

from lowrank_precond import preconditioners as pc
from lowrank_precond.preconditioners.adadiag import AdaDiagState, AdaDiagTwoSidedState

STEPS = 120


def _reference(shape, grads, *, two_sided, update_freq, eps, betas=(0.9, 0.999), exact=False):
    """Reference directions in the parameter's shape (tall parameters are transposed)."""
    if len(shape) == 1:
        mats = [g.reshape(1, -1) for g in grads]
    else:
        mats = [g.T if shape[0] > shape[1] else g for g in grads]
    m, n = mats[0].shape
    out, state = run_reference(
        dense_adadiag_step,
        dense_adadiag_init(m, n, two_sided=two_sided),
        mats,
        two_sided=two_sided,
        update_freq=update_freq,
        betas=betas,
        eps=eps,
        exact_refresh_projection=exact,
    )
    if len(shape) == 1:
        out = [p.reshape(shape) for p in out]
    elif shape[0] > shape[1]:
        out = [p.T for p in out]
    return out, state


@pytest.mark.parametrize("update_freq", [1, 7])
@pytest.mark.parametrize("two_sided", [False, True])
@pytest.mark.parametrize("shape", [(6, 10), (10, 6), (8, 8), (12,)])
def test_matches_reference(rng, shape, two_sided, update_freq):
    grads = gradient_stream(rng, shape, STEPS)
    betas, eps = (0.9, 0.99), 1e-8
    pre = pc.adadiag(two_sided=two_sided, update_freq=update_freq, betas=betas, eps=eps)
    got, state = run_preconditioner(pre, np.zeros(shape), grads)
    # The library uses the exact value [diag(sig), 0] of P^T G Q at a two-sided refresh; the
    # literal product's rounding noise would be amplified to ~u|G|/eps = 1e-8 (pitfall iii).
    want, ref = _reference(
        shape, grads, two_sided=two_sided, update_freq=update_freq, eps=eps, betas=betas, exact=True
    )
    assert_directions_close(got, want, 1e-10)
    assert state.t == STEPS
    for name in ("M", "V", "P") + (("Q",) if two_sided else ()):
        np.testing.assert_allclose(
            getattr(state, name), ref[name], rtol=1e-10, atol=1e-12, err_msg=name
        )


@pytest.mark.parametrize("update_freq", [1, 7])
@pytest.mark.parametrize("shape", [(6, 10), (10, 6), (1, 9)])
def test_two_sided_matches_literal_reference(rng, shape, update_freq):
    """Against the spec's literal product P^T G Q: with eps = 1e-3 its rounding noise in the
    structurally-zero entries stays ~u|G|/eps ~ 1e-12, below the tolerance."""
    grads = gradient_stream(rng, shape, STEPS)
    pre = pc.adadiag(two_sided=True, update_freq=update_freq, eps=1e-3)
    got, _ = run_preconditioner(pre, np.zeros(shape), grads)
    want, _ = _reference(shape, grads, two_sided=True, update_freq=update_freq, eps=1e-3)
    assert_directions_close(got, want, 1e-10)


def test_one_and_two_sided_differ(rng):
    grads = gradient_stream(rng, (5, 8), 10)
    one, _ = run_preconditioner(pc.adadiag(update_freq=3), np.zeros((5, 8)), grads)
    two, _ = run_preconditioner(pc.adadiag(two_sided=True, update_freq=3), np.zeros((5, 8)), grads)
    adam, _ = run_preconditioner(pc.adam(), np.zeros((5, 8)), grads)
    assert np.linalg.norm(one[-1] - two[-1]) > 1e-3 * np.linalg.norm(two[-1])
    assert np.linalg.norm(one[-1] - adam[-1]) > 1e-3 * np.linalg.norm(adam[-1])


def test_bases_orthogonal_and_round_trip_C01(rng):
    shape = (5, 9)
    grads = gradient_stream(rng, shape, 12)
    _, state = run_preconditioner(
        pc.adadiag(two_sided=True, update_freq=10), np.zeros(shape), grads
    )
    P, Q = state.P, state.Q
    assert P.shape == (5, 5) and Q.shape == (9, 9)
    np.testing.assert_allclose(P.T @ P, np.eye(5), atol=1e-14)
    np.testing.assert_allclose(Q.T @ Q, np.eye(9), atol=1e-14)
    G = rng.standard_normal(shape)  # a later gradient, outside the refresh's row space
    Gt = P.T @ G @ Q
    np.testing.assert_allclose(np.linalg.norm(Gt), np.linalg.norm(G), rtol=1e-14)
    np.testing.assert_allclose(P @ Gt @ Q.T, G, atol=1e-14)


@pytest.mark.parametrize("shape", [(4, 7), (7, 4), (6, 6), (1, 5), (5,)])
def test_first_two_sided_step_is_polar_factor_C02(rng, shape):
    G = rng.standard_normal(shape)
    # eps = 1e-14: the literal product P^T G Q would give ~18 % error here (pitfall iii);
    # the exact [diag(sig), 0] keeps the step at the polar factor to rounding.
    pre = pc.adadiag(two_sided=True, update_freq=1, eps=1e-14)
    p, state = pre.update(G, pre.init(np.zeros(shape)))
    polar = dense_polar_factor(G.reshape(1, -1) if G.ndim == 1 else G).reshape(shape)
    np.testing.assert_allclose(p, polar, atol=1e-13)
    sig = np.linalg.svd(G.reshape(1, -1) if G.ndim == 1 else G, compute_uv=False)
    m = sig.size
    np.testing.assert_allclose(state.M[:, :m], 0.1 * np.diag(sig), atol=1e-14)
    assert not np.any(state.M[:, m:])


@pytest.mark.parametrize("update_freq", [1, 4])
@pytest.mark.parametrize("shape", [(11,), (1, 11), (11, 1)])
def test_one_sided_on_vector_is_adam_C03(rng, shape, update_freq):
    grads = gradient_stream(rng, shape, STEPS)
    # the raw SVD of a 1 x d gradient really does return P = -1 for this stream: without
    # the sign alignment the momentum would be negated at such refreshes
    raw_signs = {float(np.linalg.svd(g.reshape(1, -1))[0][0, 0]) for g in grads}
    assert raw_signs == {1.0, -1.0}
    pre = pc.adadiag(update_freq=update_freq)
    got, state = run_preconditioner(pre, np.zeros(shape), grads)
    want, _ = run_reference(dense_adam_step, dense_adam_init(shape), grads)
    assert_directions_close(got, want, 1e-14)
    assert state.P.shape == (1, 1) and float(state.P[0, 0]) == 1.0


def test_two_sided_on_vector_is_normalized_adam_C04(rng):
    d = 9
    grads = gradient_stream(rng, (d,), STEPS)
    got, state = run_preconditioner(pc.adadiag(two_sided=True, update_freq=1), np.zeros(d), grads)
    assert state.Q.shape == (d, d)  # the O(d^2) cost documented for vectors
    norms = [np.asarray(np.linalg.norm(g)) for g in grads]
    scal, _ = run_reference(dense_adam_step, dense_adam_init(()), norms)
    want = [g / n * a for g, n, a in zip(grads, norms, scal, strict=True)]
    assert_directions_close(got, want, 1e-13)


@pytest.mark.parametrize("two_sided", [False, True])
def test_moments_not_transported(rng, two_sided):
    T, shape, betas = 5, (4, 6), (0.9, 0.999)
    grads = gradient_stream(rng, shape, T + 1)
    pre = pc.adadiag(two_sided=two_sided, update_freq=T, betas=betas)
    _, before = run_preconditioner(pre, np.zeros(shape), grads[:T])
    _, after = pre.update(grads[T], before)  # t = T: a refresh
    assert np.linalg.norm(after.P - before.P) > 1e-2  # the basis did change
    G = grads[T]
    Gt = after.P.T @ G @ after.Q if two_sided else after.P.T @ G
    b1, b2 = betas
    np.testing.assert_allclose(after.M, b1 * before.M + (1 - b1) * Gt, atol=1e-14)
    np.testing.assert_allclose(after.V, b2 * before.V + (1 - b2) * Gt**2, atol=1e-14)
    # a transporting implementation would have rotated the old moment into the new basis
    R = after.P.T @ before.P
    transported = R @ before.M @ (before.Q.T @ after.Q) if two_sided else R @ before.M
    assert np.linalg.norm(transported - before.M) > 1e-3 * np.linalg.norm(before.M)


@pytest.mark.parametrize("two_sided", [False, True])
@pytest.mark.parametrize("shape", [(5, 8), (8, 5), (7,)])
def test_backends_agree(xp, rng, shape, two_sided):
    grads = gradient_stream(rng, shape, 30)
    pre = pc.adadiag(two_sided=two_sided, update_freq=3)
    want, _ = run_preconditioner(pre, np.zeros(shape), grads)
    got, state = run_preconditioner(pre, np.zeros(shape), grads, xp=xp)
    assert_directions_close(got, want, 1e-10)
    assert state.P.dtype == xp.float64


@pytest.mark.parametrize("two_sided", [False, True])
def test_float32_runs_finite(xp, rng, two_sided):
    shape = (5, 8)
    grads = gradient_stream(rng, shape, 30)
    pre = pc.adadiag(two_sided=two_sided, update_freq=3)
    got = check_float32(pre, np.zeros(shape), grads, xp)
    want, _ = run_preconditioner(pre, np.zeros(shape), grads)
    assert_directions_close(got, want, 1e-3)


@pytest.mark.parametrize("two_sided", [False, True])
def test_nonfinite(rng, two_sided):
    check_nonfinite(
        pc.adadiag,
        np.zeros((3, 5)),
        gradient_stream(rng, (3, 5), 6),
        two_sided=two_sided,
        update_freq=2,
    )


@pytest.mark.parametrize("two_sided", [False, True])
def test_state_roundtrip(rng, two_sided):
    cls = AdaDiagTwoSidedState if two_sided else AdaDiagState
    pre = pc.adadiag(two_sided=two_sided, update_freq=4)
    check_roundtrip(pre, cls, np.zeros((6, 4)), gradient_stream(rng, (6, 4), 30), 13)


def test_update_does_not_mutate_state(rng):
    pre = pc.adadiag(two_sided=True, update_freq=2)
    grads = gradient_stream(rng, (3, 4), 3)
    _, s1 = run_preconditioner(pre, np.zeros((3, 4)), grads[:2])
    before = {k: np.array(v, copy=True) for k, v in vars(s1).items()}
    pre.update(grads[2], s1)  # a refresh step
    for k, v in vars(s1).items():
        np.testing.assert_array_equal(v, before[k])


def test_state_shapes_and_init():
    st = pc.adadiag().init(np.zeros((7, 3)))
    assert isinstance(st, AdaDiagState) and st.M.shape == (3, 7) and st.P.shape == (3, 3)
    np.testing.assert_array_equal(st.P, np.eye(3))
    st = pc.adadiag(two_sided=True).init(np.zeros(5))
    assert isinstance(st, AdaDiagTwoSidedState) and st.M.shape == (1, 5) and st.Q.shape == (5, 5)
    assert pc.get("adadiag") is pc.adadiag
    assert repr(pc.adadiag(update_freq=3)).startswith("adadiag(two_sided=False, update_freq=3")


@pytest.mark.parametrize(
    "kwargs, match, exc",
    [
        ({"two_sided": 1}, "two_sided", TypeError),
        ({"update_freq": 0}, "update_freq", ValueError),
        ({"update_freq": 2.0}, "update_freq", TypeError),
        ({"betas": (0.9, 1.0)}, r"betas\[1\]", ValueError),
        ({"betas": (-0.1, 0.9)}, r"betas\[0\]", ValueError),
        ({"betas": (0.9, 0.99, 0.9)}, "betas", ValueError),
        ({"eps": 0.0}, "eps", ValueError),
        ({"eps": -1.0}, "eps", ValueError),
        ({"nonfinite": "zero"}, "nonfinite", ValueError),
    ],
)
def test_bad_arguments(kwargs, match, exc):
    with pytest.raises(exc, match=match):
        pc.adadiag(**kwargs)


def test_bad_parameters_and_gradients():
    pre = pc.adadiag()
    with pytest.raises(ValueError, match=r"x: expected a 1-D or 2-D array.*ndim=3"):
        pre.init(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="x: expected a 1-D or 2-D"):
        pre.init(np.zeros(()))
    with pytest.raises(TypeError, match="x"):
        pre.init(np.zeros((2, 3), dtype=np.int32))
    state = pre.init(np.zeros((3, 5)))
    for bad in (np.ones((3, 6)), np.ones((3, 5, 1)), np.ones(15)):
        with pytest.raises(ValueError, match="grad"):
            pre.update(bad, state)
