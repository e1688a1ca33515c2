"""A curvature whose row fields are split over processes (:class:`ShardedCurvature`).

With a :class:`~lowrank_precond.backends.shards.Shards`, every process holds only its rows
``[start, stop)`` of the curvature's ``row_fields`` (AdaGram's ``P, Q, U, V``, the sketch's
``U``) and sees only the same rows of the gradient. One mechanism serves every step
(``docs/scaling.rst``):

* a curvature with ``observe_rows`` (AdaGram, the Gram sketch) takes its fused step on the
  rows: each pass over ``d`` ends in a sum of ``r x r`` matrices, ``r``-vectors and scalars,
  which ``shards.allreduce`` completes; the new rows and the direction's rows are written
  where they are. Nothing of size ``d`` crosses processes;
* any other step (the warm-up before the factor is truncated, the rare step whose geometry
  the fused step leaves to the reference path, a curvature without ``observe_rows``, a
  moment's direction) gathers the row fields and the gradient, runs the ordinary step on the
  whole arrays -- identically on every process, since they all hold the same inputs -- and
  keeps its own rows of the new fields and of the direction. That costs ``O(d r)``
  communication and, for that step, the memory of the whole state.

The math is unchanged: the directions and the product ``U S V^T`` equal the unsharded ones to
rounding, and processes take the same decisions (they read the same reduced sums).

Examples
--------
One process holding every row (``Shards(d)``) is the ordinary preconditioner:

>>> import numpy as np
>>> from lowrank_precond import preconditioners as pc
>>> from lowrank_precond.backends.shards import Shards
>>> g = np.array([3.0, 4.0, 0.0])
>>> plain, split = pc.adagram(rank=2), pc.adagram(rank=2, shards=Shards(3))
>>> p0, _ = plain.update(g, plain.init(np.zeros(3)))
>>> p1, _ = split.update(g, split.init(np.zeros(3)))
>>> bool(np.array_equal(p0, p1))
True
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lowrank_precond.backends import array_namespace, device_of
from lowrank_precond.backends.shards import Shards

__all__ = ["ShardedCurvature"]


class _RowsView:
    """A whole-vector view restricted to this process's rows (``apply`` gathers ``v``)."""

    def __init__(self, view: Any, shards: Shards):
        self.view, self.shards = view, shards

    def own(self) -> Any:
        return self.shards.local(self.view.own())

    def apply(self, v: Any) -> Any:
        return self.shards.local(self.view.apply(self.shards.gather(v)))


class ShardedCurvature:
    """``curvature`` on this process's rows of its ``row_fields`` (see the module notes).

    Parameters
    ----------
    curvature : Curvature
        With a ``row_fields`` attribute (names of the state fields with one row per entry
        of the flattened parameter) and, optionally, ``observe_rows(grad, state, *, own,
        shards, overwrite=False)`` returning ``(fields, view)`` or ``None``.
    shards : Shards
        This process's rows.
    """

    def __init__(self, curvature: Any, shards: Shards):
        if not isinstance(shards, Shards):
            raise TypeError(f"shards: expected a Shards, got {type(shards).__name__}")
        self.inner, self.shards = curvature, shards
        self.row_fields = tuple(curvature.row_fields)
        self.state_cls = curvature.state_cls
        self.momentum_state_cls = curvature.momentum_state_cls
        self.supports_overwrite = getattr(curvature, "supports_overwrite", False)

    def init(self, x: Any) -> dict[str, Any]:
        """Fields for this process's ``(rows,)`` entries ``x`` of the flattened parameter."""
        xp = array_namespace(x)
        rows = int(xp.reshape(x, (-1,)).shape[0])
        if rows != self.shards.rows:
            raise ValueError(
                f"x: this process holds {self.shards.rows} rows ({self.shards!r}), "
                f"got {rows} entries"
            )
        if rows == 0:  # no rows here (d < processes): empty fields, still in every collective
            fields = self.inner.init(xp.zeros((1,), dtype=x.dtype, device=device_of(x)))
            return {k: v[:0, ...] if k in self.row_fields else v for k, v in fields.items()}
        return self.inner.init(x)

    def flat(self, grad: Any, state: Any, *args: Any) -> Any:
        return self.inner.flat(grad, state, *args)

    def fields(self, state: Any) -> dict[str, Any]:
        return self.inner.fields(state)

    def observe(self, grad: Any, state: Any, *, own: bool, overwrite: bool = False):
        sh = self.shards
        rows_step = getattr(self.inner, "observe_rows", None)
        if rows_step is not None:
            kw = {"overwrite": overwrite} if self.supports_overwrite else {}
            res = rows_step(grad, state, own=own, shards=sh, **kw)
            if res is not None:
                return res
        xp = array_namespace(grad)
        whole = dataclasses.replace(
            state, **{name: sh.gather(getattr(state, name)) for name in self.row_fields}
        )
        fields, view = self.inner.observe(sh.gather(xp.reshape(grad, (-1,))), whole, own=own)
        if fields is not None:
            fields = {k: sh.local(v) if k in self.row_fields else v for k, v in fields.items()}
        return fields, _RowsView(view, sh)
