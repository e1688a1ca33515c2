"""Compiled passes of the fused KSL and sketch steps (optional: ``numba``, the ``fast`` extra).

The row-blocked passes of :mod:`lowrank_precond.linalg.streaming` and
:mod:`lowrank_precond.linalg.streaming_sketch` run NumPy calls on blocks of rows
(:mod:`lowrank_precond.backends.numpy_kernels`): a few calls and sweeps per block, each a
small matrix product whose inner dimension is the rank. Here each pass is one loop over the
rows, generated for its rank: a row's entries, the small coefficients and the partial sums
are local scalars, so a row's arithmetic runs in registers, every factor is read once per
pass and each output written once. The writing passes take each factor row as an argument
of its own (see :func:`_writing`), which lets the compiler vectorise them across rows.
Measured at d = 1e6, r = 5, one thread, against an in-place scaling of ``[U V]`` (3.1 ms in
float64, 1.2 ms in float32): the writing pass in place 3.3 ms in float64 and 1.4 ms in
float32 (5.8 and 5.5 ms while its rows were rows of one 2-D argument; 12.9 ms for the NumPy
blocks), the ``gbar`` pass 3.5 ms (``asv_bench/scripts/step_vs_floor.py`` times the whole
step).

Each pass computes what the NumPy blocks compute (same formulas, same inputs); the rounding
differs (sums run in float64, in order, per block of :data:`SUM_ROWS` rows, then added up;
products may be contracted into FMAs), within the step's documented accuracy, and equal
inputs give equal bits wherever they lie in memory (a vectorised loop computes each row
with the operations of its scalar tail: no sum is reassociated). The writing passes may run in place
(the output is the input factor buffer): a row is read before any of it is written.

Where ``numba`` is not installed, or the rank is above :data:`MAX_RANK`, :func:`ksl_kernels`
returns ``None`` and the NumPy blocks run. The passes whose work per row grows as the rank
squared (the symmetric direction's ``C`` and ``Y = V - U C``, the sketch's rotation) are
compiled only up to :data:`MAX_SQUARE_RANK`: above it their fields are ``None`` and those
passes run as NumPy blocks, whose matrix products are then efficient BLAS calls.
Kernels are compiled on first use per rank and dtype (about a second each; cached on disk,
see :func:`_compiled`), so the fused steps use them only from :data:`MIN_ROWS` rows, where a
step takes milliseconds.

Examples
--------
>>> k = ksl_kernels(2)
>>> k is None or k.rank == 2
True
"""

from __future__ import annotations

import functools
import re
import sys
import types
from dataclasses import dataclass
from typing import Any

import numpy as np

try:  # optional: the ``fast`` extra
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

__all__ = [
    "AVAILABLE",
    "MAX_RANK",
    "MAX_SQUARE_RANK",
    "SEPARATE_WRITE_MAX_RANK",
    "MIN_ROWS",
    "SUM_ROWS",
    "KslKernels",
    "SketchKernels",
    "ksl_kernels",
    "readable",
    "sketch_kernels",
]

#: whether ``numba`` is importable
AVAILABLE = numba is not None
#: the compiled passes run from this many rows (below, the NumPy blocks: no compile cost)
MIN_ROWS = 1 << 15
#: the largest rank compiled (one specialisation per rank) for the passes whose work per row
#: is linear in the rank (about a second each to compile at r = 20; at d = 1e6, r = 20,
#: float64, against 13.8 ms to scale ``[U V]`` in place, they took 6.5 / 13.8 / 47 / 49 ms for
#: ``V^T g``, ``[U V]^T g``, the ``gbar`` and the writing pass: the last two are bound by
#: their ``4 r`` products per row, not by memory)
MAX_RANK = 32
#: the same for the passes whose work per row is the rank squared (``project_sym``,
#: ``gbar_sym``, the sketch's ``write``). The generated code unrolls the rank: compiling the
#: symmetric pass takes 2.5 s at r = 8, 7 s at r = 12 and 33 s at r = 20 (once per machine,
#: cached on disk), and from r ~ 10 the NumPy blocks' matrix products are efficient BLAS
#: calls anyway (the sketch's write at k = 20: 82 ms compiled, 27 ms for its BLAS products)
MAX_SQUARE_RANK = 8
#: the largest rank whose writing pass runs compiled into a separate output buffer. Above it
#: the pass's ``4 r`` row streams (``2 r`` read and ``2 r`` written, ``d`` entries apart) leave
#: it little ahead of the NumPy blocks: measured at d = 1e6, r = 20, float64, it took 67 ms
#: into a new buffer against 52 ms in place, and the whole NumPy ``update`` 108 ms with it
#: against 115 ms with the NumPy blocks (271 ms while the rows were one 2-D argument; larger
#: ranks were not measured). In place (``W1`` is ``W``) it runs at every rank
SEPARATE_WRITE_MAX_RANK = 8
#: rows per partial sum (float64 accumulators, added up per block)
SUM_ROWS = 1024
#: the most factor rows that one compiled projection pass sums (``U^T g``, ``[U V]^T g``):
#: more partial sums than registers spill, so more rows run as several passes over groups,
#: each reading ``g`` again (measured at d = 1e6, 40 rows, float64: 32.6 ms in one pass,
#: 11.7 ms in groups of 10, 14.1 in groups of 8, 12.6 in groups of 5)
READ_GROUP = 10


@dataclass(frozen=True)
class KslKernels:
    """The compiled passes for one rank ``r`` (arrays: ``W`` the ``(2r, d)`` factors
    ``[U^T; V^T]``, vectors of length ``d``).

    Attributes
    ----------
    rank : int
    project : callable
        ``project(W, g) -> (c1, gg)``: ``c1 = V^T g`` (float64, ``(r,)``), ``gg = |g|^2``.
    project_both : callable
        ``project_both(W, g) -> (cw, gg)``: ``cw = [U V]^T g`` (float64, ``(2r,)``),
        ``gg = |g|^2`` (the two-pass step's only reading pass).
    project_sym : callable or None
        ``project_sym(W, g) -> (c1, gg, C)``, also ``C = U^T V`` (float64 ``(r, r)``);
        ``None`` above :data:`MAX_SQUARE_RANK`.
    gbar : callable
        ``gbar(W, g, t, inv_root, p) -> (av, n)``: writes ``p = g inv_root - U t``; returns
        ``av = [U V]^T p`` (``(2r,)``) and ``n = |p|^2``.
    gbar_sym : callable or None
        ``gbar_sym(W, g, t, inv_root, p, C) -> (av, n, GY, yg)``, also ``Y = V - U C`` per
        row with ``GY = Y^T Y`` and ``yg = Y^T p``; ``None`` above :data:`MAX_SQUARE_RANK`.
    write : callable
        ``write(W, W1, p, Vm, Mm, hcol, inv_s)``: ``E = hcol p^T - Mm W`` (2 rows),
        ``W1 = W + Vm E``, ``p *= inv_s``.
    write_gbar : callable
        ``write_gbar(W, W1, g, t, inv_root, p, Vm, Mm, hcol, inv_s)``: ``write`` where ``p``
        does not hold ``gbar`` yet: each row forms its ``gbar = g inv_root - U t`` itself, in
        the arithmetic of ``inv_root``'s type (the caller passes the factor dtype: float32
        stays float32, unlike ``gbar``, which sums in float64 and rounds).
    write_sym : callable
        ``write_sym(W, W1, p, g, Vm, Mm, hcol, inv_root) -> pp``: as ``write`` with a third
        row of ``E``, ``p = inv_root g + E[2]``, and returns ``pp = |p|^2``.
    """

    rank: int
    project: Any
    project_both: Any
    project_sym: Any
    gbar: Any
    gbar_sym: Any
    write: Any
    write_gbar: Any
    write_sym: Any


@functools.cache
def ksl_kernels(r: int) -> KslKernels | None:
    """The compiled passes for rank ``r``, or ``None`` (no ``numba``, or ``r > MAX_RANK``).

    Compilation is lazy (on the first call with each dtype).
    """
    if not AVAILABLE or not 1 <= r <= MAX_RANK:
        return None
    square = r <= MAX_SQUARE_RANK
    f = _compiled(f"ksl_r{r}", _ksl_source(r, SUM_ROWS, square))
    both = _projection(2 * r)
    return KslKernels(
        r,
        lambda W, g: both(W, g, first=r),
        both,
        f["project_sym"] if square else None,
        f["gbar"],
        f["gbar_sym"] if square else None,
        _writes(f, "write"),
        _writes(f, "write_gbar"),
        _writes(f, "write_sym"),
    )


@dataclass(frozen=True)
class SketchKernels:
    """The compiled passes of the fused Frequent-Directions step for a sketch of ``k``
    columns of which ``keep`` stay (arrays: ``Ut`` the ``(k, d)`` sketch basis, rows).

    Attributes
    ----------
    project : callable
        ``project(Ut, g) -> (c, gg)``: ``c = U^T g`` (float64, ``(k,)``), ``gg = |g|^2``.
    write : callable or None
        ``write(Ut, W1, g, p, wt, negA, cv, inv_sb)``: ``W1 = wt g^T - negA Ut`` (``(keep,
        d)``) and ``p = inv_sb g + W1^T cv``; ``None`` above :data:`MAX_SQUARE_RANK`.
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
    write = None
    if k <= MAX_SQUARE_RANK:
        write = _writes(_compiled(f"sketch_k{k}_keep{keep}", _sketch_source(k, keep)), "write")
    return SketchKernels(k, keep, _projection(k), write)


def readable(x: Any, dtype: Any) -> Any:
    """``x`` itself where the compiled passes can read its dtype (float32, float64), else
    ``x`` cast to ``dtype`` (numba has no float16 or bfloat16 arrays).

    Examples
    --------
    >>> readable(np.ones(2, np.float16), np.float32).dtype
    dtype('float32')
    """
    return x if x.dtype in (np.float32, np.float64) else x.astype(dtype)


def _projection(n: int) -> Any:
    """``project(W, g, first=0) -> (c, gg)``: ``c = W[first:] g`` (float64) and ``gg = |g|^2``
    for the ``n`` rows of ``W`` (``(n, d)``), summed by compiled passes over groups of at most
    :data:`READ_GROUP` rows (each row's sum is the same, bit for bit, in any group)."""
    groups = -(-n // READ_GROUP)
    sizes = [n // groups + (j < n % groups) for j in range(groups)]

    def project(W: Any, g: Any, first: int = 0) -> tuple[Any, float]:
        parts, a = [], 0
        for size in sizes:
            if a + size > first:
                lo = max(a, first)
                parts.append(_rows_projection(a + size - lo)(W[lo : a + size], g))
            a += size
        c = parts[0][0] if len(parts) == 1 else np.concatenate([part[0] for part in parts])
        return c, parts[0][1]

    return project


@functools.cache
def _rows_projection(n: int) -> Any:
    """The compiled ``project(W, g) -> (c, gg)`` for ``n`` rows."""
    K = range(n)
    c = {(k,): f"c{k}" for k in K}
    body = ["gi = np.float64(g[i])", "_gg += gi * gi"]
    body += [f"_c{k} += np.float64(w{k}[i]) * gi" for k in K]
    source = _module(
        [
            "def project(W, g):",
            "    d = W.shape[1]",
            *[f"    w{k} = W[{k}]" for k in K],
            *_row_loop(SUM_ROWS, [*c.values(), "gg"], body),
            *_array("c", (n,), c),
            "    return c, gg",
        ]
    )
    return _compiled(f"project_n{n}", source)["project"]


# --------------------------------------------------------------------------- generated code
#
# Each kernel is generated for its rank: every factor row is a local 1-D array, every small
# coefficient a local scalar and every partial sum a scalar, so that a row's arithmetic runs
# in registers (a loop over the rank with the coefficients in arrays measured 1.5-2x slower).
# ``fastmath`` allows contraction into FMAs only: no reassociation (a vectorised sum's order
# would depend on the arrays' alignment, and equal inputs must give equal bits: checkpoints
# continue bit for bit), and no assumption that values are finite (a NaN or inf in the inputs
# must still reach the sums the steps check).

_FASTMATH = {"contract"}


def _compiled(name: str, source: str) -> dict[str, Any]:
    """The functions of ``source`` compiled with numba; cached on disk where possible.

    The source is written once to a file named by its hash under the cache directory
    (``$NUMBA_CACHE_DIR``, else ``$XDG_CACHE_HOME`` or ``~/.cache``, then
    ``lowrank_precond/kernels``), so that numba's own on-disk cache applies (a new process
    loads the machine code instead of compiling for seconds); where no directory is
    writable the source is compiled in memory.
    """
    import hashlib
    import importlib.util
    import os

    key = f"{numba.__version__}\n{sorted(_FASTMATH)}\n{source}"  # what the machine code depends on
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    module = None
    base = os.environ.get("NUMBA_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    base = base or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(base, "lowrank_precond", "kernels")
    path = os.path.join(folder, f"{name}_{digest}.py")
    try:
        if not os.path.exists(path):
            os.makedirs(folder, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as fh:
                fh.write(source)
            os.replace(tmp, path)  # atomic: concurrent processes write the same text
        modname = f"lowrank_precond._kernels_{name}_{digest}"
        spec = importlib.util.spec_from_file_location(modname, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module  # numba's cache finds the functions' module by name
        spec.loader.exec_module(module)
        namespace, cache = vars(module), True
    except OSError:
        namespace, cache = {}, False
        exec(compile(source, f"<lowrank_precond {name}>", "exec"), namespace)
    jit = numba.njit(cache=cache, nogil=True, boundscheck=False, fastmath=_FASTMATH)
    return {key: jit(fn) for key, fn in namespace.items() if isinstance(fn, types.FunctionType)}


def _module(*functions: list[str]) -> str:
    """The source of a generated module: ``import numpy as np`` and the functions' lines."""
    lines = ["import numpy as np"]
    for fn in functions:
        lines += ["", "", *fn]
    return "\n".join(lines) + "\n"


def _sum(terms: list[str]) -> str:
    """``a + b + ...`` (``0.0`` for no terms)."""
    return " + ".join(terms) if terms else "0.0"


def _row_loop(nb: int, sums: list[str], body: list[str]) -> list[str]:
    """A loop over the rows ``i`` (the locals ``d``, the row count, and the loaded rows are
    the caller's) in blocks of ``nb``: ``body`` adds to the partial sums ``_<name>`` of
    ``sums`` (float64, zeroed per block), which are then added to the totals ``<name>``."""
    return [
        *[f"    {name} = 0.0" for name in sums],
        f"    for a in range(0, d, {nb}):",
        *[f"        _{name} = 0.0" for name in sums],
        f"        for i in range(a, min(a + {nb}, d)):",
        *[f"            {line}" for line in body],
        *[f"        {name} += _{name}" for name in sums],
    ]


def _writing(
    name: str, rows: tuple[int, int], params: list[str], setup: list[str], body: list[str],
    returns: list[str] = (),
) -> list[list[str]]:  # fmt: skip
    """A writing pass as two functions, ``name(w0, .., o0, .., *params)`` and (where there are
    no more outputs than inputs) ``name_inplace(w0, .., *params)``, in which the output rows
    ``o<j>`` are the input rows ``w<j>`` (:func:`_writes` picks one).

    ``rows = (inputs, outputs)``; ``body`` is the loop over ``i`` (rows of ``d = len(w0)``),
    with no sums: each factor row comes as its own argument, so that the compiler can tell
    the rows apart and vectorise the loop across ``i`` (rows of one 2-D argument share its
    pointer, and the loop then stays scalar: 6.3 ms instead of 1.5 at d = 1e6, r = 5 in
    float32). ``body`` loads a row's entries before it writes any, so the in-place form
    reads nothing it has written; ``returns`` are the lines after the loop.
    """
    n_in, n_out = rows
    ins = [f"w{k}" for k in range(n_in)]
    outs = [f"o{j}" for j in range(n_out)]

    def function(fname: str, args: list[str], line: Any) -> list[str]:
        return [
            f"def {fname}({', '.join([*args, *params])}):",
            "    d = w0.shape[0]",
            *[line(x) for x in setup],
            *[line(x) for x in body],
            *returns,
        ]

    def in_place(x: str) -> str:
        return re.sub(r"\bo(\d+)\[", r"w\1[", x)

    functions = [function(name, ins + outs, lambda x: x)]
    if n_out <= n_in:  # the outputs fit in the inputs' rows
        functions.append(function(f"{name}_inplace", ins, in_place))
    return functions


def _writes(f: dict[str, Any], name: str) -> Any:
    """The writing pass ``name(W, W1, *rest)`` of the compiled functions ``f``: the input and
    output rows as 2-D arrays, handed on row by row; ``W1 is W`` runs the in-place form."""
    separate, inplace = f[name], f.get(f"{name}_inplace")

    def call(W: Any, W1: Any, *rest: Any) -> Any:
        if W1 is not W:
            return separate(*W, *W1, *rest)
        if inplace is None:
            raise ValueError(f"{name}: more output rows than input rows cannot be written in place")
        return inplace(*W, *rest)

    return call


def _array(name: str, shape: tuple[int, ...], values: dict[tuple[int, ...], str]) -> list[str]:
    """Lines that build the float64 array ``name`` of ``shape`` from scalar locals."""
    lines = [f"    {name} = np.empty({shape})"]
    return lines + [f"    {name}[{', '.join(map(str, ix))}] = {v}" for ix, v in values.items()]


def _ksl_source(r: int, nb: int, square: bool = True) -> str:
    """The KSL passes of :class:`KslKernels` for rank ``r`` (partial sums per ``nb`` rows;
    without ``square``, not ``project_sym`` and ``gbar_sym``).

    Locals: ``w<k>`` the factor rows (``U`` rows ``0..r-1``, ``V`` rows ``r..2r-1``),
    ``x<k>`` their entries in row ``i``, ``y`` the ``gbar`` entry, ``t<k>`` the entries of
    ``t`` (``gbar = g inv_root - U t``).
    """
    return _module(*_ksl_reading(r, nb, square), *_ksl_writing(r, nb))


def _t_locals(r: int) -> list[str]:
    """Lines that load the ``r`` entries of ``t`` into the locals ``t<k>``."""
    return [f"    t{k} = t[{k}]" for k in range(r)]


def _ksl_reading(r: int, nb: int, square: bool) -> list[list[str]]:
    """The reading passes of :func:`_ksl_source`: ``gbar``, and with ``square`` also
    ``project_sym`` (before it) and ``gbar_sym``."""
    R, K = range(r), range(2 * r)
    start = ["    d = W.shape[1]", *[f"    w{k} = W[{k}]" for k in K]]
    load = [f"x{k} = np.float64(w{k}[i])" for k in K]
    c = {(k,): f"c{k}" for k in R}
    Cs = {(j, k): f"C{j}_{k}" for j in R for k in R}
    project_body = ["gi = np.float64(g[i])", "_gg += gi * gi"]
    project_body += [f"_c{k} += x{r + k} * gi" for k in R]
    gbar_body = [
        "p[i] = g[i] * inv_root - (" + _sum([f"t{k} * x{k}" for k in R]) + ")",
        "y = np.float64(p[i])",  # the stored value (p's dtype) is what later passes read
        "_n += y * y",
        *[f"_a{k} += x{k} * y" for k in K],
    ]
    av = {(k,): f"a{k}" for k in K}
    upper = [(b, j) for b in R for j in R if j >= b]
    # Y = V - U C row by row, its Gram matrix (upper triangle) and Y^T gbar
    sym_body = [f"y{b} = x{r + b} - (" + _sum([f"C{j}_{b} * x{j}" for j in R]) + ")" for b in R]
    sym_body += [f"_q{b} += y{b} * y" for b in R]
    sym_body += [f"_G{b}_{j} += y{b} * y{j}" for b, j in upper]
    gy = {(b, j): f"G{min(b, j)}_{max(b, j)}" for b in R for j in R}
    project_sym = [
        "def project_sym(W, g):",
        *start,
        *_row_loop(
            nb,
            [*c.values(), *Cs.values(), "gg"],
            [*load, *project_body, *[f"_C{j}_{k} += x{j} * x{r + k}" for j in R for k in R]],
        ),
        *_array("c", (r,), c),
        *_array("C", (r, r), Cs),
        "    return c, gg, C",
    ]
    gbar = [
        "def gbar(W, g, t, inv_root, p):",
        *start,
        *_t_locals(r),
        *_row_loop(nb, [*av.values(), "n"], [*load, *gbar_body]),
        *_array("av", (2 * r,), av),
        "    return av, n",
    ]
    gbar_sym = [
        "def gbar_sym(W, g, t, inv_root, p, C):",
        *start,
        *_t_locals(r),
        *[f"    C{j}_{k} = C[{j}, {k}]" for j in R for k in R],
        *_row_loop(
            nb,
            [*av.values(), "n", *[f"q{b}" for b in R], *[f"G{b}_{j}" for b, j in upper]],
            [*load, *gbar_body, *sym_body],
        ),
        *_array("av", (2 * r,), av),
        *_array("GY", (r, r), gy),
        *_array("yg", (r,), {(b,): f"q{b}" for b in R}),
        "    return av, n, GY, yg",
    ]
    return [project_sym, gbar, gbar_sym] if square else [gbar]


def _ksl_writing(r: int, nb: int) -> list[list[str]]:
    """The writing passes of :func:`_ksl_source` (each in place and into new rows, see
    :func:`_writing`): ``write``, ``write_gbar`` and ``write_sym``."""
    R, K = range(r), range(2 * r)
    # Vm, Mm are block diagonal (U rows use e0, V rows e1)
    side = [0 if k < r else 1 for k in K]
    setup = [
        *[f"    m{k} = Mm[{side[k]}, {k}]" for k in K],
        *[f"    v{k} = Vm[{k}, {side[k]}]" for k in K],
        "    h0 = hcol[0]",
        "    h1 = hcol[1]",
    ]
    row = [f"        x{k} = w{k}[i]" for k in K]  # the whole row before any of it is written
    e01 = [
        "        e0 = h0 * gb - (" + _sum([f"m{k} * x{k}" for k in R]) + ")",
        "        e1 = h1 * gb - (" + _sum([f"m{k} * x{k}" for k in range(r, 2 * r)]) + ")",
    ]
    out = [f"        o{k}[i] = x{k} + v{k} * e{side[k]}" for k in K]
    loop = "    for i in range(d):"
    sym_sum = [  # |p|^2 of the symmetric direction, in a loop of its own (the sum is serial)
        "    pp = 0.0",
        f"    for a in range(0, d, {nb}):",
        "        _pp = 0.0",
        f"        for i in range(a, min(a + {nb}, d)):",
        "            y = np.float64(p[i])",
        "            _pp += y * y",
        "        pp += _pp",
        "    return pp",
    ]
    rows = (2 * r, 2 * r)
    return [
        *_writing(
            "write",
            rows,
            ["p", "Vm", "Mm", "hcol", "inv_s"],
            setup,
            [loop, *row, "        gb = p[i]", *e01, *out, "        p[i] = gb * inv_s"],
        ),
        *_writing(
            "write_gbar",
            rows,
            ["g", "t", "inv_root", "p", "Vm", "Mm", "hcol", "inv_s"],
            [*setup, *_t_locals(r)],
            [
                loop,
                *row,
                "        gb = g[i] * inv_root - (" + _sum([f"t{k} * x{k}" for k in R]) + ")",
                *e01,
                *out,
                "        p[i] = gb * inv_s",
            ],
        ),
        *_writing(
            "write_sym",
            rows,
            ["p", "g", "Vm", "Mm", "hcol", "inv_root"],
            [*setup, *[f"    z{k} = Mm[2, {k}]" for k in K], "    h2 = hcol[2]"],
            [
                loop,
                *row,
                "        gb = p[i]",
                *e01,
                "        e2 = h2 * gb - (" + _sum([f"z{k} * x{k}" for k in K]) + ")",
                *out,
                "        p[i] = inv_root * g[i] + e2",
            ],
            sym_sum,
        ),
    ]


def _sketch_source(k: int, keep: int) -> str:
    """The sketch's writing pass of :class:`SketchKernels` (its projection is
    :func:`_projection`'s)."""
    M, J = range(k), range(keep)
    return _module(
        *_writing(
            "write",
            (k, keep),
            ["g", "p", "wt", "negA", "cv", "inv_sb"],
            [
                *[f"    s{j} = wt[{j}]" for j in J],
                *[f"    cv{j} = cv[{j}]" for j in J],
                *[f"    A{j}_{m} = negA[{j}, {m}]" for j in J for m in M],
            ],
            [
                "    for i in range(d):",
                "        gi = g[i]",
                *[f"        x{m} = w{m}[i]" for m in M],  # the whole row before any is written
                *[
                    f"        o{j}[i] = s{j} * gi - (" + _sum([f"A{j}_{m} * x{m}" for m in M]) + ")"
                    for j in J
                ],
                "        p[i] = inv_sb * gi + (" + _sum([f"cv{j} * o{j}[i]" for j in J]) + ")",
            ],
        ),
    )
