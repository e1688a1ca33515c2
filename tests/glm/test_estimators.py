"""scikit-learn estimators of ``lowrank_precond.glm``: scikit-learn's own estimator checks,
the optimum against scikit-learn / statsmodels and a dense reference of each objective,
the scikit-learn tooling (Pipeline, GridSearchCV, cross_val_score), and the contract of
fit / partial_fit / warm_start / sample_weight / pickling, with the error paths."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

import scipy.special as sp  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression as SkLogisticRegression  # noqa: E402
from sklearn.linear_model import Ridge  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from lowrank_precond import preconditioners as pc  # noqa: E402
from lowrank_precond.glm import (  # noqa: E402
    LeastSquaresRegression,
    LogisticRegression,
    PoissonRegression,
    datasets,
)
from lowrank_precond.preconditioners.defaults import DEFAULT_METHOD  # noqa: E402

ESTIMATORS = (LogisticRegression, LeastSquaresRegression, PoissonRegression)


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """These tests never measure speed; one BLAS thread avoids oversubscribing shared cores
    (on a loaded 2-core machine the digits fit ran 7x slower with two threads)."""
    with threadpool_limits(limits=1):
        yield


# --------------------------------------------------------------------------- scikit-learn checks

#: Every check of ``check_estimator`` passes: nothing is expected to fail. (scikit-learn
#: itself skips ``check_array_api_input`` unless SCIPY_ARRAY_API=1 is set before SciPy is
#: imported; ``test_array_api_check_in_subprocess`` runs it with the variable set.)
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


# max_iter bounds the few checks whose data (features around 100, not standardized) the
# first-order methods do not solve to tol quickly; none of the checks needs convergence
# (scikit-learn's own suite runs its LogisticRegression with max_iter=5).
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(
    [cls(max_iter=300) for cls in ESTIMATORS],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_array_api_check_in_subprocess():
    """``check_array_api_input`` (NumPy namespace, dispatch on) needs SCIPY_ARRAY_API=1 at
    SciPy's import, so it runs in a fresh interpreter."""
    code = textwrap.dedent(
        """
        from sklearn.utils.estimator_checks import check_array_api_input
        from lowrank_precond.glm import (
            LeastSquaresRegression, LogisticRegression, PoissonRegression)
        for est in (LogisticRegression(), LeastSquaresRegression(), PoissonRegression()):
            check_array_api_input(type(est).__name__, est, array_namespace="numpy",
                                  expect_only_array_outputs=False)
        print("passed")
        """
    )
    env = dict(os.environ, SCIPY_ARRAY_API="1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "passed" in out.stdout, out.stderr


# --------------------------------------------------------------------------- references


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b)))


#: tol of the reference comparisons: a gradient bound that reaches 1e-4 relative agreement of
#: the coefficients on the bundled sets with the default method and step size (measured:
#: digits 6.0e-5 after 8658 steps, breast_cancer 8.7e-6, diabetes 1.7e-5, randhie 5.5e-8)
TIGHT = {"breast_cancer": 1e-7, "digits": 1e-7, "diabetes": 1e-7, "randhie": 1e-7}


@pytest.mark.parametrize("name", ["breast_cancer", pytest.param("digits", marks=pytest.mark.slow)])
def test_logistic_matches_sklearn_lbfgs(name):
    """digits (650 unknowns, about 9000 steps of 1-3 ms) is marked slow."""
    A, y, _ = datasets.load(name)
    ours = LogisticRegression(C=1.0, tol=TIGHT[name], max_iter=20000).fit(A, y)
    ref = SkLogisticRegression(C=1.0, tol=1e-12, max_iter=100000).fit(A, y)
    w = np.column_stack([ours.coef_, ours.intercept_])
    w_ref = np.column_stack([ref.coef_, ref.intercept_])
    assert _rel(w, w_ref) <= 1e-4
    np.testing.assert_array_equal(ours.classes_, ref.classes_)
    assert ours.coef_.shape == ref.coef_.shape and ours.intercept_.shape == ref.intercept_.shape
    assert np.mean(ours.predict(A) == ref.predict(A)) >= 0.999


def test_least_squares_matches_sklearn_ridge():
    A, y, _ = datasets.load("diabetes")
    ours = LeastSquaresRegression(alpha=1.0, tol=TIGHT["diabetes"]).fit(A, y)
    ref = Ridge(alpha=1.0).fit(A, y)  # exact (Cholesky): Ridge's lbfgs needs positive=True
    assert _rel(np.r_[ours.coef_, ours.intercept_], np.r_[ref.coef_, ref.intercept_]) <= 1e-4
    assert isinstance(ours.intercept_, float) and isinstance(ours.n_iter_, int)
    np.testing.assert_allclose(ours.score(A, y), ref.score(A, y), rtol=1e-6)


def test_poisson_matches_statsmodels_glm():
    sm = pytest.importorskip("statsmodels.api")
    A, y, _ = datasets.load("randhie")
    ours = PoissonRegression(alpha=0.0, tol=TIGHT["randhie"]).fit(A, y)
    ref = sm.GLM(y, sm.add_constant(A), family=sm.families.Poisson()).fit()
    assert _rel(np.r_[ours.intercept_, ours.coef_], ref.params) <= 1e-4


def _dense_objective_grad(cls, X, y, w, b, s, penalty):
    """Gradient of the scikit-learn objective of ``cls`` written out in NumPy."""
    z = X @ w.T + b
    if cls is LogisticRegression:  # C sum s_i loss_i + |W|^2 / 2, softmax over classes
        if z.shape[1] == 1:
            r = sp.expit(z[:, 0]) - y
            r = r[:, None]
        else:
            r = sp.softmax(z, axis=1) - np.eye(z.shape[1])[y]
        gw = penalty * (s[:, None] * r).T @ X + w
        gb = penalty * (s[:, None] * r).sum(axis=0)
    elif cls is LeastSquaresRegression:  # sum s_i r_i^2 + alpha |w|^2
        r = z[:, 0] - y
        gw = (2 * (s * r) @ X + 2 * penalty * w[0])[None]
        gb = np.array([2 * np.sum(s * r)])
    else:  # sum s_i (exp z - y z) / sum s + alpha |w|^2 / 2
        r = np.exp(z[:, 0]) - y
        gw = ((s * r) @ X / s.sum() + penalty * w[0])[None]
        gb = np.array([np.sum(s * r) / s.sum()])
    return gw, gb


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("cls", ESTIMATORS)
def test_optimum_zeroes_the_dense_objective_gradient(cls, n_classes, rng):
    """The fit is a stationary point of scikit-learn's objective, penalty scaling and
    weights included (written out here, independently of the library and of sklearn)."""
    if cls is not LogisticRegression and n_classes == 3:
        pytest.skip("regressors have one output")
    X = rng.standard_normal((60, 4))
    s = rng.uniform(0.5, 2.0, 60)
    if cls is LogisticRegression:
        y = rng.integers(0, n_classes, 60)
    elif cls is LeastSquaresRegression:
        y = X @ [1.0, -1.0, 0.5, 0.0] + rng.standard_normal(60)
    else:
        y = rng.poisson(np.exp(0.3 * X[:, 0])).astype(float)
    penalty = 0.7
    est = cls(C=penalty, tol=1e-10) if cls is LogisticRegression else cls(alpha=penalty, tol=1e-10)
    est.fit(X, y, sample_weight=s)
    w = np.atleast_2d(est.coef_)
    b = np.atleast_1d(est.intercept_)
    gw, gb = _dense_objective_grad(cls, X, y, w, b, s, penalty)
    scale = 1.0 if cls is PoissonRegression else 60.0  # sum-scaled objectives
    assert np.max(np.abs(gw)) <= 1e-7 * scale and np.max(np.abs(gb)) <= 1e-7 * scale


# --------------------------------------------------------------------------- sklearn tooling


def test_pipeline_grid_search_and_cross_val_score():
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)  # raw features: the pipeline standardizes
    pipe = make_pipeline(StandardScaler(), LogisticRegression())
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.9
    grid = GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0]}, cv=3).fit(X, y)
    assert grid.best_params_["logisticregression__C"] in (0.1, 1.0)
    assert grid.score(X, y) > 0.95
    ref = make_pipeline(StandardScaler(), SkLogisticRegression()).fit(X, y)
    fitted = pipe.fit(X, y)
    assert np.mean(fitted.predict(X) == ref.predict(X)) > 0.99


def test_not_converged_warns_convergence_warning():
    A, y, _ = datasets.load("breast_cancer")
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        est = LogisticRegression(max_iter=3).fit(A, y)
    assert est.n_iter_.tolist() == [3]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = LogisticRegression().fit(A, y)  # the defaults converge on the bundled set
    assert 0 < est.n_iter_[0] < 2000


#: step sizes for the every-method test where DEFAULT_LR is too small for 3000 steps here
FAST_LR = {"adagram": 0.3, "adamgram": 0.1}


def test_default_method_and_every_method_fits(rng):
    assert LogisticRegression().method == DEFAULT_METHOD
    X = rng.standard_normal((80, 3))
    y = X @ [1.0, -2.0, 0.5] + 1.0
    ref = Ridge(alpha=1.0).fit(X, y)
    for method in pc.METHODS:
        lr = FAST_LR.get(method)
        est = LeastSquaresRegression(method=method, lr=lr, tol=1e-6, max_iter=3000).fit(X, y)
        assert _rel(est.coef_, ref.coef_) <= 1e-5, method
    est = LeastSquaresRegression(rank=2, tol=1e-6).fit(X, y)  # sketched AdaGrad at rank 2
    assert est._solver()[0].hyperparams["rank"] == 2
    assert _rel(est.coef_, ref.coef_) <= 1e-5
    ready = pc.full_matrix_adagrad(eps=1e-8)
    est = LeastSquaresRegression(method=ready, lr=0.3, tol=1e-6).fit(X, y)
    assert _rel(est.coef_, ref.coef_) <= 1e-4


def test_no_intercept(rng):
    X = rng.standard_normal((50, 3))
    y = X @ [1.0, 2.0, 3.0] + 5.0
    est = LeastSquaresRegression(fit_intercept=False, tol=1e-10).fit(X, y)
    ref = Ridge(fit_intercept=False).fit(X, y)
    assert est.intercept_ == 0.0 and _rel(est.coef_, ref.coef_) <= 1e-6
    yc = rng.integers(0, 3, 50)
    clf = LogisticRegression(fit_intercept=False, tol=1e-10).fit(X, yc)
    ref = SkLogisticRegression(fit_intercept=False, tol=1e-12).fit(X, yc)
    assert np.array_equal(clf.intercept_, np.zeros(3)) and _rel(clf.coef_, ref.coef_) <= 1e-6


def test_multinomial_string_labels_and_probabilities(rng):
    X = rng.standard_normal((90, 2))
    labels = np.array(["cat", "dog", "emu"])[np.argmax(X @ [[1, -1, 0], [0, 1, -1]], axis=1)]
    est = LogisticRegression(C=1.0).fit(X, labels)
    assert est.classes_.tolist() == ["cat", "dog", "emu"]
    P = est.predict_proba(X)
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.log(P), est.predict_log_proba(X), atol=1e-12)
    assert np.array_equal(est.predict(X), est.classes_[P.argmax(axis=1)])
    assert est.score(X, labels) > 0.9
    np.testing.assert_allclose(est.coef_.sum(axis=0), 0.0, atol=1e-12)  # the zero-sum one
    np.testing.assert_allclose(est.intercept_.sum(), 0.0, atol=1e-12)


# --------------------------------------------------------------------------- fit contract


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_integer_sample_weight_equals_repeated_rows(cls, rng):
    X = rng.standard_normal((30, 3))
    y = _targets(cls, X, rng)
    k = rng.integers(0, 4, 30)
    k[:3] = (0, 1, 2)
    weighted = cls(tol=1e-10).fit(X, y, sample_weight=k)
    repeated = cls(tol=1e-10).fit(np.repeat(X, k, axis=0), np.repeat(y, k))
    np.testing.assert_allclose(weighted.coef_, repeated.coef_, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(weighted.intercept_, repeated.intercept_, rtol=1e-7, atol=1e-10)


def _targets(cls, X, rng):
    if cls is LogisticRegression:
        return (X[:, 0] + 0.5 * rng.standard_normal(len(X)) > 0).astype(int)
    if cls is PoissonRegression:
        return rng.poisson(np.exp(0.5 * X[:, 0])).astype(float)
    return X @ np.arange(1.0, X.shape[1] + 1) + rng.standard_normal(len(X))


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_warm_start_resumes_solution_and_state(cls, rng):
    X = rng.standard_normal((40, 3))
    y = _targets(cls, X, rng)
    est = cls(tol=1e-8, warm_start=True).fit(X, y)
    first = est.coef_.copy()
    est.fit(X, y)  # already converged: no step needed
    assert np.ravel(est.n_iter_)[0] == 0
    np.testing.assert_array_equal(est.coef_, first)
    est.set_params(tol=1e-10).fit(X, y)  # a few more steps from there
    cold = cls(tol=1e-10).fit(X, y)
    assert np.ravel(est.n_iter_)[0] < np.ravel(cold.n_iter_)[0]
    np.testing.assert_allclose(est.coef_, cold.coef_, rtol=1e-6, atol=1e-9)
    again = cls(tol=1e-10).fit(X, y)  # warm_start=False: every fit starts afresh
    again.fit(X, y)
    np.testing.assert_array_equal(again.coef_, cold.coef_)


def test_partial_fit_repeated_converges_to_fit(rng):
    X = rng.standard_normal((60, 3))
    y = X @ [1.0, -1.0, 2.0] + 0.5
    est = LeastSquaresRegression()
    for _ in range(400):
        est.partial_fit(X, y)
    ref = LeastSquaresRegression(tol=1e-10).fit(X, y)
    assert est.n_iter_ == 1 and _rel(est.coef_, ref.coef_) <= 1e-6


def test_partial_fit_streams_minibatches_and_missing_classes(rng):
    A, y, _ = datasets.load("digits", split="train")
    A_te, y_te, _ = datasets.load("digits", split="test")
    est = LogisticRegression(batch_size=64, random_state=0)
    classes = np.arange(10)
    for epoch in range(3):
        for rows in np.array_split(rng.permutation(len(y)), 10):
            chunk = rows[y[rows] != 9] if epoch == 0 else rows  # class 9 arrives late
            est.partial_fit(A[chunk], y[chunk], classes=classes)
    assert est.coef_.shape == (10, 64) and est.score(A_te, y_te) > 0.9
    with pytest.raises(ValueError, match=r"classes: \[0, 1\] differs"):
        est.partial_fit(A[:5], y[:5], classes=[0, 1])
    with pytest.raises(ValueError, match=r"y: labels \[10\] are not in classes_"):
        est.partial_fit(A[:2], np.array([1, 10]))
    with pytest.raises(ValueError, match="X has 3 features"):
        est.partial_fit(A[:5, :3], y[:5])


def test_minibatch_fit_is_seeded_and_converges(rng):
    A, y, _ = datasets.load("breast_cancer")
    kwargs = dict(batch_size=64, tol=1e-3, max_iter=200)
    a = LogisticRegression(random_state=0, **kwargs).fit(A, y)
    b = LogisticRegression(random_state=0, **kwargs).fit(A, y)
    c = LogisticRegression(random_state=1, **kwargs).fit(A, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert not np.array_equal(a.coef_, c.coef_)
    full = LogisticRegression(tol=1e-8).fit(A, y)
    assert a.n_iter_[0] < 200 and _rel(a.coef_, full.coef_) < 0.05


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_pickle_round_trip_predicts_and_resumes(cls, rng):
    X = rng.standard_normal((40, 3))
    y = _targets(cls, X, rng)
    est = cls(warm_start=True).fit(X, y)
    clone = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(clone.predict(X), est.predict(X))
    clone.set_params(tol=1e-9).fit(X, y)
    est.set_params(tol=1e-9).fit(X, y)
    np.testing.assert_array_equal(clone.coef_, est.coef_)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("est", "exc", "match"),
    [
        (LogisticRegression(C=-1.0), ValueError, r"C: must be > 0 .*got -1\.0"),
        (LogisticRegression(C="1"), TypeError, r"C: expected a real number, got '1'"),
        (LeastSquaresRegression(alpha=-2), ValueError, r"alpha: must be finite and >= 0, got -2"),
        (PoissonRegression(alpha=np.nan), ValueError, r"alpha: must be finite and >= 0, got nan"),
        (LogisticRegression(method="lbfgs"), ValueError, r"method: unknown method 'lbfgs'"),
        (LogisticRegression(method="adagrad", rank=3), ValueError, r"rank: method 'adagrad'"),
        (LogisticRegression(rank=0), ValueError, r"rank: must be >= 1, got 0"),
        (LogisticRegression(lr=0.0), ValueError, r"lr: must be finite and > 0, got 0\.0"),
        (LogisticRegression(max_iter=0), ValueError, r"max_iter: must be >= 1, got 0"),
        (LogisticRegression(max_iter=2.5), TypeError, r"max_iter: expected an integer, got 2\.5"),
        (LogisticRegression(tol=-1e-3), ValueError, r"tol: must be finite and >= 0, got -0\.001"),
        (LogisticRegression(batch_size=0), ValueError, r"batch_size: must be >= 1, got 0"),
        (LogisticRegression(fit_intercept="no"), TypeError, r"fit_intercept: expected a bool"),
        (LogisticRegression(warm_start=1), TypeError, r"warm_start: expected a bool, got 1"),
    ],
)
def test_bad_parameters_name_argument_and_value(est, exc, match, rng):
    X = rng.standard_normal((20, 2))
    y = np.arange(20) % 2
    with pytest.raises(exc, match=match):
        est.fit(X, y)


def test_bad_data_errors(rng):
    X = rng.standard_normal((20, 2))
    y = np.arange(20) % 2
    with pytest.raises(ValueError, match=r"sample_weight: must be >= 0, got a minimum of -1"):
        LogisticRegression().fit(X, y, sample_weight=np.r_[-1.0, np.ones(19)])
    with pytest.raises(ValueError, match=r"sample_weight: expected shape \(20,\)"):
        LogisticRegression().fit(X, y, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="sample_weight: the weights are all zero"):
        LeastSquaresRegression().fit(X, y, sample_weight=np.zeros(20))
    with pytest.raises(ValueError, match="y: LogisticRegression needs samples of at least 2"):
        LogisticRegression().fit(X, np.ones(20))
    with pytest.raises(ValueError, match="y: poisson counts must be >= 0"):
        PoissonRegression().fit(X, -np.ones(20))
    with pytest.raises(ValueError, match="classes: required on the first call"):
        LogisticRegression().partial_fit(X, y)
    with pytest.raises(ValueError, match=r"lr: the iteration diverged with lr=1e\+200"):
        LeastSquaresRegression(method="adam", lr=1e200).fit(X * 1e100, y)


# --------------------------------------------------------------------------- docs


def _python_blocks(path):
    """The ``.. code-block:: python`` bodies of an rst file, dedented."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == ".. code-block:: python":
            i += 1
            body = []
            while i < len(lines) and (lines[i].startswith("   ") or not lines[i].strip()):
                body.append(lines[i][3:])
                i += 1
            blocks.append("\n".join(body).strip("\n") + "\n")
        else:
            i += 1
    return blocks


FROM_SKLEARN = _python_blocks(Path(__file__).resolve().parents[2] / "docs" / "from_sklearn.rst")


@pytest.mark.parametrize("code", FROM_SKLEARN, ids=[f"block{i}" for i in range(len(FROM_SKLEARN))])
def test_from_sklearn_page_examples_run(code):
    """Every example of docs/from_sklearn.rst runs as written and prints its result."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(code, "from_sklearn.rst", "exec"), {"__name__": "__docs__"})
    assert out.getvalue().strip()


def test_from_sklearn_page_in_toctree():
    index = (Path(__file__).resolve().parents[2] / "docs" / "index.rst").read_text("utf-8")
    assert "   from_sklearn" in index.splitlines()
