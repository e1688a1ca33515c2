"""In-place block kernels for the row-blocked passes of :mod:`lowrank_precond.linalg.streaming`.

The streamed AdaGram step walks ``d`` in row blocks and writes each output block once. The
array API has no ``out=`` arguments, so a generic ``dst[i] = A + B @ C`` evaluates
block-sized temporaries and then copies the result; on a CPU that costs about as much as the
memory traffic of the block itself. NumPy and torch (CPU) can write in place (torch even fuses
``A + B @ C`` into one ``addmm``). These helpers pick that path by backend and fall back to
plain array-API expressions elsewhere (CuPy, array-api-strict, ...), so the math layers stay
free of backend imports (``lowrank_precond.linalg`` imports only this package).

Every ``*_into`` function writes ``parent[index]`` and returns nothing; ``index`` is a tuple
of slices selecting a block view of ``parent``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import array_api_compat

from lowrank_precond.backends import blas

__all__ = [
    "Workspace",
    "add_into",
    "axpy_into",
    "copy_into",
    "empty",
    "from_numpy_view",
    "lincomb_into",
    "numpy_view",
    "numpy_views",
    "residual_into",
    "scale_into",
    "single_threaded_blas",
    "stacked_parent",
]

def _kind(x: Any) -> str:
    if array_api_compat.is_numpy_array(x):
        return "numpy"
    if array_api_compat.is_torch_array(x) and x.device.type == "cpu":
        return "torch"
    return "generic"


def empty(shape: tuple[int, ...], like: Any) -> Any:
    """Uninitialised array of ``shape`` with ``like``'s kind, device and dtype.

    For torch CPU tensors the buffer comes from NumPy (shared, zero-copy): NumPy asks the
    kernel for transparent huge pages on large allocations, so the first-touch page faults of
    a fresh ``d x r`` factor cost several times less than with torch's own allocator.

    Examples
    --------
    >>> import numpy as np
    >>> empty((2, 3), np.zeros(1, dtype=np.float32)).dtype
    dtype('float32')
    """
    if _kind(like) == "torch":
        import numpy as np

        np_dtype = _numpy_dtype(like)
        if np_dtype is not None:
            return _wrap(np.empty(shape, dtype=np_dtype), "torch")
    xp = array_api_compat.array_namespace(like)
    return xp.empty(shape, dtype=like.dtype, device=array_api_compat.device(like))


class Workspace:
    """Output buffers that repeated streamed steps hand back to themselves.

    A streamed step writes its new factors and direction into fresh ``d``-sized arrays. On a
    CPU, fresh memory from the kernel is zero-filled on first touch: at d = 1e6, r = 5 that
    cost 8 ms of a 30 ms step (the write pass into fresh memory took 18 ms, into reused
    memory 10 ms). A ``Workspace`` keeps up to ``keep`` buffers per shape and dtype and hands
    one back only when **nothing else references it** (CPython's reference count: no array,
    view, tensor or state that the caller still holds can see it). A caller that keeps old
    states therefore gets fresh memory, exactly as without a workspace; a loop that replaces
    its state gets the buffer of the state before last. Results never depend on the reuse.

    Between steps this holds up to ``keep`` buffers per shape (one spare besides the live
    state in a plain loop); the peak during a step is unchanged (old and new state coexist
    either way). The buffers are released with the workspace. NumPy and torch (CPU) arrays
    only; other backends get :func:`empty`'s plain allocation.

    Parameters
    ----------
    keep : int
        Buffers remembered per ``(shape, dtype)`` (default 3: room for two states of the same
        shape stepping in turn).

    Examples
    --------
    >>> import numpy as np
    >>> ws = Workspace()
    >>> a = ws.empty((4,), np.zeros(1))
    >>> b = ws.empty((4,), np.zeros(1))
    >>> a is b                        # `a` is still referenced: a second buffer
    False
    >>> a_id = id(a)
    >>> del a
    >>> id(ws.empty((4,), np.zeros(1))) == a_id  # nothing refers to it any more: reused
    True
    """

    def __init__(self, keep: int = 3):
        self.keep = keep
        self._buffers: dict[tuple[Any, ...], list[Any]] = {}

    def empty(self, shape: tuple[int, ...], like: Any) -> Any:
        """Uninitialised array of ``shape`` like :func:`empty`, reusing an unreferenced buffer."""
        kind = _kind(like)
        np_dtype = _numpy_dtype(like)
        if np_dtype is None:
            return empty(shape, like)
        import numpy as np

        pool = self._buffers.setdefault((tuple(shape), np_dtype), [])
        for buf in pool:
            # references: the pool's list, the loop variable and getrefcount's argument
            if sys.getrefcount(buf) == 3:
                return _wrap(buf, kind)
        buf = np.empty(shape, dtype=np_dtype)
        if len(pool) < self.keep:
            pool.append(buf)
        return _wrap(buf, kind)


def _numpy_dtype(like: Any) -> Any:
    """NumPy's float dtype for ``like``'s (numpy or torch CPU), ``None`` for others."""
    kind = _kind(like)
    if kind == "generic":  # (never imports torch for other backends)
        return None
    import numpy as np

    if kind == "numpy":
        return like.dtype if like.dtype in (np.float64, np.float32) else None
    import torch

    return {torch.float64: np.dtype(np.float64), torch.float32: np.dtype(np.float32)}.get(
        like.dtype
    )


def _wrap(buf: Any, kind: str) -> Any:
    if kind == "numpy":
        return buf
    import torch

    return torch.from_numpy(buf)


def residual_into(parent: Any, index: Any, c: Any, g: Any, M: Any, F: Any) -> None:
    """``parent[index] = c g^T - M @ F`` (``c`` ``(k,)``, ``g`` ``(B,)``, ``M`` ``(k, n)``,
    ``F`` ``(n, B)``; a 1-D ``index`` with ``k = 1`` squeezed: ``c`` a float, ``M`` ``(n,)``).

    Examples
    --------
    >>> import numpy as np
    >>> out = np.zeros(3)
    >>> residual_into(out, (slice(0, 3),), 2.0, np.ones(3), np.ones(1), np.ones((1, 3)))
    >>> out
    array([1., 1., 1.])
    >>> out2 = np.zeros((2, 3))
    >>> residual_into(out2, (slice(None), slice(0, 3)), np.array([1.0, 2.0]), np.ones(3),
    ...               np.eye(2), np.ones((2, 3)))
    >>> out2
    array([[0., 0., 0.],
           [1., 1., 1.]])
    """
    kind = _kind(parent)
    vec = isinstance(c, float)
    if kind == "numpy":
        import numpy as np

        dst = parent[index]
        if vec:
            np.multiply(g, c, out=dst)
        else:
            np.multiply(c[:, None], g, out=dst)
        dst -= M @ F
    elif kind == "torch":
        import torch

        if vec:
            torch.addmv(g, F.T, M, beta=c, alpha=-1.0, out=parent[index])
        else:
            torch.addmm(torch.outer(c, g), M, F, alpha=-1.0, out=parent[index])
    else:
        xp = array_api_compat.array_namespace(parent)
        cg = c * g if vec else xp.reshape(c, (-1, 1)) * xp.reshape(g, (1, -1))
        parent[index] = cg - M @ F


def lincomb_into(parent: Any, index: Any, base: Any, Vm: Any, E: Any) -> None:
    """``parent[index] = base + Vm @ E`` (``base`` ``(n, B)``, ``Vm`` ``(n, k)``, ``E`` ``(k, B)``).

    Examples
    --------
    >>> import numpy as np
    >>> out = np.zeros((2, 4))
    >>> lincomb_into(out, (slice(None), slice(1, 3)), np.ones((2, 2)),
    ...              np.array([[1.0], [2.0]]), np.array([[10.0, 20.0]]))
    >>> out
    array([[ 0., 11., 21.,  0.],
           [ 0., 21., 41.,  0.]])
    """
    kind = _kind(parent)
    if kind == "numpy":
        import numpy as np

        dst = parent[index]
        np.matmul(Vm, E, out=dst)
        dst += base
    elif kind == "torch":
        import torch

        torch.addmm(base, Vm, E, out=parent[index])
    else:
        parent[index] = base + Vm @ E


def scale_into(parent: Any, index: Any, c: float) -> None:
    """``parent[index] *= c`` (in place where the backend allows, else a write-back).

    Examples
    --------
    >>> import numpy as np
    >>> out = np.ones(4)
    >>> scale_into(out, (slice(1, 3),), 0.5)
    >>> out
    array([1. , 0.5, 0.5, 1. ])
    """
    if _kind(parent) in ("numpy", "torch"):
        dst = parent[index]
        dst *= c
    else:
        parent[index] = parent[index] * c


def stacked_parent(top: Any, bottom: Any) -> Any:
    """The ``(2r, d)`` array whose rows are ``[top; bottom]``, if both are views of it.

    ``top`` and ``bottom`` are ``(r, d)`` arrays (e.g. ``U.T`` and ``V.T`` of a streamed
    step's output, which writes both factors into one row-contiguous buffer). Returns that
    buffer as one array (a view, no copy) when ``top`` is its first ``r`` rows and ``bottom``
    the next ``r``, both row-contiguous; ``None`` otherwise (and for other backends), in
    which case callers stack blocks themselves.

    Examples
    --------
    >>> import numpy as np
    >>> W = np.arange(12.0).reshape(4, 3)
    >>> stacked_parent(W[:2], W[2:]) is not None, stacked_parent(W[:2], W[2:] + 0) is None
    (True, True)
    """
    kind = _kind(top)
    if kind == "generic" or _kind(bottom) != kind or top.dtype != bottom.dtype:
        return None
    if tuple(top.shape) != tuple(bottom.shape) or top.ndim != 2:
        return None
    r, d = int(top.shape[0]), int(top.shape[1])
    if kind == "numpy":
        import numpy as np

        item = top.itemsize
        if top.strides != (d * item, item) or bottom.strides != top.strides:
            return None
        base = top.base if top.base is not None else top
        if base is not bottom.base and base is not bottom:
            return None
        t0 = top.__array_interface__["data"][0]
        b0 = bottom.__array_interface__["data"][0]
        if b0 - t0 != r * d * item:
            return None
        return np.lib.stride_tricks.as_strided(top, shape=(2 * r, d), strides=top.strides)
    if top.stride() != (d, 1) or bottom.stride() != (d, 1):
        return None
    if top.untyped_storage().data_ptr() != bottom.untyped_storage().data_ptr():
        return None
    if bottom.storage_offset() - top.storage_offset() != r * d:
        return None
    return top.as_strided((2 * r, d), (d, 1))


@contextlib.contextmanager
def single_threaded_blas(like: Any) -> Iterator[None]:
    """Run the enclosed NumPy BLAS calls on one thread (no-op for other backends).

    Applies to NumPy arrays and to torch CPU tensors (whose streamed step runs NumPy's
    kernels on views of them); see :func:`lowrank_precond.backends.blas.single_threaded_blas`
    for why, and why the limits are restored exactly when steps run in several threads.

    Examples
    --------
    >>> import numpy as np
    >>> with single_threaded_blas(np.zeros(1)):
    ...     float(np.ones(3) @ np.ones(3))
    3.0
    """
    if _kind(like) == "generic":
        yield
        return
    with blas.single_threaded_blas():
        yield


def add_into(parent: Any, index: Any, x: Any) -> None:
    """``parent[index] += x`` (in place where the backend allows, else a write-back).

    Examples
    --------
    >>> import numpy as np
    >>> out = np.ones(3)
    >>> add_into(out, (slice(0, 2),), np.array([1.0, 2.0]))
    >>> out
    array([2., 3., 1.])
    """
    if _kind(parent) in ("numpy", "torch"):
        dst = parent[index]
        dst += x
    else:
        parent[index] = parent[index] + x


def numpy_view(x: Any) -> Any:
    """A NumPy array sharing ``x``'s memory if ``x`` is a float32/float64 torch CPU tensor.

    ``None`` for anything else (other backends, other dtypes, tensors NumPy cannot view). The
    streamed step runs torch CPU tensors through NumPy's kernels this way (no copy): NumPy's
    ``out=`` ufuncs and single-threaded BLAS make the row-blocked passes several times faster
    than the equivalent torch calls (measured 35 ms against 19 ms per step at d = 1e6,
    r = 5), and the two backends then agree bit for bit.

    Examples
    --------
    >>> import numpy as np
    >>> numpy_view(np.zeros(2)) is None
    True
    """
    if _kind(x) != "torch" or _numpy_dtype(x) is None:
        return None
    try:
        return x.detach().numpy()
    except (RuntimeError, TypeError):  # e.g. a tensor with the conjugate or negative bit set
        return None


def numpy_views(*xs: Any) -> tuple[Any, ...] | None:
    """:func:`numpy_view` of every argument, or ``None`` unless all of them have one.

    Examples
    --------
    >>> import torch
    >>> a, b = numpy_views(torch.zeros(2), torch.ones(1, dtype=torch.float64))
    >>> a.dtype, b.dtype
    (dtype('float32'), dtype('float64'))
    >>> numpy_views(torch.zeros(2), torch.zeros(2, dtype=torch.int64)) is None
    True
    """
    views = tuple(numpy_view(x) for x in xs)
    return None if any(v is None for v in views) else views


def from_numpy_view(y: Any) -> Any:
    """The torch CPU tensor sharing the NumPy array ``y``'s memory (inverse of :func:`numpy_view`).

    Examples
    --------
    >>> import numpy as np
    >>> t = from_numpy_view(np.arange(3.0))
    >>> type(t).__name__, t.dtype
    ('Tensor', torch.float64)
    """
    import torch

    return torch.from_numpy(y)


def copy_into(parent: Any, index: Any, x: Any) -> None:
    """``parent[index] = x`` (an in-place copy on every backend).

    Examples
    --------
    >>> import numpy as np
    >>> out = np.zeros(3)
    >>> copy_into(out, (slice(1, 3),), np.array([1.0, 2.0]))
    >>> out
    array([0., 1., 2.])
    """
    parent[index] = x


def axpy_into(parent: Any, index: Any, c: float, x: Any, y: Any) -> None:
    """``parent[index] = c x + y`` (in place on NumPy and torch CPU).

    Examples
    --------
    >>> import numpy as np
    >>> out = np.zeros(3)
    >>> axpy_into(out, (slice(0, 2),), 2.0, np.array([1.0, 2.0]), np.array([10.0, 20.0]))
    >>> out
    array([12., 24.,  0.])
    """
    kind = _kind(parent)
    if kind == "numpy":
        import numpy as np

        dst = parent[index]
        np.multiply(x, c, out=dst)
        dst += y
    elif kind == "torch":
        import torch

        torch.add(y, x, alpha=c, out=parent[index])
    else:
        parent[index] = c * x + y
