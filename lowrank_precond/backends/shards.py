"""A state split by rows over several processes: what the math layers ask of it.

A group-spanning preconditioner keeps ``(d, k)`` factors (AdaGram's ``U``, ``V``, the sketch's
rows). With a :class:`Shards`, each process keeps only its own contiguous block of rows
``[start, stop)`` of every such array, and the steps that support it run on those rows:
every row-blocked pass ends in a sum of small quantities (``r x r`` matrices, ``r``-vectors,
scalars) over the rows, which :meth:`Shards.allreduce` completes across the processes; the
writes are local. A step that has no sharded form gathers the rows (:meth:`Shards.gather`),
runs on the whole arrays (identically on every process) and keeps its own rows
(:meth:`Shards.local`). See ``docs/scaling.rst`` for the scheme and its communication count.

This module only states the interface; the communication is the caller's
(``lowrank_precond.optim.torch`` implements it on ``torch.distributed``). ``Shards`` itself is
the trivial split: one process that holds every row, so that code written against the
interface also runs unsharded.

Examples
--------
>>> import numpy as np
>>> one = Shards(4)
>>> one.start, one.stop, one.rows
(0, 4, 4)
>>> one.allreduce([np.ones(2), 3.0])
[array([1., 1.]), 3.0]
>>> one.gather(np.arange(4.0)), one.local(np.arange(4.0))
(array([0., 1., 2., 3.]), array([0., 1., 2., 3.]))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import array_api_compat

__all__ = ["Shards"]


class Shards:
    """The rows ``[start, stop)`` of a length-``size`` axis held by this process.

    Subclasses that really split the rows override :meth:`allreduce` and :meth:`gather`
    (and pass their ``start``, ``stop``); this base class is one process holding all rows.

    Parameters
    ----------
    size : int
        ``d``, the length of the whole (unsharded) axis.
    start, stop : int, optional
        This process's rows (default: all of them). Every process's blocks, in the order of
        :meth:`gather`, tile ``[0, size)``.

    Attributes
    ----------
    rows : int
        ``stop - start``.
    """

    def __init__(self, size: int, start: int = 0, stop: int | None = None):
        stop = size if stop is None else stop
        if not 0 <= start <= stop <= size:
            raise ValueError(f"rows: need 0 <= start <= stop <= size, got {start}, {stop}, {size}")
        self.size, self.start, self.stop = int(size), int(start), int(stop)

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def split(self) -> bool:
        """Whether the rows are really split (more than one process holds some)."""
        return self.rows != self.size

    def allreduce(self, parts: Sequence[Any]) -> list[Any]:
        """The sums over all processes of ``parts`` (small host arrays and Python floats),
        in the same order and kinds. Every process must call it with the same shapes."""
        return list(parts)

    def gather(self, x: Any) -> Any:
        """``(rows, ...) -> (size, ...)``: every process's rows, concatenated in order."""
        return x

    def local(self, x: Any) -> Any:
        """``(size, ...) -> (rows, ...)``: a copy of this process's rows of a whole array."""
        if not self.split:
            return x
        xp = array_api_compat.array_namespace(x)
        return xp.asarray(x[self.start : self.stop, ...], copy=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, rows=[{self.start}, {self.stop}))"
