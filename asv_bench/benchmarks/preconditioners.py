"""preconditioners layer: one ``update`` of every method (the truncated step, past the exact phase).

``track_peak_memory_mb`` records the peak memory allocated by one step (NumPy through
tracemalloc, CUDA torch through ``torch.cuda.max_memory_allocated``): a rank-r step should
allocate O(d r), never O(d^2).
"""

import dataclasses
import tracemalloc

from lowrank_precond import backends
from lowrank_precond import preconditioners as pc

from ._common import BACKEND_LABELS, DIMS, RANKS, SMOKE, namespace, orthonormal, randn

METHODS = {
    "adagrad": ("adagrad", {}),
    "adam": ("adam", {}),
    "adagram_ksl": ("adagram", {"integrator": "projector_splitting", "direction": "published"}),
    "adagram_ksl_symmetric": (
        "adagram",
        {"integrator": "projector_splitting", "direction": "symmetric"},
    ),
    "adagram_svd": ("adagram", {"integrator": "truncated_svd", "direction": "published"}),
    "adagram_bug": ("adagram", {"integrator": "basis_update_galerkin", "direction": "published"}),
    # a finite rank with momentum is refused (it diverges): AdamGram's own step at a fixed rank
    # is the b1 = 0 composition, with the published direction as before
    "adamgram": ("adamgram", {"betas": (0.0, 0.0), "direction": "published"}),
    "sketched_adagrad": ("sketched_adagrad", {}),
}
RANKED = {"adagram", "adamgram", "sketched_adagrad"}


#: adagram methods whose truncated step is the streamed one (``linalg.streaming``)
STREAMED = {"adagram_ksl", "adagram_ksl_symmetric"}


class _UpdateSetup:
    params = [BACKEND_LABELS, list(METHODS), DIMS, RANKS, ["float64"]]
    param_names = ["backend", "method", "d", "r", "dtype"]
    timeout = 120

    def setup(self, backend, method, d, r, dtype):
        factory, kwargs = METHODS[method]
        if factory not in RANKED and r != 5:
            raise NotImplementedError("rank does not apply")  # asv: skip
        xp, device = namespace(backend)
        kwargs = dict(kwargs, rank=r) if factory in RANKED else dict(kwargs)
        self.pre = pc.get(factory)(**kwargs)
        self.grads = [randn(xp, device, (d,), dtype, seed=s) for s in range(3)]
        state = self.pre.init(self.grads[0])
        # Time the truncated (rank-r) step. Its state is built directly, past the exact
        # warm-up, whose r steps cost O(d r^2) copies (and, for the symmetric direction, a
        # Householder QR) each: r + 3 warm-up updates took up to 9 s per parameter combination
        # at d = 1e6, r = 20, and asv runs ``setup`` for every combination.
        if factory in ("adagram", "adamgram"):
            U = orthonormal(xp, device, d, r, dtype, seed=11)
            V = orthonormal(xp, device, d, r, dtype, seed=12)
            S = xp.eye(r, dtype=U.dtype, device=device) * 0.9
            state = dataclasses.replace(state, U=U, S=S, V=V, t=r + 1, sumsq=float(d))
            if method in STREAMED:
                # one streamed step first, so that U and V share the (2r, d) buffer (and the
                # workspace its buffers) that every later step reads
                _, state = self.pre.update(self.grads[2], state)
        elif factory == "sketched_adagrad":
            U = orthonormal(xp, device, d, r, dtype, seed=11)
            sig2 = xp.linspace(2.0 * d, 1.0 * d, r, dtype=U.dtype, device=device)
            rho = xp.asarray(0.0, dtype=U.dtype, device=device)
            state = dataclasses.replace(state, U=U, sig2=sig2, rho=rho, t=r)
            # one (streamed Frequent-Directions) step first: its buffers, as above
            _, state = self.pre.update(self.grads[2], state)
        else:  # diagonal methods: no warm-up phase
            _, state = self.pre.update(self.grads[2], state)
        self.state = state


class Update(_UpdateSetup):
    """One ``update`` of every method (the truncated step for the rank-r ones)."""

    def time_update(self, backend, method, d, r, dtype):
        p, _ = self.pre.update(self.grads[1], self.state)
        backends.synchronize(p)


class PeakMemory(_UpdateSetup):
    """Peak memory allocated by one ``update`` (NumPy: tracemalloc; CUDA torch: its
    allocator's counters). Other backends have no allocation counter here: skipped."""

    def setup(self, backend, method, d, r, dtype):
        if backend not in ("numpy", "torch-cuda"):
            raise NotImplementedError("peak memory is tracked on numpy and torch-cuda")
        super().setup(backend, method, d, r, dtype)

    def track_peak_memory_mb(self, backend, method, d, r, dtype):
        if backend == "numpy":
            tracemalloc.start()
            self.pre.update(self.grads[1], self.state)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            return peak / 2**20
        import torch

        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        self.pre.update(self.grads[1], self.state)
        return (torch.cuda.max_memory_allocated() - base) / 2**20

    track_peak_memory_mb.unit = "MiB"


class FullMatrixBaseline:
    """The dense O(d^2) baseline, at sizes where it fits."""

    params = [[100, 1_000] if SMOKE else [100, 1_000, 2_000]]
    param_names = ["d"]

    def setup(self, d):
        xp, device = namespace("numpy")
        self.pre = pc.full_matrix_adagrad()
        self.g = randn(xp, device, (d,), "float64")
        self.state = self.pre.init(self.g)

    def time_update(self, d):
        self.pre.update(self.g, self.state)
