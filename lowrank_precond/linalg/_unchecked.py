"""The unchecked kernels of the public linear algebra, for callers that validated already.

Every public function of :mod:`lowrank_precond.linalg` validates its arguments once (kinds,
dtypes, shapes and devices, then its scalars, then the finiteness of every array:
``ValueError("NAME: contains NaN or inf")``) and then calls its kernel, which has the same
name with a leading underscore, takes the array namespace ``xp`` first and checks nothing:
no ``check_*``, no ``all_finite`` (a host synchronisation on a device) and no
``array_namespace``. Kernels call kernels only. In the spirit of SciPy's
``check_finite=False``: a preconditioner checks its gradient once at the entry of ``update``
and calls these, with ``xp = array_namespace(grad)`` found once.

Contract: the arguments must be what the public function would have accepted -- arrays of
namespace ``xp``, one dtype and device, consistent shapes, finite -- and the scalars
already converted (``eps`` a float ``> 0``, ``rank`` an int in ``[1, d]``, ``clip`` None or
a checked ``(lo, hi)`` pair of floats). Anything else is undefined behaviour (wrong results
or a backend's own error), not a clear error. Two free guards remain, because the value
they test is brought to the host by the arithmetic anyway: a ``gbar`` that overflows
(:func:`_rank_one_increment`) and a ``g`` whose ``max|g|`` is non-finite or whose ``|g|^2``
would overflow (:func:`_gram_sketch_update`, and ``x``/``y`` in the integrators) still raise
``ValueError``.

``_factored``, ``_lowrank`` and ``_gram_sketch`` build the containers without their
constructors' checks.

Numerics are those of the public functions exactly (same operations in the same order).
"""

from __future__ import annotations

from lowrank_precond.linalg.diagonalization import _inverse_root, _svd_basis
from lowrank_precond.linalg.factorization import (
    _factor_health,
    _inverse_factor_update,
    _newton_direction,
    _published_direction,
    _rank_one_increment,
    _symmetric_direction,
)
from lowrank_precond.linalg.integrators import (
    _basis_update_galerkin,
    _projector_splitting,
    _recompress,
    _truncated_svd,
)
from lowrank_precond.linalg.kernels import _qr_tall
from lowrank_precond.linalg.lowrank import _factored, _lowrank
from lowrank_precond.linalg.sketch import (
    _gram_sketch,
    _gram_sketch_update,
    _sketch_inverse_sqrt_apply,
)

__all__ = [
    "_basis_update_galerkin",
    "_factor_health",
    "_factored",
    "_gram_sketch",
    "_gram_sketch_update",
    "_inverse_factor_update",
    "_inverse_root",
    "_lowrank",
    "_newton_direction",
    "_projector_splitting",
    "_published_direction",
    "_qr_tall",
    "_rank_one_increment",
    "_recompress",
    "_sketch_inverse_sqrt_apply",
    "_svd_basis",
    "_symmetric_direction",
    "_truncated_svd",
]
