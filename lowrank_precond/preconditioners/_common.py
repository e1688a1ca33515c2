"""Private helpers shared by the preconditioner factories (not public API).

Every factory in :mod:`lowrank_precond.preconditioners` is built the same way::

    def method(<hyper-parameters>, nonfinite="raise"):
        <validate every argument here, once, with the checks below>

        def init(x):            # x: the parameter
            check_param("x", x) ...
            return MethodState(t=0, ...)          # a FLAT dataclass, see below

        def update(grad, state):
            check_grad_like(grad, <array of the state>) ...
            return direction, MethodState(...)     # a NEW state; the old one is not mutated

        return Preconditioner("method", init, guard_nonfinite(update, nonfinite), hyperparams)

What lives here, so that no factory re-derives it:

Validation (raise ``ValueError``/``TypeError`` whose message starts with the argument name)
    :func:`check_beta`, :func:`check_betas`, :func:`check_optional_beta`, :func:`check_eps`,
    :func:`check_update_freq`, :func:`check_bool`, :func:`check_param`,
    :func:`check_grad_like`.
Step bookkeeping
    :func:`is_refresh_step` (the ``t % T == 0`` rule, ``t`` counting from 0 *before* the
    increment), :func:`bias_correction` (``1 - beta^t``), :func:`ema`,
    :func:`adam_ratio` (Adam's bias-corrected, eps-outside normalisation).
Parameter layout for matrix methods
    :class:`MatrixLayout` / :func:`matrix_layout`: how a parameter of any supported shape is
    viewed as the 2-D working matrix of AdaDiag/ASGO (vectors as a row or a column, optional
    transpose), and back.

State conventions
    States are ``@dataclass`` (not frozen, no nested dataclasses) whose fields are arrays,
    Python ``int`` or ``float``; the step counter is the ``int`` field ``t`` (number of
    updates applied so far, 0 after ``init``). ``update`` never writes into the arrays of the
    state it receives, so a caller may keep the old state (``nonfinite="skip"`` returns the
    very same object). Arrays have the parameter's dtype and device unless a docstring says
    otherwise. ``dataclasses.asdict(state)`` is a checkpoint and
    :func:`~lowrank_precond.preconditioners.base.state_from_dict` restores it. An optional
    part of the state (momentum, a second basis) gets its own dataclass rather than a
    ``None`` field (``ASGOState`` / ``ASGOMomentumState``, ``AdaDiagState`` /
    ``AdaDiagTwoSidedState``), so every field is always an array or a number.

Namespaces
    Take ``xp = array_namespace(grad)`` from the gradient (the caller's array) and pass it
    down (as :func:`adam_ratio` does): NumPy turns 0-d results into NumPy scalars, from which
    no namespace can be inferred.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from lowrank_precond.backends import (
    array_namespace,
    check_floating,
    check_in,
    check_int,
    check_positive,
    quiet_floating_point,
)

__all__ = [
    "IMPLS",
    "MatrixLayout",
    "adam_ratio",
    "as_direction",
    "safe_norm",
    "bias_correction",
    "check_beta",
    "check_betas",
    "check_bool",
    "check_eps",
    "check_factor_dtype",
    "check_grad_like",
    "check_grad_shape",
    "check_optional_beta",
    "check_param",
    "check_update_freq",
    "ema",
    "factor_dtype_for",
    "flat_grad",
    "is_refresh_step",
    "matrix_layout",
    "param_fields",
    "param_shape",
]


# --------------------------------------------------------------------------- validation


def check_beta(name: str, value: Any) -> float:
    """Return ``float(value)``; raise unless it is a real number in ``[0, 1)``.

    Examples
    --------
    >>> check_beta("beta1", 0.9)
    0.9
    >>> check_beta("beta1", 1.0)
    Traceback (most recent call last):
    ...
    ValueError: beta1: must be in [0, 1), got 1.0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number in [0, 1), got {value!r}")
    v = float(value)
    if not 0.0 <= v < 1.0:  # also rejects NaN
        raise ValueError(f"{name}: must be in [0, 1), got {value!r}")
    return v


def check_optional_beta(name: str, value: Any) -> float | None:
    """``None`` passes through; otherwise :func:`check_beta`."""
    return None if value is None else check_beta(name, value)


def check_betas(name: str, betas: Any) -> tuple[float, float]:
    """Return ``(beta1, beta2)`` as floats; raise unless a pair of numbers in ``[0, 1)``.

    Examples
    --------
    >>> check_betas("betas", (0.9, 0.999))
    (0.9, 0.999)
    >>> check_betas("betas", (0.9,))
    Traceback (most recent call last):
    ...
    ValueError: betas: expected a pair (beta1, beta2), got (0.9,)
    """
    try:
        pair = tuple(betas)
    except TypeError:
        raise TypeError(f"{name}: expected a pair (beta1, beta2), got {betas!r}") from None
    if len(pair) != 2:
        raise ValueError(f"{name}: expected a pair (beta1, beta2), got {betas!r}")
    return (check_beta(f"{name}[0]", pair[0]), check_beta(f"{name}[1]", pair[1]))


def check_eps(name: str, value: Any) -> float:
    """Return ``float(value)``; raise unless finite and ``> 0``."""
    return check_positive(name, value)


def check_update_freq(name: str, value: Any) -> int:
    """Return ``int(value)``; raise unless an integer ``>= 1``."""
    return check_int(name, value, minimum=1)


def check_bool(name: str, value: Any) -> bool:
    """Return ``value``; raise ``TypeError`` unless it is a ``bool``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return value


def check_param(name: str, x: Any, ndims: tuple[int, ...] | None = None) -> Any:
    """Check a parameter passed to ``init``: a non-empty real floating array (of an allowed
    ``ndim``).

    Returns its namespace.
    """
    xp = check_floating(name, x)
    if math.prod(x.shape) == 0:
        raise ValueError(f"{name}: the parameter has no entries (shape {tuple(x.shape)})")
    if ndims is not None and x.ndim not in ndims:
        allowed = " or ".join(f"{k}-D" for k in ndims)
        raise ValueError(
            f"{name}: expected a {allowed} array, got shape {tuple(x.shape)} (ndim={x.ndim})"
        )
    return xp


def check_grad_like(grad: Any, like: Any) -> None:
    """Raise ``ValueError`` unless ``grad`` has the shape of ``like`` (a state array).

    ``grad`` is already known to be a finite floating array (``guard_nonfinite`` runs first).
    """
    if tuple(grad.shape) != tuple(like.shape):
        raise ValueError(
            f"grad: shape {tuple(grad.shape)} does not match the state, which was "
            f"initialised for shape {tuple(like.shape)}"
        )


def param_fields(shape: tuple[int, ...]) -> dict[str, int]:
    """A 1-D or 2-D parameter shape as the int state fields ``param_rows``, ``param_cols``.

    Examples
    --------
    >>> param_fields((5,)), param_fields((2, 3))
    ({'param_rows': 5, 'param_cols': 0}, {'param_rows': 2, 'param_cols': 3})
    """
    if len(shape) == 0:
        return {"param_rows": -1, "param_cols": -1}
    return {"param_rows": int(shape[0]), "param_cols": int(shape[1]) if len(shape) == 2 else 0}


def param_shape(rows: int, cols: int) -> tuple[int, ...]:
    """Inverse of :func:`param_fields` (``()`` for the unknown ``-1``)."""
    if rows < 0:
        return ()
    return (rows,) if cols == 0 else (rows, cols)


def check_grad_shape(grad: Any, shape: tuple[int, ...]) -> None:
    """``ValueError`` naming ``grad`` unless it has the parameter's ``shape`` (``()``: unknown).

    For the matrix methods, whose working matrix alone cannot tell a gradient from its
    transpose.

    Examples
    --------
    >>> import numpy as np
    >>> check_grad_shape(np.zeros((2, 3)), (3, 2))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: grad: shape (2, 3) does not match the parameter's shape (3, 2), for which ...
    """
    if shape and tuple(grad.shape) != tuple(shape):
        raise ValueError(
            f"grad: shape {tuple(grad.shape)} does not match the parameter's shape "
            f"{tuple(shape)}, for which the state was initialised"
        )


def flat_grad(grad: Any, d: int) -> Any:
    """``grad`` reshaped to ``(d,)``; ``ValueError`` naming it unless it has ``d`` entries.

    For the vector methods, whose state was initialised for a parameter of ``d`` entries.

    Examples
    --------
    >>> import numpy as np
    >>> flat_grad(np.ones((2, 3)), 6).shape
    (6,)
    """
    n = math.prod(grad.shape)
    if n != d:
        raise ValueError(f"grad: has {n} entries but the state was initialised for d={d}")
    return array_namespace(grad).reshape(grad, (d,))


#: accepted values of ``impl`` (the methods with a fused implementation)
IMPLS = ("auto", "reference", "fused")

#: accepted names of ``factor_dtype``
FACTOR_DTYPES = ("float32", "float64")


def check_factor_dtype(name: str, factor_dtype: Any) -> str | None:
    """Normalise ``factor_dtype`` (None, "float32"/"float64" or that dtype object) to a name.

    Examples
    --------
    >>> import numpy as np
    >>> check_factor_dtype("factor_dtype", np.float64), check_factor_dtype("factor_dtype", None)
    ('float64', None)
    """
    if factor_dtype is None:
        return None
    if isinstance(factor_dtype, str):
        label = factor_dtype
    else:  # np.float64, np.dtype("float64"), torch.float64, array_api_strict.float64, ...
        label = getattr(factor_dtype, "__name__", None) or str(factor_dtype)
        label = label.rsplit(".", 1)[-1]
    if label not in FACTOR_DTYPES:
        raise ValueError(
            f"{name}: expected None, 'float32' or 'float64' (or that dtype), got {factor_dtype!r}"
        )
    return label


def factor_dtype_for(xp: Any, param_dtype: Any, factor_dtype: str | None) -> Any:
    """The dtype of a method's stored factor and arithmetic for a parameter of ``param_dtype``.

    ``factor_dtype`` (a name from :func:`check_factor_dtype`) wins; ``None`` means float64 for
    float32 and half-precision parameters and the parameter's own dtype otherwise. Why: the
    full-matrix directions project ``g`` off a subspace and scale the rest by
    ``eps^{-1/2}``, so the rounding of that projection (``~u |g|``) is amplified by
    ``eps^{-1/2}`` -- in float32 (``u = 6e-8``) at ``eps = 1e-8`` a gradient of norm 6e3
    moved a parameter by 3-8 ``lr`` instead of at most one (:ref:`theory-adagram-numerics`).
    """
    if factor_dtype is not None:
        return getattr(xp, factor_dtype)
    low = [getattr(xp, n) for n in ("float32", "float16", "bfloat16") if hasattr(xp, n)]
    return xp.float64 if any(param_dtype == t for t in low) else param_dtype


def safe_norm(g: Any) -> float:
    """``|g|`` as a Python float, rescaled where the plain norm overflows or underflows
    (``nan``/``inf`` for a non-finite ``g``).

    Examples
    --------
    >>> import numpy as np
    >>> bool(np.isclose(safe_norm(np.array([3e200, 4e200])), 5e200))
    True
    >>> bool(np.isclose(safe_norm(np.array([3e-200, 4e-200])), 5e-200))
    True
    """
    xp = array_namespace(g)
    with quiet_floating_point(g):  # an overflowing plain norm is expected, and handled
        n = float(xp.linalg.vector_norm(g))
        if n != 0.0 and math.isfinite(n):
            return n
        m = float(xp.max(xp.abs(g)))
        if m == 0.0 or not math.isfinite(m):
            return m if n == 0.0 else n
        return m * float(xp.linalg.vector_norm(g / m))


def as_direction(p: Any, grad: Any) -> Any:
    """The flat direction ``p`` (factor dtype) in ``grad``'s shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> as_direction(np.ones(4), np.zeros((2, 2), dtype=np.float32)).dtype
    dtype('float32')
    """
    xp = array_namespace(grad)
    if p.dtype != grad.dtype:
        p = xp.astype(p, grad.dtype)
    return xp.reshape(p, tuple(grad.shape))


# --------------------------------------------------------------------------- step rules


def is_refresh_step(t: int, update_freq: int) -> bool:
    """The refresh rule of AdaDiag/ASGO: refresh when ``t % update_freq == 0``.

    ``t`` is the number of updates applied *before* this one (0 on the first call), so the
    first update always refreshes and then every ``update_freq``-th one.

    Examples
    --------
    >>> [t for t in range(10) if is_refresh_step(t, 4)]
    [0, 4, 8]
    """
    return t % update_freq == 0


def bias_correction(beta: float, t: int) -> float:
    """``1 - beta**t`` (a Python float), Adam's bias correction after ``t >= 1`` updates.

    Examples
    --------
    >>> bias_correction(0.5, 2)
    0.75
    """
    return 1.0 - beta**t


def ema(average: Any, value: Any, beta: float) -> Any:
    """``beta * average + (1 - beta) * value`` as a new array (inputs are not modified)."""
    return beta * average + (1.0 - beta) * value


def adam_ratio(xp: Any, m: Any, v: Any, t: int, betas: tuple[float, float], eps: float) -> Any:
    """Adam's normalised step ``(m / (1-b1^t)) / (sqrt(v) / sqrt(1-b2^t) + eps)``.

    ``t >= 1`` is the number of moment updates so far; eps is outside the root
    (:ref:`theory-baselines`). The form ``sqrt(v) / sqrt(1 - b2^t)`` is the one
    ``torch.optim.Adam`` uses, which keeps iterates equal to its own to rounding.

    Parameters
    ----------
    xp : namespace
        The arrays' namespace (passed explicitly: NumPy turns 0-d results into scalars).
    m, v : array
        First and second moments (same shape, dtype and backend).
    t : int
        Step count (``>= 1``).
    betas : (float, float)
        ``(b1, b2)``.
    eps : float
        Added to the root of the bias-corrected second moment.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([3.0, -4.0])
    >>> m, v = 0.1 * g, 0.001 * g * g          # one Adam step from zero moments
    >>> xp = array_namespace(g)
    >>> bool(np.allclose(adam_ratio(xp, m, v, 1, (0.9, 0.999), 1e-12), np.sign(g)))
    True
    """
    b1, b2 = betas
    denom = xp.sqrt(v) / (bias_correction(b2, t) ** 0.5) + eps
    return (m / bias_correction(b1, t)) / denom


# --------------------------------------------------------------------------- matrix layout


@dataclass(frozen=True)
class MatrixLayout:
    """How a parameter is seen as the 2-D working matrix of a matrix method.

    A deterministic function of the parameter's shape and the method's rule, so it is
    recomputed from ``grad.shape`` in ``update`` and never stored in a state.

    Attributes
    ----------
    shape : tuple of int
        The parameter's own shape (1-D or 2-D).
    rows, cols : int
        The working matrix's shape ``(rows, cols)``.
    transposed : bool
        Whether the working matrix is the transpose of the parameter (after a 1-D parameter
        was made a row or a column).
    """

    shape: tuple[int, ...]
    rows: int
    cols: int
    transposed: bool

    def to_matrix(self, x: Any) -> Any:
        """The working ``(rows, cols)`` matrix of an array of shape :attr:`shape` (a view)."""
        xp = array_namespace(x)
        if len(self.shape) == 1:
            # a vector is a row or a column; either way a reshape gives the working matrix
            return xp.reshape(x, (self.rows, self.cols))
        return x.T if self.transposed else x

    def from_matrix(self, a: Any) -> Any:
        """Inverse of :meth:`to_matrix`: an array of shape :attr:`shape`."""
        xp = array_namespace(a)
        if len(self.shape) == 1:
            return xp.reshape(a, self.shape)
        return a.T if self.transposed else a


def matrix_layout(
    shape: tuple[int, ...],
    *,
    vector: str,
    rows_le_cols: bool = False,
    transpose: bool = False,
) -> MatrixLayout:
    """The :class:`MatrixLayout` of a 1-D or 2-D parameter of ``shape``.

    Parameters
    ----------
    shape : tuple of int
        The parameter's shape; ``len(shape)`` must be 1 or 2 (callers validate it).
    vector : {"row", "column"}
        A 1-D parameter of length ``d`` becomes ``(1, d)`` ("row") or ``(d, 1)`` ("column").
    rows_le_cols : bool
        Transpose when needed so that ``rows <= cols`` (AdaDiag's "work with m <= n").
    transpose : bool
        Always transpose the (row/column) matrix (ASGO's ``side="right"``); when True,
        ``rows_le_cols`` has no effect.

    Examples
    --------
    >>> matrix_layout((5, 3), vector="row", rows_le_cols=True)
    MatrixLayout(shape=(5, 3), rows=3, cols=5, transposed=True)
    >>> matrix_layout((4,), vector="column", transpose=True)
    MatrixLayout(shape=(4,), rows=1, cols=4, transposed=True)
    """
    check_in("vector", vector, ("row", "column"))
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        m, n = (1, shape[0]) if vector == "row" else (shape[0], 1)
    elif len(shape) == 2:
        m, n = shape
    else:
        raise ValueError(f"x: expected a 1-D or 2-D parameter, got shape {shape}")
    flip = transpose or (rows_le_cols and m > n)
    if flip:
        m, n = n, m
    return MatrixLayout(shape=shape, rows=m, cols=n, transposed=flip)
