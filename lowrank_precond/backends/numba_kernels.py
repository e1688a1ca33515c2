"""Compiled passes of the fused KSL and sketch steps (optional: ``numba``, the ``fast`` extra).

The row-blocked passes of :mod:`lowrank_precond.linalg.streaming` run NumPy calls on blocks
of rows (:mod:`lowrank_precond.backends.numpy_kernels`): a few calls and sweeps per block, each
a small matrix product whose inner dimension is the rank. Compiled for a fixed rank, one loop
over the rows does all of a pass's arithmetic on each row while it is in registers: every
factor is read once per pass and the outputs are written once. Measured at d = 1e6, r = 5,
float64, one thread: the writing pass 13.5 ms instead of 23 ms, the ``gbar`` pass 7 ms
instead of 10 ms (an in-place copy of ``U`` and ``V`` takes 11 ms on that machine;
``asv_bench/scripts/step_vs_floor.py`` times the whole step).

Each pass here computes exactly what the NumPy blocks compute (same formulas, same inputs);
the rounding differs (sums are accumulated in float64 per block of :data:`SUM_ROWS` rows, then
added up), within the step's documented accuracy. Sums of products are accumulated in float64
for float32 factors too.

Where ``numba`` is not installed, or the rank is above :data:`MAX_RANK`, :func:`ksl_kernels`
returns ``None`` and the NumPy blocks run. Kernels are compiled on first use per rank and
dtype (about a second each; cached on disk where the package directory is writable), so
the fused step uses them only from :data:`MIN_ROWS` rows, where a step takes milliseconds.

Examples
--------
>>> k = ksl_kernels(2)
>>> k is None or k.rank == 2
True
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

try:  # optional: the ``fast`` extra
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

__all__ = [
    "AVAILABLE",
    "MAX_RANK",
    "MIN_ROWS",
    "SUM_ROWS",
    "KslKernels",
    "SketchKernels",
    "ksl_kernels",
    "sketch_kernels",
]

#: whether ``numba`` is importable
AVAILABLE = numba is not None
#: the compiled passes run from this many rows (below, the NumPy blocks: no compile cost)
MIN_ROWS = 1 << 15
#: the largest rank compiled (one specialisation per rank)
MAX_RANK = 32
#: rows per partial sum (float64 accumulators, added up per block)
SUM_ROWS = 1024


@dataclass(frozen=True)
class KslKernels:
    """The compiled passes for one rank ``r`` (arrays: ``W`` the ``(2r, d)`` factors
    ``[U^T; V^T]``, vectors of length ``d``).

    Attributes
    ----------
    rank : int
    project : callable
        ``project(W, g) -> (c1, gg)``: ``c1 = V^T g`` (float64, ``(r,)``), ``gg = |g|^2``.
    project_sym : callable
        ``project_sym(W, g) -> (c1, gg, C)``, also ``C = U^T V`` (float64 ``(r, r)``).
    gbar : callable
        ``gbar(W, g, t, inv_root, p) -> (av, n)``: writes ``p = g inv_root - U t``; returns
        ``av = [U V]^T p`` (``(2r,)``) and ``n = |p|^2``.
    gbar_sym : callable
        ``gbar_sym(W, g, t, inv_root, p, C) -> (av, n, GY, yg)``, also ``Y = V - U C`` per
        row with ``GY = Y^T Y`` and ``yg = Y^T p``.
    write : callable
        ``write(W, W1, p, Vm, Mm, hcol, inv_s)``: ``E = hcol p^T - Mm W`` (2 rows),
        ``W1 = W + Vm E``, ``p *= inv_s``.
    write_sym : callable
        ``write_sym(W, W1, p, g, Vm, Mm, hcol, inv_root) -> pp``: as ``write`` with a third
        row of ``E``, ``p = inv_root g + E[2]``, and returns ``pp = |p|^2``.
    """

    rank: int
    project: Any
    project_sym: Any
    gbar: Any
    gbar_sym: Any
    write: Any
    write_sym: Any


@functools.cache
def ksl_kernels(r: int) -> KslKernels | None:
    """The compiled passes for rank ``r``, or ``None`` (no ``numba``, or ``r > MAX_RANK``).

    Compilation is lazy (on the first call with each dtype).
    """
    if not AVAILABLE or not 1 <= r <= MAX_RANK:
        return None
    return _compile(r)


def _compile(r: int) -> KslKernels:  # noqa: C901 - one closure per pass, constant r
    import numpy as np

    k2 = 2 * r
    nb = SUM_ROWS
    jit = numba.njit(cache=True, nogil=True, boundscheck=False, fastmath=False)

    @jit
    def project(W, g):
        d = W.shape[1]
        c1 = np.zeros(r)
        part = np.zeros(r)
        gg = 0.0
        for a in range(0, d, nb):
            part[:] = 0.0
            s = 0.0
            for i in range(a, min(a + nb, d)):
                gi = np.float64(g[i])
                s += gi * gi
                for k in range(r):
                    part[k] += W[r + k, i] * gi
            c1 += part
            gg += s
        return c1, gg

    @jit
    def project_sym(W, g):
        d = W.shape[1]
        c1 = np.zeros(r)
        part = np.zeros(r)
        C = np.zeros((r, r))
        partC = np.zeros((r, r))
        gg = 0.0
        for a in range(0, d, nb):
            part[:] = 0.0
            partC[:, :] = 0.0
            s = 0.0
            for i in range(a, min(a + nb, d)):
                gi = np.float64(g[i])
                s += gi * gi
                for k in range(r):
                    vk = np.float64(W[r + k, i])
                    part[k] += vk * gi
                    for j in range(r):
                        partC[j, k] += W[j, i] * vk
            c1 += part
            C += partC
            gg += s
        return c1, gg, C

    @jit
    def gbar(W, g, t, inv_root, p):
        d = W.shape[1]
        av = np.zeros(k2)
        part = np.zeros(k2)
        n = 0.0
        for a in range(0, d, nb):
            part[:] = 0.0
            s = 0.0
            for i in range(a, min(a + nb, d)):
                x = g[i] * inv_root
                for k in range(r):
                    x -= t[k] * W[k, i]
                p[i] = x
                x = p[i]  # the stored value (rounded to p's dtype) is what later passes read
                s += np.float64(x) * x
                for k in range(k2):
                    part[k] += np.float64(W[k, i]) * x
            av += part
            n += s
        return av, n

    @jit
    def gbar_sym(W, g, t, inv_root, p, C):
        d = W.shape[1]
        av = np.zeros(k2)
        part = np.zeros(k2)
        GY = np.zeros((r, r))
        partG = np.zeros((r, r))
        yg = np.zeros(r)
        party = np.zeros(r)
        y = np.zeros(r)
        n = 0.0
        for a in range(0, d, nb):
            part[:] = 0.0
            partG[:, :] = 0.0
            party[:] = 0.0
            s = 0.0
            for i in range(a, min(a + nb, d)):
                x = g[i] * inv_root
                for k in range(r):
                    x -= t[k] * W[k, i]
                p[i] = x
                x = np.float64(p[i])
                s += x * x
                for k in range(k2):
                    part[k] += W[k, i] * x
                for b in range(r):
                    yb = np.float64(W[r + b, i])
                    for j in range(r):
                        yb -= C[j, b] * W[j, i]
                    y[b] = yb
                    party[b] += yb * x
                for b in range(r):
                    for j in range(b, r):
                        partG[b, j] += y[b] * y[j]
            av += part
            GY += partG
            yg += party
            n += s
        for b in range(r):
            for j in range(b):
                GY[b, j] = GY[j, b]
        return av, n, GY, yg

    @jit
    def write(W, W1, p, Vm, Mm, hcol, inv_s):
        d = W.shape[1]
        for i in range(d):
            gb = p[i]
            e0 = hcol[0] * gb
            e1 = hcol[1] * gb
            for k in range(k2):
                w = W[k, i]
                e0 -= Mm[0, k] * w
                e1 -= Mm[1, k] * w
            for k in range(k2):
                W1[k, i] = W[k, i] + Vm[k, 0] * e0 + Vm[k, 1] * e1
            p[i] = gb * inv_s

    @jit
    def write_sym(W, W1, p, g, Vm, Mm, hcol, inv_root):
        d = W.shape[1]
        pp = 0.0
        for a in range(0, d, nb):
            s = 0.0
            for i in range(a, min(a + nb, d)):
                gb = p[i]
                e0 = hcol[0] * gb
                e1 = hcol[1] * gb
                e2 = hcol[2] * gb
                for k in range(k2):
                    w = W[k, i]
                    e0 -= Mm[0, k] * w
                    e1 -= Mm[1, k] * w
                    e2 -= Mm[2, k] * w
                for k in range(k2):
                    W1[k, i] = W[k, i] + Vm[k, 0] * e0 + Vm[k, 1] * e1
                p[i] = inv_root * g[i] + e2
                x = np.float64(p[i])
                s += x * x
            pp += s
        return pp

    return KslKernels(r, project, project_sym, gbar, gbar_sym, write, write_sym)


@dataclass(frozen=True)
class SketchKernels:
    """The compiled passes of the fused Frequent-Directions step for a sketch of ``k``
    columns of which ``keep`` stay (arrays: ``Ut`` the ``(k, d)`` sketch basis, rows).

    Attributes
    ----------
    project : callable
        ``project(Ut, g) -> (c, gg)``: ``c = U^T g`` (float64, ``(k,)``), ``gg = |g|^2``.
    write : callable
        ``write(Ut, g, W1, p, wt, negA, cv, inv_sb)``: ``W1 = wt g^T - negA Ut`` (``(keep,
        d)``) and ``p = inv_sb g + W1^T cv``.
    """

    k: int
    keep: int
    project: Any
    write: Any


@functools.cache
def sketch_kernels(k: int, keep: int) -> SketchKernels | None:
    """The compiled sketch passes for ``k`` columns keeping ``keep``, or ``None`` (no
    ``numba``, or ``k > MAX_RANK``). Compilation is lazy."""
    if not AVAILABLE or not 1 <= k <= MAX_RANK or not 1 <= keep <= k + 1:
        return None
    return _compile_sketch(k, keep)


def _compile_sketch(k: int, keep: int) -> SketchKernels:
    import numpy as np

    nb = SUM_ROWS
    jit = numba.njit(cache=True, nogil=True, boundscheck=False, fastmath=False)

    @jit
    def project(Ut, g):
        d = Ut.shape[1]
        c = np.zeros(k)
        part = np.zeros(k)
        gg = 0.0
        for a in range(0, d, nb):
            part[:] = 0.0
            s = 0.0
            for i in range(a, min(a + nb, d)):
                gi = np.float64(g[i])
                s += gi * gi
                for m in range(k):
                    part[m] += Ut[m, i] * gi
            c += part
            gg += s
        return c, gg

    @jit
    def write(Ut, g, W1, p, wt, negA, cv, inv_sb):
        d = Ut.shape[1]
        for i in range(d):
            gi = g[i]
            pi = inv_sb * gi
            for j in range(keep):
                x = wt[j] * gi
                for m in range(k):
                    x -= negA[j, m] * Ut[m, i]
                W1[j, i] = x
                pi += cv[j] * W1[j, i]
            p[i] = pi

    return SketchKernels(k, keep, project, write)
