"""lowrank_precond: low-rank full-matrix adaptive preconditioning.

Full-matrix AdaGrad (``G_t = eps I + sum g g^T``, step ``G_t^{-1/2} g``) at O(d r) memory and
O(d r^2) time per step, on NumPy, PyTorch and CuPy arrays alike.

Sub-packages
------------
backends         array-API namespace, devices, dtype helpers
linalg           pure low-rank math: factorization, integrators, sketches, diagonalization
preconditioners  stateful methods with ``init`` / ``update``
glm              generalized linear models: families, objectives, bundled data sets
torch            ``torch.optim.Optimizer`` classes (needs the ``torch`` extra)

Entry points: :func:`minimize` and :func:`scipy_method` (scipy-style), and the
``lowrank-precond`` command.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = ("backends", "linalg", "preconditioners", "glm", "optim")
_PUBLIC = {"minimize": "lowrank_precond.optim.scipy", "scipy_method": "lowrank_precond.optim.scipy"}

__all__ = ["__version__", "minimize", "scipy_method", *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"lowrank_precond.{name}")
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lowrank_precond' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
