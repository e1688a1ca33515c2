"""Integrators against their dense definitions (ALGORITHMS.md B.2), exactness, accuracy."""

import numpy as np
import pytest

from lowrank_precond.linalg import (
    Factored,
    LowRank,
    basis_update_galerkin,
    projector_splitting,
    recompress,
    truncated_svd,
)
from lowrank_precond.linalg.kernels import qr_tall

RTOL = 1e-11


def orth(A):
    return np.linalg.qr(A)[0]


def proj(A):
    Q = orth(A)
    return Q @ Q.T


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def random_lowrank(rng, d, r, full_core=True):
    U, V = orth(rng.standard_normal((d, r))), orth(rng.standard_normal((d, r)))
    S = rng.standard_normal((r, r)) if full_core else np.diag(np.sort(rng.random(r))[::-1] + 0.5)
    return U, S, V


def best_rank(Y, r):
    W, s, Zt = np.linalg.svd(Y)
    return W[:, :r] * s[:r] @ Zt[:r]


def dense_ksl(Y0, V0, dA):
    return proj((Y0 + dA) @ V0) @ (Y0 + dA)


def dense_bug(Y0, U0, V0, dA):
    Y = Y0 + dA
    return proj(Y @ V0) @ Y @ proj(Y.T @ U0)


def dense_strang(Y0, V0, dA):
    P1 = proj((Y0 + dA / 2) @ V0)
    Yh = P1 @ (Y0 + dA / 2)
    V1 = proj((Y0 + dA).T @ orth((Y0 + dA / 2) @ V0))
    return (Yh + dA / 2) @ V1


def run(xp, fn, U, S, V, x, y, **kw):
    M = LowRank(xp.asarray(U), xp.asarray(S), xp.asarray(V))
    out = fn(M, xp.asarray(x), xp.asarray(y), **kw)
    return out, xp.to_numpy(out.dense())


@pytest.mark.parametrize("full_core", [True, False])
def test_dense_definitions(xp, rng, full_core):
    d, r = 40, 4
    U, S, V = random_lowrank(rng, d, r, full_core)
    x, y = rng.standard_normal(d), rng.standard_normal(d)
    Y0, dA = U @ S @ V.T, np.outer(x, y)
    out, Ysvd = run(xp, truncated_svd, U, S, V, x, y, rank=r)
    assert rel(Ysvd, best_rank(Y0 + dA, r)) < RTOL
    s = np.diag(xp.to_numpy(out.S))
    np.testing.assert_array_equal(xp.to_numpy(out.S), np.diag(s))
    assert np.all(np.diff(s) <= 0)
    _, Y = run(xp, projector_splitting, U, S, V, x, y)
    assert rel(Y, dense_ksl(Y0, V, dA)) < RTOL
    _, Y = run(xp, projector_splitting, U, S, V, x, y, order=2)
    assert rel(Y, dense_strang(Y0, V, dA)) < RTOL
    _, Y = run(xp, basis_update_galerkin, U, S, V, x, y)
    assert rel(Y, dense_bug(Y0, U, V, dA)) < RTOL
    # the three approximations differ from each other (the test can tell them apart)
    assert rel(dense_ksl(Y0, V, dA), best_rank(Y0 + dA, r)) > 1e-6
    assert rel(dense_bug(Y0, U, V, dA), dense_ksl(Y0, V, dA)) > 1e-6


@pytest.mark.parametrize(
    "step",
    [
        lambda M, x, y: truncated_svd(M, x, y, M.rank),
        lambda M, x, y: projector_splitting(M, x, y),
        lambda M, x, y: projector_splitting(M, x, y, order=2),
        lambda M, x, y: basis_update_galerkin(M, x, y),
        lambda M, x, y: basis_update_galerkin(M, x, y, rank_adaptive=True, max_rank=M.rank),
    ],
    ids=["svd", "ksl", "strang", "bug", "rabug"],
)
def test_exact_from_zero_core_with_padding(rng, step):
    """[B05]: every A_t of rank <= r, from S = 0 with random orthonormal padding."""
    d, r = 30, 3
    U, _, V = random_lowrank(rng, d, r)
    M = LowRank(U, np.zeros((r, r)), V)
    Y = np.zeros((d, d))
    for _ in range(r):
        x, y = rng.standard_normal(d), rng.standard_normal(d)
        M = step(M, x, y)
        Y += np.outer(x, y)
        assert rel(M.dense(), Y) < 1e-11


def _b06_case():
    """rank A0 = rank A1 = r = 2, but (A0 + dA) V0 has rank 1 (ALGORITHMS.md B.2 [B06]).

    A0 = e2 f1^T + e3 f2^T, x = e2, y = -f1 + f4: A1 = e3 f2^T + e2 f4^T.
    K = A1 V0 = [0, e3], so range(U1) cannot contain e2 (Householder completes it with e1).
    """
    d = 8
    E = np.eye(d)
    U = E[:, [1, 2]]
    V = E[:, [0, 1]]
    S = np.eye(2)
    x, y = E[:, 1], -E[:, 0] + E[:, 3]
    return U, S, V, x, y


def test_counterexample_ksl_bug_lose_a_term(xp):
    U, S, V, x, y = _b06_case()
    A1 = U @ S @ V.T + np.outer(x, y)
    assert np.linalg.matrix_rank(A1) == 2
    lost = np.outer(x, y) - np.outer(x, -V[:, 0])  # the term e2 f4^T
    _, Y = run(xp, truncated_svd, U, S, V, x, y, rank=2)
    assert rel(Y, A1) < 1e-14
    for fn in (projector_splitting, basis_update_galerkin):
        _, Y = run(xp, fn, U, S, V, x, y)
        # a whole rank-one term of norm 1 is missing
        np.testing.assert_allclose(np.linalg.norm(A1 - Y), np.linalg.norm(lost), rtol=1e-12)


def test_rank_adaptive_bug_equals_svd_truncation(xp, rng):
    """[B07] for a rank-one increment the Galerkin core is exact."""
    d, r = 25, 3
    U, S, V = random_lowrank(rng, d, r)
    x, y = rng.standard_normal(d), rng.standard_normal(d)
    out, Y = run(xp, basis_update_galerkin, U, S, V, x, y, rank_adaptive=True, tol=1e-12)
    assert out.rank == r + 1
    assert rel(Y, U @ S @ V.T + np.outer(x, y)) < 1e-12
    sig = np.linalg.svd(U @ S @ V.T + np.outer(x, y), compute_uv=False)
    tol = float(np.sqrt(np.sum(sig[r - 1 :] ** 2))) * 1.0001  # drops exactly two
    out, Y = run(xp, basis_update_galerkin, U, S, V, x, y, rank_adaptive=True, tol=tol)
    assert out.rank == r - 1
    _, Ysvd = run(xp, truncated_svd, U, S, V, x, y, rank=r - 1)
    assert rel(Y, Ysvd) < 1e-11
    out, _ = run(xp, basis_update_galerkin, U, S, V, x, y, rank_adaptive=True, max_rank=2)
    assert out.rank == 2


def test_truncated_svd_when_increment_in_span(xp, rng):
    d, r = 20, 3
    U, S, V = random_lowrank(rng, d, r)
    x, y = U @ rng.standard_normal(r), V @ rng.standard_normal(r)
    out, Y = run(xp, truncated_svd, U, S, V, x, y, rank=r + 1)
    assert rel(Y, U @ S @ V.T + np.outer(x, y)) < 1e-12
    Un = xp.to_numpy(out.U)
    assert np.abs(Un.T @ Un - np.eye(r + 1)).max() < 1e-13


@pytest.mark.parametrize("name", ["svd", "ksl", "strang", "bug"])
def test_orthonormal_after_1000_steps(rng, name):
    d, r = 50, 5
    U, S, V = random_lowrank(rng, d, r)
    M = LowRank(U, S, V)
    for _ in range(1000):
        x, y = rng.standard_normal(d) * 0.3, rng.standard_normal(d) * 0.3
        if name == "svd":
            M = truncated_svd(M, x, y, r)
        elif name == "ksl":
            M = projector_splitting(M, x, y)
        elif name == "strang":
            M = projector_splitting(M, x, y, order=2)
        else:
            M = basis_update_galerkin(M, x, y)
    for Q in (M.U, M.V):
        assert np.abs(Q.T @ Q - np.eye(r)).max() < 1e-12


def test_accuracy_against_best_rank_r(rng):
    """[B09]: 200 near-low-rank increments, d = 60, r = 5; error ratio to the best rank-r."""
    d, r, steps = 60, 5, 200
    basis_l, basis_r = orth(rng.standard_normal((d, r))), orth(rng.standard_normal((d, r)))
    incs = [
        (
            basis_l @ rng.standard_normal(r) + 0.05 * rng.standard_normal(d),
            basis_r @ rng.standard_normal(r) + 0.05 * rng.standard_normal(d),
        )
        for _ in range(steps)
    ]
    total = sum(np.outer(x, y) for x, y in incs)
    best = np.linalg.norm(total - best_rank(total, r))
    U, _, V = random_lowrank(rng, d, r)
    ratios = {}
    for name, step in {
        "svd": lambda M, x, y: truncated_svd(M, x, y, r),
        "ksl": projector_splitting,
        "strang": lambda M, x, y: projector_splitting(M, x, y, order=2),
        "bug": basis_update_galerkin,
        "drop_half": None,
    }.items():
        M = LowRank(U, np.zeros((r, r)), V)
        for i, (x, y) in enumerate(incs):
            if step is None:
                if i % 2 == 0:
                    M = truncated_svd(M, x, y, r)
            else:
                M = step(M, x, y)
        ratios[name] = np.linalg.norm(total - M.dense()) / best
    assert 1.0 <= ratios["svd"] < 3.0
    for name in ("ksl", "strang", "bug"):
        assert 1.0 <= ratios[name] < 6.0, ratios
    assert ratios["drop_half"] > 6.0, ratios  # a broken integrator fails the bound above


def test_cross_backend_agreement(xp, rng):
    d, r = 30, 4
    U, S, V = random_lowrank(rng, d, r)
    stream = [(rng.standard_normal(d), rng.standard_normal(d)) for _ in range(20)]
    results = {}
    for label, to in (("numpy", np.asarray), ("xp", xp.asarray)):
        M = LowRank(to(U), to(S), to(V))
        for i, (x, y) in enumerate(stream):
            fn = (truncated_svd, projector_splitting, basis_update_galerkin)[i % 3]
            args = (r,) if fn is truncated_svd else ()
            M = fn(M, to(x), to(y), *args)
        results[label] = xp.to_numpy(M.dense()) if label == "xp" else M.dense()
    assert rel(results["xp"], results["numpy"]) < 1e-12


def test_float32_stays_accurate(xp, rng):
    d, r = 40, 4
    U, S, V = random_lowrank(rng, d, r)
    x, y = rng.standard_normal(d), rng.standard_normal(d)
    f32 = lambda a: xp.asarray(a.astype(np.float32))  # noqa: E731
    for fn, kw in (
        (truncated_svd, {"rank": r}),
        (projector_splitting, {}),
        (basis_update_galerkin, {}),
    ):
        out = fn(LowRank(f32(U), f32(S), f32(V)), f32(x), f32(y), **kw)
        assert out.U.dtype == xp.float32 and out.S.dtype == xp.float32
        ref = fn(LowRank(U, S, V), x, y, **kw).dense()
        assert rel(xp.to_numpy(out.dense()).astype(np.float64), ref) < 1e-5


def test_recompress(xp, rng):
    d, k = 30, 4
    P, Q = rng.standard_normal((d, k)), rng.standard_normal((d, k))
    F = Factored(xp.asarray(P), xp.asarray(Q))
    M = recompress(F, k)
    assert rel(xp.to_numpy(M.dense()), P @ Q.T) < 1e-12
    M2 = recompress(F, 2)
    assert rel(xp.to_numpy(M2.dense()), best_rank(P @ Q.T, 2)) < 1e-11
    M6 = recompress(F, 6)  # padded with orthonormal columns and zero singular values
    Un = xp.to_numpy(M6.U)
    assert M6.rank == 6 and np.abs(Un.T @ Un - np.eye(6)).max() < 1e-13
    assert rel(xp.to_numpy(M6.dense()), P @ Q.T) < 1e-12
    # rank-deficient P (span P = span Q as in exact AdaGram): still orthonormal
    P[:, 3] = P[:, 0]
    M = recompress(Factored(xp.asarray(P), xp.asarray(Q)), k)
    Vn = xp.to_numpy(M.V)
    assert np.abs(Vn.T @ Vn - np.eye(k)).max() < 1e-13
    Z = recompress(Factored.zeros(d, like=xp.asarray(P)), 3)
    assert Z.rank == 3 and float(xp.to_numpy(Z.dense()).__abs__().max()) == 0.0


def test_two_million_rows_no_dense_array():
    """d = 2e6, r = 5: a d x d float64 array would need 32 TB; each integrator runs."""
    d, r = 2_000_000, 5
    rng = np.random.default_rng(0)
    U = qr_tall(rng.standard_normal((d, r)))[0]
    V = qr_tall(rng.standard_normal((d, r)))[0]
    M = LowRank(U, np.eye(r), V)
    x, y = rng.standard_normal(d), rng.standard_normal(d)
    for out in (
        truncated_svd(M, x, y, r),
        projector_splitting(M, x, y),
        basis_update_galerkin(M, x, y),
    ):
        assert out.U.shape == (d, r) and out.V.shape == (d, r)
        assert np.abs(out.U.T @ out.U - np.eye(r)).max() < 1e-12
    R = recompress(Factored(U, V), r)
    assert R.U.shape == (d, r)


def test_bad_input(rng):
    d, r = 10, 2
    U, S, V = random_lowrank(rng, d, r)
    M = LowRank(U, S, V)
    x = rng.standard_normal(d)
    with pytest.raises(ValueError, match=r"x: expected length 10"):
        projector_splitting(M, x[:5], x)
    with pytest.raises(TypeError, match="y: expected a real floating-point array"):
        truncated_svd(M, x, np.arange(d), 2)
    with pytest.raises(TypeError, match="x: dtype float32 differs"):
        basis_update_galerkin(M, x.astype(np.float32), x)
    with pytest.raises(ValueError, match="rank: at most r \\+ 1 = 3"):
        truncated_svd(M, x, x, 4)
    with pytest.raises(ValueError, match="rank: must be >= 1"):
        truncated_svd(M, x, x, 0)
    with pytest.raises(ValueError, match="order: expected one of"):
        projector_splitting(M, x, x, order=3)
    with pytest.raises(ValueError, match="tol: must be finite and >= 0"):
        basis_update_galerkin(M, x, x, rank_adaptive=True, tol=-1.0)
    with pytest.raises(ValueError, match="max_rank: only applies"):
        basis_update_galerkin(M, x, x, max_rank=2)
    with pytest.raises(TypeError, match="lowrank: expected a LowRank"):
        projector_splitting((U, S, V), x, x)
    with pytest.raises(ValueError, match="rank: must be <= the dimension d=10"):
        recompress(Factored(U, V), 11)
    with pytest.raises(ValueError, match="x: expected a 1-D array"):
        projector_splitting(M, np.ones((d, 1)), x)
