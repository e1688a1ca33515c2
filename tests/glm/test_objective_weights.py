"""``objective(..., sample_weight=...)``: the weighted mean loss, integer weights equal to
repeated rows, minibatches unbiased, unit weights equal to none, and the errors."""

from __future__ import annotations

import numpy as np
import pytest

from lowrank_precond.glm import FAMILIES, family, objective

N, D = 24, 3


def _problem(name, rng):
    A = rng.standard_normal((N, D))
    y = {
        "logistic": rng.integers(0, 2, N),
        "multinomial": np.arange(N) % 3,
        "poisson": rng.poisson(1.5, N).astype(float),
        "least_squares": rng.standard_normal(N),
    }[name]
    return A, y


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_integer_weights_equal_repeated_rows(name, rng):
    A, y = _problem(name, rng)
    k = rng.integers(0, 4, N)
    k[0] = 2
    weighted = objective(name, A, y, lam=0.3, fit_intercept=True, sample_weight=k)
    w = 0.3 * rng.standard_normal(weighted.shape)
    repeated = objective(name, np.repeat(A, k, 0), np.repeat(y, k), lam=0.3, fit_intercept=True)
    loss, g = weighted(w)
    ref_loss, ref_g = repeated(w)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(weighted.sample_weight.mean(), 1.0)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_unit_weights_and_unbiased_minibatches(name, rng):
    A, y = _problem(name, rng)
    plain = objective(name, A, y, lam=0.1)
    ones = objective(name, A, y, lam=0.1, sample_weight=np.full(N, 7.0))  # rescaled to 1
    w = 0.3 * rng.standard_normal(plain.shape)
    np.testing.assert_allclose(ones(w)[1], plain(w)[1], rtol=1e-13, atol=1e-15)
    s = rng.uniform(0.0, 3.0, N)
    full = objective(name, A, y, lam=0.1, sample_weight=s)
    batched = objective(name, A, y, lam=0.1, sample_weight=s, batch_size=6, rng=1)
    epoch = sum(batched(w)[1] for _ in range(batched.batches_per_epoch)) / 4
    np.testing.assert_allclose(epoch, full(w)[1], rtol=1e-10, atol=1e-14)
    fam = family(name, n_classes=3) if name == "multinomial" else name
    rows = np.array([objective(fam, A[i : i + 1], y[i : i + 1])(w)[0] for i in range(N)])
    penalty = 0.05 * np.sum(w * w)
    np.testing.assert_allclose(full(w)[0], s @ rows / s.sum() + penalty, rtol=1e-12)


@pytest.mark.parametrize(
    ("weights", "exc", "match"),
    [
        (np.r_[-1.0, np.ones(N - 1)], ValueError, r"sample_weight: must be >= 0, got a minimum"),
        (np.ones(N - 1), ValueError, rf"sample_weight: expected shape \({N},\)"),
        (np.r_[np.nan, np.ones(N - 1)], ValueError, "sample_weight: contains non-finite"),
        (np.zeros(N), ValueError, "sample_weight: the weights are all zero"),
        ([1.0] * N, TypeError, "sample_weight: expected an array, got list"),
    ],
)
def test_sample_weight_errors(weights, exc, match, rng):
    A, y = _problem("least_squares", rng)
    with pytest.raises(exc, match=match):
        objective("least_squares", A, y, sample_weight=weights)
