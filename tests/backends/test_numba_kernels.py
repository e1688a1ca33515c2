"""The generated numba passes themselves (lowrank_precond.backends.numba_kernels).

The streamed-step tests run every pass against the NumPy blocks and the dense references;
these check properties of the generated code: the writing passes give the same bits in
place or into a new buffer, wherever the arrays lie and whichever rows the vectorised loop
leaves to its scalar tail.
"""

import numpy as np
import pytest

from lowrank_precond.backends import numba_kernels

pytestmark = pytest.mark.skipif(
    not numba_kernels.AVAILABLE, reason="numba is not installed (the 'fast' extra)"
)


def _ksl_writes(f, W, W1, p, g, coefs):
    """Run the three KSL writing passes of ``f`` (a ``KslKernels``) from ``W``, ``p`` into
    ``W1`` (``W1 is W``: in place) and fresh copies of ``p``; their outputs."""
    Vm, Mm, h, t = coefs
    out = []
    for name in ("write", "write_gbar", "write_sym"):
        dst, q = (W.copy(), p.copy()) if W1 is W else (np.empty_like(W), p.copy())
        src = dst if W1 is W else W
        if name == "write":
            f.write(src, dst, q, Vm, Mm[:2], h[:2], 0.7)
        elif name == "write_gbar":
            f.write_gbar(src, dst, g, t, W.dtype.type(0.3), q, Vm, Mm[:2], h[:2], 0.7)
        else:
            out.append(f.write_sym(src, dst, q, g, Vm, Mm, h, 0.3))
        out += [dst, q]
    return out


def _offset(a, shift):
    """A copy of ``a`` that starts ``shift`` entries into a larger buffer."""
    buf = np.empty(a.size + shift, a.dtype)
    view = buf[shift:].reshape(a.shape)
    view[...] = a
    return view


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("tail", [1, 3, 7])
def test_writing_passes_give_the_same_bits_in_place_anywhere_and_in_any_tail(rng, dtype, tail):
    """The writing passes are vectorised across rows: the in-place and separate forms, a
    copy elsewhere in memory, and a row in the vector body or in the scalar tail (the same
    rows with fewer after them) all give the same bits."""
    r = 3
    d = 2 * numba_kernels.SUM_ROWS + 64 + tail
    f = numba_kernels.ksl_kernels(r)
    W = rng.standard_normal((2 * r, d)).astype(dtype)
    g, p = rng.standard_normal(d).astype(dtype), rng.standard_normal(d).astype(dtype)
    coefs = (
        rng.standard_normal((2 * r, 2)).astype(dtype),
        rng.standard_normal((3, 2 * r)).astype(dtype),
        rng.standard_normal(3).astype(dtype),
        rng.standard_normal(r).astype(dtype),
    )
    separate = _ksl_writes(f, W, None, p, g, coefs)
    in_place = _ksl_writes(f, W, W, p, g, coefs)
    moved = _ksl_writes(f, _offset(W, 1), _offset(W, 1), _offset(p, 3), _offset(g, 5), coefs)
    for a, b, c in zip(separate, in_place, moved, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    n = d - 2 * tail  # the last rows of this shorter run are in its scalar tail
    short = _ksl_writes(f, W[:, :n].copy(), W, p[:n].copy(), g[:n].copy(), coefs)
    for a, b in zip(in_place, short, strict=True):
        if np.ndim(a) == 0:  # |p|^2 of the symmetric pass: over other rows
            continue
        np.testing.assert_array_equal(a[..., :n], b)

    k = 3
    sk = numba_kernels.sketch_kernels(k, k)
    Ut = rng.standard_normal((k, d)).astype(dtype)
    args = (rng.standard_normal(k), rng.standard_normal((k, k)), rng.standard_normal(k))
    args = tuple(a.astype(dtype) for a in args)
    U1, q1 = np.empty_like(Ut), np.empty(d, dtype)
    sk.write(Ut, U1, g, q1, *args, 0.5)
    U2, q2 = Ut.copy(), np.empty(d, dtype)
    sk.write(U2, U2, g, q2, *args, 0.5)  # in place
    np.testing.assert_array_equal(U1, U2)
    np.testing.assert_array_equal(q1, q2)


def test_rank_squared_passes_stop_at_max_square_rank():
    r = numba_kernels.MAX_SQUARE_RANK
    assert numba_kernels.ksl_kernels(r).gbar_sym is not None
    above = numba_kernels.ksl_kernels(r + 1)
    assert above.gbar_sym is None and above.project_sym is None
    assert above.gbar is not None and above.write_sym is not None
    assert numba_kernels.sketch_kernels(r + 1, r + 1).write is None
    assert numba_kernels.ksl_kernels(numba_kernels.MAX_RANK + 1) is None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("first", [0, 7, 8, 13, 16])  # 23 rows: groups of 8, 8 and 7
def test_projection_in_row_groups_gives_the_bits_of_one_pass(rng, dtype, first):
    """More rows than READ_GROUP are summed in groups: each row's sum is that of one pass
    over all rows (the same partial sums in the same order), from any first row."""
    n = 2 * numba_kernels.READ_GROUP + 3
    d = 2 * numba_kernels.SUM_ROWS + 5
    W = rng.standard_normal((n, d)).astype(dtype)
    g = rng.standard_normal(d).astype(dtype)
    c, gg = numba_kernels._projection(n)(W, g, first=first)
    c_one, gg_one = numba_kernels._rows_projection(n - first)(W[first:], g)
    assert c.shape == (n - first,) and c.dtype == np.float64
    np.testing.assert_array_equal(c, c_one)
    assert gg == gg_one
    np.testing.assert_allclose(c, W[first:].astype(np.float64) @ g.astype(np.float64), rtol=1e-10)
