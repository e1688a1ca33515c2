"""scikit-learn estimators for the GLM families, fitted by :func:`lowrank_precond.minimize`.

:class:`LogisticRegression`, :class:`LeastSquaresRegression` and :class:`PoissonRegression`
take the penalty of their scikit-learn counterparts (``LogisticRegression``, ``Ridge``,
``PoissonRegressor``), named and scaled the same way, and minimize the same objective with a
preconditioned gradient method of :mod:`lowrank_precond.preconditioners` instead of L-BFGS:

==========================  =================================================================
estimator                   objective (``s`` sample weights, ``S = sum s``)
==========================  =================================================================
``LogisticRegression``      ``C sum_i s_i loss_i + |coef|^2 / 2``
``LeastSquaresRegression``  ``sum_i s_i (y_i - z_i)^2 + alpha |coef|^2``
``PoissonRegression``       ``sum_i s_i deviance_i / (2 S) + alpha |coef|^2 / 2``
==========================  =================================================================

Each is run as the :func:`lowrank_precond.glm.objective` of its family, the objective above
divided by a positive constant: ``F(w) = sum_i s_i loss_i / S + lam/2 |coef|^2`` with
``lam = 1 / (C S)``, ``alpha / S`` and ``alpha`` respectively (the intercept is never
penalised). ``tol`` bounds ``max|grad F|``, the gradient that scikit-learn's L-BFGS solver
tests against its own ``tol``. Theory: :ref:`theory-glm-losses`.

The classes live here, above :mod:`lowrank_precond.glm` in the package layers, because they
call :func:`~lowrank_precond.optim.scipy.minimize`; ``lowrank_precond.glm`` re-exports them
lazily. They need scikit-learn (the ``data`` extra).
"""

from __future__ import annotations

import inspect
import numbers
import warnings
from typing import Any

import numpy as np
import scipy.special
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import d2_tweedie_score
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from lowrank_precond import preconditioners as pc
from lowrank_precond.backends import check_int, check_positive
from lowrank_precond.glm import Objective, family, objective
from lowrank_precond.optim.scipy import minimize, resolve_options
from lowrank_precond.preconditioners.base import Preconditioner
from lowrank_precond.preconditioners.defaults import DEFAULT_METHOD

__all__ = ["LeastSquaresRegression", "LogisticRegression", "PoissonRegression"]

_SEED_BOUND = np.iinfo(np.int32).max

_SOLVER_PARAMETERS = """fit_intercept : bool, default True
        Fit an unpenalised intercept.
    method : str or Preconditioner, default "sketched_adagrad"
        The preconditioner: ``DEFAULT_METHOD`` of
        :mod:`lowrank_precond.preconditioners.defaults` (sketched full-matrix AdaGrad, the
        recommended method), any name in :data:`lowrank_precond.preconditioners.METHODS`,
        or a ready :class:`~lowrank_precond.preconditioners.Preconditioner`.
    rank : int or None, default None
        Rank of the low-rank methods (``"adagram"``, ``"adamgram"``,
        ``"sketched_adagrad"``); ``None`` keeps the method's default (5), or is passed on
        as ``rank=None`` to a factory without a default rank (``"adamgram"``: its exact,
        unbounded form). A rank for a method without one raises ``ValueError``.
    lr : float or None, default None
        Step size; ``None`` takes :data:`lowrank_precond.optim.scipy.DEFAULT_LR` of the
        method (1.0 for ``"sketched_adagrad"``).
    max_iter : int, default 2000
        Maximum number of epochs (passes over the data): steps for full batch,
        ``max_iter * ceil(n / batch_size)`` minibatch steps otherwise.
    tol : float, default 1e-4
        Converged when ``max|grad F| <= tol`` for the full-batch gradient of the scaled
        objective ``F`` of the module docstring (tested every step for full batch, after
        every epoch with minibatches); 0 never stops early. Not converging within
        ``max_iter`` warns with ``sklearn.exceptions.ConvergenceWarning``.
    batch_size : int or None, default None
        ``None``: full batch (deterministic). Otherwise minibatches of
        ``min(batch_size, n)`` rows, each epoch a fresh permutation.
    random_state : int, RandomState instance or None, default None
        Seeds the minibatch sampler (not used for full batch).
    warm_start : bool, default False
        ``fit`` starts from the previous solution and keeps the preconditioner's state
        (when the method and the shape of the coefficients are unchanged); otherwise it
        starts from zero with a fresh state."""

_SOLVER_ATTRIBUTES = """n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (``n_features_in_``,)
        Feature names, defined only when ``X`` had string column names."""

_STREAMING = """``partial_fit`` takes one epoch (one step for full batch) on the chunk it is given,
    continuing from the current coefficients and preconditioner state; the chunk's objective
    is the one ``fit`` would minimize on that chunk alone (the penalty scaled by the chunk's
    weight), so repeated ``partial_fit(X, y)`` on the same data converges to ``fit(X, y)``."""


def _doc(cls: type) -> type:
    cls.__doc__ = (
        (cls.__doc__ or "")
        .replace("%(solver_parameters)s", _SOLVER_PARAMETERS)
        .replace("%(solver_attributes)s", _SOLVER_ATTRIBUTES)
        .replace("%(streaming)s", _STREAMING)
    )
    return cls


class _StatefulPreconditioner:
    """``pre`` whose ``init`` resumes ``state`` (when not None) and whose ``update`` records
    the newest state, so that it survives between calls of :func:`minimize`."""

    def __init__(self, pre: Preconditioner, state: Any) -> None:
        self.pre = pre
        self.state = state

    def preconditioner(self) -> Preconditioner:
        def init(x: Any) -> Any:
            return self.pre.init(x) if self.state is None else self.state

        def update(g: Any, state: Any) -> tuple[Any, Any]:
            direction, self.state = self.pre.update(g, state)
            return direction, self.state

        return Preconditioner(self.pre.name, init, update, self.pre.hyperparams)


def _factory_params(method: Any) -> dict[str, inspect.Parameter]:
    """Parameters of the factory of ``method`` (none for a ready Preconditioner)."""
    if isinstance(method, Preconditioner):
        return {}
    if not isinstance(method, str) or method not in pc.METHODS:
        resolve_options(method, None)  # raises the library's ValueError naming `method`
    return dict(inspect.signature(pc.get(method)).parameters)


def _as_weights(sample_weight: Any, n: int) -> np.ndarray | None:
    if sample_weight is None:
        return None
    sw = np.asarray(sample_weight, dtype=np.float64)
    return np.full(n, float(sw)) if sw.ndim == 0 else sw


class _GLM(BaseEstimator):
    """What the three estimators share: checks, the objective, the solver loop, warm starts.

    A subclass defines ``_lam(penalty, weight_sum)``, ``_set_solution(w, fun)`` and
    ``_solution()`` (and ``_check_penalty`` when its penalty is not ``alpha``).
    """

    # ---- parameters --------------------------------------------------------------------

    def _check_penalty(self) -> float:
        return check_positive("alpha", self.alpha, allow_zero=True)

    def _solver(self) -> tuple[Preconditioner, float]:
        """Validate the solver parameters; return the preconditioner and the step size."""
        for name in ("fit_intercept", "warm_start"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name}: expected a bool, got {value!r}")
        check_int("max_iter", self.max_iter, minimum=1)
        check_positive("tol", self.tol, allow_zero=True)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, minimum=1)
        options: dict[str, Any] = {}
        if self.lr is not None:
            options["lr"] = self.lr
        if self.rank is not None:
            check_int("rank", self.rank, minimum=1)
            if "rank" not in _factory_params(self.method):
                name = self.method.name if isinstance(self.method, Preconditioner) else None
                ranked = [m for m in pc.METHODS if "rank" in _factory_params(m)]
                raise ValueError(
                    f"rank: method {name or self.method!r} has no rank, got rank={self.rank!r} "
                    f"(use rank=None, or a method among {ranked})"
                )
            options["rank"] = self.rank
        else:
            rank = _factory_params(self.method).get("rank")
            if rank is not None and rank.default is inspect.Parameter.empty:
                options["rank"] = None  # a factory without a default rank (adamgram)
        pre, settings = resolve_options(self.method, options)
        return pre, settings["lr"]

    # ---- fitting -----------------------------------------------------------------------

    def _objective(self, X: np.ndarray, y: Any, fam: Any, sample_weight: Any, rng: Any):
        """The scaled objective ``F`` of ``(X, y)``: the family's weighted mean loss plus
        ``lam/2 |coef|^2`` with ``lam`` from the penalty and the weight sum."""
        penalty = self._check_penalty()
        sw = _as_weights(sample_weight, X.shape[0])
        weight_sum = float(X.shape[0]) if sw is None else float(np.sum(sw))
        # a zero, negative or NaN weight sum is refused by `objective`, naming sample_weight
        lam = self._lam(penalty, weight_sum) if weight_sum > 0 else 0.0
        batch = None if self.batch_size is None else min(int(self.batch_size), X.shape[0])
        return objective(
            fam,
            X,
            y,
            lam=lam,
            batch_size=batch,
            rng=rng,
            fit_intercept=bool(self.fit_intercept),
            sample_weight=sw,
        )

    def _run(self, fun: Objective, steps: int, tol: float, warm: bool) -> tuple[int, bool]:
        """Run :func:`minimize` for at most ``steps`` steps, from the current solution and
        preconditioner state when ``warm`` (and they fit), else from zero; store the result.
        Returns ``(steps taken, converged)``."""
        pre, lr = self._solver()
        key = (repr(pre), fun.shape)
        x0, state = fun.zeros(), None
        if warm and hasattr(self, "coef_"):
            w = self._solution()
            if w.shape == fun.shape:
                x0 = w
                if getattr(self, "_solver_key", None) == key:
                    state = self._solver_state
        holder = _StatefulPreconditioner(pre, state)
        options = {"lr": lr, "maxiter": steps, "gtol": tol}
        callback = None
        if fun.stochastic:
            # a minibatch gradient is noisy: test the full gradient after every epoch
            options["gtol"] = 0.0
            full, every = fun.full(), fun.batches_per_epoch

            def callback(intermediate_result: Any) -> None:
                if tol > 0 and intermediate_result.nit % every == 0:
                    _, g = full(intermediate_result.x)
                    if float(np.max(np.abs(g))) <= tol:
                        raise StopIteration

        with np.errstate(over="ignore", invalid="ignore"):  # a divergence is status 3 below
            res = minimize(
                fun, x0, method=holder.preconditioner(), options=options, callback=callback
            )
        if res.status == 3:
            raise ValueError(
                f"lr: the iteration diverged with lr={lr!r} ({res.message}) Lower lr, or "
                "standardize the features (e.g. with sklearn's StandardScaler)."
            )
        self._solver_key, self._solver_state = key, holder.state
        self._set_solution(np.asarray(res.x), fun)
        return int(res.nit), res.status in (0, 99)  # 99: the epoch-end test stopped it

    def _fit(self, X: np.ndarray, y: Any, fam: Any, sample_weight: Any) -> None:
        self._solver()  # parameter errors before any work
        seed = int(check_random_state(self.random_state).randint(_SEED_BOUND))
        fun = self._objective(X, y, fam, sample_weight, seed)
        per_epoch = fun.batches_per_epoch
        nit, converged = self._run(fun, self.max_iter * per_epoch, float(self.tol), self.warm_start)
        self._set_n_iter(-(-nit // per_epoch))
        self._partial_calls = 0
        if not converged:
            warnings.warn(
                f"{type(self).__name__} did not converge within max_iter={self.max_iter} "
                f"epochs (tol={self.tol!r} on max|grad|). Increase max_iter, or standardize "
                "the features (e.g. with sklearn's StandardScaler).",
                ConvergenceWarning,
                stacklevel=3,
            )

    def _partial_fit(self, X: np.ndarray, y: Any, fam: Any, sample_weight: Any) -> None:
        self._solver()
        calls = getattr(self, "_partial_calls", 0)
        if calls == 0:
            seed = check_random_state(self.random_state).randint(_SEED_BOUND)
            self._partial_seed = int(seed)
        rng = np.random.default_rng([self._partial_seed, calls])
        fun = self._objective(X, y, fam, sample_weight, rng)
        self._run(fun, fun.batches_per_epoch, 0.0, warm=True)
        self._set_n_iter(1)
        self._partial_calls = calls + 1

    def _set_n_iter(self, epochs: int) -> None:
        self.n_iter_ = int(epochs)

    def _linear(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.coef_.T + self.intercept_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


class _Regressor(RegressorMixin, _GLM):
    """``coef_`` ``(d,)`` and a float ``intercept_``; ``w`` is the vector ``(d [+ 1],)``."""

    _family = "least_squares"

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        fit_intercept: bool = True,
        method: str | Preconditioner = DEFAULT_METHOD,
        rank: int | None = None,
        lr: float | None = None,
        max_iter: int = 2000,
        tol: float = 1e-4,
        batch_size: int | None = None,
        random_state: Any = None,
        warm_start: bool = False,
    ) -> None:
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.method = method
        self.rank = rank
        self.lr = lr
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size
        self.random_state = random_state
        self.warm_start = warm_start

    def _set_solution(self, w: np.ndarray, fun: Objective) -> None:
        d = fun.n_features
        self.coef_ = w[:d].copy()
        self.intercept_ = float(w[d]) if self.fit_intercept else 0.0

    def _solution(self) -> np.ndarray:
        if self.fit_intercept:
            return np.concatenate([self.coef_, [self.intercept_]])
        return self.coef_.copy()

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> _Regressor:
        """Fit the model on ``X`` ``(n, d)`` and ``y`` ``(n,)`` (optional ``sample_weight``
        ``(n,)``); returns ``self``."""
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        self._fit(X, y, self._family, sample_weight)
        return self

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> _Regressor:
        """One epoch on the chunk ``(X, y)`` (see the class docstring); returns ``self``."""
        first = not hasattr(self, "coef_")
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True, reset=first)
        self._partial_fit(X, y, self._family, sample_weight)
        return self


@_doc
class LeastSquaresRegression(_Regressor):
    """Ridge regression (scikit-learn's ``Ridge`` objective) fitted by a preconditioned method.

    Minimizes ``sum_i s_i (y_i - x_i . coef - intercept)^2 + alpha |coef|^2`` (``s`` the
    sample weights, all 1 by default), exactly the objective and penalty scaling of
    ``sklearn.linear_model.Ridge``, run as the ``least_squares`` objective of
    :func:`lowrank_precond.glm.objective` with ``lam = alpha / sum(s)``. Theory:
    :ref:`theory-glm-losses`.

    Parameters
    ----------
    alpha : float, default 1.0
        L2 strength ``>= 0`` (on ``coef_``, never on the intercept), as in ``Ridge``.
    %(solver_parameters)s

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
        The coefficients.
    intercept_ : float
        The intercept (0.0 when ``fit_intercept=False``).
    n_iter_ : int
        Epochs run by the last ``fit`` (steps for full batch); 1 after ``partial_fit``.
    %(solver_attributes)s

    Notes
    -----
    %(streaming)s

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import Ridge
    >>> from lowrank_precond.glm import LeastSquaresRegression
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((100, 4)); y = X @ [1.0, -2.0, 0.5, 0.0] + 3.0
    >>> model = LeastSquaresRegression(alpha=1.0, tol=1e-10).fit(X, y)
    >>> ref = Ridge(alpha=1.0).fit(X, y)
    >>> bool(np.allclose(model.coef_, ref.coef_, rtol=1e-6)), round(model.intercept_, 3)
    (True, 3.0)
    """

    def _lam(self, penalty: float, weight_sum: float) -> float:
        return penalty / weight_sum

    def predict(self, X: Any) -> np.ndarray:
        """``X @ coef_ + intercept_`` for ``X`` ``(m, n_features)``; shape ``(m,)``."""
        return self._linear(X)


@_doc
class PoissonRegression(_Regressor):
    """Poisson regression (scikit-learn's ``PoissonRegressor`` objective), log link.

    Minimizes ``sum_i s_i deviance_i / (2 sum(s)) + alpha/2 |coef|^2`` with the Poisson
    deviance ``2 (y log(y / mu) - y + mu)``, ``mu = exp(x . coef + intercept)``: the
    objective and penalty scaling of ``sklearn.linear_model.PoissonRegressor``, run as the
    ``poisson`` objective of :func:`lowrank_precond.glm.objective` with ``lam = alpha``
    (the same function up to a constant). ``alpha=0`` is the unpenalised maximum-likelihood
    fit of ``statsmodels``' ``GLM(y, X, family=Poisson())``. Theory: :ref:`theory-glm-losses`.

    Parameters
    ----------
    alpha : float, default 1.0
        L2 strength ``>= 0`` (on ``coef_``, never on the intercept), as in
        ``PoissonRegressor``.
    %(solver_parameters)s

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
        The coefficients of the linear predictor.
    intercept_ : float
        Its intercept (0.0 when ``fit_intercept=False``).
    n_iter_ : int
        Epochs run by the last ``fit`` (steps for full batch); 1 after ``partial_fit``.
    %(solver_attributes)s

    Notes
    -----
    ``score`` is the fraction of Poisson deviance explained, D^2, as in
    ``PoissonRegressor``. Targets must be ``>= 0``.

    %(streaming)s

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import PoissonRegressor
    >>> from lowrank_precond.glm import PoissonRegression
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 3)); y = rng.poisson(np.exp(X @ [0.5, -0.3, 0.0]))
    >>> model = PoissonRegression(alpha=0.1, tol=1e-10).fit(X, y)
    >>> ref = PoissonRegressor(alpha=0.1, tol=1e-12).fit(X, y)
    >>> bool(np.allclose(model.coef_, ref.coef_, rtol=1e-6, atol=1e-9))
    True
    """

    _family = "poisson"

    def _lam(self, penalty: float, weight_sum: float) -> float:
        return penalty

    def predict(self, X: Any) -> np.ndarray:
        """The mean count ``exp(X @ coef_ + intercept_)`` for ``X`` ``(m, n_features)``."""
        return np.exp(self._linear(X))

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """D^2, the fraction of Poisson deviance explained (1 is perfect), as
        ``PoissonRegressor.score``."""
        return float(d2_tweedie_score(y, self.predict(X), sample_weight=sample_weight, power=1))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.positive_only = True
        return tags


@_doc
class LogisticRegression(ClassifierMixin, _GLM):
    """L2-penalised logistic regression (binary and multinomial), scikit-learn's objective.

    Minimizes ``C sum_i s_i loss_i + |coef|^2 / 2`` (``loss_i`` the log loss of row ``i``,
    ``s`` the sample weights), exactly the objective and penalty scaling of
    ``sklearn.linear_model.LogisticRegression`` with its L2 default: the binary log loss
    for two classes (``classes_[1]`` is the positive class) and the multinomial (softmax)
    loss for more. It is run as the ``logistic`` / ``multinomial`` objective of
    :func:`lowrank_precond.glm.objective` with ``lam = 1 / (C sum(s))``. Theory:
    :ref:`theory-glm-losses`.

    Parameters
    ----------
    C : float, default 1.0
        Inverse L2 strength, ``> 0``; ``numpy.inf`` means no penalty.
    %(solver_parameters)s

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels (sorted).
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
        Coefficients: one row for two classes (of ``classes_[1]``), one per class otherwise.
    intercept_ : ndarray of shape (1,) or (n_classes,)
        Intercepts (zeros when ``fit_intercept=False``).
    n_iter_ : ndarray of shape (1,)
        Epochs run by the last ``fit`` (steps for full batch); 1 after ``partial_fit``.
    %(solver_attributes)s

    Notes
    -----
    The softmax is unchanged when the same vector is added to every class's coefficients
    and intercepts; of those equivalent solutions the multinomial fit returns the one whose
    coefficients and intercepts sum to zero over the classes (the smallest, which is also
    the one scikit-learn's L-BFGS returns).

    %(streaming)s ``classes`` must be given on the first call.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression as SkLogisticRegression
    >>> from lowrank_precond.glm import LogisticRegression
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 3)); y = (X[:, 0] - X[:, 1] > 0.3).astype(int)
    >>> model = LogisticRegression(C=1.0, tol=1e-10).fit(X, y)
    >>> ref = SkLogisticRegression(C=1.0, tol=1e-12).fit(X, y)
    >>> bool(np.allclose(model.coef_, ref.coef_, rtol=1e-6)), model.coef_.shape
    (True, (1, 3))
    >>> model.predict_proba(X[:2]).shape, model.score(X, y) > 0.9
    ((2, 2), True)
    """

    def __init__(
        self,
        C: float = 1.0,
        *,
        fit_intercept: bool = True,
        method: str | Preconditioner = DEFAULT_METHOD,
        rank: int | None = None,
        lr: float | None = None,
        max_iter: int = 2000,
        tol: float = 1e-4,
        batch_size: int | None = None,
        random_state: Any = None,
        warm_start: bool = False,
    ) -> None:
        self.C = C
        self.fit_intercept = fit_intercept
        self.method = method
        self.rank = rank
        self.lr = lr
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size
        self.random_state = random_state
        self.warm_start = warm_start

    def _check_penalty(self) -> float:
        C = self.C
        if isinstance(C, bool) or not isinstance(C, numbers.Real):
            raise TypeError(f"C: expected a real number, got {C!r}")
        if not float(C) > 0.0:
            raise ValueError(f"C: must be > 0 (numpy.inf for no penalty), got {C!r}")
        return float(C)

    def _lam(self, penalty: float, weight_sum: float) -> float:
        return 1.0 / (penalty * weight_sum)

    def _set_n_iter(self, epochs: int) -> None:
        self.n_iter_ = np.array([epochs], dtype=np.int32)

    def _family(self) -> Any:
        K = len(self.classes_)
        return "logistic" if K == 2 else family("multinomial", n_classes=K)

    def _set_solution(self, w: np.ndarray, fun: Objective) -> None:
        d = fun.n_features
        if w.ndim == 1:  # binary
            self.coef_ = w[None, :d].copy()
            self.intercept_ = w[d:].copy() if self.fit_intercept else np.zeros(1)
            return
        w = w - w.mean(axis=1, keepdims=True)  # the representative summing to 0 over classes
        self.coef_ = w[:d].T.copy()
        self.intercept_ = w[d].copy() if self.fit_intercept else np.zeros(w.shape[1])

    def _solution(self) -> np.ndarray:
        w = self.coef_.T  # (d, 1) or (d, K)
        if self.fit_intercept:
            w = np.vstack([w, self.intercept_[None, :]])
        return w[:, 0].copy() if len(self.classes_) == 2 else w.copy()

    def _encode(self, y: np.ndarray) -> np.ndarray:
        known = np.isin(y, self.classes_)
        if not np.all(known):
            raise ValueError(
                f"y: labels {np.unique(y[~known]).tolist()} are not in classes_ "
                f"{self.classes_.tolist()}"
            )
        return np.searchsorted(self.classes_, y)

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> LogisticRegression:
        """Fit on ``X`` ``(n, d)``, labels ``y`` ``(n,)`` (optional ``sample_weight``
        ``(n,)``); returns ``self``."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(
                f"y: LogisticRegression needs samples of at least 2 classes, got one class "
                f"only: {classes[0]!r}"
            )
        self.classes_ = classes
        self._fit(X, self._encode(y), self._family(), sample_weight)
        return self

    def partial_fit(
        self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None
    ) -> LogisticRegression:
        """One epoch on the chunk ``(X, y)`` (see Notes); ``classes`` (all the labels of the
        stream) is required on the first call. Returns ``self``."""
        first = not hasattr(self, "classes_")
        X, y = validate_data(self, X, y, dtype=np.float64, reset=first)
        check_classification_targets(y)
        if first:
            if classes is None:
                raise ValueError("classes: required on the first call of partial_fit, got None")
            classes = np.unique(np.asarray(classes))
            if len(classes) < 2:
                raise ValueError(f"classes: needs at least 2 classes, got {classes.tolist()}")
            self.classes_ = classes
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(
                f"classes: {np.unique(classes).tolist()} differs from the classes_ of the "
                f"first call, {self.classes_.tolist()}"
            )
        self._partial_fit(X, self._encode(y), self._family(), sample_weight)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Linear scores: ``(m,)`` for two classes (positive: ``classes_[1]``), else
        ``(m, n_classes)``."""
        z = self._linear(X)
        return z[:, 0] if z.shape[1] == 1 else z

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row of ``X`` ``(m, n_features)``; shape ``(m,)``."""
        z = self.decision_function(X)
        index = (z > 0).astype(np.intp) if z.ndim == 1 else np.argmax(z, axis=1)
        return self.classes_[index]

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log class probabilities, ``(m, n_classes)``, columns in the order of ``classes_``."""
        z = self.decision_function(X)
        if z.ndim == 1:
            z = np.column_stack([np.zeros_like(z), z])
        return scipy.special.log_softmax(z, axis=1)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, ``(m, n_classes)``, columns in the order of ``classes_``."""
        return np.exp(self.predict_log_proba(X))
