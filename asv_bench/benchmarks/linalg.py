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
    published_direction,
    symmetric_direction,
    truncated_svd,
)
from lowrank_precond.linalg.streaming import ksl_adagram_step

from ._common import BACKEND_LABELS, DIMS, DTYPES, RANKS, namespace, orthonormal, randn

PARAMS = [BACKEND_LABELS, DIMS, RANKS, DTYPES]
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


class Streamed(_LowRankSetup):
    """The fused AdaGram increment + KSL step (``linalg.streaming``) that ``adagram`` runs
    for the published and symmetric directions, beside the floor of the same run."""

    def setup(self, backend, d, r, dtype):
        super().setup(backend, d, r, dtype)
        if d < 2 * r + 2:
            raise NotImplementedError("d too small for the streamed step")
        # one step first, so that U and V share the (2r, d) buffer the next steps read
        self.M = ksl_adagram_step(self.M, self.g, 1e-3).lowrank

    def time_floor(self, backend, d, r, dtype):
        backends.synchronize((self.M.U * 1.0, self.M.V * 1.0)[1])

    def time_ksl_adagram_step_published(self, backend, d, r, dtype):
        backends.synchronize(ksl_adagram_step(self.M, self.g, 1e-3).direction)

    def time_ksl_adagram_step_symmetric(self, backend, d, r, dtype):
        out = ksl_adagram_step(self.M, self.g, 1e-3, direction="symmetric")
        if out is not None:
            backends.synchronize(out.direction)
