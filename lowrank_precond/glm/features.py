"""Random features computed on the fly: GLMs with ``d >= 1e5`` unknowns on real data.

A multinomial regression on the 784 pixels of Fashion-MNIST has ``785 x 10`` unknowns. Mapping
the pixels through ``N`` random Fourier features (Rahimi and Recht, 2007) gives ``10 (N + 1)``
unknowns: ``N = 20000`` makes ``d = 200010``, where a ``d x d`` matrix (320 GB in float64) can
no longer be stored and only the low-rank methods of :ref:`theory` apply. The feature matrix
would not fit either (60000 x 20000 float64 is 9.6 GB), so :class:`FeatureObjective` never
builds it: it computes the features of one minibatch per step, and evaluates the full
objective (and accuracies) chunk by chunk.

Public names
------------
RandomFourierFeatures  the seeded map ``phi(x) = sqrt(2/N) cos(x Omega + b)``
FeatureObjective       ``fun(w) -> (loss, grad)`` of a GLM on ``phi(X)``, minibatch or chunked
                       full batch, plus ``losses(ws)`` / ``accuracies(ws)`` for many ``w`` at
                       once (the features of each chunk are computed once for all of them)

These work on NumPy arrays only (the map and the chunks live on the host).

Examples
--------
>>> import numpy as np
>>> from lowrank_precond.glm.features import FeatureObjective, RandomFourierFeatures
>>> rng = np.random.default_rng(0)
>>> X, y = rng.standard_normal((40, 5)), rng.integers(0, 3, 40)
>>> phi = RandomFourierFeatures(5, 100, seed=0)
>>> fun = FeatureObjective("multinomial", X, y, phi, lam=1e-3, batch_size=8, rng=0)
>>> fun.shape, fun.dim, fun.batches_per_epoch
((101, 3), 303, 5)
>>> loss, grad = fun(np.zeros(fun.shape))
>>> bool(np.isclose(loss, np.log(3.0))), grad.shape
(True, (101, 3))
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from lowrank_precond.backends import check_int, check_positive
from lowrank_precond.glm.families import Family
from lowrank_precond.glm.families import family as _family

__all__ = ["FeatureObjective", "RandomFourierFeatures"]

#: features per chunk (rows x N) when the full objective, the losses or the accuracies are
#: evaluated and ``chunk_size`` is not given: 2**24 numbers, 128 MB in float64
CHUNK_ELEMENTS = 2**24


class RandomFourierFeatures:
    """Random Fourier features of the Gaussian kernel, seeded: ``(m, n_input) -> (m, N)``.

    ``phi(x) = sqrt(2 / N) cos(x Omega + b)`` with ``Omega`` ``(n_input, N)`` i.i.d.
    ``Normal(0, 1 / bandwidth^2)`` and ``b`` ``(N,)`` i.i.d. ``Uniform[0, 2 pi)``, so that
    ``phi(x) . phi(x')`` estimates ``exp(-|x - x'|^2 / (2 bandwidth^2))`` (Rahimi and Recht,
    2007). ``Omega`` and ``b`` are drawn in float64 by ``numpy.random.default_rng(seed)``
    (``Omega`` first, then ``b``) and then cast to ``dtype``: the same seed gives the same map
    on every machine.

    Parameters
    ----------
    n_input : int
        Columns of the inputs (784 for 28 x 28 images).
    n_features : int
        ``N``, the number of features.
    bandwidth : float or None, default None
        Kernel width; ``None`` is ``sqrt(n_input)``, a good scale for standardized inputs
        (whose squared distances are about ``2 n_input``).
    seed : int, default 0
    dtype : {numpy.float32, numpy.float64}, default float32
        Dtype of ``Omega``, ``b``, the product ``x Omega`` and the features. float32 is about
        four times faster on a CPU (the product is the cost: ``2 m n_input N`` flops);
        float64 when the features must agree with a reference to rounding.

    Attributes
    ----------
    omega : ndarray, shape (n_input, N)
    offset : ndarray, shape (N,)
    n_input, n_features : int
    bandwidth : float

    Examples
    --------
    >>> import numpy as np
    >>> phi = RandomFourierFeatures(3, 4000, seed=1, dtype=np.float64)
    >>> x = np.array([[0.0, 0.5, 1.0], [1.0, 0.0, 0.5]])
    >>> F = phi.transform(x)
    >>> F.shape, F.dtype
    ((2, 4000), dtype('float64'))
    >>> k = np.exp(-np.sum((x[0] - x[1]) ** 2) / (2 * 3.0))  # bandwidth sqrt(3)
    >>> bool(abs(F[0] @ F[1] - k) < 0.05)
    True
    """

    def __init__(
        self,
        n_input: int,
        n_features: int,
        *,
        bandwidth: float | None = None,
        seed: int = 0,
        dtype: Any = np.float32,
    ) -> None:
        self.n_input = check_int("n_input", n_input, minimum=1)
        self.n_features = check_int("n_features", n_features, minimum=1)
        if bandwidth is None:
            bandwidth = math.sqrt(self.n_input)
        self.bandwidth = check_positive("bandwidth", bandwidth)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed: expected an integer, got {seed!r}")
        self.seed = int(seed)
        dt = np.dtype(dtype)
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype: expected float32 or float64, got {dtype!r}")
        self.dtype = dt
        rng = np.random.default_rng(self.seed)
        omega = rng.standard_normal((self.n_input, self.n_features))
        omega /= self.bandwidth
        self.omega = omega.astype(dt, copy=False)
        self.offset = rng.uniform(0.0, 2.0 * math.pi, self.n_features).astype(dt)
        self._scale = dt.type(math.sqrt(2.0 / self.n_features))

    def transform(self, X: Any) -> np.ndarray:
        """The features of the rows of ``X``.

        Parameters
        ----------
        X : array_like, shape (m, n_input)

        Returns
        -------
        ndarray, shape (m, N), of :attr:`dtype`
        """
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_input:
            raise ValueError(f"X: expected shape (m, {self.n_input}), got {X.shape}")
        Z = np.asarray(X, dtype=self.dtype) @ self.omega
        Z += self.offset
        np.cos(Z, out=Z)
        Z *= self._scale
        return Z

    __call__ = transform

    def __repr__(self) -> str:
        return (
            f"RandomFourierFeatures(n_input={self.n_input}, n_features={self.n_features}, "
            f"bandwidth={self.bandwidth:g}, seed={self.seed}, dtype={self.dtype.name})"
        )


class FeatureObjective:
    """``fun(w) -> (loss, grad)`` of a GLM on the features ``phi(X)``, never stored whole.

    ``F(w) = mean_{i in B} loss(z_i, y_i) + lam/2 |coef|^2`` with ``z = phi(X_i) coef + b``:
    the objective of :func:`lowrank_precond.glm.objective` on ``A = phi(X)``, with the same
    minibatch sampler (a fresh permutation of the rows per epoch from
    ``numpy.random.default_rng(rng)``, walked in slices of ``batch_size``), so it takes the
    same steps as ``objective(family, phi(X), y, ...)`` would, up to rounding. Full batch
    (``batch_size=None``) is evaluated ``chunk_size`` rows at a time: the loss and the
    gradient are sums of per-chunk parts weighted by ``rows / n``. Memory: ``chunk_size x N``
    (or ``batch_size x N``) features at a time, never ``n x N``.

    Parameters
    ----------
    family : str or Family
        As in :func:`lowrank_precond.glm.objective`; multinomial infers
        ``K = max(y) + 1`` unless the family fixes ``n_classes``.
    X : ndarray, shape (n, n_input)
        Inputs (e.g. standardized pixels), NumPy.
    y : ndarray, shape (n,)
        Labels for the family.
    features : RandomFourierFeatures or callable
        ``features(X_rows) -> (m, N)`` array; ``features.n_features`` gives ``N``.
    lam : float, default 0.0
        L2 strength on the coefficients (never the intercept).
    fit_intercept : bool, default True
        ``w`` has ``N + 1`` rows, the last one the intercept.
    batch_size : int or None, default None
        Rows per call; ``None`` (or ``n``) is the full objective, in chunks.
    rng : int or None, default None
        Seed of the sampler (``None``: 0).
    chunk_size : int or None, default None
        Rows per chunk of the full-batch evaluations; ``None``: as many as keep a chunk at
        ``2**24`` features (128 MB in float64), e.g. 838 rows for ``N = 20000``.

    Attributes
    ----------
    shape : tuple of int
        ``(N + 1, K)`` (multinomial) or ``(N + 1,)``; ``dim`` = its product.
    n_samples, n_features, n_classes, batch_size, stochastic, batches_per_epoch, n_calls
        As for :class:`lowrank_precond.glm.objective.Objective`.

    Examples
    --------
    The chunked full objective equals the stored-feature one:

    >>> import numpy as np
    >>> from lowrank_precond.glm import objective
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.standard_normal((30, 4)), rng.integers(0, 3, 30)
    >>> phi = RandomFourierFeatures(4, 50, seed=0, dtype=np.float64)
    >>> chunked = FeatureObjective("multinomial", X, y, phi, lam=0.1, chunk_size=7)
    >>> stored = objective("multinomial", phi(X), y, lam=0.1, fit_intercept=True)
    >>> W = rng.standard_normal(chunked.shape)
    >>> (f1, g1), (f2, g2) = chunked(W), stored(W)
    >>> bool(abs(f1 - f2) < 1e-12), bool(np.max(np.abs(g1 - g2)) < 1e-12)
    (True, True)
    """

    def __init__(
        self,
        family: str | Family,
        X: Any,
        y: Any,
        features: Any,
        *,
        lam: float = 0.0,
        fit_intercept: bool = True,
        batch_size: int | None = None,
        rng: int | None = None,
        chunk_size: int | None = None,
    ) -> None:
        self.family = _family(family)
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[0] < 1:
            raise ValueError(f"X: expected a 2-D array (n, n_input), got shape {X.shape}")
        if X.dtype.kind != "f":
            raise TypeError(f"X: expected a floating array, got dtype {X.dtype}")
        y = np.asarray(y)
        n = X.shape[0]
        if y.shape != (n,):
            raise ValueError(f"y: expected shape ({n},) to match X's {n} rows, got {y.shape}")
        if not callable(features):
            raise TypeError(f"features: expected a callable map, got {type(features).__name__}")
        N = getattr(features, "n_features", None)
        if N is None:
            N = int(np.asarray(features(X[:1])).shape[1])
        self.features = features
        self.X = X
        self.y = y
        self.n_classes = self.family.n_outputs(y)
        self._Y = np.asarray(self.family.encode_labels(y, dtype=np.float64))
        self.lam = check_positive("lam", lam, allow_zero=True)
        if not isinstance(fit_intercept, (bool, np.bool_)):
            raise TypeError(f"fit_intercept: expected a bool, got {fit_intercept!r}")
        self.fit_intercept = bool(fit_intercept)
        self.n_samples = int(n)
        self.n_features = int(N)
        if chunk_size is None:
            chunk_size = max(1, CHUNK_ELEMENTS // self.n_features)
        self.chunk_size = check_int("chunk_size", chunk_size, minimum=1)
        p = self.n_features + int(self.fit_intercept)
        self.shape: tuple[int, ...] = (p,) if self.n_classes is None else (p, self.n_classes)
        self.dim = math.prod(self.shape)
        if batch_size is not None:
            batch_size = check_int("batch_size", batch_size, minimum=1)
            if batch_size > n:
                raise ValueError(f"batch_size: must be <= n={n} (rows of X), got {batch_size}")
        self.batch_size = n if batch_size is None else batch_size
        self.stochastic = self.batch_size < n
        self.batches_per_epoch = -(-n // self.batch_size)
        if rng is not None and (isinstance(rng, bool) or not isinstance(rng, numbers.Integral)):
            raise TypeError(f"rng: expected an int seed or None, got {rng!r}")
        self._rng0 = np.random.default_rng(0 if rng is None else int(rng))
        self.reset()

    # ---- sampler (the same as Objective's) -------------------------------------------------

    def reset(self) -> None:
        """Restart the sampler at its initial state and zero :attr:`n_calls`."""
        self.n_calls = 0
        self._rng = copy.deepcopy(self._rng0)
        self._perm: np.ndarray | None = None

    @property
    def epochs(self) -> float:
        """Passes over the data so far: ``n_calls / batches_per_epoch``."""
        return self.n_calls / self.batches_per_epoch

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """Advance the sampler; return the features ``(m, N)`` (float64) and encoded labels.

        One call is one step of :meth:`__call__` (:attr:`n_calls` grows by one); use it with
        :meth:`loss_and_grad` to step several iterates on the same minibatch.
        """
        if not self.stochastic:
            raise ValueError("next_batch: this objective is full batch (batch_size=None)")
        k = self.n_calls % self.batches_per_epoch
        if k == 0:
            self._perm = self._rng.permutation(self.n_samples)
        start = k * self.batch_size
        rows = self._perm[start : min(start + self.batch_size, self.n_samples)]
        self.n_calls += 1
        return self._phi(self.X[rows]), self._Y[rows]

    # ---- evaluation --------------------------------------------------------------------------

    def _as_matrix(self, w: Any) -> np.ndarray:
        w = np.asarray(w)
        if w.dtype.kind != "f":
            raise TypeError(f"w: expected a floating array, got dtype {w.dtype}")
        if w.shape == self.shape:
            return w
        if w.shape == (self.dim,):
            return w.reshape(self.shape)
        raise ValueError(f"w: expected shape {self.shape} or flat ({self.dim},), got {w.shape}")

    def _split(self, W: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if not self.fit_intercept:
            return W, None
        return W[: self.n_features], W[self.n_features]

    def _z(self, W: np.ndarray, Phi: np.ndarray) -> np.ndarray:
        coef, bias = self._split(W)
        z = np.asarray(Phi, dtype=W.dtype) @ coef
        return z if bias is None else z + bias

    def _data_loss_grad(
        self, W: np.ndarray, Phi: np.ndarray, Y: np.ndarray, weight: float
    ) -> tuple[float, np.ndarray]:
        """``weight *`` (mean loss over the rows, its gradient in W), penalty excluded."""
        Phi = np.asarray(Phi, dtype=W.dtype)
        loss, dz = self.family.loss_and_grad_z(self._z(W, Phi), np.asarray(Y, dtype=W.dtype))
        dz = dz * weight
        g = Phi.T @ dz
        if self.fit_intercept:
            gb = dz.sum(axis=0, keepdims=True) if self.n_classes is not None else [dz.sum()]
            g = np.concatenate([g, np.asarray(gb, dtype=W.dtype)], axis=0)
        return float(loss) * weight, g

    def _penalize(self, W: np.ndarray, loss: float, g: np.ndarray) -> tuple[float, np.ndarray]:
        if self.lam:
            coef, _ = self._split(W)
            loss += 0.5 * self.lam * float(np.sum(coef * coef))
            g[: self.n_features] += self.lam * coef
        return loss, g

    def loss_and_grad(self, w: Any, Phi: np.ndarray, Y: np.ndarray) -> tuple[float, np.ndarray]:
        """Loss and gradient at ``w`` on given rows: features ``Phi`` ``(m, N)``, labels ``Y``.

        ``Y`` is encoded as :meth:`next_batch` returns it. The penalty is included; the
        gradient has ``w``'s shape.
        """
        W = self._as_matrix(w)
        loss, g = self._penalize(W, *self._data_loss_grad(W, Phi, Y, 1.0))
        return loss, g.reshape(np.shape(w))

    def _phi(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.features(X), dtype=np.float64)

    def _chunks(self, X: np.ndarray) -> Any:
        for start in range(0, X.shape[0], self.chunk_size):
            stop = min(start + self.chunk_size, X.shape[0])
            yield start, stop, self._phi(X[start:stop])

    def _stacked(self, ws: Sequence[Any]) -> tuple[list[np.ndarray], np.ndarray, Any]:
        """The ``ws`` as matrices, their coefficients side by side ``(N, R k)``, intercepts."""
        Ws = [np.asarray(self._as_matrix(w), dtype=np.float64) for w in ws]
        coefs = [self._split(W)[0].reshape(self.n_features, -1) for W in Ws]
        C = np.concatenate(coefs, axis=1) if Ws else np.zeros((self.n_features, 0))
        if self.fit_intercept:
            b = np.concatenate([np.reshape(W[self.n_features], -1) for W in Ws]) if Ws else 0.0
        else:
            b = 0.0
        return Ws, C, b

    def __call__(self, w: Any) -> tuple[float, np.ndarray]:
        """Loss and gradient at ``w``: the next minibatch, or all rows in chunks."""
        if self.stochastic:
            Phi, Y = self.next_batch()
            return self.loss_and_grad(w, Phi, Y)
        W = self._as_matrix(w)
        n = self.n_samples
        loss, g = 0.0, np.zeros(self.shape, dtype=W.dtype)
        for start, stop, Phi in self._chunks(self.X):
            part, gc = self._data_loss_grad(W, Phi, self._Y[start:stop], (stop - start) / n)
            loss += part
            g += gc
        self.n_calls += 1
        loss, g = self._penalize(W, loss, g)
        return loss, g.reshape(np.shape(w))

    def full(self) -> FeatureObjective:
        """The full-batch (chunked) objective on the same data, features and penalty."""
        other = copy.copy(self)
        other.batch_size, other.stochastic, other.batches_per_epoch = self.n_samples, False, 1
        other.reset()
        return other

    def losses(self, ws: Sequence[Any]) -> list[float]:
        """The full objective (penalty included) at each of ``ws``, one pass over the data.

        The features of each chunk are computed once and used for every ``w``.

        Examples
        --------
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X, y = rng.standard_normal((20, 3)), rng.integers(0, 2, 20)
        >>> fun = FeatureObjective("multinomial", X, y, RandomFourierFeatures(3, 10), lam=0.1)
        >>> ws = [np.zeros(fun.shape), rng.standard_normal(fun.shape)]
        >>> got = fun.losses(ws)
        >>> bool(np.allclose(got, [fun(w)[0] for w in ws], rtol=1e-12))
        True
        """
        Ws, C, b = self._stacked(ws)
        k = 1 if self.n_classes is None else self.n_classes
        out = [0.0] * len(Ws)
        n = self.n_samples
        for start, stop, Phi in self._chunks(self.X):
            Y = self._Y[start:stop]
            Z = Phi @ C + b
            for i in range(len(Ws)):
                z = Z[:, i * k : (i + 1) * k]
                loss, _ = self.family.loss_and_grad_z(z if self.n_classes else z[:, 0], Y)
                out[i] += float(loss) * (stop - start) / n
        for i, W in enumerate(Ws):
            if self.lam:
                coef, _ = self._split(W)
                out[i] += 0.5 * self.lam * float(np.sum(coef * coef))
        return out

    def accuracies(self, ws: Sequence[Any], X: Any | None = None, y: Any | None = None) -> list:
        """Fraction of rows whose predicted class is the label, for each of ``ws``.

        ``X`` ``(m, n_input)`` and ``y`` ``(m,)`` default to the objective's data (give both
        or neither); evaluated in chunks, the features of a chunk shared by every ``w``.
        Logistic predicts 1 when ``z > 0``, multinomial ``argmax_k z_k``.
        """
        if not self.family.is_classifier:
            raise ValueError(f"accuracies: family {self.family.name!r} is not a classifier")
        if (X is None) != (y is None):
            raise ValueError("accuracies: give both X and y, or neither")
        X = self.X if X is None else np.asarray(X)
        y = self.y if y is None else np.asarray(y)
        if X.ndim != 2 or X.shape[1] != self.X.shape[1] or y.shape != (X.shape[0],):
            raise ValueError(
                f"X, y: expected shapes (m, {self.X.shape[1]}) and (m,), got {X.shape}, {y.shape}"
            )
        Ws, C, b = self._stacked(ws)
        k = 1 if self.n_classes is None else self.n_classes
        hits = [0] * len(Ws)
        for start, stop, Phi in self._chunks(X):
            labels = y[start:stop]
            Z = Phi @ C + b
            for i in range(len(Ws)):
                z = Z[:, i * k : (i + 1) * k]
                if self.n_classes is None:
                    hits[i] += int(np.sum((z[:, 0] > 0.0) == (labels > 0)))
                else:
                    hits[i] += int(np.sum(np.argmax(z, axis=1) == labels))
        return [h / X.shape[0] for h in hits]

    def accuracy(self, w: Any, X: Any | None = None, y: Any | None = None) -> float:
        """:meth:`accuracies` for one ``w``."""
        return self.accuracies([w], X, y)[0]

    def __repr__(self) -> str:
        kind = f"batch_size={self.batch_size}" if self.stochastic else "full batch (chunked)"
        return (
            f"FeatureObjective(family={self.family!r}, n={self.n_samples}, "
            f"features={self.features!r}, shape={self.shape}, lam={self.lam}, {kind})"
        )
