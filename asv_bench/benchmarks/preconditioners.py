"""preconditioners layer: one ``update`` of every method (after warm-up past the exact phase).

``track_peak_memory_mb`` records the peak memory allocated by one step (NumPy through
tracemalloc, CUDA torch through ``torch.cuda.max_memory_allocated``): a rank-r step should
allocate O(d r), never O(d^2).
"""

import tracemalloc

from lowrank_precond import backends
from lowrank_precond import preconditioners as pc

from ._common import BACKEND_LABELS, namespace, randn

METHODS = {
    "adagrad": ("adagrad", {}),
    "adam": ("adam", {}),
    "adagram_ksl": ("adagram", {"integrator": "projector_splitting"}),
    "adagram_ksl_symmetric": (
        "adagram",
        {"integrator": "projector_splitting", "direction": "symmetric"},
    ),
    "adagram_svd": ("adagram", {"integrator": "truncated_svd"}),
    "adagram_bug": ("adagram", {"integrator": "basis_update_galerkin"}),
    "adamgram": ("adamgram", {}),
    "sketched_adagrad": ("sketched_adagrad", {}),
}
RANKED = {"adagram", "adamgram", "sketched_adagrad"}


class Update:
    params = [BACKEND_LABELS, list(METHODS), [1_000, 100_000, 1_000_000], [1, 5, 20], ["float64"]]
    param_names = ["backend", "method", "d", "r", "dtype"]
    timeout = 120

    def setup(self, backend, method, d, r, dtype):
        factory, kwargs = METHODS[method]
        if factory not in RANKED and r != 5:
            raise NotImplementedError("rank does not apply")  # asv: skip
        xp, device = namespace(backend)
        kwargs = dict(kwargs, rank=r) if factory in RANKED else dict(kwargs)
        self.pre = pc.get(factory)(**kwargs)
        self.grads = [randn(xp, device, (d,), dtype, seed=s) for s in range(4)]
        self.state = self.pre.init(self.grads[0])
        for i in range(r + 3):  # past the exact warm-up: time the truncating step
            _, self.state = self.pre.update(self.grads[i % 4], self.state)

    def time_update(self, backend, method, d, r, dtype):
        p, _ = self.pre.update(self.grads[1], self.state)
        backends.synchronize(p)

    def track_peak_memory_mb(self, backend, method, d, r, dtype):
        if backend == "numpy":
            tracemalloc.start()
            self.pre.update(self.grads[1], self.state)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            return peak / 2**20
        if backend == "torch-cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            self.pre.update(self.grads[1], self.state)
            return (torch.cuda.max_memory_allocated() - base) / 2**20
        raise NotImplementedError("peak memory is tracked on numpy and torch-cuda")

    track_peak_memory_mb.unit = "MiB"


class FullMatrixBaseline:
    """The dense O(d^2) baseline, at sizes where it fits."""

    params = [[100, 1_000, 2_000]]
    param_names = ["d"]

    def setup(self, d):
        xp, device = namespace("numpy")
        self.pre = pc.full_matrix_adagrad()
        self.g = randn(xp, device, (d,), "float64")
        self.state = self.pre.init(self.g)

    def time_update(self, d):
        self.pre.update(self.g, self.state)
