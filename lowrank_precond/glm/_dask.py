"""GLM objectives on dask arrays: the data chunked by rows, the weights in memory.

:func:`lowrank_precond.glm.objective` hands data given as dask arrays (the ``dask`` extra) to
this module. ``A`` ``(n, d)`` is split into row blocks ``A_c`` (one chunk across the ``d``
columns), ``y`` (and ``sample_weight``) into the same row blocks; the weights ``w`` stay a
small in-memory array (NumPy, or any backend: they are copied to the host for the call).
One call is

- full batch: ``z_c = A_c coef + b``, the family's loss and ``dz_c`` on every block (the
  same array-API code as for NumPy, run on dask through ``array_api_compat``), and the row
  sums ``sum_c loss_c``, ``A^T dz = sum_c A_c^T dz_c`` and ``sum_c dz_c`` as dask reductions,
  all computed together by one ``dask.compute`` (each block of ``A`` is read once per call);
- minibatch: one block ``c`` drawn with probability ``n_c / n`` and ``min(batch_size, n_c)``
  rows drawn without replacement inside it (both from the objective's seeded generator);
  only those rows of that block are computed and brought to memory, and the loss and
  gradient are those of the NumPy path on them. The estimate is unbiased
  (``E = sum_c (n_c / n) mean_c = mean``), but a minibatch never mixes blocks: shuffle the
  rows before chunking when the data is stored in order (e.g. sorted by label).

``A`` is never materialised (``.compute()`` is never called on it). Construction makes the
checks of the NumPy path: one pass over the blocks of ``A`` for its finiteness and a few
passes over ``y`` for the labels. Theory of the losses: :ref:`theory-glm-losses`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lowrank_precond.backends import array_namespace, device_of, name_of, to_numpy
from lowrank_precond.glm.families import Family
from lowrank_precond.glm.objective import Objective, _convert

__all__ = ["DaskObjective", "is_dask", "prepare"]

INSTALL = "pip install 'lowrank-precond[dask]'"


def _name(x: Any) -> str | None:
    try:
        return name_of(x)
    except TypeError:
        return None


def is_dask(*arrays: Any) -> bool:
    """True when any of ``arrays`` is a dask array (never imports dask).

    Examples
    --------
    >>> import numpy as np
    >>> is_dask(np.zeros(2), None)
    False
    """
    return any(_name(a) == "dask" for a in arrays if a is not None)


def _import_dask() -> Any:
    try:
        import dask.array as da
    except ImportError as exc:  # pragma: no cover - a dask array implies dask
        raise ImportError(f"dask data needs the dask package: {INSTALL}") from exc
    return da


def _rows_like(A: Any, name: str, v: Any) -> Any:
    """``v`` (``(n,)``) as a dask array with ``A``'s row chunks; other shapes unchanged (the
    shape checks of :func:`~lowrank_precond.glm.objective` report them)."""
    n = A.shape[0]
    if v is None or _name(v) is None or tuple(v.shape) != (n,):
        return v
    if _name(v) != "dask":
        return _import_dask().from_array(to_numpy(v), chunks=(A.chunks[0],))
    if tuple(v.chunks[0]) != tuple(A.chunks[0]):
        raise ValueError(
            f"{name}: its row chunks {v.chunks[0]} do not match A's {A.chunks[0]}; "
            f"chunk both the same way, e.g. {name}.rechunk((A.chunks[0],))"
        )
    return v


def prepare(A: Any, y: Any, sample_weight: Any = None) -> tuple[Any, Any]:
    """Check that dask data is chunked by rows only; return ``(y, sample_weight)`` as dask
    arrays with ``A``'s row chunks.

    Parameters
    ----------
    A : dask array, shape (n, d)
        Chunked by rows: known chunk sizes, one chunk across the ``d`` columns.
    y : array, shape (n,)
        A dask array with ``A``'s row chunks, or an in-memory array (chunked here like ``A``).
    sample_weight : array, shape (n,), or None
        As ``y``.

    Returns
    -------
    tuple
        ``(y, sample_weight)``, dask arrays chunked like ``A`` (``None`` stays ``None``).

    Raises
    ------
    TypeError
        ``y`` or ``sample_weight`` is a dask array but ``A`` is not.
    ValueError
        Naming the argument: ``A`` chunked across its columns, or with unknown chunk sizes;
        ``y`` or ``sample_weight`` with row chunks other than ``A``'s.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> A = da.ones((6, 2), chunks=(3, 2))
    >>> y, s = prepare(A, np.arange(6.0))
    >>> y.chunks, s
    (((3, 3),), None)
    >>> prepare(da.ones((6, 2), chunks=(3, 1)), y)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: A: must be chunked by rows only (one chunk across its 2 columns), got ...
    """
    if _name(A) != "dask":
        which = "y" if is_dask(y) else "sample_weight"
        raise TypeError(
            f"A: {which} is a dask array but A is a {type(A).__name__}; give A as a dask "
            "array chunked by rows, e.g. dask.array.from_array(A, chunks=(rows, -1))"
        )
    if A.ndim != 2:
        raise ValueError(f"A: expected a 2-D array (n, d), got shape {tuple(A.shape)}")
    if any(math.isnan(c) for c in A.chunks[0]) or math.isnan(A.shape[1]):
        raise ValueError(
            f"A: the dask array has unknown chunk sizes {A.chunks}; call "
            "A.compute_chunk_sizes() first"
        )
    if len(A.chunks[1]) != 1:
        raise ValueError(
            f"A: must be chunked by rows only (one chunk across its {A.shape[1]} columns), "
            f"got column chunks {A.chunks[1]}; use A.rechunk({{1: -1}})"
        )
    return _rows_like(A, "y", y), _rows_like(A, "sample_weight", sample_weight)


class DaskObjective(Objective):
    """:class:`~lowrank_precond.glm.objective.Objective` on dask data chunked by rows.

    Built by :func:`lowrank_precond.glm.objective` when ``A`` is a dask array; same
    contract (loss, gradient, minibatches, ``full()``, ``reset()``, ``batch_indices()``,
    predictions) with the differences below. Each full-batch call is one ``dask.compute``
    of the loss and the gradient (every block of ``A`` read once); each minibatch call reads
    the drawn rows of one block (see the module docstring). The gradient comes back on
    ``w``'s backend, device and dtype and the loss as for ``Objective`` (a float for NumPy
    ``w``), after the call's host synchronisation. ``linear_predictor`` and ``predict`` on
    dask rows (the objective's own by default) return lazy dask arrays; ``accuracy``
    computes.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> from lowrank_precond.glm import objective
    >>> rng = np.random.default_rng(0)
    >>> A, y = rng.standard_normal((40, 3)), rng.integers(0, 2, 40)
    >>> fun = objective("logistic", da.from_array(A, chunks=(10, 3)), y, lam=0.1)
    >>> type(fun).__name__
    'DaskObjective'
    >>> loss, grad = fun(np.ones(3))
    >>> ref_loss, ref_grad = objective("logistic", A, y, lam=0.1)(np.ones(3))
    >>> bool(np.isclose(loss, ref_loss)), bool(np.allclose(grad, ref_grad))
    (True, True)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sizes = np.asarray(self.A.chunks[0], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._sizes)[:-1]])

    def reset(self) -> None:
        """Restart the sampler at its initial random state and zero :attr:`n_calls`.

        Examples
        --------
        >>> import dask.array as da, numpy as np
        >>> from lowrank_precond.glm import objective
        >>> A = da.from_array(np.eye(4), chunks=(2, 4))
        >>> fun = objective("least_squares", A, np.arange(4.0), batch_size=1, rng=0)
        >>> _ = fun(np.zeros(4)); first = fun.batch_indices()
        >>> fun.reset(); _ = fun(np.zeros(4))
        >>> bool((fun.batch_indices() == first).all())
        True
        """
        super().reset()
        self._rows: np.ndarray | None = None

    def batch_indices(self) -> np.ndarray | None:
        """Host indices (into all ``n`` rows) of the rows the last minibatch call used.

        ``None`` for full batch or before a call. They lie in one row block of ``A``.

        Examples
        --------
        >>> import dask.array as da, numpy as np
        >>> from lowrank_precond.glm import objective
        >>> A = da.from_array(np.eye(6), chunks=(3, 6))
        >>> fun = objective("least_squares", A, np.arange(6.0), batch_size=2, rng=0)
        >>> _ = fun(np.zeros(6))
        >>> rows = fun.batch_indices()
        >>> len(rows), bool(rows.max() // 3 == rows.min() // 3)  # two rows of one block
        (2, True)
        """
        if not self.stochastic or self._rows is None:
            return None
        return self._rows.copy()

    def _data(self, w: Any) -> tuple[Any, Any, Any]:
        """``(A, Y, weights)`` as lazy dask arrays in ``w``'s dtype (``w`` on the host)."""
        key = ("dask", str(device_of(self.A)), str(w.dtype))
        if key not in self._cache:
            A, Y, s = self.A, self._Y, self.sample_weight

            def cast(x: Any) -> Any:
                return x if x is None or x.dtype == w.dtype else x.astype(w.dtype)

            self._cache[key] = (cast(A), cast(Y), cast(s))
        return self._cache[key]

    def _draw(self, w: Any) -> tuple[Any, Any, Any]:
        """The next minibatch: rows of one block, computed and brought to NumPy."""
        import dask

        A, Y, s = self._data(w)
        c = int(self._rng.choice(len(self._sizes), p=self._sizes / self.n_samples))
        m = int(self._sizes[c])
        rows = np.sort(self._rng.choice(m, size=min(self.batch_size, m), replace=False))
        parts = dask.compute(*(x.blocks[c][rows] for x in (A, Y, s) if x is not None))
        self._rows = self._offsets[c] + rows
        return parts[0], parts[1], parts[2] if s is not None else None

    def _new_data(self, w: Any, A: Any | None) -> Any:
        if A is not None and _name(A) == "dask":
            if A.ndim != 2 or A.shape[1] != self.n_features:
                raise ValueError(f"A: expected shape (m, {self.n_features}), got {tuple(A.shape)}")
            return A if A.dtype == w.dtype else A.astype(w.dtype)
        return super()._new_data(w, A)

    def linear_predictor(self, w: Any, A: Any | None = None) -> Any:
        """``z = A coef + intercept`` (``(m,)`` or ``(m, K)``), lazy on dask rows.

        ``A`` defaults to the objective's data (then ``z`` is a lazy dask array); an
        in-memory ``A`` gives a NumPy ``z``.

        Examples
        --------
        >>> import dask.array as da, numpy as np
        >>> from lowrank_precond.glm import objective
        >>> fun = objective("least_squares", da.from_array(np.eye(4), chunks=(2, 4)),
        ...                 np.arange(4.0))
        >>> fun.linear_predictor(np.arange(4.0)).compute()
        array([0., 1., 2., 3.])
        """
        return super().linear_predictor(np.asarray(to_numpy(self._as_matrix(w))), A)

    def __call__(self, w: Any) -> tuple[Any, Any]:
        """Loss and gradient at ``w`` on the next batch, one ``dask.compute`` per call."""
        W = self._as_matrix(w)
        host = np.asarray(to_numpy(W))
        coef, bias = self._split(host)
        if self.stochastic:
            A, Y, s = self._draw(host)
            parts = _partials(A, Y, s, coef=coef, bias=bias, family=self.family, n=A.shape[0])[0]
        else:
            parts = self._reduce(host, coef, bias)
        self.n_calls += 1
        p = coef.size
        loss, g = float(parts[0]), np.reshape(parts[1 : 1 + p], coef.shape)
        if self.lam:
            loss = loss + (0.5 * self.lam) * float(np.sum(coef * coef))
            g = g + self.lam * coef
        if bias is not None:
            g = np.concatenate([g, np.reshape(parts[1 + p :], (1, *g.shape[1:]))], axis=0)
        g = np.reshape(g, tuple(w.shape))
        xp = array_namespace(W)
        g = _convert(g, xp, device_of(W), W.dtype)
        if name_of(W) == "numpy":
            return loss, g
        return xp.asarray(loss, dtype=W.dtype, device=device_of(W)), g

    def _reduce(self, host: Any, coef: Any, bias: Any) -> Any:
        """``[loss, vec(A^T dz), vec(sum dz)]`` of all rows: one task per block of ``A``
        (:func:`_partials`), summed by a dask tree reduction, one ``dask.compute``."""
        da = _import_dask()
        A, Y, s = self._data(host)
        q = 1 + coef.size + (0 if bias is None else bias.size)
        args: list[Any] = [A, "ij", Y, "i" if Y.ndim == 1 else "ik"]
        if s is not None:
            args += [s, "i"]
        blocks = da.blockwise(
            _partials,
            "iq",
            *args,
            new_axes={"q": q},
            adjust_chunks={"i": 1},
            concatenate=True,
            dtype=host.dtype,
            meta=np.empty((0, 0), dtype=host.dtype),
            coef=coef,
            bias=bias,
            family=self.family,
            n=self.n_samples,
        )
        return blocks.sum(axis=0).compute()


def _partials(
    a: Any,
    Y: Any,
    s: Any = None,
    *,
    coef: Any,
    bias: Any,
    family: Family,
    n: int,
) -> Any:
    """``(1, q)``: ``n_b / n`` times ``[loss, vec(a^T dz), vec(sum dz)]`` of one block of
    ``n_b`` rows, by the family's own (NumPy-path) code; ``q = 1 + coef.size (+ K)``.

    ``bias`` is the intercept row ``(1,)`` or ``(1, K)`` or ``None`` (``z = a coef + b``, as
    :meth:`Objective._linear <lowrank_precond.glm.objective.Objective>` makes it)."""
    if a.shape[0] == 0:  # an empty block (dask allows them) adds nothing
        return np.zeros((1, 1 + coef.size + (0 if bias is None else bias.size)), dtype=a.dtype)
    z = a @ coef if bias is None else a @ coef + bias
    loss, dz = family.loss_and_grad_z(z, Y, s)
    pieces = [np.reshape(loss, (1,)), np.reshape(a.T @ dz, (-1,))]
    if bias is not None:
        pieces.append(np.reshape(np.sum(dz, axis=0), (-1,)))
    return np.reshape(np.concatenate(pieces) * (a.shape[0] / n), (1, -1))
