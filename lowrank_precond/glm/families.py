"""GLM families: numerically stable losses of the linear predictor and their gradients.

A family maps the linear predictor ``z`` (``(n,)``, or ``(n, K)`` for ``multinomial``) and
the *encoded* labels ``Y`` (see :meth:`Family.encode_labels`) to the mean loss over the ``n``
rows and its gradient with respect to ``z``. Everything else (the chain rule through
``z = A w + b``, the L2 penalty, the intercept, minibatches, backends) lives in
:mod:`lowrank_precond.glm.objective`.

======================  ========================================  =========================
family                  mean loss ``f(z)``                        ``df/dz`` (per row, ``/n``)
======================  ========================================  =========================
``logistic``            ``mean(softplus(z) - y z)``, ``y in {0,1}``  ``sigmoid(z) - y``
``multinomial``         ``mean(lse(Z_i) - Z_{i,c_i})``             ``softmax(Z) - onehot(c)``
``least_squares``       ``mean((z - y)^2) / 2``                    ``z - y``
``poisson``             ``mean(e(z) - y z)``                       ``exp(min(z, zmax)) - y``
======================  ========================================  =========================

The math is :ref:`theory-glm-losses`, written against the array API standard, so NumPy,
PyTorch, CuPy and ``array_api_strict`` arrays go in and the same kind comes out. Every loss
and gradient is finite at ``|z| = 1000`` in float64 and float32:

- ``softplus(z) = max(z, 0) + log1p(exp(-|z|))``; the binary loss is evaluated as
  ``softplus(s z)`` with ``s = 1 - 2y`` in ``{+1, -1}`` (no cancellation between
  ``softplus(z)`` and ``y z`` at large ``z``);
- ``sigmoid`` by two branches, ``1/(1+e)`` for ``z >= 0`` and ``e/(1+e)`` below, with
  ``e = exp(-|z|)``;
- ``lse(z) = max z + log sum exp(z - max z)``;
- Poisson's exponential is replaced above ``zmax`` (30 by default) by its tangent:
  ``e(z) = exp(z)`` for ``z <= zmax`` and ``exp(zmax) (1 + z - zmax)`` above. ``e`` is C^1
  and convex, ``e'(z) = exp(min(z, zmax))``, so the gradient is exactly the derivative of
  the loss (plain clipping of ``z`` would not be).

Constant terms are dropped (``log y!`` for Poisson), so losses can be negative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from lowrank_precond.backends import array_namespace, device_of

__all__ = [
    "FAMILIES",
    "Family",
    "LeastSquares",
    "Logistic",
    "Multinomial",
    "Poisson",
    "family",
    "log_sum_exp",
    "sigmoid",
    "softplus",
]


# ---------------------------------------------------------------------------------------------
# stable elementwise helpers
# ---------------------------------------------------------------------------------------------


def softplus(z: Any) -> Any:
    """``log(1 + exp(z))`` computed as ``max(z, 0) + log1p(exp(-|z|))`` (never overflows).

    Examples
    --------
    >>> import numpy as np
    >>> softplus(np.array([-1000.0, 0.0, 1000.0])).tolist()
    [0.0, 0.6931471805599453, 1000.0]
    """
    xp = array_namespace(z)
    absz = xp.abs(z)
    return (z + absz) * 0.5 + xp.log1p(xp.exp(-absz))


def sigmoid(z: Any) -> Any:
    """``1 / (1 + exp(-z))`` by two branches on ``e = exp(-|z|)`` (never overflows).

    Examples
    --------
    >>> import numpy as np
    >>> sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    array([0. , 0.5, 1. ])
    """
    xp = array_namespace(z)
    e = xp.exp(-xp.abs(z))
    one_plus = 1.0 + e
    return xp.where(z >= 0.0, 1.0 / one_plus, e / one_plus)


def log_sum_exp(Z: Any) -> Any:
    """Row-wise ``log sum_k exp(Z[i, k])`` with the max shift; ``Z`` ``(n, K)`` -> ``(n,)``.

    Examples
    --------
    >>> import numpy as np
    >>> bool(np.allclose(log_sum_exp(np.array([[1000.0, 1000.0]])), 1000.0 + np.log(2.0)))
    True
    """
    xp = array_namespace(Z)
    m = xp.max(Z, axis=1, keepdims=True)
    return m[:, 0] + xp.log(xp.sum(xp.exp(Z - m), axis=1))


# ---------------------------------------------------------------------------------------------
# label checks (one host sync each, at construction time)
# ---------------------------------------------------------------------------------------------


def _check_label_vector(y: Any) -> Any:
    try:
        xp = array_namespace(y)
    except TypeError:
        raise TypeError(f"y: expected an array, got {type(y).__name__}") from None
    if y.ndim != 1:
        raise ValueError(f"y: expected a 1-D array of labels, got shape {tuple(y.shape)}")
    if not (xp.isdtype(y.dtype, "numeric") or xp.isdtype(y.dtype, "bool")):
        raise TypeError(f"y: expected a real or boolean array, got dtype {y.dtype}")
    if xp.isdtype(y.dtype, "complex floating"):
        raise TypeError(f"y: expected a real array, got dtype {y.dtype}")
    if xp.isdtype(y.dtype, "real floating") and not bool(xp.all(xp.isfinite(y))):
        raise ValueError("y: contains non-finite values")
    return xp


def _as_float(y: Any, dtype: Any) -> Any:
    xp = array_namespace(y)
    return y if y.dtype == dtype else xp.astype(y, dtype)


def _default_float(xp: Any, dtype: Any) -> Any:
    return xp.float64 if dtype is None else dtype


def _weighted_mean(rows: Any, row_grads: Any, weights: Any) -> tuple[Any, Any]:
    """``(mean(weights * rows), weights * row_grads / n)``; unit weights when ``None``.

    ``rows`` ``(n,)`` are the per-row losses and ``row_grads`` (``(n,)`` or ``(n, K)``) their
    derivatives in ``z``: the one place where the families reduce over rows.
    """
    xp = array_namespace(rows)
    n = float(rows.shape[0])
    if weights is None:
        return xp.mean(rows), row_grads / n
    scale = weights if row_grads.ndim == 1 else xp.reshape(weights, (-1, 1))
    return xp.mean(weights * rows), row_grads * (scale / n)


# ---------------------------------------------------------------------------------------------
# families
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """Base class of the GLM families (a frozen dataclass; see the subclasses).

    Subclasses define

    - ``name`` (class attribute) and ``is_classifier``;
    - :meth:`encode_labels` ``(y, dtype) -> Y``: validate the user's labels and encode them
      as a floating array (``(n,)``, or the ``(n, K)`` one-hot matrix for ``multinomial``);
    - :meth:`loss_and_grad_z` ``(z, Y, weights=None) -> (loss, dz)``: the mean loss over
      rows (a 0-d array) and its gradient ``dz = d loss / d z`` (shape of ``z``, i.e. the
      per-row derivative divided by ``n``); with row ``weights`` ``(n,)`` the loss is
      ``mean(weights * loss_i)`` and ``dz`` is scaled row by row the same way;
    - :meth:`inverse_link` ``(z) -> mean response``.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.glm import Family, family
    >>> fam = family("logistic")
    >>> isinstance(fam, Family), fam.name, fam.is_classifier
    (True, 'logistic', True)
    >>> loss, dz = fam.loss_and_grad_z(np.zeros(2), fam.encode_labels(np.array([0, 1])))
    >>> bool(np.isclose(loss, np.log(2.0))), bool(np.allclose(dz, [0.25, -0.25]))
    (True, True)
    """

    name: ClassVar[str] = ""
    is_classifier: ClassVar[bool] = False

    def n_outputs(self, y: Any) -> int | None:
        """Number of columns ``K`` of ``W`` (multinomial) or ``None`` for a vector ``w``."""
        return None

    def encode_labels(self, y: Any, dtype: Any = None) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss_and_grad_z(
        self, z: Any, Y: Any, weights: Any = None
    ) -> tuple[Any, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse_link(self, z: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Logistic(Family):
    """Binary logistic regression (Bernoulli, logit link).

    Loss ``mean(softplus(z) - y z)`` with ``y in {0, 1}``; gradient in ``z``:
    ``(sigmoid(z) - y) / n``. :ref:`theory-glm-losses` [E04, E05].

    Parameters
    ----------
    labels : {"auto", "01", "pm1"}, default "auto"
        Label coding. ``"01"``: ``y in {0, 1}``; ``"pm1"``: ``y in {-1, +1}`` (``+1`` is
        the positive class), which is the same function as ``mean softplus(-y z)``.
        ``"auto"``: ``{0, 1}`` when every label is 0 or 1, else ``{-1, +1}`` when every
        label is -1 or 1 (so a ``y`` with no ``-1`` is read as 0/1, which gives the same
        function for the labels 1 it contains). Any other value raises ``ValueError``.
        Labels may be integer, boolean or floating arrays.

    Examples
    --------
    >>> import numpy as np
    >>> fam = Logistic()
    >>> Y = fam.encode_labels(np.array([-1, 1, 1]))
    >>> Y
    array([0., 1., 1.])
    >>> loss, dz = fam.loss_and_grad_z(np.zeros(3), Y)
    >>> bool(np.isclose(loss, np.log(2.0))), dz
    (True, array([ 0.16666667, -0.16666667, -0.16666667]))
    """

    labels: str = "auto"
    name: ClassVar[str] = "logistic"
    is_classifier: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.labels not in ("auto", "01", "pm1"):
            raise ValueError(f"labels: expected one of ('auto', '01', 'pm1'), got {self.labels!r}")

    def encode_labels(self, y: Any, dtype: Any = None) -> Any:
        """Validate ``y`` (``(n,)``) and return it as 0/1 floats of ``dtype`` (default float64)."""
        xp = _check_label_vector(y)
        dtype = _default_float(xp, dtype)
        if xp.isdtype(y.dtype, "bool"):
            if self.labels == "pm1":
                raise ValueError("y: labels='pm1' needs labels in {-1, 1}, got a boolean array")
            return xp.astype(y, dtype)
        is01 = bool(xp.all((y == 0) | (y == 1)))
        ispm = bool(xp.all((y == -1) | (y == 1)))
        coding = self.labels
        if coding == "auto":
            if is01:
                coding = "01"
            elif ispm:
                coding = "pm1"
            else:
                raise ValueError("y: logistic labels must all be in {0, 1} or all in {-1, 1}")
        if coding == "01":
            if not is01:
                raise ValueError("y: labels='01' needs every label in {0, 1}")
            return _as_float(y, dtype)
        if not ispm:
            raise ValueError("y: labels='pm1' needs every label in {-1, 1}")
        return (_as_float(y, dtype) + 1.0) * 0.5

    def loss_and_grad_z(self, z: Any, Y: Any, weights: Any = None) -> tuple[Any, Any]:
        """Mean ``softplus(s z)`` with ``s = 1 - 2y`` (exact for y in {0,1}) and ``dz``."""
        return _weighted_mean(softplus((1.0 - 2.0 * Y) * z), sigmoid(z) - Y, weights)

    def inverse_link(self, z: Any) -> Any:
        """``P(y = 1) = sigmoid(z)``."""
        return sigmoid(z)


@dataclass(frozen=True)
class Multinomial(Family):
    """Multinomial (softmax) regression with ``K`` classes; ``W`` has shape ``(d, K)``.

    Loss ``mean_i(lse(Z_i) - Z_{i, c_i})`` with ``Z = A W``; gradient in ``Z``:
    ``(softmax(Z) - onehot(c)) / n``. Without L2 the loss is invariant to
    ``W + v 1_K^T`` (the Hessian is singular); the gradient of the penalised objective
    satisfies ``grad @ 1_K = lam W 1_K``. :ref:`theory-glm-losses` [E06].

    Parameters
    ----------
    n_classes : int or None, default None
        ``K``. ``None`` infers ``K = max(y) + 1`` from the labels; give it when a subset
        of the data (a split, a minibatch) may miss the last classes.

    Labels are integer classes ``0 .. K-1`` (an integer array, or a floating array holding
    whole numbers); they are encoded as the one-hot ``(n, K)`` matrix.

    Examples
    --------
    >>> import numpy as np
    >>> fam = Multinomial()
    >>> Y = fam.encode_labels(np.array([0, 2, 1]))
    >>> Y.shape
    (3, 3)
    >>> loss, dZ = fam.loss_and_grad_z(np.zeros((3, 3)), Y)
    >>> bool(np.isclose(loss, np.log(3.0))), bool(np.allclose(dZ.sum(axis=1), 0.0))
    (True, True)
    """

    n_classes: int | None = None
    name: ClassVar[str] = "multinomial"
    is_classifier: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.n_classes is not None:
            if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int):
                raise TypeError(f"n_classes: expected an integer or None, got {self.n_classes!r}")
            if self.n_classes < 2:
                raise ValueError(f"n_classes: must be >= 2, got {self.n_classes!r}")

    def _classes(self, y: Any) -> tuple[Any, int]:
        xp = _check_label_vector(y)
        if xp.isdtype(y.dtype, "bool"):
            raise TypeError("y: multinomial labels must be integer classes, got a boolean array")
        if xp.isdtype(y.dtype, "real floating"):
            if not bool(xp.all(y == xp.round(y))):
                raise ValueError("y: multinomial labels must be whole numbers (classes 0..K-1)")
            y = xp.astype(y, xp.int64)
        if y.shape[0] == 0:
            raise ValueError("y: no labels")
        lo = int(xp.min(y))
        hi = int(xp.max(y))
        K = hi + 1 if self.n_classes is None else self.n_classes
        if lo < 0 or hi >= K:
            raise ValueError(
                f"y: multinomial labels must be in 0..{K - 1}"
                + ("" if self.n_classes is None else f" (n_classes={self.n_classes})")
                + f", got min {lo} and max {hi}"
            )
        if K < 2:
            raise ValueError(f"y: multinomial needs at least 2 classes, got labels 0..{hi}")
        return y, K

    def n_outputs(self, y: Any) -> int:
        """``K``: ``n_classes`` or ``max(y) + 1``."""
        return self._classes(y)[1]

    def encode_labels(self, y: Any, dtype: Any = None) -> Any:
        """Validate the classes ``y`` (``(n,)``) and return the one-hot ``(n, K)`` matrix."""
        c, K = self._classes(y)
        xp = array_namespace(c)
        dtype = _default_float(xp, dtype)
        classes = xp.arange(K, dtype=c.dtype, device=device_of(c))
        return xp.astype(xp.reshape(c, (-1, 1)) == xp.reshape(classes, (1, -1)), dtype)

    def loss_and_grad_z(self, z: Any, Y: Any, weights: Any = None) -> tuple[Any, Any]:
        """Mean ``lse(Z_i) - Z_{i,c_i}`` (max-shifted) and ``dZ = (softmax(Z) - Y)/n``."""
        xp = array_namespace(z, Y)
        S = z - xp.max(z, axis=1, keepdims=True)  # every row has max 0
        log_norm = xp.log(xp.sum(xp.exp(S), axis=1, keepdims=True))
        rows = log_norm[:, 0] - xp.sum(Y * S, axis=1)
        return _weighted_mean(rows, xp.exp(S - log_norm) - Y, weights)

    def inverse_link(self, z: Any) -> Any:
        """Class probabilities ``softmax(Z)`` row by row."""
        xp = array_namespace(z)
        S = z - xp.max(z, axis=1, keepdims=True)
        E = xp.exp(S)
        return E / xp.sum(E, axis=1, keepdims=True)


@dataclass(frozen=True)
class LeastSquares(Family):
    """Least squares (Gaussian, identity link): loss ``mean((z - y)^2) / 2``, ``dz = (z - y)/n``.

    Labels: any finite real numbers.

    Examples
    --------
    >>> import numpy as np
    >>> loss, dz = LeastSquares().loss_and_grad_z(np.array([1.0, 2.0]), np.array([0.0, 0.0]))
    >>> float(loss), dz
    (1.25, array([0.5, 1. ]))
    """

    name: ClassVar[str] = "least_squares"

    def encode_labels(self, y: Any, dtype: Any = None) -> Any:
        """Validate ``y`` (``(n,)``, finite) and cast it to ``dtype`` (default float64)."""
        xp = _check_label_vector(y)
        if xp.isdtype(y.dtype, "bool"):
            raise TypeError("y: least_squares needs real targets, got a boolean array")
        return _as_float(y, _default_float(xp, dtype))

    def loss_and_grad_z(self, z: Any, Y: Any, weights: Any = None) -> tuple[Any, Any]:
        """Mean ``(z - y)^2 / 2`` and ``dz = (z - y) / n``."""
        r = z - Y
        return _weighted_mean(0.5 * (r * r), r, weights)

    def inverse_link(self, z: Any) -> Any:
        """The identity."""
        return z


@dataclass(frozen=True)
class Poisson(Family):
    """Poisson regression with log link and the C^1 safe exponential.

    Loss ``mean(e(z) - y z)`` (``log y!`` dropped), ``e(z) = exp(z)`` for ``z <= zmax`` and
    ``exp(zmax) (1 + z - zmax)`` above; gradient in ``z``: ``(exp(min(z, zmax)) - y) / n``,
    the exact derivative of the loss. ``zmax = 30`` keeps ``e`` finite in float32 for any
    finite ``z``. :ref:`theory-glm-losses` [E06].

    Parameters
    ----------
    zmax : float, default 30.0
        Where the exponential switches to its tangent line.

    Labels: non-negative finite counts (non-integer values are accepted: the loss is then
    the Poisson quasi-likelihood, as in scikit-learn's ``PoissonRegressor``).

    Examples
    --------
    >>> import numpy as np
    >>> fam = Poisson()
    >>> loss, dz = fam.loss_and_grad_z(np.array([0.0, 31.0]), np.array([1.0, 0.0]))
    >>> bool(np.isclose(loss, (1.0 + 2.0 * np.exp(30.0)) / 2))
    True
    >>> bool(np.isclose(dz[1], np.exp(30.0) / 2))
    True
    """

    zmax: float = 30.0
    name: ClassVar[str] = "poisson"

    def __post_init__(self) -> None:
        if isinstance(self.zmax, bool) or not isinstance(self.zmax, (int, float)):
            raise TypeError(f"zmax: expected a real number, got {self.zmax!r}")
        if not math.isfinite(self.zmax):
            raise ValueError(f"zmax: must be finite, got {self.zmax!r}")

    def encode_labels(self, y: Any, dtype: Any = None) -> Any:
        """Validate the counts ``y`` (``(n,)``, finite, ``>= 0``) and cast them to ``dtype``."""
        xp = _check_label_vector(y)
        if xp.isdtype(y.dtype, "bool"):
            raise TypeError("y: poisson needs counts, got a boolean array")
        if not bool(xp.all(y >= 0)):
            raise ValueError("y: poisson counts must be >= 0 (found a negative count)")
        return _as_float(y, _default_float(xp, dtype))

    def loss_and_grad_z(self, z: Any, Y: Any, weights: Any = None) -> tuple[Any, Any]:
        """Mean ``e(z) - y z`` and ``dz = (exp(min(z, zmax)) - y) / n``."""
        xp = array_namespace(z, Y)
        zc = xp.clip(z, max=float(self.zmax))
        ez = xp.exp(zc)  # e'(z)
        return _weighted_mean(ez * (1.0 + (z - zc)) - Y * z, ez - Y, weights)

    def inverse_link(self, z: Any) -> Any:
        """The mean count ``exp(z)``."""
        return array_namespace(z).exp(z)


_CLASSES: dict[str, type[Family]] = {
    cls.name: cls for cls in (LeastSquares, Logistic, Multinomial, Poisson)
}

#: name -> the family with default options (read-only).
FAMILIES: MappingProxyType[str, Family] = MappingProxyType(
    {name: cls() for name, cls in sorted(_CLASSES.items())}
)


def family(name: str | Family, **options: Any) -> Family:
    """Return the family called ``name`` (with ``options``), or ``name`` itself if a Family.

    Parameters
    ----------
    name : {"least_squares", "logistic", "multinomial", "poisson"} or Family
    **options
        Family options: ``labels`` (logistic), ``n_classes`` (multinomial), ``zmax``
        (poisson). Not allowed together with a ``Family`` instance.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones).
    TypeError
        For an unknown option or a non-string, non-Family ``name``.

    Examples
    --------
    >>> family("poisson", zmax=20.0)
    Poisson(zmax=20.0)
    >>> family("probit")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: family: unknown family 'probit'; expected one of ('least_squares', ...
    """
    if isinstance(name, Family):
        if options:
            raise TypeError(
                f"family: options {sorted(options)} cannot be combined with a Family instance"
            )
        return name
    if not isinstance(name, str):
        raise TypeError(f"family: expected a name or a Family, got {type(name).__name__}")
    if name not in _CLASSES:
        raise ValueError(f"family: unknown family {name!r}; expected one of {tuple(FAMILIES)}")
    try:
        return _CLASSES[name](**options)
    except TypeError as exc:
        raise TypeError(f"family: bad options for {name!r}: {exc}") from None
