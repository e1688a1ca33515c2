"""Small numerics helpers shared inside :mod:`lowrank_precond.linalg` (private).

Everything here works on any array-API backend, creates no host synchronisation and never
emits a floating-point warning on finite input.
"""

from __future__ import annotations

import math
from typing import Any

from lowrank_precond.backends import array_namespace, device_of

__all__ = ["scaled_norm"]


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
    xp = array_namespace(x)
    if math.prod(x.shape) == 0:
        return xp.zeros((), dtype=x.dtype, device=device_of(x))
    m = xp.max(xp.abs(x))
    ok = xp.isfinite(m) & (m > 0)
    safe = xp.where(ok, m, xp.ones_like(m))
    r = xp.linalg.vector_norm(x / safe)
    # m == 0: r == 0;  m non-finite: r is the (inf or nan) norm of the raw entries.
    return xp.where(ok, m * r, r)
