"""Dense full-matrix AdaGrad: the exact baseline that the low-rank methods approximate.

This module is the only place in the library where a ``d x d`` array lives (besides the
``.dense()`` methods meant for tests); use it for small ``d`` and as a reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lowrank_precond.backends import array_namespace, check_int, device_of
from lowrank_precond.linalg._unchecked import _inverse_root
from lowrank_precond.preconditioners._common import (
    as_direction,
    check_eps,
    check_factor_dtype,
    check_param,
    factor_dtype_for,
    flat_grad,
)
from lowrank_precond.preconditioners.base import (
    Preconditioner,
    check_statistic,
    make_preconditioner,
)

__all__ = ["DEFAULT_MAX_DIM", "FullMatrixAdaGradState", "full_matrix_adagrad"]

#: default largest ``d`` that :func:`full_matrix_adagrad` accepts: a 4096 x 4096 float64 Gram
#: matrix is 128 MiB and its eigendecomposition (every step) takes about a second on a CPU.
DEFAULT_MAX_DIM = 4096


@dataclass
class FullMatrixAdaGradState:
    """State of :func:`full_matrix_adagrad`.

    Attributes
    ----------
    t : int
        Number of updates applied.
    G : array, shape (d, d)
        ``sum_s g_s g_s^T`` over the flattened gradients (without the ``eps I`` start, which
        is added to the eigenvalues), in the parameter's dtype.
    """

    t: int
    G: Any


def full_matrix_adagrad(
    eps: float = 1e-8,
    max_dim: int = DEFAULT_MAX_DIM,
    nonfinite: str = "raise",
    factor_dtype: Any = None,
) -> Preconditioner:
    """Full-matrix AdaGrad with a dense ``d x d`` Gram matrix (:ref:`theory-full-matrix-adagrad`).

    The parameter is flattened to ``d = x.size`` entries. Each update does
    ``G <- G + g g^T`` and returns ``(eps I + G)^{-1/2} g``, computed from ``eigh(G)`` as
    ``E diag((max(w, 0) + eps)^{-1/2}) E^T g`` (eps inside the root, ``G_0 = eps I``: the same
    eps as diagonal AdaGrad, ASGO and AdaGram) through
    :func:`lowrank_precond.linalg.inverse_root`, which does the eigendecomposition in float64
    for float32 input [E03].

    Cost: O(d^2) memory, O(d^3) time per step. ``init`` refuses ``d > max_dim``; for large
    ``d`` use the low-rank ``adagram`` or ``sketched_adagrad``.

    Parameters
    ----------
    eps : float, > 0
        Damping inside the root.
    max_dim : int, >= 1
        Largest accepted ``d`` (default :data:`DEFAULT_MAX_DIM` = 4096: a 128 MiB float64 Gram
        matrix and an O(d^3) eigendecomposition every step).
    nonfinite : {"raise", "skip"}
        What ``update`` does with a gradient containing NaN/inf.
    factor_dtype : None, "float32", "float64" (or that dtype object)
        dtype of ``G`` and of the step's arithmetic. ``None``: float64 for float32 (and
        half-precision) parameters, else the parameter's dtype; the direction is cast back to
        the gradient's dtype. In float32 the product ``E diag(.) E^T g`` cancels with error
        ``~6e-8 |g|`` that ``eps^{-1/2}`` amplifies: one gradient of norm 6e3 moved the
        parameter by 3 ``lr`` at ``eps = 1e-8`` (the bound is 1).

    Returns
    -------
    Preconditioner
        ``init(x) -> FullMatrixAdaGradState`` for ``x`` of any shape with ``x.size <=
        max_dim``; ``update(g, state) -> (direction, FullMatrixAdaGradState)``, the direction
        in ``g``'s shape.

    References
    ----------
    Duchi, Hazan, Singer, JMLR 2011 (full-matrix AdaGrad). :ref:`theory-full-matrix-adagrad` [E01],
    [E03].

    Examples
    --------
    The first step from ``G = 0`` is ``g / sqrt(eps + |g|^2)``:

    >>> import numpy as np
    >>> from lowrank_precond import preconditioners as pc
    >>> pre = pc.full_matrix_adagrad()
    >>> state = pre.init(np.zeros(3))
    >>> g = np.array([1.0, 2.0, 2.0])
    >>> p, state = pre.update(g, state)
    >>> bool(np.allclose(p, g / 3.0)), state.G.shape
    (True, (3, 3))
    """
    eps = check_eps("eps", eps)
    max_dim = check_int("max_dim", max_dim, minimum=1)
    factor_dtype = check_factor_dtype("factor_dtype", factor_dtype)

    def init(x: Any) -> FullMatrixAdaGradState:
        xp = check_param("x", x)
        d = math.prod(x.shape)
        if d > max_dim:
            raise ValueError(
                f"x: full_matrix_adagrad needs a dense {d} x {d} matrix and an O(d^3) "
                f"eigendecomposition per step, but d={d} exceeds max_dim={max_dim}; use the "
                "low-rank preconditioners 'adagram' or 'sketched_adagrad' (or raise max_dim)"
            )
        dtype = factor_dtype_for(xp, x.dtype, factor_dtype)
        return FullMatrixAdaGradState(t=0, G=xp.zeros((d, d), dtype=dtype, device=device_of(x)))

    def update(grad: Any, state: FullMatrixAdaGradState) -> tuple[Any, FullMatrixAdaGradState]:
        xp = array_namespace(grad)
        d = int(state.G.shape[0])
        g = flat_grad(grad, d)
        if g.dtype != state.G.dtype:
            g = xp.astype(g, state.G.dtype)
        G = state.G + xp.reshape(g, (d, 1)) * xp.reshape(g, (1, d))
        check_statistic("G", G)
        direction = _inverse_root(xp, G, eps) @ g
        return as_direction(direction, grad), FullMatrixAdaGradState(t=state.t + 1, G=G)

    return make_preconditioner(
        "full_matrix_adagrad",
        init,
        update,
        {"eps": eps, "max_dim": max_dim, "nonfinite": nonfinite, "factor_dtype": factor_dtype},
    )
