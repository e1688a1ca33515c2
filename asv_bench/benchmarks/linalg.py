"""linalg layer: one integrator step, one direction, orthonormalize; plus the bandwidth floor.

Parameterised over backend x d x r x dtype. ``time_floor`` (read + write U and V once) is
measured beside the integrators so ratios to it can be read from one run.
"""

from lowrank_precond import backends
from lowrank_precond.linalg import (
    LowRank,
    basis_update_galerkin,
    orthonormalize,
    projector_splitting,
    symmetric_direction,
    published_direction,
    truncated_svd,
)

from ._common import BACKEND_LABELS, namespace, orthonormal, randn

PARAMS = [BACKEND_LABELS, [1_000, 100_000, 1_000_000], [1, 5, 20], ["float32", "float64"]]
NAMES = ["backend", "d", "r", "dtype"]


class _LowRankSetup:
    params = PARAMS
    param_names = NAMES
    timeout = 120

    def setup(self, backend, d, r, dtype):
        xp, device = namespace(backend)
        self.xp = xp
        U = orthonormal(xp, device, d, r, dtype, seed=1)
        V = orthonormal(xp, device, d, r, dtype, seed=2)
        S = xp.asarray(xp.eye(r, dtype=getattr(xp, dtype), device=device) * 0.5)
        self.M = LowRank(U, S, V)
        self.x = randn(xp, device, (d,), dtype, seed=3) * 1e-2
        self.y = randn(xp, device, (d,), dtype, seed=4)
        self.g = randn(xp, device, (d,), dtype, seed=5)
        self.A = randn(xp, device, (d, r), dtype, seed=6)
        self.r = r


class Integrators(_LowRankSetup):
    def time_floor(self, backend, d, r, dtype):
        backends.synchronize((self.M.U * 1.0, self.M.V * 1.0)[1])

    def time_projector_splitting(self, backend, d, r, dtype):
        backends.synchronize(projector_splitting(self.M, self.x, self.y).U)

    def time_projector_splitting_strang(self, backend, d, r, dtype):
        backends.synchronize(projector_splitting(self.M, self.x, self.y, order=2).U)

    def time_truncated_svd(self, backend, d, r, dtype):
        backends.synchronize(truncated_svd(self.M, self.x, self.y, self.r).U)

    def time_basis_update_galerkin(self, backend, d, r, dtype):
        backends.synchronize(basis_update_galerkin(self.M, self.x, self.y).U)

    def time_orthonormalize(self, backend, d, r, dtype):
        backends.synchronize(orthonormalize(self.A))


class Directions(_LowRankSetup):
    def time_published(self, backend, d, r, dtype):
        backends.synchronize(published_direction(self.M, self.g, 1e-3))

    def time_symmetric(self, backend, d, r, dtype):
        backends.synchronize(symmetric_direction(self.M, self.g, 1e-3))
