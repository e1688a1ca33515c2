"""Matrix integrators as values: which scheme, with its options, checked once.

A rank-``r`` ``M = U S V^T`` absorbs a rank-one increment ``x y^T`` through an integrator
(:ref:`theory-integrators-methods`). The functions of :mod:`lowrank_precond.linalg.integrators`
take their options per call; these small frozen values carry them, so a method is given *one*
argument (``integrator=ProjectorSplitting(order=2)``) instead of a name plus options that must
be cross-checked::

    TruncatedSVD()                                  best rank-r approximation of M + x y^T
    ProjectorSplitting(order=1)                     KSL, Lie-Trotter (1) or Strang (2)
    BasisUpdateGalerkin(tol=0.0, max_rank=None)     BUG; tol > 0: rank-adaptive

Each value is called as ``integrator(lowrank, x, y, rank) -> LowRank`` where ``rank`` is the
method's rank budget (used by the truncation and as the rank-adaptive BUG's default cap).
A caller that has validated its arrays already passes their namespace, ``xp=...``, and gets
the unchecked kernel (:mod:`lowrank_precond.linalg._unchecked`).
:func:`as_integrator` turns a name (``"projector_splitting"``, ...) into its default value.

Examples
--------
>>> import numpy as np
>>> from lowrank_precond.linalg import LowRank
>>> from lowrank_precond.linalg.integrator_types import ProjectorSplitting, as_integrator
>>> U, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((6, 2)))
>>> M = LowRank(U, np.eye(2), U)
>>> ProjectorSplitting(order=2)(M, np.ones(6), np.ones(6), rank=2).rank
2
>>> as_integrator("basis_update_galerkin")
BasisUpdateGalerkin(tol=0.0, max_rank=None)
>>> ProjectorSplitting(order=3)
Traceback (most recent call last):
...
ValueError: order: expected one of (1, 2), got 3
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lowrank_precond.backends import check_in, check_int, check_positive
from lowrank_precond.linalg.integrators import (
    _basis_update_galerkin,
    _projector_splitting,
    _truncated_svd,
    basis_update_galerkin,
    projector_splitting,
    truncated_svd,
)
from lowrank_precond.linalg.lowrank import LowRank

__all__ = [
    "INTEGRATOR_NAMES",
    "BasisUpdateGalerkin",
    "Integrator",
    "ProjectorSplitting",
    "TruncatedSVD",
    "as_integrator",
]


@dataclass(frozen=True)
class TruncatedSVD:
    """The best rank-``rank`` approximation of ``M + x y^T``
    (:func:`~lowrank_precond.linalg.truncated_svd`).

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import LowRank, TruncatedSVD
    >>> M = LowRank(np.eye(4)[:, :1], np.eye(1), np.eye(4)[:, :1])
    >>> TruncatedSVD()(M, np.eye(4)[1], np.eye(4)[1], rank=1).rank
    1
    """

    name = "truncated_svd"

    def __call__(self, lowrank: LowRank, x: Any, y: Any, rank: int, xp: Any = None) -> LowRank:
        if xp is not None:
            return _truncated_svd(xp, lowrank, x, y, rank)
        return truncated_svd(lowrank, x, y, rank)


@dataclass(frozen=True)
class ProjectorSplitting:
    """KSL projector splitting (:func:`~lowrank_precond.linalg.projector_splitting`): keeps
    the rank; ``order`` 1 is Lie--Trotter, 2 is Strang.

    Examples
    --------
    >>> from lowrank_precond import preconditioners as pc
    >>> from lowrank_precond.linalg import ProjectorSplitting
    >>> pc.adagram(rank=5, integrator=ProjectorSplitting(order=2)).hyperparams["integrator"]
    ProjectorSplitting(order=2)
    """

    order: int = 1
    name = "projector_splitting"

    def __post_init__(self) -> None:
        check_in("order", check_int("order", self.order), (1, 2))

    def __call__(self, lowrank: LowRank, x: Any, y: Any, rank: int, xp: Any = None) -> LowRank:
        if xp is not None:
            return _projector_splitting(xp, lowrank, x, y, order=self.order)
        return projector_splitting(lowrank, x, y, order=self.order)


@dataclass(frozen=True)
class BasisUpdateGalerkin:
    """The basis-update & Galerkin integrator
    (:func:`~lowrank_precond.linalg.basis_update_galerkin`).

    ``tol > 0`` makes it rank-adaptive: it keeps the smallest rank ``<= max_rank`` (default:
    the method's rank) whose discarded singular values have norm ``<= tol``.

    Examples
    --------
    >>> from lowrank_precond import preconditioners as pc
    >>> from lowrank_precond.linalg import BasisUpdateGalerkin
    >>> pre = pc.adagram(rank=8, integrator=BasisUpdateGalerkin(tol=1e-6, max_rank=4))
    >>> pre.hyperparams["integrator"].max_rank
    4
    """

    tol: float = 0.0
    max_rank: int | None = None
    name = "basis_update_galerkin"

    def __post_init__(self) -> None:
        check_positive("tol", self.tol, allow_zero=True)
        if self.max_rank is not None:
            check_int("max_rank", self.max_rank, minimum=1)

    def __call__(self, lowrank: LowRank, x: Any, y: Any, rank: int, xp: Any = None) -> LowRank:
        cap = rank if self.max_rank is None else min(self.max_rank, rank)
        options = {"rank_adaptive": True, "tol": self.tol, "max_rank": cap} if self.tol else {}
        if xp is not None:
            return _basis_update_galerkin(xp, lowrank, x, y, **options)
        return basis_update_galerkin(lowrank, x, y, **options)


#: the integrator value types (for annotations and ``isinstance``)
Integrator = TruncatedSVD | ProjectorSplitting | BasisUpdateGalerkin

_BY_NAME = {c.name: c for c in (TruncatedSVD, ProjectorSplitting, BasisUpdateGalerkin)}

#: the integrators' names, accepted wherever a value is (each meaning its default value)
INTEGRATOR_NAMES = tuple(_BY_NAME)


def as_integrator(integrator: Any, name: str = "integrator") -> Integrator:
    """``integrator`` as a value: a value passes through, a name gives its default value.

    Raises ``ValueError`` naming ``name`` for anything else.

    Examples
    --------
    >>> as_integrator("truncated_svd"), as_integrator(ProjectorSplitting(order=2))
    (TruncatedSVD(), ProjectorSplitting(order=2))
    """
    if isinstance(integrator, (TruncatedSVD, ProjectorSplitting, BasisUpdateGalerkin)):
        return integrator
    if isinstance(integrator, str) and integrator in _BY_NAME:
        return _BY_NAME[integrator]()
    raise ValueError(
        f"{name}: expected one of {INTEGRATOR_NAMES} or a TruncatedSVD, ProjectorSplitting "
        f"or BasisUpdateGalerkin value, got {integrator!r}"
    )
