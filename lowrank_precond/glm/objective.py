"""GLM objectives: ``fun(w) -> (loss, grad)``, full batch or seeded minibatches, any backend.

The objective of a family (:mod:`lowrank_precond.glm.families`) on data ``A`` ``(n, d)``,
labels ``y`` ``(n,)`` and optional row weights ``s`` is

    ``F(w) = mean_{i in B} s_i loss_i(z_i) + lam/2 |coef|^2``,  ``z = A coef + intercept``

over the rows ``B`` of one call (all rows for full batch, one minibatch otherwise), with the
weights rescaled to mean 1 (so the full batch is the weighted mean ``sum s_i loss_i / sum s_i``);
see :func:`objective`. Theory: :ref:`theory-glm-losses`.
"""

from __future__ import annotations

import copy
import math
import numbers
from typing import Any

import numpy as np

from lowrank_precond.backends import (
    array_namespace,
    check_floating,
    check_int,
    check_positive,
    device_of,
    name_of,
    to_device,
    to_numpy,
)
from lowrank_precond.glm.families import Family
from lowrank_precond.glm.families import family as _family

__all__ = ["Objective", "objective"]


def _convert(x: Any, xp: Any, device: Any, dtype: Any = None) -> Any:
    """``x`` as an array of namespace ``xp`` on ``device`` (cast to ``dtype`` if given)."""
    if array_namespace(x) is xp:
        if device_of(x) != device:
            x = to_device(x, device)
    else:
        x = xp.asarray(to_numpy(x), device=device)
    if dtype is not None and x.dtype != dtype:
        x = xp.astype(x, dtype)
    return x


def _key(x: Any) -> tuple[str, str, str]:
    return (name_of(x), str(device_of(x)), str(x.dtype))


class Objective:
    """``fun(w) -> (loss, grad)`` for a GLM family on ``(A, y)``; build it with :func:`objective`.

    (The constructor takes already validated and encoded pieces and is not public API.)

    Calling it evaluates the (weighted) mean loss over one batch of rows plus
    ``lam/2 |coef|^2`` and its gradient. See :func:`objective` for the full contract.

    Attributes
    ----------
    family : Family
        The family object (``fun.family.name`` is its name).
    lam : float
        L2 strength (the intercept is not penalised).
    fit_intercept : bool
        Whether ``w`` carries an intercept in its last row.
    sample_weight : array or None
        The row weights rescaled to mean 1 (``(n,)``, on ``A``'s backend and dtype), or
        ``None`` for unit weights.
    n_samples : int
        ``n``, rows of ``A``.
    n_features : int
        ``d``, columns of ``A``.
    n_classes : int or None
        ``K`` for ``multinomial``, else ``None``.
    shape : tuple of int
        Shape of ``w``: ``(p,)`` or ``(p, K)`` with ``p = d + fit_intercept``.
    dim : int
        Number of entries of ``w`` (``p`` or ``p * K``); a flat ``w`` of this length is
        also accepted.
    batch_size : int
        Rows per call (``n`` for full batch).
    stochastic : bool
        ``True`` for minibatches (``batch_size < n``).
    batches_per_epoch : int
        ``ceil(n / batch_size)`` (1 for full batch).
    n_calls : int
        Calls made so far (= minibatches drawn).
    epochs : float
        ``n_calls / batches_per_epoch``: epochs (passes over the data) done so far.
    A, y
        The data as given (not copied).

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.glm import objective
    >>> A = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    >>> fun = objective("least_squares", A, np.array([1.0, 2.0, 3.0]), batch_size=2)
    >>> fun.shape, fun.stochastic, fun.batches_per_epoch
    ((2,), True, 2)
    >>> loss, grad = fun(np.zeros(2))  # one minibatch of 2 rows
    >>> fun.n_calls, fun.epochs
    (1, 0.5)
    >>> full_loss, _ = fun.full()(np.zeros(2))  # mean((A w - y)^2) / 2 over all rows
    >>> bool(np.isclose(full_loss, (1 + 4 + 9) / 6))
    True
    """

    def __init__(
        self,
        fam: Family,
        A: Any,
        Y: Any,
        y: Any,
        *,
        n_classes: int | None,
        lam: float,
        fit_intercept: bool,
        batch_size: int | None,
        rng: np.random.Generator | None,
        cache: dict[tuple[str, str, str], tuple[Any, Any, Any]],
        sample_weight: Any = None,
    ) -> None:
        self.family = fam
        self.A = A
        self.y = y
        self._Y = Y
        self.sample_weight = sample_weight
        self.lam = lam
        self.fit_intercept = fit_intercept
        self.n_samples = int(A.shape[0])
        self.n_features = int(A.shape[1])
        self.n_classes = n_classes
        p = self.n_features + int(fit_intercept)
        self.shape: tuple[int, ...] = (p,) if n_classes is None else (p, n_classes)
        self.dim = math.prod(self.shape)
        n = self.n_samples
        self.batch_size = n if batch_size is None else batch_size
        self.stochastic = self.batch_size < n
        self.batches_per_epoch = -(-n // self.batch_size)
        self._cache = cache
        self._rng0 = rng
        self.reset()

    # ---- sampler ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Restart the sampler at its initial random state and zero :attr:`n_calls`.

        Two runs separated by ``reset()`` see the same minibatch sequence.
        """
        self.n_calls = 0
        self._rng = None if self._rng0 is None else copy.deepcopy(self._rng0)
        self._perm: np.ndarray | None = None
        self._perm_dev: dict[tuple[str, str, str], Any] = {}

    @property
    def epochs(self) -> float:
        """Passes over the data so far: ``n_calls / batches_per_epoch``."""
        return self.n_calls / self.batches_per_epoch

    def _next_rows(self) -> tuple[int, int]:
        """Advance the sampler; return the slice ``[start, stop)`` of the epoch permutation."""
        k = self.n_calls % self.batches_per_epoch
        if k == 0:
            self._perm = self._rng.permutation(self.n_samples)
            self._perm_dev = {}
        start = k * self.batch_size
        return start, min(start + self.batch_size, self.n_samples)

    def batch_indices(self) -> np.ndarray | None:
        """Host indices of the rows the last call used (``None`` for full batch or before a call).

        Examples
        --------
        >>> import numpy as np
        >>> fun = objective("least_squares", np.eye(4), np.arange(4.0), batch_size=2, rng=0)
        >>> _ = fun(np.zeros(4)); _ = fun(np.zeros(4))
        >>> fun.batches_per_epoch, fun.epochs
        (2, 1.0)
        """
        if not self.stochastic or self.n_calls == 0:
            return None
        k = (self.n_calls - 1) % self.batches_per_epoch
        start = k * self.batch_size
        return self._perm[start : min(start + self.batch_size, self.n_samples)].copy()

    # ---- data on w's backend ---------------------------------------------------------------

    def _data(self, w: Any) -> tuple[Any, Any, Any]:
        """``(A, Y, weights)`` on ``w``'s backend, device and dtype (``weights`` may be None)."""
        key = _key(w)
        if key not in self._cache:
            xp = array_namespace(w)
            dev = device_of(w)
            s = self.sample_weight
            self._cache[key] = (
                _convert(self.A, xp, dev, w.dtype),
                _convert(self._Y, xp, dev, w.dtype),
                None if s is None else _convert(s, xp, dev, w.dtype),
            )
        return self._cache[key]

    def _as_matrix(self, w: Any) -> Any:
        """Check ``w`` (shape ``shape`` or flat ``(dim,)``); return it with shape ``shape``."""
        check_floating("w", w)
        shape = tuple(w.shape)
        if shape == self.shape:
            return w
        if shape == (self.dim,):
            return array_namespace(w).reshape(w, self.shape)
        what = f"d={self.n_features} features" + (" + intercept" if self.fit_intercept else "")
        if self.n_classes is not None:
            what += f", K={self.n_classes} classes; or flat ({self.dim},)"
        raise ValueError(f"w: expected shape {self.shape} ({what}), got {shape}")

    def _split(self, W: Any) -> tuple[Any, Any]:
        d = self.n_features
        if not self.fit_intercept:
            return W, None
        return W[:d, ...], W[d:, ...]

    def _linear(self, coef: Any, bias: Any, A: Any) -> Any:
        z = A @ coef
        if bias is not None:
            z = z + (bias[0] if self.n_classes is None else bias)
        return z

    # ---- evaluation ------------------------------------------------------------------------

    def __call__(self, w: Any) -> tuple[Any, Any]:
        """Loss and gradient at ``w`` on the next batch (see :func:`objective`)."""
        W = self._as_matrix(w)
        xp = array_namespace(W)
        A, Y, s = self._data(W)
        if self.stochastic:
            start, stop = self._next_rows()
            key = _key(W)
            if key not in self._perm_dev:
                self._perm_dev[key] = xp.asarray(self._perm, device=device_of(W))
            idx = self._perm_dev[key][start:stop]
            A = xp.take(A, idx, axis=0)
            Y = xp.take(Y, idx, axis=0)
            s = None if s is None else xp.take(s, idx, axis=0)
        self.n_calls += 1
        coef, bias = self._split(W)
        loss, dz = self.family.loss_and_grad_z(self._linear(coef, bias, A), Y, s)
        g = A.T @ dz
        if self.lam:
            loss = loss + (0.5 * self.lam) * xp.sum(coef * coef)
            g = g + self.lam * coef
        if bias is not None:
            gb = (
                xp.sum(dz, axis=0, keepdims=True)
                if self.n_classes is not None
                else xp.reshape(xp.sum(dz), (1,))
            )
            g = xp.concat([g, gb], axis=0)
        if tuple(w.shape) != self.shape:
            g = xp.reshape(g, tuple(w.shape))
        if name_of(W) == "numpy":
            loss = float(loss)
        return loss, g

    def full(self) -> Objective:
        """The full-batch objective on the same data (shares the backend cache).

        Use it for ``f*`` and to report the training loss of a minibatch run.

        Examples
        --------
        >>> import numpy as np
        >>> fun = objective("least_squares", np.eye(4), np.arange(4.0), batch_size=2, rng=0)
        >>> fun.full().batch_size, fun.full().stochastic
        (4, False)
        """
        return type(self)(
            self.family,
            self.A,
            self._Y,
            self.y,
            n_classes=self.n_classes,
            lam=self.lam,
            fit_intercept=self.fit_intercept,
            batch_size=None,
            rng=None,
            cache=self._cache,
            sample_weight=self.sample_weight,
        )

    # ---- prediction ------------------------------------------------------------------------

    def _new_data(self, w: Any, A: Any | None) -> Any:
        if A is None:
            return self._data(w)[0]
        check_floating("A", A)
        if A.ndim != 2 or A.shape[1] != self.n_features:
            raise ValueError(f"A: expected shape (m, {self.n_features}), got {tuple(A.shape)}")
        return _convert(A, array_namespace(w), device_of(w), w.dtype)

    def linear_predictor(self, w: Any, A: Any | None = None) -> Any:
        """``z = A coef + intercept`` (``(m,)`` or ``(m, K)``) for rows ``A`` (default: the data).

        ``A`` may be any backend; it is moved to ``w``'s backend, device and dtype.
        """
        W = self._as_matrix(w)
        coef, bias = self._split(W)
        return self._linear(coef, bias, self._new_data(W, A))

    def predict(self, w: Any, A: Any | None = None) -> Any:
        """Mean response ``inverse_link(z)``: probabilities (logistic ``(m,)``, multinomial
        ``(m, K)``), the fit (least squares) or the mean count (Poisson)."""
        return self.family.inverse_link(self.linear_predictor(w, A))

    def accuracy(self, w: Any, A: Any | None = None, y: Any | None = None) -> float:
        """Fraction of rows whose predicted class equals the label (classification families).

        Logistic predicts class 1 when ``z > 0``; multinomial predicts ``argmax_k Z_k``.
        ``A`` and ``y`` default to the objective's data; labels use the family's coding.

        Examples
        --------
        >>> import numpy as np
        >>> A = np.array([[1.0], [-1.0], [2.0]])
        >>> fun = objective("logistic", A, np.array([1, 0, 0]))
        >>> fun.accuracy(np.array([1.0]))
        0.6666666666666666
        """
        if not self.family.is_classifier:
            raise ValueError(f"accuracy: family {self.family.name!r} is not a classifier")
        if (A is None) != (y is None):
            raise ValueError("accuracy: give both A and y, or neither")
        z = self.linear_predictor(w, A)
        xp = array_namespace(z)
        if y is None:
            Y = self._data(z)[1]
        else:
            if y.ndim != 1 or y.shape[0] != z.shape[0]:
                raise ValueError(f"y: expected shape ({z.shape[0]},), got {tuple(y.shape)}")
            fam = self.family
            if self.n_classes is not None:
                fam = _family("multinomial", n_classes=self.n_classes)
            Y = _convert(fam.encode_labels(y), xp, device_of(z), z.dtype)
        if self.n_classes is None:
            hit = (z > 0.0) == (Y > 0.5)
        else:
            hit = xp.argmax(z, axis=1) == xp.argmax(Y, axis=1)
        return float(xp.mean(xp.astype(hit, z.dtype)))

    def zeros(self, like: Any | None = None) -> Any:
        """A zero ``w`` of shape :attr:`shape`: NumPy float64, or ``like``'s kind/device/dtype."""
        if like is None:
            return np.zeros(self.shape)
        xp = array_namespace(like)
        return xp.zeros(self.shape, dtype=like.dtype, device=device_of(like))

    def __repr__(self) -> str:
        kind = f"batch_size={self.batch_size}" if self.stochastic else "full batch"
        return (
            f"Objective(family={self.family!r}, n={self.n_samples}, d={self.n_features}, "
            f"shape={self.shape}, lam={self.lam}, fit_intercept={self.fit_intercept}, {kind})"
        )


def objective(
    family: str | Family,
    A: Any,
    y: Any,
    lam: float = 0.0,
    batch_size: int | None = None,
    rng: int | np.random.Generator | None = None,
    fit_intercept: bool = False,
    sample_weight: Any = None,
) -> Objective:
    """The GLM objective ``fun(w) -> (loss, grad)`` of ``family`` on ``(A, y)``.

    ``F(w) = mean_{i in B} s_i loss(z_i, y_i) + lam/2 |coef|^2`` with ``z = A coef + b``,
    where ``B`` is all rows (full batch) or the next minibatch and ``s`` the row weights
    rescaled to mean 1 (all ones by default). Theory: :ref:`theory-glm-losses`.

    Parameters
    ----------
    family : {"logistic", "multinomial", "least_squares", "poisson"} or Family
        A name (default options) or a family object such as
        ``family("logistic", labels="pm1")`` or ``family("multinomial", n_classes=10)``.
    A : array, shape (n, d)
        Real floating data, any backend (NumPy, torch, CuPy, array-API), or a dask array
        chunked by rows (the ``dask`` extra; ``docs/scaling.rst``: each call is one dask
        computation, the weights stay in memory).
    y : array, shape (n,)
        Labels, any backend: 0/1 or -1/+1 (logistic), classes ``0..K-1`` (multinomial,
        ``K = max(y)+1`` unless the family fixes ``n_classes``), reals (least squares),
        non-negative counts (Poisson). Validated once here and stored encoded (float
        vector, or the one-hot ``(n, K)`` matrix).
    lam : float, default 0.0
        L2 strength ``>= 0`` on the coefficients (never on the intercept).
    batch_size : int or None, default None
        ``None`` (or ``n``): every call uses all rows. ``1 <= batch_size < n``: minibatches
        from a shuffling sampler: each epoch draws a fresh permutation of the rows from
        ``rng`` and the calls walk through it in slices of ``batch_size`` (the last slice of
        an epoch has ``n - (batches_per_epoch - 1) * batch_size`` rows), so one epoch visits
        every row exactly once. One call = one minibatch; the loss is the mean over the
        minibatch rows plus the penalty. ``fun.reset()`` restarts the sequence.
    rng : int, numpy.random.Generator or None, default None
        Seed of the sampler. ``None`` means seed 0 (runs are reproducible by default). A
        Generator is copied, never advanced. Ignored for full batch.
    fit_intercept : bool, default False
        If true, ``w`` has ``d + 1`` rows and its LAST row is the unpenalised intercept:
        ``z = A @ w[:d] + w[d]`` (``Z = A @ W[:d] + W[d]`` for multinomial). ``A`` is not
        copied or augmented.
    sample_weight : array, shape (n,), or None, default None
        Non-negative finite row weights, any backend, not all zero. They are rescaled to
        mean 1 (``s * n / sum(s)``), so the full-batch loss is the weighted mean
        ``sum_i s_i loss_i / sum_i s_i``, integer weights give exactly the loss of the data
        with rows repeated, and a minibatch loss is an unbiased estimate of it. ``None``:
        unit weights.

    Returns
    -------
    Objective
        A callable ``fun(w) -> (loss, grad)`` with the attributes listed in
        :class:`Objective` (``n_samples``, ``n_features``, ``shape``, ``dim``,
        ``batch_size``, ``batches_per_epoch``, ``stochastic``, ``n_calls``, ``epochs``,
        ``family``, ``lam``, ``fit_intercept``, ``n_classes``) and the methods ``full()``,
        ``reset()``, ``zeros(like)``, ``linear_predictor``, ``predict``, ``accuracy``,
        ``batch_indices()``, and ``sample_weight`` (the rescaled weights or ``None``).

        ``w``: shape ``fun.shape`` = ``(p,)``, or ``(p, K)`` for multinomial, with
        ``p = d + fit_intercept``; a flat ``(p * K,)`` vector (row-major, i.e.
        ``W.reshape(-1)``) is accepted too, as ``scipy.optimize.minimize`` needs 1-D ``x``.
        ``grad`` has the shape, backend, device and dtype of ``w``. ``loss`` is a Python
        ``float`` when ``w`` is a NumPy array (so ``scipy.optimize.minimize(fun, w0,
        jac=True)`` works as is) and a 0-d array on ``w``'s backend and device otherwise
        (no host synchronisation; ``float(loss)`` brings it to the host).

        Backends: ``A`` and the encoded labels are converted to ``w``'s backend, device and
        dtype on the first call with such a ``w`` and cached (e.g. NumPy data with a float32
        CUDA tensor ``w``); pass data already on the target backend to skip the copy. The
        computation runs in ``w``'s dtype.

    Raises
    ------
    ValueError
        Naming the argument: ``A`` not 2-D or with non-finite entries, ``y`` of the wrong
        length or with labels invalid for the family, ``lam < 0``, ``batch_size`` outside
        ``[1, n]``, ``sample_weight`` of the wrong shape, negative, non-finite or all zero;
        at call time, ``w`` of the wrong shape.
    TypeError
        Non-floating ``A`` or ``w``, non-integer ``batch_size``, unknown family option.

    Examples
    --------
    >>> import numpy as np, scipy.optimize
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((50, 3))
    >>> y = (A @ np.array([1.0, -2.0, 0.5]) + rng.standard_normal(50) > 0).astype(int)
    >>> fun = objective("logistic", A, y, lam=1e-2, fit_intercept=True)
    >>> fun.shape
    (4,)
    >>> loss, grad = fun(np.zeros(4))
    >>> type(loss).__name__, bool(np.isclose(loss, np.log(2.0))), grad.shape
    ('float', True, (4,))
    >>> res = scipy.optimize.minimize(fun, fun.zeros(), jac=True, method="L-BFGS-B")
    >>> bool(res.success), bool(np.linalg.norm(res.jac) < 1e-4)
    (True, True)
    """
    fam = _family(family)
    from lowrank_precond.glm import _dask  # data as row-chunked dask arrays (dask extra)

    if _dask.is_dask(A, y, sample_weight):
        y, sample_weight = _dask.prepare(A, y, sample_weight)
    xp = check_floating("A", A)
    if A.ndim != 2:
        raise ValueError(f"A: expected a 2-D array (n, d), got shape {tuple(A.shape)}")
    n = int(A.shape[0])
    if n < 1 or A.shape[1] < 1:
        raise ValueError(f"A: needs at least one row and one column, got shape {tuple(A.shape)}")
    if not bool(xp.all(xp.isfinite(A))):
        raise ValueError("A: contains non-finite values")
    try:
        array_namespace(y)
    except TypeError:
        raise TypeError(f"y: expected an array, got {type(y).__name__}") from None
    if tuple(y.shape) != (n,):
        raise ValueError(f"y: expected shape ({n},) to match A's {n} rows, got {tuple(y.shape)}")
    lam = check_positive("lam", lam, allow_zero=True)
    if not isinstance(fit_intercept, (bool, np.bool_)):
        raise TypeError(f"fit_intercept: expected a bool, got {fit_intercept!r}")
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, minimum=1)
        if batch_size > n:
            raise ValueError(f"batch_size: must be <= n={n} (rows of A), got {batch_size}")
        if batch_size == n:
            batch_size = None
    if batch_size is None:
        gen = None
    elif rng is None or (isinstance(rng, numbers.Integral) and not isinstance(rng, bool)):
        gen = np.random.default_rng(0 if rng is None else int(rng))
    elif isinstance(rng, np.random.Generator):
        gen = copy.deepcopy(rng)
    else:
        raise TypeError(f"rng: expected an int seed, a numpy Generator or None, got {rng!r}")

    y_on_A = _convert(y, xp, device_of(A))
    n_classes = fam.n_outputs(y_on_A)
    Y = fam.encode_labels(y_on_A, dtype=A.dtype)
    s = None if sample_weight is None else _weights(sample_weight, n, xp, A)
    return (_dask.DaskObjective if _dask.is_dask(A) else Objective)(
        fam,
        A,
        Y,
        y,
        n_classes=n_classes,
        lam=lam,
        fit_intercept=bool(fit_intercept),
        batch_size=batch_size,
        rng=gen,
        cache={_key(A): (A, Y, s)},
        sample_weight=s,
    )


def _weights(sample_weight: Any, n: int, xp: Any, A: Any) -> Any:
    """``sample_weight`` checked (``(n,)``, finite, ``>= 0``, positive sum) and rescaled to
    mean 1, on ``A``'s backend, device and dtype."""
    try:
        array_namespace(sample_weight)
    except TypeError:
        raise TypeError(
            f"sample_weight: expected an array, got {type(sample_weight).__name__}"
        ) from None
    if tuple(sample_weight.shape) != (n,):
        raise ValueError(
            f"sample_weight: expected shape ({n},) to match A's {n} rows, "
            f"got {tuple(sample_weight.shape)}"
        )
    s = _convert(sample_weight, xp, device_of(A), A.dtype)
    if not bool(xp.all(xp.isfinite(s))):
        raise ValueError("sample_weight: contains non-finite values")
    if not bool(xp.all(s >= 0.0)):
        raise ValueError(f"sample_weight: must be >= 0, got a minimum of {float(xp.min(s))}")
    total = float(xp.sum(s))
    if total <= 0.0:
        raise ValueError("sample_weight: the weights are all zero (no row would count)")
    return s * (n / total)
