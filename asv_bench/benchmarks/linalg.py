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


def _floor(bench):
    """Read + write ``U`` and ``V`` once, in place into preallocated arrays (the floor of
    ``lowrank-precond bench``; copying into fresh arrays would also time the kernel's
    zero-filling of new pages, which is not bandwidth)."""
    if not hasattr(bench, "_floor_out"):
        bench._floor_out = (bench.xp.zeros_like(bench.M.U), bench.xp.zeros_like(bench.M.V))
    U2, V2 = bench._floor_out
    U2[...] = bench.M.U
    V2[...] = bench.M.V
    backends.synchronize(V2)


PARAMS = [BACKEND_LABELS, DIMS, RANKS, DTYPES]
NAMES = ["backend", "d", "r", "dtype"]


class _LowRankSetup:
    """``M = U S V^T`` (rank r, cheap orthonormal factors) and what each class times with it.

    Each class builds only the arrays its benchmarks read (asv runs ``setup`` once per
    benchmark and parameter combination: at d = 1e6, r = 20 every unused d x r array is
    ~0.2 s of set-up).
    """

    params = PARAMS
    param_names = NAMES
    timeout = 120

    def setup(self, backend, d, r, dtype):
        xp, device = namespace(backend)
        self.xp, self.device, self.r = xp, device, r
        U = orthonormal(xp, device, d, r, dtype, seed=1)
        V = orthonormal(xp, device, d, r, dtype, seed=2)
        S = xp.asarray(xp.eye(r, dtype=getattr(xp, dtype), device=device) * 0.5)
        self.M = LowRank(U, S, V)


class Integrators(_LowRankSetup):
    def setup(self, backend, d, r, dtype):
        super().setup(backend, d, r, dtype)
        self.x = randn(self.xp, self.device, (d,), dtype, seed=3) * 1e-2
        self.y = randn(self.xp, self.device, (d,), dtype, seed=4)

    def time_floor(self, backend, d, r, dtype):
        _floor(self)

    def time_projector_splitting(self, backend, d, r, dtype):
        backends.synchronize(projector_splitting(self.M, self.x, self.y).U)

    def time_projector_splitting_strang(self, backend, d, r, dtype):
        backends.synchronize(projector_splitting(self.M, self.x, self.y, order=2).U)

    def time_truncated_svd(self, backend, d, r, dtype):
        backends.synchronize(truncated_svd(self.M, self.x, self.y, self.r).U)

    def time_basis_update_galerkin(self, backend, d, r, dtype):
        backends.synchronize(basis_update_galerkin(self.M, self.x, self.y).U)


class Orthonormalize:
    """``orthonormalize`` of a Gaussian ``d x r`` block (its own class: no ``M`` needed)."""

    params = PARAMS
    param_names = NAMES
    timeout = 120

    def setup(self, backend, d, r, dtype):
        xp, device = namespace(backend)
        self.A = randn(xp, device, (d, r), dtype, seed=6)

    def time_orthonormalize(self, backend, d, r, dtype):
        backends.synchronize(orthonormalize(self.A))


class _WithGradient(_LowRankSetup):
    def setup(self, backend, d, r, dtype):
        super().setup(backend, d, r, dtype)
        self.g = randn(self.xp, self.device, (d,), dtype, seed=5)


class Directions(_WithGradient):
    def time_published(self, backend, d, r, dtype):
        backends.synchronize(published_direction(self.M, self.g, 1e-3))

    def time_symmetric(self, backend, d, r, dtype):
        backends.synchronize(symmetric_direction(self.M, self.g, 1e-3))


class _StreamedSetup(_WithGradient):
    direction = "published"

    def setup(self, backend, d, r, dtype):
        super().setup(backend, d, r, dtype)
        if d < 2 * r + 2:
            raise NotImplementedError("d too small for the streamed step")
        # one step first, so that U and V share the (2r, d) buffer the next steps read
        out = ksl_adagram_step(self.M, self.g, 1e-3, direction=self.direction)
        if out is None:
            raise NotImplementedError("ksl_adagram_step declines here (general path)")
        self.M = out.lowrank


class Streamed(_StreamedSetup):
    """The fused AdaGram increment + KSL step (``linalg.streaming``) that ``adagram`` runs
    for the published direction, beside the floor of the same run."""

    def time_floor(self, backend, d, r, dtype):
        _floor(self)

    def time_ksl_adagram_step_published(self, backend, d, r, dtype):
        backends.synchronize(ksl_adagram_step(self.M, self.g, 1e-3).direction)


class StreamedSymmetric(_StreamedSetup):
    """The streamed step with the symmetric direction: float64 factors only (on float32 ones
    ``ksl_adagram_step`` declines and ``adagram`` takes the general path, which
    ``Directions.time_symmetric`` and the integrators time)."""

    direction = "symmetric"

    def setup(self, backend, d, r, dtype):
        if dtype != "float64":
            raise NotImplementedError("the streamed symmetric direction needs float64")
        super().setup(backend, d, r, dtype)

    def time_ksl_adagram_step_symmetric(self, backend, d, r, dtype):
        out = ksl_adagram_step(self.M, self.g, 1e-3, direction="symmetric")
        backends.synchronize(out.direction)
