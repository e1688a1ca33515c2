"""Random Fourier features and the streamed (chunked / minibatch) GLM objective."""

from __future__ import annotations

import numpy as np
import pytest

from lowrank_precond.glm import family, objective
from lowrank_precond.glm.features import FeatureObjective, RandomFourierFeatures


def _data(n=37, m=6, K=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, m)), rng.integers(0, K, n), rng


def test_features_are_determined_by_the_seed():
    X, _, _ = _data()
    a = RandomFourierFeatures(6, 50, seed=3, dtype=np.float64)
    b = RandomFourierFeatures(6, 50, seed=3, dtype=np.float64)
    c = RandomFourierFeatures(6, 50, seed=4, dtype=np.float64)
    assert np.array_equal(a.transform(X), b.transform(X))
    assert not np.allclose(a.transform(X), c.transform(X))
    F = a.transform(X)
    assert F.shape == (37, 50) and F.dtype == np.float64
    assert np.all(np.abs(F) <= np.sqrt(2 / 50) + 1e-15)
    # float32 is the float64 map rounded: the same draws, cast
    s = RandomFourierFeatures(6, 50, seed=3)
    assert s.omega.dtype == np.float32
    np.testing.assert_array_equal(s.omega, a.omega.astype(np.float32))
    np.testing.assert_allclose(s.transform(X), F, atol=1e-5)
    # rows are independent: a row's features do not depend on the other rows of the call
    np.testing.assert_array_equal(a.transform(X[5:9]), F[5:9])


def test_features_estimate_the_gaussian_kernel():
    X, _, _ = _data(n=5, m=3)
    phi = RandomFourierFeatures(3, 200000, seed=0, dtype=np.float64, bandwidth=2.0)
    F = phi(X)
    d2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(F @ F.T, np.exp(-d2 / 8.0), atol=0.01)


def test_feature_errors_name_the_argument():
    with pytest.raises(ValueError, match="n_features"):
        RandomFourierFeatures(3, 0)
    with pytest.raises(ValueError, match="bandwidth"):
        RandomFourierFeatures(3, 5, bandwidth=-1.0)
    with pytest.raises(ValueError, match="dtype"):
        RandomFourierFeatures(3, 5, dtype=np.int32)
    with pytest.raises(ValueError, match=r"X: expected shape \(m, 3\)"):
        RandomFourierFeatures(3, 5).transform(np.zeros((2, 4)))


@pytest.mark.parametrize("fam", ["multinomial", "logistic"])
@pytest.mark.parametrize("chunk", [1, 7, 37, 100])
def test_chunked_full_objective_equals_the_stored_one(fam, chunk):
    X, y, rng = _data()
    if fam == "logistic":
        y = y % 2
    phi = RandomFourierFeatures(6, 23, seed=1, dtype=np.float64)
    lam = 0.3
    chunked = FeatureObjective(fam, X, y, phi, lam=lam, chunk_size=chunk)
    stored = objective(fam, phi(X), y, lam=lam, fit_intercept=True)
    assert chunked.shape == stored.shape and chunked.dim == stored.dim
    for _ in range(3):
        W = rng.standard_normal(chunked.shape)
        f1, g1 = chunked(W)
        f2, g2 = stored(W)
        assert abs(f1 - f2) <= 1e-12 * max(1.0, abs(f2))
        np.testing.assert_allclose(g1, g2, rtol=0, atol=1e-12)
        # a flat w gives a flat gradient
        f3, g3 = chunked(W.reshape(-1))
        assert f3 == f1 and g3.shape == (chunked.dim,)
    ws = [rng.standard_normal(chunked.shape) for _ in range(3)]
    np.testing.assert_allclose(chunked.losses(ws), [stored(w)[0] for w in ws], rtol=1e-12)
    assert chunked.accuracies(ws) == [stored.accuracy(w) for w in ws]


def test_minibatches_follow_the_objective_sampler():
    X, y, rng = _data(n=50)
    phi = RandomFourierFeatures(6, 30, seed=2, dtype=np.float64)
    fam = family("multinomial", n_classes=4)
    streamed = FeatureObjective(fam, X, y, phi, lam=0.01, batch_size=8, rng=5)
    stored = objective(fam, phi(X), y, lam=0.01, batch_size=8, rng=5, fit_intercept=True)
    assert streamed.batches_per_epoch == stored.batches_per_epoch == 7
    W = rng.standard_normal(streamed.shape)
    for _ in range(16):  # more than two epochs: the permutations match too
        f1, g1 = streamed(W)
        f2, g2 = stored(W)
        assert abs(f1 - f2) <= 1e-12
        np.testing.assert_allclose(g1, g2, atol=1e-12, rtol=0)
    assert streamed.n_calls == 16 and streamed.epochs == 16 / 7
    streamed.reset()
    stored.reset()
    assert abs(streamed(W)[0] - stored(W)[0]) <= 1e-12
    # the full twin has the same data and penalty and is not stochastic
    full = streamed.full()
    assert not full.stochastic and full.batch_size == 50
    assert abs(full(W)[0] - stored.full()(W)[0]) <= 1e-12


def test_feature_objective_errors():
    X, y, _ = _data()
    phi = RandomFourierFeatures(6, 10)
    fun = FeatureObjective("multinomial", X, y, phi)
    with pytest.raises(ValueError, match=r"w: expected shape \(11, 4\)"):
        fun(np.zeros(5))
    with pytest.raises(ValueError, match="batch_size: must be <= n=37"):
        FeatureObjective("multinomial", X, y, phi, batch_size=38)
    with pytest.raises(ValueError, match="y: expected shape"):
        FeatureObjective("multinomial", X, y[:-1], phi)
    with pytest.raises(ValueError, match="next_batch: this objective is full batch"):
        fun.next_batch()
    with pytest.raises(ValueError, match="give both X and y"):
        fun.accuracies([np.zeros(fun.shape)], X=X)


def test_default_chunk_keeps_memory_bounded():
    X, y, _ = _data()
    fun = FeatureObjective("multinomial", X, y, RandomFourierFeatures(6, 20000))
    assert fun.chunk_size == 2**24 // 20000 == 838
    assert fun.dim == 4 * 20001
