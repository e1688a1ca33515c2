"""Shared set-up for the asv suite: backends present on this machine, seeded data.

asv imports this module in every benchmark process (one per parameter combination with the
default ``--launch-method=spawn``), so it only imports a GPU library where a GPU can exist.
"""

import glob
import importlib.util
import os

import numpy as np

from lowrank_precond import backends

#: ``LOWRANK_ASV_SMOKE=1`` shrinks every grid to a CI smoke test (d = 1e3 and 1e5, r = 5,
#: float64, one data set): ``asv run --quick`` over the full grid spawns ~1000 benchmark
#: processes (~9 min on 2 cores); the smoke grid runs every benchmark function in ~1-2 min.
SMOKE = os.environ.get("LOWRANK_ASV_SMOKE", "") not in ("", "0")
DIMS = [1_000, 100_000] if SMOKE else [1_000, 100_000, 1_000_000]
RANKS = [5] if SMOKE else [1, 5, 20]
DTYPES = ["float64"] if SMOKE else ["float32", "float64"]


def _gpu_possible():
    """Cheap test before importing torch/CuPy for their device query (NVIDIA or ROCm nodes)."""
    return bool(glob.glob("/dev/nvidia[0-9]*") or glob.glob("/dev/kfd"))


#: (label, backend name, device) for every backend usable here; GPU ones only with a GPU
BACKENDS = [("numpy", "numpy", None)]
if importlib.util.find_spec("torch") is not None:
    BACKENDS.append(("torch-cpu", "torch", "cpu"))
if _gpu_possible():
    _found = backends.available()
    if "torch" in _found and any(d.startswith("cuda") for d in _found["torch"]["devices"]):
        BACKENDS.append(("torch-cuda", "torch", "cuda"))
    if "cupy" in _found and _found["cupy"]["devices"]:
        BACKENDS.append(("cupy", "cupy", None))

BACKEND_LABELS = [b[0] for b in BACKENDS]


def namespace(label):
    """(xp, device) for a backend label of :data:`BACKENDS`."""
    for name, backend, device in BACKENDS:
        if name == label:
            return backends.get(backend), device
    raise NotImplementedError(label)  # asv skips a benchmark that raises NotImplementedError


def randn(xp, device, shape, dtype, seed=0):
    """Seeded standard-normal array of the backend."""
    a = np.random.default_rng(seed).standard_normal(shape)
    return xp.asarray(a, dtype=getattr(xp, dtype), device=device)


def orthonormal(xp, device, d, r, dtype, seed=0):
    """Seeded ``d x r`` matrix with orthonormal columns, cheap at any ``d``.

    Column ``j`` is ``+-1/sqrt(n_j)`` on its own random set of rows (disjoint supports): exactly
    orthonormal, dense in every row, and generic relative to another seed's factor. (A QR of a
    1e6 x 20 Gaussian array takes seconds, and asv runs ``setup`` once per parameter
    combination of every benchmark.)
    """
    rng = np.random.default_rng(seed)
    col = rng.permutation(d) % r  # the column that row i belongs to
    sign = np.where(rng.random(d) < 0.5, -1.0, 1.0)
    count = np.bincount(col, minlength=r)
    a = np.zeros((d, r))
    a[np.arange(d), col] = sign / np.sqrt(count[col])
    return xp.asarray(a, dtype=getattr(xp, dtype), device=device)
