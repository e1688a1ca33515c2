"""In-place NumPy block kernels of the fused (row-blocked) steps.

The fused steps of :mod:`lowrank_precond.linalg.streaming` and
:mod:`lowrank_precond.linalg.streaming_sketch` walk ``d`` in row blocks and write each output
block once. The array API has no ``out=`` arguments, so a generic ``dst[i] = A + B @ C``
evaluates block-sized temporaries and then copies the result; on a CPU that costs about as
much as the memory traffic of the block itself. These kernels write in place with NumPy's
``out=`` ufuncs. They are reached through :func:`lowrank_precond.backends.fused.fused_kernels`
(``kernels.ops``), which runs them on zero-copy NumPy views of torch CPU tensors too.

Every ``*_into`` function writes ``parent[index]`` and returns nothing; ``index`` is a tuple
of slices selecting a block view of ``parent``. All arrays are NumPy arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "add_into",
    "axpy_into",
    "copy_into",
    "empty",
    "lincomb_into",
    "residual_into",
    "scale_into",
    "stacked_parent",
]


def empty(shape: tuple[int, ...], dtype: Any) -> Any:
    """Uninitialised NumPy array (NumPy asks the kernel for transparent huge pages on large
    allocations: the first-touch page faults of a fresh ``d x r`` factor cost several times
    less than with torch's own allocator, so torch CPU steps allocate here too).

    Examples
    --------
    >>> empty((2, 3), np.float32).dtype
    dtype('float32')
    """
    return np.empty(shape, dtype=dtype)


def residual_into(
    parent: Any, index: Any, c: Any, g: Any, M: Any, F: Any, scratch: Any = None
) -> None:
    """``parent[index] = c g^T - M @ F`` (``c`` ``(k,)``, ``g`` ``(B,)``, ``M`` ``(k, n)``,
    ``F`` ``(n, B)``; a 1-D ``index`` with ``k = 1`` squeezed: ``c`` a float, ``M`` ``(n,)``).

    With ``scratch`` (shaped like ``parent[index]``) the product is formed there first, so
    that ``parent[index]`` may be ``F`` itself (an in-place update), and no temporary is
    allocated; the result is the same, bit for bit.

    Examples
    --------
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
    dst = parent[index]
    product = M @ F if scratch is None else np.matmul(M, F, out=scratch)
    # in the destination's dtype: a float scalar times a float32 (or float16) g would
    # otherwise be computed in g's precision
    if isinstance(c, float):
        np.multiply(g, c, out=dst, dtype=dst.dtype)
    else:
        np.multiply(c[:, None], g, out=dst, dtype=dst.dtype)
    dst -= product


def lincomb_into(parent: Any, index: Any, base: Any, Vm: Any, E: Any) -> None:
    """``parent[index] = base + Vm @ E`` (``base`` ``(n, B)``, ``Vm`` ``(n, k)``, ``E`` ``(k, B)``).

    Examples
    --------
    >>> out = np.zeros((2, 4))
    >>> lincomb_into(out, (slice(None), slice(1, 3)), np.ones((2, 2)),
    ...              np.array([[1.0], [2.0]]), np.array([[10.0, 20.0]]))
    >>> out
    array([[ 0., 11., 21.,  0.],
           [ 0., 21., 41.,  0.]])
    """
    dst = parent[index]
    np.matmul(Vm, E, out=dst)
    dst += base


def scale_into(parent: Any, index: Any, c: float) -> None:
    """``parent[index] *= c``.

    Examples
    --------
    >>> out = np.ones(4)
    >>> scale_into(out, (slice(1, 3),), 0.5)
    >>> out
    array([1. , 0.5, 0.5, 1. ])
    """
    dst = parent[index]
    dst *= c


def add_into(parent: Any, index: Any, x: Any) -> None:
    """``parent[index] += x``.

    Examples
    --------
    >>> out = np.ones(3)
    >>> add_into(out, (slice(0, 2),), np.array([1.0, 2.0]))
    >>> out
    array([2., 3., 1.])
    """
    dst = parent[index]
    dst += x


def axpy_into(parent: Any, index: Any, c: float, x: Any, y: Any) -> None:
    """``parent[index] = c x + y``.

    Examples
    --------
    >>> out = np.zeros(3)
    >>> axpy_into(out, (slice(0, 2),), 2.0, np.array([1.0, 2.0]), np.array([10.0, 20.0]))
    >>> out
    array([12., 24.,  0.])
    """
    dst = parent[index]
    np.multiply(x, c, out=dst)
    dst += y


def copy_into(parent: Any, index: Any, x: Any) -> None:
    """``parent[index] = x``.

    Examples
    --------
    >>> out = np.zeros(3)
    >>> copy_into(out, (slice(1, 3),), np.array([1.0, 2.0]))
    >>> out
    array([0., 1., 2.])
    """
    parent[index] = x


def stacked_parent(top: Any, bottom: Any) -> Any:
    """The ``(2r, d)`` array whose rows are ``[top; bottom]``, if both are views of it.

    ``top`` and ``bottom`` are ``(r, d)`` arrays (e.g. ``U.T`` and ``V.T`` of a fused step's
    output, which writes both factors into one row-contiguous buffer). Returns that buffer as
    one array (a view, no copy) when ``top`` is its first ``r`` rows and ``bottom`` the next
    ``r``, both row-contiguous views of one array; ``None`` otherwise.

    Examples
    --------
    >>> W = np.arange(12.0).reshape(4, 3)
    >>> stacked_parent(W[:2], W[2:]) is not None, stacked_parent(W[:2], W[2:] + 0) is None
    (True, True)
    """
    if top.dtype != bottom.dtype or top.shape != bottom.shape or top.ndim != 2:
        return None
    r, d = int(top.shape[0]), int(top.shape[1])
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
