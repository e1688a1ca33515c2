"""Low-rank containers: ``Factored`` (``M = P Q^T``) and ``LowRank`` (``M = U S V^T``).

Both are plain dataclasses of arrays, so ``dataclasses.asdict`` checkpoints them and every
array-API backend works. They never form a ``d x d`` matrix except in :meth:`dense`, which
exists for tests at small ``d``.

Constructing either checks its arrays (kinds, dtypes, shapes). The private ``_factored`` and
``_lowrank`` build them without those checks, for the unchecked kernels and their callers,
whose arrays are consistent by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lowrank_precond.backends import array_namespace, check_matching_rows, device_of

__all__ = ["Factored", "LowRank"]


@dataclass
class Factored:
    """``M = P @ Q.T`` with ``P, Q`` of shape ``(d, k)`` (the exact, growing AdaGram form).

    Parameters
    ----------
    P, Q : array, shape (d, k)
        Same backend, dtype and shape; ``k = 0`` is the zero matrix.

    Examples
    --------
    >>> import numpy as np
    >>> M = Factored(np.ones((3, 1)), np.arange(3.0)[:, None])
    >>> M.shape, M.rank
    ((3, 3), 1)
    >>> M.matvec(np.ones(3))
    array([3., 3., 3.])
    """

    P: Any
    Q: Any

    def __post_init__(self) -> None:
        check_matching_rows(P=self.P, Q=self.Q)
        if tuple(self.P.shape) != tuple(self.Q.shape):
            raise ValueError(
                f"Q: shape {tuple(self.Q.shape)} must equal P's shape {tuple(self.P.shape)}"
            )

    @classmethod
    def zeros(cls, d: int, *, like: Any) -> Factored:
        """The zero matrix (``k = 0``) of dimension ``d`` with ``like``'s dtype and device."""
        xp = array_namespace(like)
        P = xp.zeros((d, 0), dtype=like.dtype, device=device_of(like))
        return cls(P, xp.zeros_like(P))

    @property
    def shape(self) -> tuple[int, int]:
        """``(d, d)``, the shape of ``M``."""
        d = int(self.P.shape[0])
        return (d, d)

    @property
    def rank(self) -> int:
        """Number of stored columns ``k`` (an upper bound on the rank of ``M``)."""
        return int(self.P.shape[1])

    def matvec(self, v: Any) -> Any:
        """``M @ v = P (Q^T v)`` in O(d k)."""
        return self.P @ (self.Q.T @ v)

    def rmatvec(self, v: Any) -> Any:
        """``M^T @ v = Q (P^T v)`` in O(d k)."""
        return self.Q @ (self.P.T @ v)

    def dense(self) -> Any:
        """The ``d x d`` matrix ``P Q^T`` (tests and small ``d`` only)."""
        return self.P @ self.Q.T


@dataclass
class LowRank:
    """``M = U @ S @ V.T`` with orthonormal ``U, V`` ``(d, r)`` and a core ``S`` ``(r, r)``.

    ``S`` is diagonal only for the truncated-SVD integrator; the projector-splitting and
    BUG integrators keep a full ``r x r`` core.

    Parameters
    ----------
    U, V : array, shape (d, r)
        Orthonormal columns (not re-checked here: that costs a pass over ``d``).
    S : array, shape (r, r)

    Examples
    --------
    >>> import numpy as np
    >>> M = LowRank(np.eye(4)[:, :2], 2.0 * np.eye(2), np.eye(4)[:, :2])
    >>> M.rank, M.matvec(np.ones(4))
    (2, array([2., 2., 0., 0.]))
    """

    U: Any
    S: Any
    V: Any

    def __post_init__(self) -> None:
        check_matching_rows(U=self.U, V=self.V)
        r = int(self.U.shape[1])
        if int(self.V.shape[1]) != r:
            raise ValueError(f"V: has {self.V.shape[1]} columns but U has {r}")
        if tuple(self.S.shape) != (r, r):
            raise ValueError(f"S: expected shape {(r, r)}, got {tuple(self.S.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        """``(d, d)``, the shape of ``M``."""
        d = int(self.U.shape[0])
        return (d, d)

    @property
    def rank(self) -> int:
        """The number of columns ``r`` of ``U`` and ``V``."""
        return int(self.U.shape[1])

    def matvec(self, v: Any) -> Any:
        """``M @ v = U (S (V^T v))`` in O(d r)."""
        return self.U @ (self.S @ (self.V.T @ v))

    def rmatvec(self, v: Any) -> Any:
        """``M^T @ v = V (S^T (U^T v))`` in O(d r)."""
        return self.V @ (self.S.T @ (self.U.T @ v))

    def dense(self) -> Any:
        """The ``d x d`` matrix ``U S V^T`` (tests and small ``d`` only)."""
        return self.U @ self.S @ self.V.T


def _factored(P: Any, Q: Any) -> Factored:
    """``Factored(P, Q)`` without its checks (``P, Q`` known to be consistent)."""
    M = object.__new__(Factored)
    M.P, M.Q = P, Q
    return M


def _lowrank(U: Any, S: Any, V: Any) -> LowRank:
    """``LowRank(U, S, V)`` without its checks (``U, S, V`` known to be consistent)."""
    M = object.__new__(LowRank)
    M.U, M.S, M.V = U, S, V
    return M
