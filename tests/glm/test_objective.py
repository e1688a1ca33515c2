"""GLM objectives: gradients, penalty/intercept conventions, backends, minibatch sampler,
and the optimum on every bundled data set against scikit-learn / statsmodels."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import scipy.special as sp

from lowrank_precond.glm import FAMILIES, Objective, datasets, family, objective

N, D, K = 40, 5, 3
FAMILY_NAMES = sorted(FAMILIES)


def _problem(name: str, rng: np.random.Generator, n: int = N, d: int = D):
    A = rng.standard_normal((n, d))
    if name == "logistic":
        y = rng.integers(0, 2, n)
    elif name == "multinomial":
        y = rng.integers(0, K, n)
    elif name == "poisson":
        y = rng.poisson(1.5, n).astype(float)
    else:
        y = rng.standard_normal(n)
    return A, y


def _w(fun: Objective, rng: np.random.Generator) -> np.ndarray:
    return 0.4 * rng.standard_normal(fun.shape)


def _dense_reference(name, A, y, w, lam, fit_intercept):
    """Loss and gradient written out in numpy/scipy from the formulas of ALGORITHMS.md E."""
    n, d = A.shape
    coef, b = (w[:d], w[d]) if fit_intercept else (w, 0.0)
    z = A @ coef + b
    if name == "logistic":
        loss, r = np.mean(np.logaddexp(0.0, z) - y * z), sp.expit(z) - y
    elif name == "multinomial":
        Y = np.eye(K)[y]
        loss, r = np.mean(sp.logsumexp(z, axis=1) - np.sum(Y * z, 1)), sp.softmax(z, 1) - Y
    elif name == "poisson":
        zc = np.minimum(z, 30.0)
        loss, r = np.mean(np.exp(zc) * (1 + z - zc) - y * z), np.exp(zc) - y
    else:
        loss, r = np.mean((z - y) ** 2) / 2, z - y
    loss = loss + lam / 2 * np.sum(coef**2)
    g = A.T @ r / n + lam * coef
    if fit_intercept:
        g = np.concatenate([g, r.sum(axis=0, keepdims=True) / n], axis=0)
    return loss, g


@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("lam", [0.0, 0.3])
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_gradient_matches_finite_differences(name, lam, fit_intercept, rng):
    """[E04] central differences, float64, relative 1e-6; and the dense formulas to 1e-12."""
    A, y = _problem(name, rng)
    fun = objective(name, A, y, lam=lam, fit_intercept=fit_intercept)
    w = _w(fun, rng)
    loss, g = fun(w)
    assert isinstance(loss, float) and isinstance(g, np.ndarray) and g.shape == fun.shape
    h = 1e-6
    fd = np.zeros(fun.shape)
    for idx in np.ndindex(fun.shape):
        e = np.zeros(fun.shape)
        e[idx] = h
        fd[idx] = (fun(w + e)[0] - fun(w - e)[0]) / (2 * h)
    assert np.linalg.norm(fd - g) <= 1e-6 * np.linalg.norm(g)
    ref_loss, ref_g = _dense_reference(name, A, y, w, lam, fit_intercept)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-10, atol=1e-13 * np.abs(ref_g).max())


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_intercept_is_last_row_and_unpenalised(name, rng):
    A, y = _problem(name, rng)
    lam = 0.7
    fun = objective(name, A, y, lam=lam, fit_intercept=True)
    fun_aug = objective(name, np.hstack([A, np.ones((N, 1))]), y, lam=0.0)
    w = _w(fun, rng)
    loss, g = fun(w)
    loss0, g0 = fun_aug(w)  # same model with the column of ones, no penalty at all
    coef = w[:D]
    np.testing.assert_allclose(loss, loss0 + lam / 2 * np.sum(coef**2), rtol=1e-13)
    np.testing.assert_allclose(g[:D], g0[:D] + lam * coef, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g[D:], g0[D:], rtol=1e-12, atol=1e-15)


def test_poisson_objective_across_zmax(rng):
    """Predictors on both sides of a small zmax: gradient still the derivative (C^1)."""
    A, y = _problem("poisson", rng)
    fun = objective(family("poisson", zmax=0.5), A, y, lam=0.1)
    w = _w(fun, rng) * 3
    z = A @ w
    assert np.any(z > 0.5) and np.any(z < 0.5)
    _, g = fun(w)
    h = 1e-6
    fd = np.array([(fun(w + h * e)[0] - fun(w - h * e)[0]) / (2 * h) for e in np.eye(D)])
    assert np.linalg.norm(fd - g) <= 1e-6 * np.linalg.norm(g)


@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("lam", [0.0, 0.25])
def test_multinomial_grad_times_ones(lam, fit_intercept, rng):
    """[E06]: grad @ 1_K = lam W 1_K (the intercept rows: 0)."""
    A, y = _problem("multinomial", rng)
    fun = objective("multinomial", A, y, lam=lam, fit_intercept=fit_intercept)
    W = _w(fun, rng)
    _, G = fun(W)
    expect = lam * W @ np.ones(K)
    if fit_intercept:
        expect[D:] = 0.0
    np.testing.assert_allclose(G @ np.ones(K), expect, atol=1e-15 + 1e-13 * np.abs(G).max())
    # without L2 (and without intercept), W + v 1^T has the same loss
    plain = objective("multinomial", A, y)
    W0 = W[:D]
    shifted = W0 + 5.0 * rng.standard_normal((D, 1))
    np.testing.assert_allclose(plain(shifted)[0], plain(W0)[0], rtol=1e-12)


def test_pm1_logistic_objective_same_as_01(rng):
    """[E04] at the objective level, with the auto-detected and the explicit coding."""
    A, y = _problem("logistic", rng)
    w = 0.5 * rng.standard_normal(D + 1)
    ref = objective("logistic", A, y, lam=0.1, fit_intercept=True)(w)
    for fam in ("logistic", family("logistic", labels="pm1")):
        loss, g = objective(fam, A, 2 * y - 1, lam=0.1, fit_intercept=True)(w)
        np.testing.assert_allclose(loss, ref[0], rtol=1e-14)
        np.testing.assert_allclose(g, ref[1], rtol=1e-14)


def test_multinomial_flat_w_roundtrip(rng):
    """A flat (p*K,) w (what scipy.optimize passes) gives the flattened gradient."""
    A, y = _problem("multinomial", rng)
    fun = objective("multinomial", A, y, lam=0.1, fit_intercept=True)
    assert fun.shape == (D + 1, K) and fun.dim == (D + 1) * K and fun.n_classes == K
    W = _w(fun, rng)
    loss, G = fun(W)
    loss_f, g_f = fun(W.reshape(-1))
    assert g_f.shape == (fun.dim,)
    np.testing.assert_array_equal(g_f, G.reshape(-1))
    assert loss_f == loss


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_backends_agree(name, xp, rng):
    """Same loss/grad on every backend to 1e-12 (float64); data converted lazily or given."""
    A, y = _problem(name, rng)
    fun = objective(name, A, y, lam=0.2, fit_intercept=True)
    w = _w(fun, rng)
    ref_loss, ref_g = fun(w)
    loss, g = fun(xp.asarray(w))  # numpy data moved to w's backend on first call
    assert g.dtype == xp.float64 and tuple(g.shape) == fun.shape
    if xp.name != "numpy":
        assert tuple(loss.shape) == () and loss.dtype == xp.float64
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(xp.to_numpy(g), ref_g, rtol=1e-12, atol=1e-14)
    # data given on the backend already (labels too)
    y_xp = xp.asarray(y) if name in ("poisson", "least_squares") else xp.asarray(y.astype(np.int64))
    fun_xp = objective(name, xp.asarray(A), y_xp, lam=0.2, fit_intercept=True)
    loss2, g2 = fun_xp(xp.asarray(w))
    np.testing.assert_allclose(float(loss2), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(xp.to_numpy(g2), ref_g, rtol=1e-12, atol=1e-14)
    # float32 w: the computation runs in float32
    loss32, g32 = fun(xp.asarray(w.astype(np.float32)))
    assert g32.dtype == xp.float32
    np.testing.assert_allclose(float(loss32), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(xp.to_numpy(g32), ref_g, rtol=1e-4, atol=1e-5 * np.abs(ref_g).max())


def test_minibatch_epoch_visits_every_row_once(rng):
    for n, b in [(40, 8), (40, 7), (41, 41 - 1), (5, 1)]:
        A, y = _problem("least_squares", rng, n=n)
        fun = objective("least_squares", A, y, batch_size=b, rng=3)
        assert fun.stochastic and fun.batch_size == b
        assert fun.batches_per_epoch == -(-n // b)
        for _epoch in range(3):
            seen = []
            for _ in range(fun.batches_per_epoch):
                fun(np.zeros(fun.shape))
                idx = fun.batch_indices()
                assert len(idx) == b or len(idx) == n - (fun.batches_per_epoch - 1) * b
                seen.append(idx)
            np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(n))
        assert fun.epochs == 3.0 and fun.n_calls == 3 * fun.batches_per_epoch


def test_minibatch_is_the_objective_on_its_rows(rng):
    """Each call equals the dense formula on exactly the rows it reports."""
    A, y = _problem("logistic", rng)
    fun = objective("logistic", A, y, lam=0.05, batch_size=6, rng=1, fit_intercept=True)
    w = _w(fun, rng)
    for _ in range(9):
        loss, g = fun(w)
        idx = fun.batch_indices()
        ref_loss, ref_g = _dense_reference("logistic", A[idx], y[idx], w, 0.05, True)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-13)
        np.testing.assert_allclose(g, ref_g, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("n, b", [(40, 8), (40, 7)])
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_epoch_average_equals_full_gradient(name, n, b, rng):
    """sum_B |B|/n * grad_B(w) = grad(w) over one epoch (the plain mean when |B| is fixed)."""
    A, y = _problem(name, rng, n=n)
    fun = objective(name, A, y, lam=0.3, batch_size=b, rng=rng, fit_intercept=True)
    full = fun.full()
    assert not full.stochastic and full.batches_per_epoch == 1 and full.batch_size == n
    w = _w(fun, rng)
    f_ref, g_ref = full(w)
    losses, grads, sizes = [], [], []
    for _ in range(fun.batches_per_epoch):
        loss, g = fun(w)
        losses.append(loss)
        grads.append(g)
        sizes.append(len(fun.batch_indices()))
    weights = np.array(sizes) / n
    np.testing.assert_allclose(
        np.tensordot(weights, np.array(grads), 1), g_ref, rtol=1e-12, atol=1e-15
    )
    np.testing.assert_allclose(weights @ np.array(losses), f_ref, rtol=1e-13)
    if n % b == 0:
        np.testing.assert_allclose(np.mean(grads, axis=0), g_ref, rtol=1e-12, atol=1e-15)


def test_sampler_reproducible_and_seeded(rng):
    A, y = _problem("poisson", rng)
    w = 0.1 * rng.standard_normal(D)

    def run(fun, calls=12):
        return [fun(w)[0] for _ in range(calls)], fun.batch_indices()

    a = run(objective("poisson", A, y, batch_size=5, rng=7))
    b = run(objective("poisson", A, y, batch_size=5, rng=7))
    c = run(objective("poisson", A, y, batch_size=5, rng=8))
    assert a[0] == b[0] and np.array_equal(a[1], b[1])
    assert a[0] != c[0]
    # a Generator is copied, not advanced; reset() replays the sequence
    gen = np.random.default_rng(11)
    state = gen.bit_generator.state
    fun = objective("poisson", A, y, batch_size=5, rng=gen)
    first = run(fun)
    assert gen.bit_generator.state == state
    fun.reset()
    assert fun.n_calls == 0
    assert run(fun)[0] == first[0]
    assert (
        run(objective("poisson", A, y, batch_size=5, rng=np.random.default_rng(11)))[0] == first[0]
    )
    # rng=None means seed 0
    assert (
        run(objective("poisson", A, y, batch_size=5))[0]
        == run(objective("poisson", A, y, batch_size=5, rng=0))[0]
    )


def test_minibatch_same_sequence_on_every_backend(xp, rng):
    A, y = _problem("multinomial", rng)
    fun_np = objective("multinomial", A, y, lam=0.1, batch_size=6, rng=5, fit_intercept=True)
    fun_xp = objective("multinomial", A, y, lam=0.1, batch_size=6, rng=5, fit_intercept=True)
    W = _w(fun_np, rng)
    for _ in range(fun_np.batches_per_epoch + 2):
        loss, G = fun_np(W)
        loss_x, G_x = fun_xp(xp.asarray(W))
        np.testing.assert_allclose(float(loss_x), loss, rtol=1e-12)
        np.testing.assert_allclose(xp.to_numpy(G_x), G, rtol=1e-12, atol=1e-15)


def test_full_batch_attributes_and_batch_size_n(rng):
    A, y = _problem("logistic", rng)
    fun = objective("logistic", A, y, lam=0.1, fit_intercept=True)
    assert (fun.n_samples, fun.n_features, fun.shape, fun.dim) == (N, D, (D + 1,), D + 1)
    assert fun.batch_size == N and fun.batches_per_epoch == 1 and not fun.stochastic
    assert fun.family.name == "logistic" and fun.lam == 0.1 and fun.fit_intercept
    assert fun.batch_indices() is None and fun.n_classes is None
    w = _w(fun, rng)
    same = objective("logistic", A, y, lam=0.1, fit_intercept=True, batch_size=N)
    assert not same.stochastic
    assert same(w)[0] == fun(w)[0]
    fun(w)
    assert fun.epochs == 2.0
    assert "full batch" in repr(fun)
    z = fun.zeros()
    assert z.shape == (D + 1,) and z.dtype == np.float64 and not z.any()


def test_scipy_minimize_on_numpy(rng):
    A, y = _problem("multinomial", rng)
    fun = objective("multinomial", A, y, lam=0.1, fit_intercept=True)
    res = scipy.optimize.minimize(
        fun, fun.zeros().ravel(), jac=True, method="L-BFGS-B", options={"gtol": 1e-10}
    )
    assert res.success, res.message
    loss, g = fun(res.x)
    assert res.fun == loss and g.shape == res.x.shape
    assert np.linalg.norm(g) < 1e-5


def test_predict_and_accuracy(xp, rng):
    A, y = _problem("logistic", rng)
    fun = objective("logistic", A, y, fit_intercept=True)
    w = _w(fun, rng)
    z = A @ w[:D] + w[D]
    np.testing.assert_allclose(xp.to_numpy(fun.linear_predictor(xp.asarray(w))), z, rtol=1e-13)
    np.testing.assert_allclose(xp.to_numpy(fun.predict(xp.asarray(w))), sp.expit(z), rtol=1e-13)
    assert fun.accuracy(xp.asarray(w)) == np.mean((z > 0) == (y == 1))
    A2, y2 = _problem("logistic", rng, n=17)
    z2 = A2 @ w[:D] + w[D]
    assert fun.accuracy(w, A2, 2 * y2 - 1) == np.mean((z2 > 0) == (y2 == 1))

    Am, ym = _problem("multinomial", rng)
    funm = objective("multinomial", Am, ym)
    Wm = _w(funm, rng)
    assert funm.accuracy(xp.asarray(Wm)) == np.mean(np.argmax(Am @ Wm, 1) == ym)
    sub = ym[:9] % 2  # a subset missing class 2: still scored against K = 3 columns
    assert funm.accuracy(Wm, Am[:9], sub) == np.mean(np.argmax(Am[:9] @ Wm, 1) == sub)
    with pytest.raises(ValueError, match="accuracy"):
        objective("poisson", *_problem("poisson", rng)).accuracy(np.zeros(D))
    with pytest.raises(ValueError, match="accuracy"):
        fun.accuracy(w, A2)
    with pytest.raises(ValueError, match="A"):
        fun.accuracy(w, A2[:, :2], y2)


def test_validation_errors(rng):
    A, y = _problem("logistic", rng)
    with pytest.raises(ValueError, match="A"):
        objective("logistic", A[0], y)
    with pytest.raises(TypeError, match="A"):
        objective("logistic", A.astype(int), y)
    with pytest.raises(TypeError, match="A"):
        objective("logistic", A.tolist(), y)
    A_bad = A.copy()
    A_bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="A"):
        objective("logistic", A_bad, y)
    with pytest.raises(ValueError, match="y"):
        objective("logistic", A, y[:-1])
    with pytest.raises(TypeError, match="y"):
        objective("logistic", A, list(y))
    with pytest.raises(ValueError, match="lam"):
        objective("logistic", A, y, lam=-1e-3)
    with pytest.raises(ValueError, match="lam"):
        objective("logistic", A, y, lam=float("nan"))
    with pytest.raises(ValueError, match="batch_size"):
        objective("logistic", A, y, batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        objective("logistic", A, y, batch_size=N + 1)
    with pytest.raises(TypeError, match="batch_size"):
        objective("logistic", A, y, batch_size=2.5)
    with pytest.raises(TypeError, match="rng"):
        objective("logistic", A, y, batch_size=4, rng="seed")
    with pytest.raises(TypeError, match="fit_intercept"):
        objective("logistic", A, y, fit_intercept=1)
    with pytest.raises(ValueError, match="family"):
        objective("logit", A, y)
    # labels invalid for the family
    with pytest.raises(ValueError, match="y"):
        objective("logistic", A, y + 1)
    with pytest.raises(ValueError, match="y"):
        objective("poisson", A, -np.ones(N))
    with pytest.raises(ValueError, match="y"):
        objective(family("multinomial", n_classes=2), A, rng.integers(0, 3, N))
    # w of the wrong shape, at call time
    fun = objective("logistic", A, y, fit_intercept=True)
    with pytest.raises(ValueError, match=r"w: expected shape \(6,\)"):
        fun(np.zeros(D))
    with pytest.raises(TypeError, match="w"):
        fun(np.zeros(D + 1, dtype=int))
    funm = objective("multinomial", A, rng.integers(0, K, N))
    with pytest.raises(ValueError, match="w"):
        funm(np.zeros((K, D)))


# ---------------------------------------------------------------------------------------------
# the optimum on every bundled data set vs scikit-learn / statsmodels
# ---------------------------------------------------------------------------------------------


def _lbfgs(fun: Objective) -> np.ndarray:
    res = scipy.optimize.minimize(
        fun,
        fun.zeros().ravel(),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 20000, "maxfun": 40000, "ftol": 0.0, "gtol": 1e-11, "maxcor": 30},
    )
    assert np.abs(res.jac).max() < 1e-8, res.message
    return res.x.reshape(fun.shape)


def _load(name):
    try:
        return datasets.load(name)
    except FileNotFoundError as exc:  # heart_scale without Debian's liblinear-tools
        pytest.skip(str(exc))


# the image sets (784 pixels, 7850 unknowns) would take minutes here; test_datasets_large.py
@pytest.mark.parametrize(
    "name", [n for n in datasets.names() if n not in ("mnist", "fashion_mnist")]
)
def test_optimum_matches_scikit_learn(name):
    """min_w F(w) with L-BFGS-B on our objective = sklearn's estimator with matched scaling.

    LogisticRegression(C) minimises C sum loss + |w|^2/2, so C = 1/(n lam); Ridge(alpha)
    minimises |y - Xw - b|^2 + alpha |w|^2, so alpha = n lam; PoissonRegressor(alpha)
    minimises mean half-deviance + alpha/2 |w|^2, so alpha = lam. All leave the intercept
    unpenalised, like fit_intercept=True here.
    """
    from sklearn.linear_model import LogisticRegression, PoissonRegressor, Ridge

    A, y, info = _load(name)
    n, lam, fam = info["n"], info["lam"], info["family"]
    w = _lbfgs(objective(fam, A, y, lam=lam, fit_intercept=True))
    if fam in ("logistic", "multinomial"):
        model = LogisticRegression(
            C=1.0 / (n * lam), tol=1e-12, max_iter=1000, solver="newton-cholesky"
        ).fit(A, y)
        if fam == "logistic":
            ref = np.r_[model.coef_[0], model.intercept_]
        else:
            ref = np.vstack([model.coef_.T, model.intercept_[None, :]])
            # the softmax intercept is defined up to a constant: compare centred intercepts
            w[-1] -= w[-1].mean()
            ref[-1] -= ref[-1].mean()
    elif fam == "poisson":
        model = PoissonRegressor(alpha=lam, tol=1e-12, max_iter=1000, solver="newton-cholesky").fit(
            A, y
        )
        ref = np.r_[model.coef_, model.intercept_]
    else:
        model = Ridge(alpha=n * lam, solver="cholesky").fit(A, y)
        ref = np.r_[model.coef_, model.intercept_]
    assert np.linalg.norm(w - ref) <= 1e-5 * np.linalg.norm(ref)
    np.testing.assert_allclose(w, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_unpenalised_poisson_matches_statsmodels():
    """lam = 0 Poisson GLM on randhie: statsmodels' IRLS maximum likelihood."""
    import statsmodels.api as sm

    A, y, info = datasets.load("randhie")
    w = _lbfgs(objective("poisson", A, y, lam=0.0, fit_intercept=True))
    res = sm.GLM(y, np.hstack([A, np.ones((info["n"], 1))]), family=sm.families.Poisson()).fit(
        tol=1e-13, maxiter=100
    )
    np.testing.assert_allclose(w, res.params, rtol=1e-5, atol=1e-5 * np.abs(res.params).max())
