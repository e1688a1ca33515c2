"""Output buffers of the fused steps, recycled once no array uses them any more.

A fused step writes its new factors and direction into fresh ``d``-sized arrays. On a CPU,
fresh memory from the kernel is zero-filled on first touch: at d = 1e6, r = 5 that cost 8 ms
of a 30 ms step (the write pass into fresh memory took 18 ms, into reused memory 10 ms).
:class:`Workspace` is a small allocator that hands such memory back.

**Safety by lifetime, not by counting references.** Every buffer is lent through a *lease*:
the arrays the workspace returns are NumPy arrays whose ``.base`` is the lease (not an
ndarray, so NumPy never collapses a view's base past it), and torch tensors made from them
hold those arrays. Any view, slice, transpose, tensor or ``.numpy()`` of a returned array
therefore keeps the lease alive, and the memory goes back to the pool only from the lease's
finaliser (:func:`weakref.finalize`), which Python runs once no object can reach the lease. No
array that is still reachable can ever see its memory reused, on any Python implementation
(CPython finalises at once; others may later, which only delays the reuse). A caller that
keeps old states gets fresh memory for the new ones, exactly as without a workspace; a loop
that replaces its state gets the buffer of the state before last back. Results never depend
on the reuse.

Code that keeps a raw pointer to the memory without keeping an array (``ctypes``,
``__array_interface__`` copied by hand) is outside that guarantee, as with any allocator.
"""

from __future__ import annotations

import weakref
from typing import Any

import array_api_compat
import numpy as np

from lowrank_precond.backends.fused import fused_kernels

__all__ = ["Workspace"]


class _Lease:
    """The owner that arrays over a pooled buffer see as their ``.base``."""

    __slots__ = ("__array_interface__", "__weakref__", "raw")

    def __init__(self, raw: Any):
        self.raw = raw
        self.__array_interface__ = raw.__array_interface__


class Workspace:
    """Output buffers that repeated fused steps hand back to themselves.

    ``empty(shape, like)`` returns an uninitialised array like ``like`` (NumPy or torch CPU,
    float32 or float64), reusing the memory of an earlier one once nothing can reach that
    earlier array any more (see the module notes: the reuse is decided by object lifetime,
    through a finaliser, never by reference counts). Other backends and dtypes get plain
    allocations.

    Between steps the workspace holds at most ``keep`` spare buffers per shape and dtype (in
    a plain loop: one, the buffer of the dropped state); the peak during a step is unchanged
    (old and new state coexist either way). Spare buffers are freed with the workspace.
    Concurrent use from several threads is safe (``list.pop`` and ``list.append`` are atomic;
    two callers never get the same buffer).

    Parameters
    ----------
    keep : int
        Spare buffers remembered per ``(shape, dtype)`` (default 3).

    Examples
    --------
    >>> import numpy as np
    >>> ws = Workspace()
    >>> a = ws.empty((4,), np.zeros(1))
    >>> view = a[1:]
    >>> address = a.__array_interface__["data"][0]
    >>> del a
    >>> ws.empty((4,), np.zeros(1)).__array_interface__["data"][0] == address  # `view` holds it
    False
    >>> del view
    >>> ws.empty((4,), np.zeros(1)).__array_interface__["data"][0] == address  # unreachable
    True
    """

    def __init__(self, keep: int = 3):
        self.keep = keep
        self._spare: dict[tuple[Any, ...], list[Any]] = {}

    def empty(self, shape: tuple[int, ...], like: Any) -> Any:
        """Uninitialised array of ``shape`` with ``like``'s kind, device and dtype."""
        kernels = fused_kernels(like)
        host_dtype = None if kernels is None else kernels.host_dtype(like.dtype)
        if host_dtype is None:
            xp = array_api_compat.array_namespace(like)
            return xp.empty(shape, dtype=like.dtype, device=array_api_compat.device(like))
        key = (tuple(shape), host_dtype)
        spare = self._spare.setdefault(key, [])
        try:
            raw = spare.pop()
        except IndexError:
            raw = np.empty(key[0], dtype=host_dtype)
        lease = _Lease(raw)
        out = np.asarray(lease)
        fin = weakref.finalize(lease, _give_back, weakref.ref(self), key, raw)
        fin.atexit = False
        return kernels.wrap(out)


def _give_back(ref: Any, key: tuple[Any, ...], raw: Any) -> None:
    """Finaliser of a lease: its buffer becomes a spare (if the workspace still exists)."""
    ws = ref()
    if ws is None:
        return
    spare = ws._spare.get(key)
    if spare is not None and len(spare) < ws.keep:
        spare.append(raw)
