"""Shared set-up for the asv suite: backends present on this machine, seeded data."""

import numpy as np

from lowrank_precond import backends

#: (label, backend name, device) for every backend usable here; GPU ones only with a GPU
BACKENDS = [("numpy", "numpy", None)]
_found = backends.available()
if "torch" in _found:
    BACKENDS.append(("torch-cpu", "torch", "cpu"))
    if any(dev.startswith("cuda") for dev in _found["torch"]["devices"]):
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
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, r)))
    return xp.asarray(q, dtype=getattr(xp, dtype), device=device)
