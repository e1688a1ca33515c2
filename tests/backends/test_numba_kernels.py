"""The generated numba passes themselves (lowrank_precond.backends.numba_kernels).

The streamed-step tests run every pass against the NumPy blocks and the dense references;
these check properties of the generated code: running rows side by side gives the bits of
running them one by one, whatever the tail of a block.
"""

import numpy as np
import pytest

from lowrank_precond.backends import numba_kernels

pytestmark = pytest.mark.skipif(
    not numba_kernels.AVAILABLE, reason="numba is not installed (the 'fast' extra)"
)


def _both(monkeypatch, name, make_source):
    """The functions compiled from ``make_source()`` with rows one by one and side by side."""
    out = []
    for lanes in (1, numba_kernels.WRITE_LANES):
        monkeypatch.setattr(numba_kernels, "WRITE_LANES", lanes)
        out.append(numba_kernels._compiled(f"test_{name}_lanes{lanes}", make_source()))
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("tail", [1, 2, 3])
def test_writing_passes_side_by_side_give_the_same_bits(rng, monkeypatch, dtype, tail):
    assert numba_kernels.WRITE_LANES > 1
    r, d = 3, 2 * numba_kernels.SUM_ROWS + 4 * 5 + tail  # several blocks, a ragged tail
    one, lanes = _both(monkeypatch, "ksl", lambda: numba_kernels._ksl_source(r, 64))
    W = rng.standard_normal((2 * r, d)).astype(dtype)
    g, p0 = rng.standard_normal(d).astype(dtype), rng.standard_normal(d).astype(dtype)
    Vm = rng.standard_normal((2 * r, 2)).astype(dtype)
    Mm = rng.standard_normal((3, 2 * r)).astype(dtype)
    h = rng.standard_normal(3).astype(dtype)
    results = []
    for f in (one, lanes):
        W1, p = np.empty_like(W), p0.copy()
        f["write"](W, W1, p, Vm, Mm[:2], h[:2], 0.7)
        Ws, ps = W.copy(), p0.copy()  # in place, symmetric form
        pp = f["write_sym"](Ws, Ws, ps, g, Vm, Mm, h, 0.3)
        results.append((W1, p, Ws, ps, pp))
    for a, b in zip(*results, strict=True):
        assert np.array_equal(a, b)

    k = 3
    one, lanes = _both(monkeypatch, "sketch", lambda: numba_kernels._sketch_source(k, k, 64))
    Ut = rng.standard_normal((k, d)).astype(dtype)
    args = (rng.standard_normal(k), rng.standard_normal((k, k)), rng.standard_normal(k))
    args = tuple(a.astype(dtype) for a in args)
    outs = []
    for f in (one, lanes):
        U1, p = Ut.copy(), np.empty(d, dtype)
        f["write"](U1, g, U1, p, *args, 0.5)  # in place
        outs.append((U1, p))
    for a, b in zip(*outs, strict=True):
        assert np.array_equal(a, b)


def test_rank_squared_passes_stop_at_max_square_rank():
    r = numba_kernels.MAX_SQUARE_RANK
    assert numba_kernels.ksl_kernels(r).gbar_sym is not None
    above = numba_kernels.ksl_kernels(r + 1)
    assert above.gbar_sym is None and above.project_sym is None
    assert above.gbar is not None and above.write_sym is not None
    assert numba_kernels.sketch_kernels(r + 1, r + 1).write is None
    assert numba_kernels.ksl_kernels(numba_kernels.MAX_RANK + 1) is None
