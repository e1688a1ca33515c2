"""Small numerics helpers shared inside :mod:`lowrank_precond.linalg` (private).

Everything here works on any array-API backend and never emits a floating-point warning on
finite input. The helpers that take ``xp`` are for the unchecked kernels: they derive
nothing from their arguments (no ``array_namespace``), so a kernel's namespace is found once,
by its public function or its caller. Only :func:`require_finite` (one host transfer) and
:func:`host_floats` (one host transfer) synchronise with the device.
"""

from __future__ import annotations

import math
from typing import Any

from lowrank_precond.backends import all_finite, array_namespace, device_of, on_host, to_numpy

__all__ = [
    "as_core",
    "core_dtype_of",
    "host_floats",
    "nonfinite_message",
    "require_finite",
    "scaled_norm",
    "scaled_norm_xp",
]


def core_dtype_of(xp: Any, dtype: Any) -> Any:
    """The core dtype of ``dtype`` (float32 -> float64, else unchanged): ``backends.core_dtype``
    without the namespace lookup."""
    return xp.float64 if dtype == xp.float32 else dtype


def as_core(xp: Any, a: Any) -> Any:
    """``a`` in its core dtype (``backends.to_core`` without the namespace lookup)."""
    dtype = core_dtype_of(xp, a.dtype)
    return a if a.dtype == dtype else xp.astype(a, dtype)


def nonfinite_message(name: str) -> str:
    """The one message of a non-finite array argument: ``"NAME: contains NaN or inf"``."""
    return f"{name}: contains NaN or inf"


def require_finite(xp: Any, *named: tuple[str, Any]) -> None:
    """Raise ``ValueError("NAME: contains NaN or inf")`` for the first non-finite array.

    ``named`` are ``(name, array)`` pairs of one namespace ``xp``, checked in order. On the
    CPU each array goes through :func:`~lowrank_precond.backends.all_finite` (its fast host
    path); on a device the per-array flags are reduced there and cross to the host once, so
    a public function's whole finiteness check costs one synchronisation.
    """
    if len(named) > 1 and not on_host(named[0][1]):
        if bool(xp.all(xp.stack([xp.all(xp.isfinite(a)) for _, a in named]))):
            return
    for name, a in named:
        if not all_finite(a):
            raise ValueError(nonfinite_message(name))


def host_floats(xp: Any, *scalars: Any) -> list[float]:
    """Several 0-d arrays of one dtype as Python floats with one device-to-host transfer."""
    if on_host(scalars[0]):  # host memory: reading each costs no synchronisation
        return [float(v) for v in scalars]
    return [float(v) for v in to_numpy(xp.stack(list(scalars))).tolist()]


def scaled_norm(x: Any) -> Any:
    """Overflow- and underflow-safe Euclidean norm of all entries of ``x``, as a 0-d array.

    ``m * ||x / m||`` with ``m = max|x_i|`` (:ref:`theory-adagram-numerics`): the squares of
    ``x / m`` lie in ``[0, 1]``, so the result is accurate from the smallest subnormal up to
    ``max_float / sqrt(x.size)`` (a plain ``sqrt(sum x_i^2)`` overflows for ``|x| > 1.8e19``
    and underflows for ``|x| < 1e-19`` in float32). Exactly ``0`` iff ``x`` is all zeros;
    ``inf``/``nan`` entries give an ``inf``/``nan`` result without a warning.

    Parameters
    ----------
    x : array, any shape, real floating
        An empty array has norm ``0``.

    Returns
    -------
    array, shape ()
        Same dtype and device as ``x``; no host synchronisation.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([3e30, 4e30], dtype=np.float32)   # x @ x overflows float32
    >>> bool(np.isclose(scaled_norm(x), 5e30)), scaled_norm(x).dtype
    (True, dtype('float32'))
    >>> float(scaled_norm(np.array([3e-200, 4e-200])))   # x @ x underflows to 0
    5e-200
    >>> float(scaled_norm(np.zeros(3)))
    0.0
    """
    return scaled_norm_xp(array_namespace(x), x)


def scaled_norm_xp(xp: Any, x: Any) -> Any:
    """:func:`scaled_norm` with the namespace given (the kernels' form)."""
    if math.prod(x.shape) == 0:
        return xp.zeros((), dtype=x.dtype, device=device_of(x))
    m = xp.max(xp.abs(x))
    ok = xp.isfinite(m) & (m > 0)
    safe = xp.where(ok, m, xp.ones_like(m))
    r = xp.linalg.vector_norm(x / safe)
    # m == 0: r == 0;  m non-finite: r is the (inf or nan) norm of the raw entries.
    return xp.where(ok, m * r, r)
