"""Shared set-up for the asv suite: backends present on this machine, seeded data.

The suite runs with ``launch_method: forkserver`` (``asv.conf.json``): asv imports the
benchmark modules once in a server process and forks one child per benchmark and parameter
combination, so what is imported here (NumPy, the library, torch's namespace) is paid once
per run instead of once per combination (``spawn`` re-imports torch, ~1.5 s, in each of
several hundred processes). Nothing here may initialise CUDA: a CUDA context created before
the fork is unusable in the children. GPU backends are therefore *listed* from cheap checks
(package installed, a GPU device node present) and *probed* in the child, by
:func:`namespace`, which raises ``NotImplementedError`` (asv: skipped) when the device is not
usable.
"""

import glob
import importlib
import importlib.util
import os

import numpy as np

from lowrank_precond import backends

#: ``LOWRANK_ASV_SMOKE=1`` shrinks every grid to a CI smoke test (d = 1e3 and 1e5, r = 5,
#: float64, one data set).
SMOKE = os.environ.get("LOWRANK_ASV_SMOKE", "") not in ("", "0")
DIMS = [1_000, 100_000] if SMOKE else [1_000, 100_000, 1_000_000]
RANKS = [5] if SMOKE else [1, 5, 20]
DTYPES = ["float64"] if SMOKE else ["float32", "float64"]


def _gpu_possible():
    """Cheap test for a GPU device node (NVIDIA or ROCm); initialises nothing."""
    return bool(glob.glob("/dev/nvidia[0-9]*") or glob.glob("/dev/kfd"))


def _installed(name):
    return importlib.util.find_spec(name) is not None


#: (label, backend name, device) for every backend that may run here; the GPU ones are only
#: listed when their package is installed and a GPU device node exists, and are checked by
#: :func:`namespace` in the benchmark process.
BACKENDS = [("numpy", "numpy", None)]
if _installed("torch"):
    BACKENDS.append(("torch-cpu", "torch", "cpu"))
    backends.get("torch")  # import torch once, in the forkserver (no CUDA initialisation)
if _gpu_possible():
    if _installed("torch"):
        BACKENDS.append(("torch-cuda", "torch", "cuda"))
    if _installed("cupy"):
        BACKENDS.append(("cupy", "cupy", None))

BACKEND_LABELS = [b[0] for b in BACKENDS]


def _usable(backend, device):
    """Whether a GPU backend has a device here (run in the benchmark process, after the fork)."""
    try:
        if backend == "torch" and device == "cuda":
            import torch

            return torch.cuda.is_available() and torch.cuda.device_count() > 0
        if backend == "cupy":
            import cupy

            return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # a broken install (e.g. CuPy without its CUDA libraries)
        return False
    return True


def namespace(label):
    """(xp, device) for a backend label of :data:`BACKENDS`.

    Raises ``NotImplementedError`` (asv: skipped) for a backend that is not usable here.
    """
    for name, backend, device in BACKENDS:
        if name == label:
            if not _usable(backend, device):
                raise NotImplementedError(f"{label}: no usable device")
            return backends.get(backend), device
    raise NotImplementedError(label)


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
    a = np.zeros((d, r), dtype=dtype)
    a[np.arange(d), col] = sign / np.sqrt(count[col])
    return xp.asarray(a, dtype=getattr(xp, dtype), device=device)
