"""GLM families (ALGORITHMS.md E): losses in z vs scipy references, stability, labels."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special as sp
import scipy.stats as st

from lowrank_precond.glm import FAMILIES, LeastSquares, Logistic, Multinomial, Poisson, family
from lowrank_precond.glm.families import log_sum_exp, sigmoid, softplus

K = 4


def _z_and_labels(name: str, rng: np.random.Generator, n: int = 30, scale: float = 3.0):
    """A linear predictor and raw labels for family ``name`` (numpy)."""
    if name == "multinomial":
        return scale * rng.standard_normal((n, K)), rng.integers(0, K, n)
    z = scale * rng.standard_normal(n)
    if name == "logistic":
        return z, rng.integers(0, 2, n)
    if name == "poisson":
        return z, rng.poisson(2.0, n).astype(float)
    return z, rng.standard_normal(n)


def _reference(name: str, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean loss and d(mean loss)/dz from scipy's distributions / special functions."""
    n = z.shape[0]
    if name == "logistic":
        p = sp.expit(z)
        # Bernoulli negative log-likelihood via xlogy; exact softplus form via logaddexp
        nll = -(sp.xlogy(y, p) + sp.xlog1py(1 - y, -p))
        np.testing.assert_allclose(nll, np.logaddexp(0.0, z) - y * z, rtol=1e-9, atol=1e-12)
        return float(np.mean(np.logaddexp(0.0, z) - y * z)), (p - y) / n
    if name == "multinomial":
        onehot = np.eye(K)[y]
        loss = np.mean(sp.logsumexp(z, axis=1) - z[np.arange(n), y])
        return float(loss), (sp.softmax(z, axis=1) - onehot) / n
    if name == "poisson":
        mu = np.exp(z)
        # -log pmf = mu - y log mu + log y!; the family drops log y!
        loss = np.mean(-st.poisson.logpmf(y, mu) - sp.gammaln(y + 1))
        return float(loss), (mu - y) / n
    loss = np.mean(-st.norm.logpdf(y, loc=z) - 0.5 * np.log(2 * np.pi))
    return float(loss), (z - y) / n


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_loss_and_grad_z_match_scipy(name, xp, rng):
    z, y = _z_and_labels(name, rng)
    fam = family(name)
    Y = fam.encode_labels(xp.asarray(y), dtype=xp.float64)
    loss, dz = fam.loss_and_grad_z(xp.asarray(z), Y)
    ref_loss, ref_dz = _reference(name, z, y)
    assert tuple(loss.shape) == ()
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(xp.to_numpy(dz), ref_dz, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_grad_z_is_derivative_of_loss(name, rng):
    """Central finite differences of the mean loss in z (float64, relative 1e-6)."""
    z, y = _z_and_labels(name, rng, n=12)
    fam = family(name)
    Y = fam.encode_labels(y)
    _, dz = fam.loss_and_grad_z(z, Y)
    h = 1e-6
    fd = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        e = np.zeros_like(z)
        e[idx] = h
        fd[idx] = (
            float(fam.loss_and_grad_z(z + e, Y)[0]) - float(fam.loss_and_grad_z(z - e, Y)[0])
        ) / (2 * h)
    assert np.linalg.norm(fd - dz) <= 1e-6 * np.linalg.norm(dz)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_finite_and_accurate_at_large_z(name, dtype, xp):
    """[E05]: loss and gradient finite at |z| = 1000 in float64 and float32, and correct."""
    big = np.array([-1000.0, -1000.0, 1000.0, 1000.0, 0.0])
    if name == "multinomial":
        z = np.stack([big, -big, 0 * big, big], axis=1)
        y = np.array([0, 1, 2, 3, 1])
    else:
        z = big
        y = {
            "logistic": np.array([0, 1, 0, 1, 1]),
            "poisson": np.array([0.0, 3.0, 0.0, 3.0, 1.0]),
            "least_squares": np.array([1.0, -1.0, 2.0, 0.0, 0.5]),
        }[name]
    fam = family(name)
    np_dtype = np.dtype(dtype)
    xdt = getattr(xp, dtype)
    Y = fam.encode_labels(xp.asarray(y), dtype=xdt)
    loss, dz = fam.loss_and_grad_z(xp.asarray(z.astype(np_dtype)), Y)
    assert loss.dtype == xdt and dz.dtype == xdt
    loss_np, dz_np = float(loss), xp.to_numpy(dz)
    assert np.isfinite(loss_np) and np.all(np.isfinite(dz_np))
    # exact float64 references, evaluated stably
    n = z.shape[0]
    if name == "logistic":
        ref = np.mean(np.logaddexp(0.0, z) - y * z)
        ref_dz = (sp.expit(z) - y) / n
    elif name == "multinomial":
        ref = np.mean(sp.logsumexp(z, axis=1) - z[np.arange(n), y])
        ref_dz = (sp.softmax(z, axis=1) - np.eye(K)[y]) / n
    elif name == "poisson":
        zc = np.minimum(z, 30.0)
        ref = np.mean(np.exp(zc) * (1 + z - zc) - y * z)
        ref_dz = (np.exp(zc) - y) / n
    else:
        ref = np.mean((z - y) ** 2) / 2
        ref_dz = (z - y) / n
    rtol = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(loss_np, ref, rtol=rtol)
    np.testing.assert_allclose(dz_np, ref_dz, rtol=rtol, atol=rtol * np.abs(ref_dz).max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_stable_helpers(dtype):
    z = np.array([-1000.0, -40.0, -1.0, 0.0, 1.0, 40.0, 1000.0], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        sp_ = softplus(z)
        sg = sigmoid(z)
        lse = log_sum_exp(np.stack([z, -z, z], axis=1))
    zz = z.astype(np.float64)
    rtol = 1e-14 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(sp_, np.logaddexp(0.0, zz), rtol=rtol)
    np.testing.assert_allclose(sg, sp.expit(zz), rtol=rtol, atol=1e-300)
    np.testing.assert_allclose(lse, sp.logsumexp(np.stack([zz, -zz, zz], 1), axis=1), rtol=rtol)
    assert sp_.dtype == sg.dtype == lse.dtype == dtype


def test_pm1_labels_same_function_as_01(rng):
    """[E04]: ±1 labels give mean softplus(-y z), the same function as 0/1 labels."""
    z = 4 * rng.standard_normal(25)
    y01 = rng.integers(0, 2, 25)
    ypm = 2 * y01 - 1
    l01, g01 = Logistic().loss_and_grad_z(z, Logistic().encode_labels(y01))
    for fam in (Logistic(), Logistic(labels="pm1")):
        lpm, gpm = fam.loss_and_grad_z(z, fam.encode_labels(ypm))
        np.testing.assert_allclose(lpm, np.mean(np.logaddexp(0.0, -ypm * z)), rtol=1e-13)
        np.testing.assert_allclose(lpm, l01, rtol=1e-13)
        np.testing.assert_allclose(gpm, g01, rtol=1e-13)
    # boolean labels are read as 0/1
    lb, _ = Logistic().loss_and_grad_z(z, Logistic().encode_labels(y01.astype(bool)))
    np.testing.assert_allclose(lb, l01, rtol=1e-15)


@pytest.mark.parametrize("zmax", [30.0, 2.0])
def test_poisson_c1_at_zmax(zmax):
    """The safe exponential is continuous with a continuous derivative at zmax, and convex."""
    fam = Poisson(zmax=zmax)
    y = np.array([1.0])

    def f(t):
        return float(fam.loss_and_grad_z(np.array([t]), y)[0])

    def g(t):
        return float(fam.loss_and_grad_z(np.array([t]), y)[1][0])

    scale = np.exp(zmax)
    eps = 1e-9
    # continuity of the value and of the derivative across zmax
    assert abs(f(zmax + eps) - f(zmax - eps)) <= 4 * eps * scale + 1e-15 * scale
    assert abs(g(zmax + eps) - g(zmax - eps)) <= 4 * eps * scale
    # one-sided difference quotients on each side equal the gradient there (C^1)
    h = 1e-6
    left = (f(zmax) - f(zmax - h)) / h
    right = (f(zmax + h) - f(zmax)) / h
    np.testing.assert_allclose(left, g(zmax), rtol=2e-6)
    np.testing.assert_allclose(right, g(zmax), rtol=2e-6)
    # tangent line above zmax: slope exp(zmax) - y exactly
    np.testing.assert_allclose(g(zmax + 5.0), scale - 1.0, rtol=1e-15)
    np.testing.assert_allclose(f(zmax + 5.0), scale * 6.0 - (zmax + 5.0), rtol=1e-15)
    # convex across zmax: second differences are >= 0
    t = zmax + np.linspace(-1.0, 1.0, 41)
    vals = np.array([f(s) for s in t])
    assert np.all(vals[:-2] - 2 * vals[1:-1] + vals[2:] >= -1e-12 * scale)


def test_multinomial_shift_invariance(rng):
    """Adding a constant to each row of Z leaves the loss unchanged; dZ rows sum to 0."""
    Z = rng.standard_normal((10, K))
    Y = Multinomial().encode_labels(rng.integers(0, K, 10))
    loss, dZ = Multinomial().loss_and_grad_z(Z, Y)
    loss2, dZ2 = Multinomial().loss_and_grad_z(Z + 500.0 * rng.standard_normal((10, 1)), Y)
    np.testing.assert_allclose(loss2, loss, rtol=1e-12)
    np.testing.assert_allclose(dZ2, dZ, atol=1e-14)
    np.testing.assert_allclose(dZ.sum(axis=1), 0.0, atol=1e-16)


def test_inverse_links(rng):
    z = 3 * rng.standard_normal(8)
    Z = 3 * rng.standard_normal((8, K))
    np.testing.assert_allclose(Logistic().inverse_link(z), sp.expit(z), rtol=1e-14)
    np.testing.assert_allclose(Multinomial().inverse_link(Z), sp.softmax(Z, axis=1), rtol=1e-14)
    np.testing.assert_allclose(Poisson().inverse_link(z), np.exp(z), rtol=1e-15)
    np.testing.assert_array_equal(LeastSquares().inverse_link(z), z)


def test_encode_labels(xp):
    Y = Multinomial(n_classes=5).encode_labels(xp.asarray(np.array([0, 3, 1])))
    np.testing.assert_array_equal(xp.to_numpy(Y), np.eye(5)[[0, 3, 1]])
    Yf = Multinomial().encode_labels(xp.asarray(np.array([0.0, 2.0, 1.0])))
    np.testing.assert_array_equal(xp.to_numpy(Yf), np.eye(3)[[0, 2, 1]])
    assert Multinomial().n_outputs(xp.asarray(np.array([0, 4]))) == 5
    Yp = Logistic().encode_labels(xp.asarray(np.array([1.0, -1.0])), dtype=xp.float32)
    assert Yp.dtype == xp.float32
    np.testing.assert_array_equal(xp.to_numpy(Yp), [1.0, 0.0])


@pytest.mark.parametrize(
    "fam, y, match",
    [
        (Logistic(), [0, 2, 1], "y: logistic labels"),
        (Logistic(), [-1, 0, 1], "y: logistic labels"),
        (Logistic(), [0.5, 1.0], "y: logistic labels"),
        (Logistic(labels="pm1"), [0, 1], "labels='pm1'"),
        (Logistic(labels="01"), [-1, 1], "labels='01'"),
        (Multinomial(), [0, -1, 2], r"y: multinomial labels must be in 0\.\.2"),
        (Multinomial(n_classes=3), [0, 3], r"n_classes=3"),
        (Multinomial(), [0.0, 1.5], "whole numbers"),
        (Multinomial(), [0, 0], "at least 2 classes"),
        (Poisson(), [1.0, -1.0], "y: poisson counts must be >= 0"),
        (LeastSquares(), [1.0, np.nan], "y: contains non-finite"),
        (Poisson(), [[1.0, 2.0]], "y: expected a 1-D"),
    ],
)
def test_bad_labels_raise(fam, y, match):
    with pytest.raises(ValueError, match=match):
        fam.encode_labels(np.asarray(y))


def test_family_lookup_and_options():
    assert set(FAMILIES) == {"logistic", "multinomial", "least_squares", "poisson"}
    assert family("logistic") == Logistic()
    assert family("multinomial", n_classes=7).n_classes == 7
    assert family("poisson", zmax=10.0).zmax == 10.0
    fam = Logistic(labels="pm1")
    assert family(fam) is fam
    assert FAMILIES["poisson"].name == "poisson"
    with pytest.raises(ValueError, match="family: unknown family 'probit'.*'least_squares'.*"):
        family("probit")
    with pytest.raises(TypeError, match="family"):
        family("logistic", n_classes=3)
    with pytest.raises(TypeError, match="family"):
        family(fam, labels="01")
    with pytest.raises(TypeError, match="family"):
        family(3)
    with pytest.raises(ValueError, match="labels"):
        Logistic(labels="yes")
    with pytest.raises(ValueError, match="n_classes"):
        Multinomial(n_classes=1)
    with pytest.raises(TypeError, match="n_classes"):
        Multinomial(n_classes=2.0)
    with pytest.raises(ValueError, match="zmax"):
        Poisson(zmax=float("inf"))
    with pytest.raises(TypeError, match="y"):
        Poisson().encode_labels([1.0, 2.0])
    with pytest.raises(TypeError, match="y"):
        Poisson().encode_labels(np.array([True, False]))
