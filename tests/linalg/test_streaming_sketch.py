"""The streamed Frequent-Directions step (linalg.streaming_sketch) against the general path."""

import numpy as np
import pytest

from lowrank_precond import preconditioners as pc
from lowrank_precond.backends.fused import Declined
from lowrank_precond.linalg import (
    GramSketch,
    gram_sketch_update,
    sketch_inverse_sqrt_apply,
)
from lowrank_precond.linalg.streaming_sketch import (
    SKETCH_REFRESH_EVERY,
    fd_sketch_available,
    fd_sketch_step,
    try_fd_sketch_step,
)

pytestmark = pytest.mark.usefixtures("pass_kernels")  # every test with both pass kernels


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def random_sketch(rng, d, k, rho=0.3):
    U, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return GramSketch(U, np.sort(rng.random(k) * 5 + 0.1)[::-1].copy(), rho)


def dense_fd(sk, g, shrink):
    """Frequent Directions densely (docs/theory.rst, theory-sketched-adagrad): eigen-decompose
    U diag(sig2) U^T + g g^T, keep k, shift."""
    k = sk.rank
    A = (sk.U * sk.sig2) @ sk.U.T + np.outer(g, g)
    lam, E = np.linalg.eigh(A)
    lam, E = lam[::-1], E[:, ::-1]
    delta = lam[k]
    sig2 = lam[:k] - delta if shrink else lam[:k]
    return E[:, :k], sig2, float(sk.rho) + delta


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("shrink", [True, False])
@pytest.mark.parametrize("kind", ["generic", "near_span", "in_span"])
def test_matches_dense_frequent_directions(rng, shrink, kind):
    d, k, eps = 70, 4, 0.2
    sk = random_sketch(rng, d, k)
    g = rng.standard_normal(d)
    if kind == "near_span":  # beta^2 < EXTEND_MIN |g|^2: the explicit CGS2 pass
        g = sk.U @ rng.standard_normal(k) + 1e-3 * g
    elif kind == "in_span":  # residual at rounding level: no new column
        g = sk.U @ rng.standard_normal(k)
    out = fd_sketch_step(sk, g, eps, shrink=shrink)
    assert out is not None
    if kind == "in_span":
        want = (sk.U * sk.sig2) @ sk.U.T + np.outer(g, g)
        assert float(out.sketch.rho) == pytest.approx(float(sk.rho), rel=1e-14)
    else:
        E, sig2, rho = dense_fd(sk, g, shrink)
        want = (E * sig2) @ E.T
        assert float(out.sketch.rho) == pytest.approx(rho, rel=1e-12)
    got = (out.sketch.U * out.sketch.sig2) @ out.sketch.U.T
    assert rel(got, want) < 1e-12
    U = out.sketch.U
    assert np.abs(U.T @ U - np.eye(k)).max() < 1e-13
    G = out.sketch.dense(eps)
    w, V = np.linalg.eigh(G)
    assert rel(out.direction, V @ ((V.T @ g) / np.sqrt(w))) < 1e-11


@pytest.mark.usefixtures("small_blocks")
def test_equals_general_path_with_scales(rng):
    d, k, eps = 50, 3, 1e-3
    sk = random_sketch(rng, d, k)
    g = rng.standard_normal(d)
    out = fd_sketch_step(sk, g, eps, feed_scale=0.3, apply_scale=0.7)
    ref = gram_sketch_update(sk, 0.3 * g, rank=k)
    assert rel(out.sketch.dense(eps), ref.dense(eps)) < 1e-13
    applied = GramSketch(ref.U, ref.sig2 / 0.7, ref.rho / 0.7)
    assert rel(out.direction, sketch_inverse_sqrt_apply(applied, g, eps)) < 1e-11


def test_declines_where_the_general_path_decides(rng):
    """Each decline says why (a code and a reason); the old entry point gives None."""
    sk = random_sketch(rng, 20, 3)
    cases = [
        (sk, np.zeros(20), "gradient"),  # zero gradient
        (sk, np.full(20, 1e300), "gradient"),  # |g|^2 overflows
        (GramSketch.empty(20, like=np.zeros(1)), np.ones(20), "size"),  # an empty sketch
        (random_sketch(rng, 4, 3), np.ones(4), "size"),  # d < k + 2
    ]
    for sketch, g, code in cases:
        out = try_fd_sketch_step(sketch, g, 0.1)
        assert isinstance(out, Declined) and out.code == code and out.reason
        assert fd_sketch_step(sketch, g, 0.1) is None


def test_static_query_before_any_step():
    assert fd_sketch_available(np.zeros(1), 7, 5) == (True, "")
    ok, why = fd_sketch_available(np.zeros(1), 6, 5)
    assert not ok and "rank + 2 = 7" in why
    ok, why = fd_sketch_available(np.zeros(1), 100, 5, dtype=np.float16)
    assert not ok and "float16" in why


def test_backends_without_kernels_decline(rng):
    xps = pytest.importorskip("array_api_strict")
    sk = random_sketch(rng, 20, 3)
    skx = GramSketch(xps.asarray(sk.U), xps.asarray(sk.sig2), xps.asarray(float(sk.rho)))
    out = try_fd_sketch_step(skx, xps.asarray(rng.standard_normal(20)), 0.1)
    assert isinstance(out, Declined) and out.code == "backend"
    assert not fd_sketch_available(skx.U, 20, 3)[0]


@pytest.mark.usefixtures("small_blocks")
def test_refresh_repairs_drift(rng):
    d, k = 60, 3
    sk = random_sketch(rng, d, k)
    bent = GramSketch(sk.U + 1e-7 * rng.standard_normal((d, k)), sk.sig2, sk.rho)
    g = rng.standard_normal(d)
    plain = fd_sketch_step(bent, g, 0.1)
    fixed = fd_sketch_step(bent, g, 0.1, refresh=True)
    err = lambda U: np.abs(U.T @ U - np.eye(k)).max()  # noqa: E731
    assert err(plain.sketch.U) > 1e-8  # drift carried along without a refresh
    assert err(fixed.sketch.U) < 1e-14


def _run(grads, impl, **kw):
    """Directions (as NumPy copies) and states of ``sketched_adagrad(impl=impl, **kw)``."""
    pre = pc.sketched_adagrad(impl=impl, **kw)
    state = pre.init(grads[0])
    ps, states = [], []
    for g in grads:
        p, state = pre.update(g, state)
        ps.append(np.array(p))
        states.append(state)
    return ps, states


@pytest.mark.parametrize("stream", ["random", "repeated", "zeros"])
@pytest.mark.parametrize("kw", [{}, {"shrink": False}, {"betas": (0.0, 0.9)}])
def test_sketched_adagrad_fused_equals_reference(rng, stream, kw):
    d, r = 40, 4
    base = [rng.standard_normal(d) for _ in range(6)]
    n = SKETCH_REFRESH_EVERY + 20  # crosses a refresh step
    grads = []
    for i in range(n):
        if stream == "random":
            grads.append(rng.standard_normal(d))
        elif stream == "repeated":
            grads.append(base[i % 6].copy())
        else:
            grads.append(np.zeros(d) if i % 5 == 4 else rng.standard_normal(d))
    ps1, st1 = _run(grads, "auto", rank=r, eps=1e-3, **kw)
    ps0, st0 = _run(grads, "reference", rank=r, eps=1e-3, **kw)
    fused = sum(st.last_impl == "fused" for st in st1)
    assert fused >= n - r - n // 5 - 1  # the fused step took the full-sketch steps
    assert all(st.last_impl.startswith("reference") for st in st0)
    for a, b in zip(ps1, ps0, strict=True):
        assert rel(a, b) < 1e-9
    for a, b in zip(st1, st0, strict=True):
        assert a.t == b.t
        assert rel(a.sketch.dense(1e-3), b.sketch.dense(1e-3)) < 1e-10


@pytest.mark.usefixtures("small_blocks")
def test_torch_bit_for_bit_with_numpy(rng):
    """torch CPU tensors run the same NumPy kernels (through views): the same bits."""
    torch = pytest.importorskip("torch")
    d, k = 64, 3
    sk = random_sketch(rng, d, k)
    skt = GramSketch(
        torch.from_numpy(sk.U.copy()),
        torch.from_numpy(sk.sig2.copy()),
        torch.from_numpy(np.asarray(sk.rho).copy()),
    )
    for i in range(6):
        g = rng.standard_normal(d)
        a = fd_sketch_step(sk, g, 0.1, refresh=i == 3)
        b = fd_sketch_step(skt, torch.from_numpy(g), 0.1, refresh=i == 3)
        assert isinstance(b.direction, torch.Tensor) and isinstance(b.sketch.U, torch.Tensor)
        assert np.array_equal(a.direction, b.direction.numpy())
        assert np.array_equal(a.sketch.U, b.sketch.U.numpy())
        assert np.array_equal(a.sketch.sig2, b.sketch.sig2.numpy())
        assert float(a.sketch.rho) == float(b.sketch.rho)
        sk, skt = a.sketch, b.sketch


def test_float32_close_to_float64(rng):
    d, r = 80, 4
    grads = [rng.standard_normal(d) for _ in range(30)]
    p64 = pc.sketched_adagrad(rank=r, eps=0.1)
    p32 = pc.sketched_adagrad(rank=r, eps=0.1, factor_dtype="float32")  # a float32 sketch
    s64, s32 = p64.init(np.zeros(d)), p32.init(np.zeros(d, dtype=np.float32))
    for g in grads:
        a, s64 = p64.update(g, s64)
        b, s32 = p32.update(g.astype(np.float32), s32)
        assert b.dtype == np.float32 and s32.U.dtype == np.float32
        assert rel(b.astype(np.float64), a) < 1e-4
    U = s32.U.astype(np.float64)
    assert np.abs(U.T @ U - np.eye(r)).max() < 2e-5


def test_a_float16_gradient_steps_as_its_cast(rng):
    """numba has no float16 arrays: the compiled passes read a float16 gradient cast to the
    sketch's dtype once, and the step equals that of the cast gradient, bit for bit."""
    d, k = 90, 3
    sk = try_fd_sketch_step(random_sketch(rng, d, k), rng.standard_normal(d), 0.1).sketch
    g = rng.standard_normal(d).astype(np.float16)
    half = fd_sketch_step(sk, g, 0.1)
    cast = fd_sketch_step(sk, g.astype(np.float64), 0.1)
    np.testing.assert_array_equal(half.direction, cast.direction)
    np.testing.assert_array_equal(half.sketch.U, cast.sketch.U)


@pytest.mark.parametrize("square", [True, False])
def test_compiled_passes_sum_over_many_blocks(rng, monkeypatch, square):
    """The compiled sketch passes (partial sums per ``SUM_ROWS`` rows) against the NumPy
    blocks at a ``d`` spanning several partial sums, over a run of steps; also above
    ``MAX_SQUARE_RANK``, where only the projection is compiled."""
    from lowrank_precond.backends import numba_kernels

    if not numba_kernels.AVAILABLE:
        pytest.skip("numba is not installed (the 'fast' extra): no compiled passes")
    k = 4 if square else numba_kernels.MAX_SQUARE_RANK + 2
    assert (numba_kernels.sketch_kernels(k, k).write is not None) == square
    d = 5 * numba_kernels.SUM_ROWS + 17
    start = random_sketch(rng, d, k)
    grads = [rng.standard_normal(d) for _ in range(12)]
    runs = []
    for min_rows in (0, 1 << 62):
        monkeypatch.setattr(numba_kernels, "MIN_ROWS", min_rows)
        sk, ps = start, []
        for g in grads:
            out = try_fd_sketch_step(sk, g, 0.1)
            assert not isinstance(out, Declined), out
            sk = out.sketch
            ps.append(out.direction)
        runs.append(((sk.U * sk.sig2) @ sk.U.T, float(sk.rho), np.array(ps)))
    (A, ra, pa), (B, rb, pb) = runs
    assert rel(A, B) < 1e-13 and abs(ra - rb) <= 1e-13 * rb
    assert rel(pa, pb) < 1e-13


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("near_span", [False, True])
def test_overwrite_writes_the_same_numbers_into_the_input_buffer(rng, pass_kernels, near_span):
    """``overwrite=True``: the new basis lands in the memory of the old one, bit for bit what
    a fresh buffer holds, with the compiled pass and with the NumPy blocks (which form each
    block's product in a scratch block first), over many blocks, also on the CGS2 path (a
    gradient nearly in span U)."""
    d, k = 500, 3
    sk = try_fd_sketch_step(random_sketch(rng, d, k), rng.standard_normal(d), 0.1).sketch
    g = rng.standard_normal(d)
    if near_span:
        g = sk.U @ rng.standard_normal(k) + 1e-3 * g
    fresh = try_fd_sketch_step(sk, g, 0.1)
    out = try_fd_sketch_step(sk, g, 0.1, overwrite=True)
    assert not isinstance(out, Declined)
    assert np.shares_memory(out.sketch.U, sk.U)
    for a, b in [
        (out.sketch.U, fresh.sketch.U),
        (out.sketch.sig2, fresh.sketch.sig2),
        (out.sketch.rho, fresh.sketch.rho),
        (out.direction, fresh.direction),
    ]:
        assert np.array_equal(np.asarray(a), np.asarray(b))
