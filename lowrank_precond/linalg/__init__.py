"""Pure low-rank linear algebra on any array-API backend.

Every function gets its namespace from its inputs: NumPy, PyTorch, CuPy (and
``array_api_strict``) arrays go in, the same kind comes out. No function here builds a
``d x d`` array except the ``.dense()`` methods meant for tests.

Modules
-------
lowrank          ``Factored`` (``P Q^T``) and ``LowRank`` (``U S V^T``) containers
factorization    AdaGram's rank-one inverse-factor update and its three directions
integrators      rank-r integrators: truncated SVD, projector splitting (KSL), BUG
kernels          tall-skinny kernels (``orthonormalize``) shared by the integrators
sketch           Frequent-Directions sketch of ``sum g g^T`` (sketched full-matrix AdaGrad)
diagonalization  SVD bases (AdaDiag) and inverse matrix roots (ASGO)
"""

from __future__ import annotations

from lowrank_precond.linalg.diagonalization import inverse_root, svd_basis
from lowrank_precond.linalg.factorization import (
    IncrementInfo,
    factor_health,
    inverse_factor_update,
    newton_direction,
    published_direction,
    rank_one_increment,
    symmetric_direction,
)
from lowrank_precond.linalg.integrator_types import (
    INTEGRATOR_NAMES,
    BasisUpdateGalerkin,
    ProjectorSplitting,
    TruncatedSVD,
    as_integrator,
)
from lowrank_precond.linalg.integrators import (
    basis_update_galerkin,
    projector_splitting,
    recompress,
    truncated_svd,
)
from lowrank_precond.linalg.kernels import orthonormalize, qr_tall
from lowrank_precond.linalg.lowrank import Factored, LowRank
from lowrank_precond.linalg.sketch import (
    GramSketch,
    gram_sketch_update,
    sketch_inverse_sqrt_apply,
)

__all__ = [
    "INTEGRATOR_NAMES",
    "BasisUpdateGalerkin",
    "ProjectorSplitting",
    "TruncatedSVD",
    "as_integrator",
    "Factored",
    "GramSketch",
    "IncrementInfo",
    "LowRank",
    "basis_update_galerkin",
    "factor_health",
    "gram_sketch_update",
    "inverse_factor_update",
    "inverse_root",
    "newton_direction",
    "orthonormalize",
    "projector_splitting",
    "published_direction",
    "qr_tall",
    "rank_one_increment",
    "recompress",
    "sketch_inverse_sqrt_apply",
    "svd_basis",
    "symmetric_direction",
    "truncated_svd",
]
