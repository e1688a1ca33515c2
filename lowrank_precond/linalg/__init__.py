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

import importlib
from typing import Any

# public name -> submodule that defines it
_PUBLIC = {
    "Factored": "lowrank",
    "LowRank": "lowrank",
    "rank_one_increment": "factorization",
    "inverse_factor_update": "factorization",
    "published_direction": "factorization",
    "symmetric_direction": "factorization",
    "newton_direction": "factorization",
    "factor_health": "factorization",
    "truncated_svd": "integrators",
    "projector_splitting": "integrators",
    "basis_update_galerkin": "integrators",
    "recompress": "integrators",
    "orthonormalize": "kernels",
    "GramSketch": "sketch",
    "gram_sketch_update": "sketch",
    "sketch_inverse_sqrt_apply": "sketch",
    "svd_basis": "diagonalization",
    "inverse_root": "diagonalization",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    try:
        module = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'lowrank_precond.linalg' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"lowrank_precond.linalg.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
