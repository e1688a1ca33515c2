"""lowrank_precond.minimize and scipy_method: scipy's conventions, exact bookkeeping, and the
optimum of every GLM family on every bundled data set against scikit-learn."""

from __future__ import annotations

import importlib.util
import inspect

import numpy as np
import pytest
import scipy.optimize

import lowrank_precond as lp
from lowrank_precond import preconditioners as pc
from lowrank_precond.optim.scipy import DEFAULT_LR, DRIVER_OPTIONS, resolve_options
from lowrank_precond.preconditioners.defaults import DEFAULT_METHOD


def least_squares(rng, n=12, d=4):
    A = rng.standard_normal((n, d))
    b = rng.standard_normal(n)

    def fun(x):
        r = A @ x - b
        return 0.5 * float(r @ r), A.T @ r

    return A, b, fun


def required_options(name):
    """The factory arguments without a default (adamgram's ``rank``): the exact ``None``."""
    params = inspect.signature(pc.get(name)).parameters
    return {p: None for p, v in params.items() if v.default is inspect.Parameter.empty}


def reference_iterates(fun, x0, pre, lr, steps, weight_decay=0.0):
    """The loop written out: x <- x - lr * (p + wd * x), p from pre.update."""
    x = x0
    state = pre.init(x)
    xs = [x]
    for _ in range(steps):
        _, g = fun(x)
        p, state = pre.update(g, state)
        x = x - lr * (p + weight_decay * x) if weight_decay else x - lr * p
        xs.append(x)
    return xs


# --------------------------------------------------------------------------- convergence


def test_least_squares_converges_to_lstsq(rng):
    A, b, fun = least_squares(rng)
    res = lp.minimize(
        fun,
        np.zeros(4),
        "full_matrix_adagrad",
        options={"lr": 1.0, "maxiter": 20000, "gtol": 1e-11},
    )
    x_star = np.linalg.lstsq(A, b, rcond=None)[0]
    assert res.success and res.status == 0
    assert "gtol" in res.message
    assert np.max(np.abs(res.jac)) <= 1e-11
    np.testing.assert_allclose(res.x, x_star, rtol=0, atol=1e-10 * np.linalg.norm(x_star))
    # fields are those of the returned point, counts are exact
    f, g = fun(res.x)
    assert res.fun == f and np.array_equal(res.jac, g)
    assert res.nfev == res.njev == res.nit + 1
    assert isinstance(res, scipy.optimize.OptimizeResult)


def test_defaults_reach_1e4_on_breast_cancer():
    # minimize(fun, x0) with no method and no options: sketched AdaGrad, rank 5, lr 1.0
    # (measured: stops on gtol after 819 steps at 1.1e-6; the published AdaGram it ran before
    # left 3.9 after 1000 steps)
    pytest.importorskip(
        "sklearn", reason="scikit-learn not installed: pip install 'lowrank-precond[data]'"
    )
    from threadpoolctl import threadpool_limits

    from lowrank_precond.glm import datasets, objective

    A, y, _ = datasets.load("breast_cancer")
    fun = objective("logistic", A, y, lam=1e-3)
    x0 = fun.zeros()
    with threadpool_limits(1):  # many tiny BLAS calls: threads only contend
        ref = scipy.optimize.minimize(
            fun,
            x0,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 10**5, "gtol": 1e-12, "ftol": 1e-16, "maxcor": 50},
        )
        res = lp.minimize(fun, x0)
    assert ref.success and np.max(np.abs(ref.jac)) <= 1e-8
    assert res.success, res.message
    assert (res.fun - ref.fun) / abs(ref.fun) <= 1e-4


def test_default_method_is_the_recommended_one(rng):
    _, _, fun = least_squares(rng)
    x0 = rng.standard_normal(4)
    res = lp.minimize(fun, x0, options={"maxiter": 9, "gtol": 0.0})
    pre = pc.get(DEFAULT_METHOD)()
    xs = reference_iterates(fun, x0, pre, DEFAULT_LR[DEFAULT_METHOD], 9)
    assert DEFAULT_METHOD == "sketched_adagrad" and pre.hyperparams["rank"] == 5
    assert np.array_equal(res.x, xs[-1])


# every way minimize returns before its first step (and one after a step): x is never x0
EARLY_RETURNS = {
    "maxiter0": (lambda x: (0.5 * float(x @ x), x.copy()), {"maxiter": 0}),
    "gtol_at_x0": (lambda x: (0.5 * float(x @ x), x.copy()), {"gtol": 1e300}),
    "nonfinite_at_x0": (lambda x: (float("nan"), x.copy()), {}),
    "overflowing_first_step": (
        lambda x: (0.0, np.ones_like(x)),
        {"lr": 1e308, "gtol": 0.0},
    ),
    "stop_after_first_step": (lambda x: (0.5 * float(x @ x), x.copy()), {"maxiter": 1}),
}


@pytest.mark.parametrize("case", sorted(EARLY_RETURNS))
def test_result_x_is_a_copy_of_x0(case):
    fun, options = EARLY_RETURNS[case]
    x0 = np.full(3, -1e308) if case == "overflowing_first_step" else np.array([1.0, -2.0, 3.0])
    before = x0.copy()
    res = lp.minimize(fun, x0, "adagrad", options=options)
    assert res.nit == (1 if case == "stop_after_first_step" else 0)
    assert res.x is not x0 and not np.shares_memory(res.x, x0)
    if res.nit == 0:
        assert np.array_equal(res.x, before)
    res.x[...] = 7.0  # the caller's x0 is untouched
    assert np.array_equal(x0, before)


def test_result_x_is_a_copy_of_a_torch_x0():
    torch = pytest.importorskip(
        "torch", reason="torch not installed: pip install 'lowrank-precond[torch]'"
    )
    x0 = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    res = lp.minimize(
        lambda x: (0.5 * float(x @ x), x.clone()), x0, "adagrad", options={"maxiter": 0}
    )
    assert isinstance(res.x, torch.Tensor) and res.x is not x0
    res.x[0] = 7.0
    assert x0.tolist() == [1.0, -2.0, 3.0]


def test_float32_x0_copy_keeps_its_dtype():
    x0 = np.ones(2, dtype=np.float32)
    res = lp.minimize(
        lambda x: (0.5 * float(x @ x), x.copy()), x0, "adagrad", options={"maxiter": 0}
    )
    assert res.x.dtype == np.float32 and res.x is not x0


@pytest.mark.parametrize("method", ["adagrad", "adam", "full_matrix_adagrad", "asgo", "adadiag"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_iterates_equal_the_written_out_loop(rng, method, weight_decay):
    _, _, fun = least_squares(rng)
    x0 = rng.standard_normal(4)
    seen = []
    res = lp.minimize(
        fun,
        x0,
        method,
        options={"lr": 0.05, "maxiter": 7, "gtol": 0.0, "weight_decay": weight_decay},
        callback=lambda intermediate_result: seen.append(intermediate_result.x),
    )
    pre = pc.get(method)()
    xs = reference_iterates(fun, x0, pre, 0.05, 7, weight_decay)
    assert res.nit == 7 and res.nfev == 8 and res.njev == 8
    assert res.status == 1 and not res.success and "maxiter" in res.message
    assert np.array_equal(res.x, xs[-1])
    assert len(seen) == 7
    for a, b in zip(seen, xs[1:], strict=True):
        assert np.array_equal(a, b)


def test_gtol_stops_at_x0_without_a_step():
    res = lp.minimize(lambda x: (0.5 * float(x @ x), x.copy()), np.zeros(3), "adagrad")
    assert res.success and res.status == 0 and res.nit == 0 and res.nfev == 1


def test_gtol_is_the_max_abs_gradient(rng):
    # f = sum c_i x_i^2 / 2 with AdaGrad: the run stops at the first iterate with max|g| <= gtol
    # (50 similar entries: the 2-norm is ~7x the largest entry, so another norm stops later)
    c = np.linspace(0.5, 3.0, 50)

    def fun(x):
        return 0.5 * float(c @ (x * x)), c * x

    gtol = 1e-3
    opts = {"lr": 0.3, "gtol": gtol, "maxiter": 10**5}
    res = lp.minimize(fun, np.ones(50), "adagrad", options=opts)
    xs = reference_iterates(fun, np.ones(50), pc.adagrad(), 0.3, res.nit)
    gmax = [np.max(np.abs(fun(x)[1])) for x in xs]
    assert res.success and gmax[-1] <= gtol and all(v > gtol for v in gmax[:-1])


def test_ftol_stops_on_relative_reduction():
    # f constant: the first step changes f by 0 <= ftol * max(|f|, 1): stop after one step
    res = lp.minimize(
        lambda x: (5.0, np.ones_like(x)), np.zeros(2), "adam", options={"ftol": 1e-9, "lr": 0.1}
    )
    assert res.success and res.status == 0 and res.nit == 1 and "ftol" in res.message
    # ftol = 0 (default) is off
    res = lp.minimize(
        lambda x: (5.0, np.ones_like(x)), np.zeros(2), "adam", options={"maxiter": 4, "lr": 0.1}
    )
    assert res.nit == 4 and res.status == 1


def test_jac_callable_and_args(rng):
    A, b, fun = least_squares(rng)

    def f_only(x, scale):
        return scale * fun(x)[0]

    def jac(x, scale):
        return scale * fun(x)[1]

    opts = {"lr": 0.1, "maxiter": 9, "gtol": 0.0}
    res = lp.minimize(f_only, np.zeros(4), "adagrad", jac=jac, args=(2.0,), options=opts)
    ref = lp.minimize(
        lambda x, s: (f_only(x, s), jac(x, s)), np.zeros(4), "adagrad", args=(2.0,), options=opts
    )
    assert np.array_equal(res.x, ref.x) and res.fun == ref.fun
    assert res.nfev == res.njev == 10


def test_integer_and_list_x0_become_float64():
    res = lp.minimize(
        lambda x: (0.5 * float(x @ x), x.copy()),
        [1, 2],
        "adagrad",
        options={"maxiter": 2, "gtol": 0.0},
    )
    assert res.x.dtype == np.float64 and res.x.shape == (2,)


@pytest.mark.parametrize("method", ["adadiag", "asgo", "adagrad", "adam", "full_matrix_adagrad"])
def test_matrix_x0_keeps_its_shape(rng, method):
    A = rng.standard_normal((20, 6))
    B = rng.standard_normal((20, 3))

    def fun(W):
        assert W.shape == (6, 3)
        R = A @ W - B
        return 0.5 * float(np.sum(R * R)), A.T @ R

    W0 = np.zeros((6, 3))
    res = lp.minimize(fun, W0, method, options={"lr": 0.01, "maxiter": 5, "gtol": 0.0})
    assert res.x.shape == (6, 3) and res.jac.shape == (6, 3)
    # the preconditioner saw the matrix, not its flattening
    xs = reference_iterates(fun, W0, pc.get(method)(), 0.01, 5)
    assert np.array_equal(res.x, xs[-1])


def test_adadiag_on_a_matrix_differs_from_its_flattening(rng):
    A = rng.standard_normal((20, 6))
    B = rng.standard_normal((20, 3))

    def fun(W):
        R = A @ W.reshape(6, 3) - B
        return 0.5 * float(np.sum(R * R)), (A.T @ R).reshape(W.shape)

    opts = {"lr": 0.01, "maxiter": 5, "gtol": 0.0, "update_freq": 1}
    mat = lp.minimize(fun, np.zeros((6, 3)), "adadiag", options=opts)
    flat = lp.minimize(fun, np.zeros(18), "adadiag", options=opts)
    assert not np.allclose(mat.x.ravel(), flat.x)


def test_torch_x0_gives_torch_result_equal_to_numpy(rng):
    torch = pytest.importorskip("torch")
    A, b, fun = least_squares(rng)
    At, bt = torch.asarray(A), torch.asarray(b)

    def fun_t(x):
        r = At @ x - bt
        return 0.5 * (r @ r), At.T @ r

    # an elementwise method, so that only the objective's BLAS rounding differs (a dense eigh
    # per step, as in full-matrix AdaGrad, would add LAPACK-dependent rounding)
    opts = {"lr": 0.1, "maxiter": 25, "gtol": 0.0}
    res_t = lp.minimize(fun_t, torch.zeros(4, dtype=torch.float64), "adagrad", options=opts)
    res_n = lp.minimize(fun, np.zeros(4), "adagrad", options=opts)
    assert isinstance(res_t.x, torch.Tensor) and res_t.x.dtype == torch.float64
    np.testing.assert_allclose(res_t.x.numpy(), res_n.x, rtol=1e-12, atol=1e-14)
    assert isinstance(res_t.fun, float) and res_t.nit == 25


# --------------------------------------------------------------------------- callbacks


def test_callback_stop_iteration_stops_at_that_iteration(rng):
    _, _, fun = least_squares(rng)
    seen = []

    def callback(intermediate_result):
        seen.append(intermediate_result.nit)
        assert set(intermediate_result) >= {"x", "fun", "jac", "nit"}
        assert intermediate_result.fun == fun(intermediate_result.x)[0]
        if intermediate_result.nit == 3:
            raise StopIteration

    res = lp.minimize(fun, np.zeros(4), "adagrad", options={"gtol": 0.0}, callback=callback)
    assert seen == [1, 2, 3]
    assert res.nit == 3 and res.nfev == 4 and res.status == 99 and not res.success
    assert res.message == "`callback` raised `StopIteration`."
    xs = reference_iterates(fun, np.zeros(4), pc.adagrad(), DEFAULT_LR["adagrad"], 3)
    assert np.array_equal(res.x, xs[-1])


def test_legacy_callback_receives_x(rng):
    _, _, fun = least_squares(rng)
    got = []
    lp.minimize(
        fun,
        np.zeros(4),
        "adam",
        options={"maxiter": 3, "gtol": 0.0},
        callback=lambda xk: got.append(xk),
    )
    assert len(got) == 3 and all(isinstance(x, np.ndarray) and x.shape == (4,) for x in got)


# --------------------------------------------------------------------------- non-finite


def test_nan_objective_stops_with_last_finite_iterate():
    calls = []

    def fun(x):
        calls.append(x)
        if len(calls) == 4:  # the 3rd step lands on NaN
            return float("nan"), np.full_like(x, np.nan)
        return 0.5 * float(x @ x), x.copy()

    res = lp.minimize(fun, np.ones(3), "adagrad", options={"gtol": 0.0})
    assert not res.success and res.status == 3 and "finite" in res.message
    assert res.nit == 2 and res.nfev == 4
    assert np.array_equal(res.x, calls[2]) and np.all(np.isfinite(res.x))
    assert np.isfinite(res.fun)


def test_inf_gradient_and_nan_at_x0():
    res = lp.minimize(lambda x: (1.0, np.array([np.inf, 0.0])), np.ones(2), "adam")
    assert res.status == 3 and res.nit == 0 and not res.success
    assert np.array_equal(res.x, np.ones(2))


def test_overflowing_step_is_rejected():
    # AdaGrad's first step has entries of size lr: -1e308 - 1e308 overflows x
    res = lp.minimize(
        lambda x: (0.0, np.ones_like(x)),
        np.full(2, -1e308),
        "adagrad",
        options={"lr": 1e308, "gtol": 0.0},
    )
    assert res.status == 3 and res.nit == 0 and np.all(np.isfinite(res.x))


# --------------------------------------------------------------------------- errors


def test_unknown_option_is_named(rng):
    _, _, fun = least_squares(rng)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['learning_rate'\]"):
        lp.minimize(fun, np.zeros(4), "adam", options={"learning_rate": 0.1})
    with pytest.raises(ValueError, match=r"\['rank'\] for method 'adagrad'"):
        lp.minimize(fun, np.zeros(4), "adagrad", options={"rank": 3})


def test_unknown_method_lists_valid_ones(rng):
    _, _, fun = least_squares(rng)
    with pytest.raises(ValueError, match="method") as exc:
        lp.minimize(fun, np.zeros(4), "bfgs")
    for name in pc.METHODS:
        assert name in str(exc.value)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("lr", 0.0),
        ("lr", -1.0),
        ("maxiter", -1),
        ("gtol", -1e-3),
        ("ftol", float("nan")),
        ("weight_decay", -0.1),
    ],
)
def test_bad_option_values_are_named(rng, option, value):
    _, _, fun = least_squares(rng)
    with pytest.raises(ValueError, match=option):
        lp.minimize(fun, np.zeros(4), "adagrad", options={option: value})


def test_factory_errors_pass_through(rng):
    _, _, fun = least_squares(rng)
    with pytest.raises(ValueError, match="eps"):
        lp.minimize(fun, np.zeros(4), "adagrad", options={"eps": -1.0})


def test_jac_false_is_refused(rng):
    _, _, fun = least_squares(rng)
    with pytest.raises(ValueError, match="jac"):
        lp.minimize(lambda x: fun(x)[0], np.zeros(4), "adagrad", jac=False)
    with pytest.raises(TypeError, match="pair"):
        lp.minimize(lambda x: fun(x)[0], np.zeros(4), "adagrad", jac=True)


def test_every_method_has_a_default_lr_and_resolves():
    assert set(DEFAULT_LR) == set(pc.METHODS)
    for name in pc.METHODS:
        pre, settings = resolve_options(name, required_options(name) or None)
        assert pre.name == name and settings["lr"] == DEFAULT_LR[name]
        assert set(settings) == set(DRIVER_OPTIONS)


def test_a_ready_preconditioner_is_accepted(rng):
    _, _, fun = least_squares(rng)
    res = lp.minimize(
        fun, np.zeros(4), pc.adam(betas=(0.5, 0.9)), options={"lr": 0.1, "maxiter": 4, "gtol": 0.0}
    )
    xs = reference_iterates(fun, np.zeros(4), pc.adam(betas=(0.5, 0.9)), 0.1, 4)
    assert np.array_equal(res.x, xs[-1])
    with pytest.raises(ValueError, match="betas"):
        lp.minimize(fun, np.zeros(4), pc.adam(), options={"betas": (0.5, 0.9)})


# --------------------------------------------------------------------------- scipy plug-in


def vector_options(name):
    """A truncating rank 2 where the method has a rank (adamgram: its required exact rank)."""
    if required_options(name):
        return required_options(name)
    return {"rank": 2} if "rank" in inspect.signature(pc.get(name)).parameters else {}


@pytest.mark.parametrize("name", pc.METHODS)
def test_scipy_method_equals_minimize(rng, name):
    _, _, fun = least_squares(rng, d=5)
    x0 = rng.standard_normal(5)
    opts = {"lr": 0.05, "maxiter": 12, "gtol": 0.0, **vector_options(name)}
    ref = lp.minimize(fun, x0, name, options=opts)
    res = scipy.optimize.minimize(fun, x0, jac=True, method=lp.scipy_method(name, **opts))
    assert np.array_equal(res.x, ref.x)
    assert res.fun == ref.fun and np.array_equal(res.jac, ref.jac)
    assert (res.nit, res.nfev, res.njev, res.status) == (ref.nit, ref.nfev, ref.njev, ref.status)


def test_scipy_method_options_tol_and_callback(rng):
    _, _, fun = least_squares(rng)
    method = lp.scipy_method("adagrad", lr=0.1, maxiter=5)
    # options given to scipy override those of scipy_method
    res = scipy.optimize.minimize(
        fun, np.zeros(4), jac=True, method=method, options={"maxiter": 3, "gtol": 0.0}
    )
    assert res.nit == 3
    # tol -> gtol
    res = scipy.optimize.minimize(fun, np.zeros(4), jac=True, method=method, tol=1e300)
    assert res.nit == 0 and res.success

    def stop(intermediate_result):
        if intermediate_result.nit == 2:
            raise StopIteration

    res = scipy.optimize.minimize(
        fun, np.zeros(4), jac=True, method=method, options={"gtol": 0.0}, callback=stop
    )
    assert res.nit == 2 and res.status == 99 and not res.success


def test_scipy_method_errors(rng):
    _, _, fun = least_squares(rng)
    with pytest.raises(ValueError, match="learning_rate"):
        lp.scipy_method("adam", learning_rate=0.1)
    with pytest.raises(ValueError, match="method"):
        lp.scipy_method("lbfgs")
    method = lp.scipy_method("adam", lr=0.1)
    with pytest.raises(ValueError, match="bounds"):
        scipy.optimize.minimize(fun, np.zeros(4), jac=True, method=method, bounds=[(0, 1)] * 4)
    with pytest.raises(ValueError, match="jac"):
        scipy.optimize.minimize(lambda x: fun(x)[0], np.zeros(4), method=method)
    with pytest.raises(ValueError, match="unknown option"):
        scipy.optimize.minimize(fun, np.zeros(4), jac=True, method=method, options={"foo": 1})
    assert repr(method) == "scipy_method('adam', lr=0.1)"


# --------------------------------------------------------------------------- GLM optima


def _sklearn_coefficients(fam, A, y, lam):
    """Coefficients then intercept (multinomial: (d+1, K) with centered intercepts)."""
    from sklearn.linear_model import LogisticRegression, PoissonRegressor, Ridge

    n = A.shape[0]
    if fam in ("logistic", "multinomial"):
        # newton-cg: the accurate solver (lbfgs stops ~1e-6 short on digits)
        m = LogisticRegression(C=1.0 / (n * lam), tol=1e-12, max_iter=10000, solver="newton-cg")
        m.fit(A, y)
        if fam == "logistic":
            return np.concatenate([m.coef_.ravel(), m.intercept_])
        return np.vstack([m.coef_.T, m.intercept_[None, :]])
    if fam == "poisson":
        m = PoissonRegressor(alpha=lam, tol=1e-12, max_iter=10000, solver="newton-cholesky")
        m.fit(A, y)
        return np.concatenate([m.coef_, [m.intercept_]])
    m = Ridge(alpha=n * lam, solver="cholesky").fit(A, y)
    return np.concatenate([m.coef_, [m.intercept_]])


def _canonical(w):
    """Softmax is invariant to adding a constant to every class's (unpenalised) intercept."""
    if w.ndim == 2:
        w = w.copy()
        w[-1] -= w[-1].mean()
    return w


# (method, lr, maxiter): a convergent method with a good lr for each data set; with
# gtol = 1e-9 each reaches the optimum to ~1e-7 relative (measured), 100x inside the test's 1e-5
GLM_SOLVERS = {
    "breast_cancer": ("full_matrix_adagrad", 2.0, 3000),
    "diabetes": ("full_matrix_adagrad", 0.5, 2000),
    "heart_scale": ("full_matrix_adagrad", 1.0, 2000),
    "randhie": ("full_matrix_adagrad", 0.5, 2000),
    "digits": ("adagrad", 1.0, 5000),  # 650 unknowns: a dense 650 x 650 eigh per step is slow
}


@pytest.mark.parametrize("name", sorted(GLM_SOLVERS))
def test_glm_optimum_matches_scikit_learn(name):
    if importlib.util.find_spec("sklearn") is None:
        pytest.skip("scikit-learn not installed: pip install 'lowrank-precond[data]'")
    from threadpoolctl import threadpool_limits

    from lowrank_precond.glm import datasets, objective

    try:
        A, y, info = datasets.load(name)
    except (FileNotFoundError, ImportError) as exc:
        pytest.skip(str(exc))
    lam = info["lam"]
    fun = objective(info["family"], A, y, lam=lam, fit_intercept=True)
    method, lr, maxiter = GLM_SOLVERS[name]
    with threadpool_limits(1):  # thousands of small BLAS calls: threads only contend
        res = lp.minimize(
            fun, fun.zeros(), method, options={"lr": lr, "maxiter": maxiter, "gtol": 1e-9}
        )
        ref = _canonical(_sklearn_coefficients(info["family"], A, y, lam))
    assert res.success, res.message
    assert res.x.shape == fun.shape
    w = _canonical(res.x)
    assert np.linalg.norm(w - ref) <= 1e-5 * np.linalg.norm(ref)


def test_a_refused_overflowing_step_ends_with_status_3_not_an_exception():
    """A finite gradient whose square overflows is refused by the preconditioner; minimize
    reports it (status 3, the last finite iterate) instead of raising."""
    x0 = np.array([1.0, 2.0])

    def fun(x):
        return float(np.sum(x**2)), np.full(2, 1e300)

    res = lp.minimize(fun, x0, method="adagrad", options={"lr": 0.1})
    assert res.status == 3 and not res.success and "refused" in res.message
    np.testing.assert_array_equal(res.x, x0)
    assert res.x is not x0
