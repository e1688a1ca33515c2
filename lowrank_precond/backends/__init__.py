"""Array-API backend layer.

Everything above this package gets its array namespace from its inputs through
:func:`array_namespace`; only this package names NumPy, PyTorch or CuPy.

Backends
--------
``"numpy"``, ``"torch"``, ``"cupy"`` and ``"array_api_strict"`` (the reference
implementation of the standard, used in the tests to prove that the math layers use
nothing outside it).

Examples
--------
>>> import numpy as np
>>> from lowrank_precond import backends
>>> xp = backends.array_namespace(np.ones(3))
>>> xp.__name__
'array_api_compat.numpy'
>>> "numpy" in backends.available()
True
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
from typing import Any

import array_api_compat

from lowrank_precond.backends.checks import (
    all_finite,
    check_floating,
    check_in,
    check_int,
    check_matching_rows,
    check_positive,
    check_rank,
    check_vector,
)

__all__ = [
    "all_finite",
    "BACKENDS",
    "array_namespace",
    "asarray",
    "available",
    "check_floating",
    "check_in",
    "check_int",
    "check_matching_rows",
    "check_positive",
    "check_rank",
    "check_vector",
    "core_dtype",
    "device_of",
    "get",
    "is_float32",
    "name_of",
    "on_host",
    "prefers_row_blocks",
    "quiet_floating_point",
    "synchronize",
    "to_core",
    "to_device",
    "to_numpy",
]

#: backend name -> (module to import, pip extra that provides it)
BACKENDS: dict[str, tuple[str, str | None]] = {
    "numpy": ("numpy", None),
    "torch": ("torch", "torch"),
    "cupy": ("cupy", "cupy"),
    "array_api_strict": ("array_api_strict", "test"),
}

_DIST_NAMES = {
    "cupy": ("cupy-cuda12x", "cupy-cuda11x", "cupy"),
    "array_api_strict": ("array-api-strict",),
}


def array_namespace(*arrays: Any) -> Any:
    """Return the array-API namespace shared by ``arrays``.

    A thin wrapper of :func:`array_api_compat.array_namespace`: NumPy arrays give
    ``array_api_compat.numpy``, torch tensors ``array_api_compat.torch``, CuPy arrays
    ``array_api_compat.cupy`` and ``array_api_strict`` arrays that namespace itself.
    Python scalars and ``None`` are ignored. Mixing array kinds raises ``TypeError``.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond import backends
    >>> backends.array_namespace(np.ones(3), None, 2.0).__name__
    'array_api_compat.numpy'
    """
    arrays = tuple(a for a in arrays if a is not None and not isinstance(a, (int, float, bool)))
    if not arrays:
        raise TypeError("array_namespace needs at least one array argument")
    return array_api_compat.array_namespace(*arrays)


def _import(name: str) -> Any:
    if name not in BACKENDS:
        raise ValueError(f"backend: unknown backend {name!r}; expected one of {sorted(BACKENDS)}")
    module, extra = BACKENDS[name]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = f"pip install 'lowrank-precond[{extra}]'" if extra else f"pip install {module}"
        raise ImportError(f"backend {name!r} needs the {module!r} package: {hint}") from exc


def get(name: str) -> Any:
    """Return the array-API namespace of backend ``name``.

    Parameters
    ----------
    name : {"numpy", "torch", "cupy", "array_api_strict"}

    Raises
    ------
    ValueError
        For an unknown name.
    ImportError
        When the backend's package is not installed; the message names the pip extra.

    Examples
    --------
    >>> from lowrank_precond import backends
    >>> xp = backends.get("numpy")
    >>> xp.asarray([1.0, 2.0]).dtype
    dtype('float64')
    """
    module = _import(name)
    if name == "array_api_strict":
        return module
    return importlib.import_module(f"array_api_compat.{name}")


def _version(name: str, module: Any) -> str:
    version = getattr(module, "__version__", None)
    if version:
        return str(version)
    for dist in _DIST_NAMES.get(name, (name,)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _devices(name: str, module: Any) -> list[str]:
    if name == "torch":
        devices = ["cpu"]
        if module.cuda.is_available():
            devices += [f"cuda:{i}" for i in range(module.cuda.device_count())]
        return devices
    if name == "cupy":
        try:
            count = module.cuda.runtime.getDeviceCount()
        except Exception:  # CUDA driver missing or no device
            return []
        return [f"cuda:{i}" for i in range(count)]
    return ["cpu"]


def available() -> dict[str, dict[str, Any]]:
    """List the installed backends with their version and devices.

    Returns
    -------
    dict
        ``{name: {"version": str, "devices": [str, ...]}}`` for each backend whose
        package imports. A CuPy without a usable GPU is listed with no devices.

    Examples
    --------
    >>> from lowrank_precond import backends
    >>> backends.available()["numpy"]["devices"]
    ['cpu']
    """
    found: dict[str, dict[str, Any]] = {}
    for name in BACKENDS:
        try:
            module = _import(name)
        except ImportError:
            continue
        except Exception:  # a broken install (e.g. CuPy without CUDA libraries)
            continue
        found[name] = {"version": _version(name, module), "devices": _devices(name, module)}
    return found


def name_of(x: Any) -> str:
    """The backend name of array ``x`` (``"numpy"``, ``"torch"``, ``"cupy"``, ...).

    Lazy dask arrays give ``"dask"`` (the GLM objectives take data chunked by rows as dask
    arrays; dask is not an array backend of the math layers, so it is not in
    :data:`BACKENDS`). Raises ``TypeError`` for anything else.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond import backends
    >>> backends.name_of(np.zeros(2))
    'numpy'
    """
    if array_api_compat.is_torch_array(x):
        return "torch"
    if array_api_compat.is_cupy_array(x):
        return "cupy"
    if array_api_compat.is_numpy_array(x):
        return "numpy"
    if type(x).__module__.startswith("array_api_strict"):
        return "array_api_strict"
    if array_api_compat.is_dask_array(x):  # never imports dask
        return "dask"
    raise TypeError(f"x: not an array of a known backend (got {type(x).__name__})")


def device_of(x: Any) -> Any:
    """The device that array ``x`` lives on (``array_api_compat.device``).

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond import backends
    >>> backends.device_of(np.zeros(2))
    'cpu'
    """
    return array_api_compat.device(x)


def on_host(x: Any) -> bool:
    """True when ``x`` lives in host (CPU) memory, where reading a value costs no
    device synchronisation.

    The math modules ask this (and :func:`prefers_row_blocks`) instead of testing a backend's
    name or a device string.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond import backends
    >>> backends.on_host(np.zeros(2))
    True
    """
    return "cpu" in str(device_of(x)).lower()


def prefers_row_blocks(x: Any) -> bool:
    """True when the tall kernels run faster on ``x`` walked in row blocks that fit in cache
    (NumPy: each call is one BLAS/ufunc sweep) than as whole-array calls (torch, CuPy and
    the others fuse or schedule whole-array work themselves).

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond import backends
    >>> backends.prefers_row_blocks(np.zeros(2))
    True
    """
    return array_api_compat.is_numpy_array(x)


def to_device(x: Any, device: Any) -> Any:
    """Move ``x`` to ``device`` (a no-op when it is already there).

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond import backends
    >>> x = np.zeros(2)
    >>> backends.to_device(x, backends.device_of(x)) is x
    True
    """
    return array_api_compat.to_device(x, device)


def asarray(obj: Any, *, like: Any, dtype: Any = None) -> Any:
    """Convert ``obj`` to an array of the same kind, device and (by default) dtype as ``like``.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond import backends
    >>> backends.asarray([1, 2], like=np.zeros(2, dtype=np.float32)).dtype
    dtype('float32')
    """
    xp = array_namespace(like)
    return xp.asarray(obj, dtype=like.dtype if dtype is None else dtype, device=device_of(like))


def to_numpy(x: Any) -> Any:
    """Copy an array of any backend to a NumPy array on the host.

    NumPy arrays are returned as they are (no copy); torch tensors are detached and moved to
    the CPU; CuPy arrays are copied from the device.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond import backends
    >>> backends.to_numpy(backends.get("numpy").asarray([1.0, 2.0]))
    array([1., 2.])
    """
    import numpy as np

    if array_api_compat.is_numpy_array(x):
        return x
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_cupy_array(x):
        return x.get()
    array_namespace(x)  # a TypeError for anything that is not an array
    return np.from_dlpack(x)  # other standard arrays on the CPU (array_api_strict)


def synchronize(x: Any = None) -> None:
    """Wait for queued device work on ``x``'s device (CUDA); a no-op on the CPU.

    Use it around timings so GPU numbers are honest.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond import backends
    >>> backends.synchronize(np.zeros(2)) is None  # NumPy: nothing to wait for
    True
    """
    if x is None:
        return
    if array_api_compat.is_torch_array(x):
        if x.device.type == "cuda":
            import torch

            torch.cuda.synchronize(x.device)
    elif array_api_compat.is_cupy_array(x):
        x.device.synchronize()


def is_float32(x: Any) -> bool:
    """True when ``x`` is a float32 array.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond import backends
    >>> backends.is_float32(np.zeros(2, dtype=np.float32)), backends.is_float32(np.zeros(2))
    (True, False)
    """
    xp = array_namespace(x)
    return x.dtype == xp.float32


def core_dtype(x: Any) -> Any:
    """Dtype for small core matrices (r x r, 2r x 2r) built from ``x``.

    float32 inputs get float64 cores: eigh/svd of a small matrix is cheap, and it keeps the
    rounding of the core below that of the tall factors. float64 stays float64.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond import backends
    >>> backends.core_dtype(np.zeros(2, dtype=np.float32)) == np.float64
    True
    """
    xp = array_namespace(x)
    return xp.float64 if x.dtype == xp.float32 else x.dtype


def to_core(a: Any) -> Any:
    """Cast ``a`` to :func:`core_dtype` (float32 -> float64; otherwise unchanged).

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond import backends
    >>> backends.to_core(np.ones(2, dtype=np.float32)).dtype
    dtype('float64')
    >>> a = np.ones(2)
    >>> backends.to_core(a) is a
    True
    """
    xp = array_namespace(a)
    dtype = core_dtype(a)
    return a if a.dtype == dtype else xp.astype(a, dtype)


def quiet_floating_point(x: Any) -> Any:
    """A context manager that silences floating-point warnings of ``x``'s backend.

    For code that checks its results for NaN/inf itself (the preconditioners' entry point):
    NumPy and CuPy would otherwise warn on an overflow that the caller is about to report as
    an error of its own; other backends do not warn, and get a no-op.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond import backends
    >>> with backends.quiet_floating_point(np.zeros(1)):
    ...     bool(np.isinf(np.float64(1e300) * 1e300))
    True
    """
    if array_api_compat.is_numpy_array(x):
        import numpy

        return numpy.errstate(all="ignore")
    if array_api_compat.is_cupy_array(x):
        import cupy

        return cupy.errstate(all="ignore")
    return contextlib.nullcontext()
