"""The fused AdaGram KSL step against its definition (docs/theory.rst: theory-adagram-step,
theory-integrator-ksl, theory-streamed-ksl)."""

import math

import numpy as np
import pytest
from streaming_states import dense_symmetric, near_subspace, orth, random_state, rel

from lowrank_precond.backends.fused import Declined, fused_kernels
from lowrank_precond.linalg import LowRank, projector_splitting, rank_one_increment
from lowrank_precond.linalg.streaming import (
    REFRESH_EVERY,
    ksl_adagram_available,
    ksl_adagram_step,
    try_ksl_adagram_step,
)

pytestmark = pytest.mark.usefixtures("pass_kernels")  # every test with both pass kernels


def dense_step(U, S, V, g, eps):
    """The increment and the KSL step densely: gbar, x, y, and
    Y1 = proj((Y0 + x y^T) V0) (Y0 + x y^T) [B02]."""
    Y0 = U @ S @ V.T
    gbar = (g - Y0 @ g) / math.sqrt(eps)
    nu = np.linalg.norm(gbar)
    s = math.hypot(1.0, nu)
    x = gbar / (s * (1 + s))
    y = gbar - Y0.T @ gbar
    Y = Y0 + np.outer(x, y)
    Q = orth(Y @ V)
    return Q @ (Q.T @ Y), gbar / s


def dense(xp, M):
    return xp.to_numpy(M.U) @ xp.to_numpy(M.S) @ xp.to_numpy(M.V).T


def stacked(top, bottom):
    """The (2r, d) array of which ``top`` and ``bottom`` are the halves, or None."""
    return fused_kernels(top).stacked(top, bottom)


def declines_without_kernels(xp, M, g, eps, **kw):
    """On a backend without fused kernels the step declines up front, saying why."""
    if fused_kernels(M.U) is not None:
        return False
    out = try_ksl_adagram_step(M, g, eps, **kw)
    assert isinstance(out, Declined) and out.code == "backend"
    assert "no fused kernels" in out.reason
    assert ksl_adagram_step(M, g, eps, **kw) is None
    assert ksl_adagram_available(M.U, int(M.U.shape[0]), int(M.U.shape[1]))[0] is False
    return True


@pytest.mark.usefixtures("small_blocks")
def test_matches_dense_definition_every_backend(xp, rng):
    d, r, eps = 120, 4, 0.05
    U, S, V = random_state(rng, d, r)
    M = LowRank(xp.asarray(U), xp.asarray(S), xp.asarray(V))
    if declines_without_kernels(xp, M, xp.asarray(rng.standard_normal(d)), eps):
        return
    for _ in range(5):
        g = rng.standard_normal(d)
        Y1, p = dense_step(xp.to_numpy(M.U), xp.to_numpy(M.S), xp.to_numpy(M.V), g, eps)
        out = ksl_adagram_step(M, xp.asarray(g), eps)
        assert out is not None and out.cgs2 == (False, False)
        assert rel(dense(xp, out.lowrank), Y1) < 1e-11
        assert rel(xp.to_numpy(out.direction), p) < 1e-12
        assert out.nu == pytest.approx(np.linalg.norm(p) * out.s, rel=1e-12)
        assert out.gnorm_sq == pytest.approx(g @ g, rel=1e-12)
        for F in (out.lowrank.U, out.lowrank.V):
            F = xp.to_numpy(F)
            assert np.abs(F.T @ F - np.eye(r)).max() < 1e-13
        M = out.lowrank


@pytest.mark.usefixtures("small_blocks")
def test_equals_increment_then_projector_splitting(xp_fast, rng):
    """Same M and direction as rank_one_increment + projector_splitting, over 40 steps."""
    xp = xp_fast
    d, r, eps = 90, 5, 1e-3
    U, S, V = random_state(rng, d, r)
    Ms = LowRank(xp.asarray(U), xp.asarray(S), xp.asarray(V))
    if declines_without_kernels(xp, Ms, xp.asarray(rng.standard_normal(d)), eps):
        return
    Mg = Ms
    for _ in range(40):
        g = xp.asarray(rng.standard_normal(d) * rng.uniform(0.1, 10.0))
        info = rank_one_increment(Mg, g, eps)
        Mg = projector_splitting(Mg, info.x, info.y)
        out = ksl_adagram_step(Ms, g, eps)
        Ms = out.lowrank
        assert rel(dense(xp, Ms), dense(xp, Mg)) < 1e-10
        assert rel(xp.to_numpy(out.direction), xp.to_numpy(info.published)) < 1e-10


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("kind", ["in_span", "near_span"])
def test_gradient_in_span_reorthogonalises(xp_fast, rng, kind):
    """gbar in (or within 1e-7 of) span U and span V: the explicit CGS2 pass, exact KSL."""
    xp = xp_fast
    d, r, eps = 150, 4, 0.1
    U = orth(rng.standard_normal((d, r)))
    S = np.diag([1.0, 0.8, 0.6, 0.4])
    M = LowRank(xp.asarray(U), xp.asarray(S), xp.asarray(U.copy()))  # span U = span V
    g = U @ rng.standard_normal(r)
    if declines_without_kernels(xp, M, xp.asarray(g), eps):
        return
    if kind == "near_span":
        g = g + 1e-7 * rng.standard_normal(d)
    out = ksl_adagram_step(M, xp.asarray(g), eps)
    assert out.cgs2 == (True, True)
    Y1, p = dense_step(U, S, U, g, eps)
    assert rel(dense(xp, out.lowrank), Y1) < 1e-10
    assert rel(xp.to_numpy(out.direction), p) < 1e-12
    for F in (out.lowrank.U, out.lowrank.V):
        F = xp.to_numpy(F)
        assert np.abs(F.T @ F - np.eye(r)).max() < 1e-13
    if kind == "in_span":  # nothing new to span: the bases are returned as they are
        assert out.lowrank.U is M.U and out.lowrank.V is M.V


@pytest.mark.parametrize("kind", ["random", "repeated", "low_dimensional"])
def test_orthonormal_after_1000_steps(rng, small_blocks, kind):
    """Each step adds O(u) to |U^T U - I| without compounding; refresh as adagram does."""
    d, r, eps = 60, 5, 1e-3
    pool = [rng.standard_normal(d) for _ in range(4)]
    B = rng.standard_normal((d, r - 1))
    if kind == "random":
        U, S, V = random_state(rng, d, r)
    else:  # as after AdaGram's warm-up: span U = span V contains the gradients
        U = orth(
            np.column_stack(pool + [rng.standard_normal(d)])
            if kind == "repeated"
            else np.column_stack([B, rng.standard_normal(d)])
        )
        U, S, V = U, np.diag(np.linspace(1.0, 0.9, r)), U.copy()
    M = LowRank(U, S, V)
    explicit = 0
    for t in range(1000):
        if kind == "random":
            g = rng.standard_normal(d)
        elif kind == "repeated":
            g = pool[t % 4] * (1.0 + 0.2 * math.sin(t))
        else:
            g = B @ rng.standard_normal(r - 1)
        out = ksl_adagram_step(M, g, eps, refresh=t % REFRESH_EVERY == 0)
        assert out is not None or t % REFRESH_EVERY == 0
        if out is None:  # refresh declined (re-orthogonalisation needed too): general path
            info = rank_one_increment(M, g, eps)
            M = projector_splitting(M, info.x, info.y)
            continue
        explicit += any(out.cgs2)
        M = out.lowrank
    for F in (M.U, M.V):
        assert np.abs(F.T @ F - np.eye(r)).max() < 1e-12
    assert (explicit > 100) == (kind != "random")  # the re-orthogonalisation path ran


def test_refresh_removes_drift_without_extra_pass(rng):
    d, r, eps = 80, 3, 0.05
    U, S, V = random_state(rng, d, r)
    Ud = U @ (np.eye(r) + 1e-9 * rng.standard_normal((r, r)))  # |U^T U - I| ~ 1e-9
    M = LowRank(Ud, S, V)
    g = rng.standard_normal(d)
    Y1, p = dense_step(Ud, S, V, g, eps)  # the same M, whatever its basis
    out = ksl_adagram_step(M, g, eps, refresh=True)
    assert np.abs(out.lowrank.U.T @ out.lowrank.U - np.eye(r)).max() < 1e-14
    assert rel(out.lowrank.dense(), Y1) < 1e-10
    assert rel(out.direction, p) < 1e-12
    # without the refresh the drift is carried along
    plain = ksl_adagram_step(M, g, eps)
    assert np.abs(plain.lowrank.U.T @ plain.lowrank.U - np.eye(r)).max() > 1e-11
    # beyond DRIFT_LIMIT the streamed path declines
    bad = LowRank(U * 1.01, S, V)
    assert ksl_adagram_step(bad, g, eps, refresh=True) is None
    assert try_ksl_adagram_step(bad, g, eps, refresh=True).code == "drift"


def test_declines_where_the_general_path_must_decide(rng):
    """Each decline says why (a code and a reason); the old entry point gives None."""
    d, r = 40, 3
    U, S, V = random_state(rng, d, r)
    M = LowRank(U, S, V)
    g = rng.standard_normal(d)
    g[3] = np.nan
    Ms = LowRank(U[:7], S, V[:7])  # d < 2 r + 2
    cases = [
        (M, np.zeros(d), 0.1, "gradient"),  # gbar = 0: a skipped step
        (M, g, 0.1, "gradient"),  # non-finite: the general path raises
        (M, np.full(d, 1e160), 1e-8, "gradient"),  # |gbar|^2 overflows
        (M, np.full(d, 1e-170), 1.0, "gradient"),  # |gbar|^2 underflows
        (Ms, rng.standard_normal(7), 0.1, "size"),
    ]
    for lowrank, grad, eps, code in cases:
        out = try_ksl_adagram_step(lowrank, grad, eps)
        assert isinstance(out, Declined) and out.code == code and out.reason
        assert ksl_adagram_step(lowrank, grad, eps) is None
    assert "2 rank + 2 = 8" in try_ksl_adagram_step(Ms, rng.standard_normal(7), 0.1).reason


def test_refresh_step_needing_reorthogonalisation_declines(rng):
    """A refresh step whose gbar lies nearly in span U: left to the general path, said so."""
    d, r = 50, 3
    U = orth(rng.standard_normal((d, r)))
    M = LowRank(U, np.diag([1.0, 0.8, 0.6]), U.copy())
    g = U @ rng.standard_normal(r)
    out = try_ksl_adagram_step(M, g, 0.1, refresh=True)
    assert isinstance(out, Declined) and out.code == "geometry"
    assert not isinstance(try_ksl_adagram_step(M, g, 0.1), Declined)  # without the refresh


def test_static_query_before_any_step():
    """ksl_adagram_available answers what does not depend on the gradient."""
    x = np.zeros(3)
    assert ksl_adagram_available(x, 100, 5) == (True, "")
    assert ksl_adagram_available(x, 12, 5) == (True, "")
    ok, why = ksl_adagram_available(x, 11, 5)
    assert not ok and "2 rank + 2 = 12" in why
    ok, why = ksl_adagram_available(x, 100, 5, dtype=np.float32, direction="symmetric")
    assert not ok and "float64" in why
    assert ksl_adagram_available(x, 100, 5, dtype=np.float32) == (True, "")
    ok, why = ksl_adagram_available(x, 100, 5, dtype=np.float16)
    assert not ok and "float16" in why
    ok, why = ksl_adagram_available(x, 100, 5, direction="newton")
    assert not ok and "newton" in why


@pytest.mark.usefixtures("small_blocks")
def test_float32_factors_and_float32_gradient(xp_fast, rng):
    xp = xp_fast
    d, r, eps = 100, 4, 0.05
    U, S, V = random_state(rng, d, r)
    g = rng.standard_normal(d)
    ref = ksl_adagram_step(LowRank(U, S, V), g, eps)
    f32 = lambda a: xp.asarray(a.astype(np.float32))  # noqa: E731
    if declines_without_kernels(xp, LowRank(f32(U), f32(S), f32(V)), f32(g), eps):
        return
    out = ksl_adagram_step(LowRank(f32(U), f32(S), f32(V)), f32(g), eps)
    assert out.lowrank.U.dtype == xp.float32 and out.direction.dtype == xp.float32
    assert rel(dense(xp, out.lowrank).astype(np.float64), ref.lowrank.dense()) < 1e-5
    # a float32 gradient with float64 factors is cast block by block
    out64 = ksl_adagram_step(LowRank(xp.asarray(U), xp.asarray(S), xp.asarray(V)), f32(g), eps)
    ref32 = ksl_adagram_step(LowRank(U, S, V), g.astype(np.float32).astype(np.float64), eps)
    assert out64.direction.dtype == xp.float64
    assert rel(dense(xp, out64.lowrank), ref32.lowrank.dense()) < 1e-12


@pytest.mark.usefixtures("small_blocks")
def test_outputs_share_one_buffer_and_stacked_inputs_agree(xp_fast, rng):
    """Both factors are written to one (2r, d) buffer; the next step reads it stacked, and
    factors stored apart (e.g. loaded from a checkpoint) are first copied into that layout,
    so the step gives the same bits either way."""
    xp = xp_fast
    d, r, eps = 70, 3, 0.05
    U, S, V = random_state(rng, d, r)
    M0 = LowRank(xp.asarray(U), xp.asarray(S), xp.asarray(V))
    g0 = xp.asarray(rng.standard_normal(d))
    if declines_without_kernels(xp, M0, g0, eps):
        return
    M1 = ksl_adagram_step(M0, g0, eps).lowrank
    assert stacked(M1.U.T, M1.V.T) is not None
    copies = LowRank(
        xp.asarray(xp.to_numpy(M1.U).copy()), M1.S, xp.asarray(xp.to_numpy(M1.V).copy())
    )
    assert stacked(copies.U.T, copies.V.T) is None
    g = xp.asarray(rng.standard_normal(d))
    a, b = ksl_adagram_step(M1, g, eps), ksl_adagram_step(copies, g, eps)
    for x, y in ((a.lowrank.U, b.lowrank.U), (a.lowrank.S, b.lowrank.S),
                 (a.lowrank.V, b.lowrank.V), (a.direction, b.direction)):  # fmt: skip
        assert np.array_equal(xp.to_numpy(x), xp.to_numpy(y))


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("r", [4, 9])  # Y^T Y by gemm of a copy, and by syrk (r >= 8)
def test_symmetric_direction_matches_dense(xp, rng, r):
    d, eps = 80, 0.05
    U, S, V = random_state(rng, d, r)
    for angle in (None, 1e-3, 0.0):  # generic, nearby (kept), coinciding (dropped) spans
        if angle is not None:
            V = near_subspace(rng, U, angle)
        g = rng.standard_normal(d)
        M = LowRank(xp.asarray(U), xp.asarray(S), xp.asarray(V))
        if declines_without_kernels(xp, M, xp.asarray(g), eps, direction="symmetric"):
            return
        out = ksl_adagram_step(M, xp.asarray(g), eps, direction="symmetric")
        assert out is not None
        ref = dense_symmetric(U, S, V, g, eps)
        assert rel(xp.to_numpy(out.direction), ref) < 1e-10
        # returned at its exact length nu / s (= |G^{-1/2} g|)
        length = float(np.linalg.norm(xp.to_numpy(out.direction)))
        assert abs(length - out.nu / out.s) <= 1e-14 * out.nu / out.s
        Y1, _ = dense_step(U, S, V, g, eps)  # the factor step is the same as for published
        assert rel(dense(xp, out.lowrank), Y1) < 1e-10


def test_symmetric_declines_in_the_gray_zone(rng):
    """Principal angles in (SYM_DROP, SYM_KEEP): the general (Householder) path decides."""
    d, r = 60, 3
    U = orth(rng.standard_normal((d, r)))
    S = np.diag([1.0, 0.9, 0.8])
    g = rng.standard_normal(d)
    gray = LowRank(U, S, near_subspace(rng, U, 3e-7))
    assert ksl_adagram_step(gray, g, 0.1, direction="symmetric") is None
    assert try_ksl_adagram_step(gray, g, 0.1, direction="symmetric").code == "geometry"
    assert ksl_adagram_step(gray, g, 0.1) is not None  # the published direction is unaffected
    f32 = LowRank(U.astype(np.float32), S.astype(np.float32), U.astype(np.float32))
    assert ksl_adagram_step(f32, g.astype(np.float32), 0.1, direction="symmetric") is None
    out = try_ksl_adagram_step(f32, g.astype(np.float32), 0.1, direction="symmetric")
    assert out.code == "dtype" and "float64" in out.reason
    with pytest.raises(ValueError, match="direction"):
        ksl_adagram_step(gray, g, 0.1, direction="newton")


@pytest.mark.usefixtures("small_blocks")
def test_symmetric_with_slightly_non_orthonormal_factors(rng):
    """``U^T U - I ~ 5e-14`` (what a QR at d = 1e6 leaves) and ``span V = span U``: the
    closed-form Gram matrix cannot tell those zero sines from small true ones (they land in
    the gray zone), so the explicit pass decides; the step is taken and matches dense."""
    d, r, eps = 120, 4, 0.05
    U = orth(rng.standard_normal((d, r)))
    U = U + 5e-14 * rng.standard_normal((d, r))  # orthonormal to ~5e-14 only
    R = orth(rng.standard_normal((r, r)))
    V = U @ R  # the same span
    S = np.diag([1.0, 0.8, 0.6, 0.4])
    g = rng.standard_normal(d)
    out = ksl_adagram_step(LowRank(U, S, V), g, eps, direction="symmetric")
    assert out is not None
    assert rel(out.direction, dense_symmetric(U, S, V, g, eps)) < 1e-10


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("direction", ["published", "symmetric"])
def test_torch_cpu_runs_the_numpy_kernels_bit_for_bit(rng, direction):
    """torch CPU tensors go through NumPy views (no copy): same bits as NumPy, torch out, and
    the outputs keep the one-buffer layout that the next step reads with one call."""
    torch = pytest.importorskip("torch")
    d, r, eps = 90, 3, 0.1
    U, S, V = random_state(rng, d, r)
    Mn = LowRank(U, S, V)
    Mt = LowRank(torch.from_numpy(U.copy()), torch.from_numpy(S.copy()), torch.from_numpy(V.copy()))
    for _ in range(4):
        g = rng.standard_normal(d)
        a = ksl_adagram_step(Mn, g, eps, direction=direction)
        b = ksl_adagram_step(Mt, torch.from_numpy(g), eps, direction=direction)
        assert isinstance(b.direction, torch.Tensor) and isinstance(b.lowrank.U, torch.Tensor)
        assert stacked(b.lowrank.U.T, b.lowrank.V.T) is not None
        for x, y in (
            (a.direction, b.direction),
            (a.lowrank.U, b.lowrank.U),
            (a.lowrank.S, b.lowrank.S),
            (a.lowrank.V, b.lowrank.V),
        ):
            assert np.array_equal(x, y.numpy())
        Mn, Mt = a.lowrank, b.lowrank


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_gradient_without_a_numpy_view_is_cast_first(rng, dtype):
    """A half-precision torch gradient (bfloat16 has no NumPy dtype) is cast to the factors'
    dtype as a whole: the same bits as NumPy with the gradient cast the same way."""
    torch = pytest.importorskip("torch")
    d, r, eps = 60, 3, 0.1
    U, S, V = random_state(rng, d, r)
    gt = torch.from_numpy(rng.standard_normal(d)).to(getattr(torch, dtype))
    Mt = LowRank(torch.from_numpy(U), torch.from_numpy(S), torch.from_numpy(V))
    b = try_ksl_adagram_step(Mt, gt, eps)
    a = try_ksl_adagram_step(LowRank(U, S, V), gt.to(torch.float64).numpy(), eps)
    assert isinstance(b.direction, torch.Tensor) and b.direction.dtype == torch.float64
    assert np.array_equal(a.direction, b.direction.numpy())
    assert np.array_equal(a.lowrank.U, b.lowrank.U.numpy())


def test_torch_factors_without_a_numpy_view_decline(rng):
    torch = pytest.importorskip("torch")
    d, r = 40, 3
    U, S, V = random_state(rng, d, r)
    neg = torch.from_numpy(-U)._neg_view()  # the values of U, stored negated
    M = LowRank(neg, torch.from_numpy(S), torch.from_numpy(V))
    out = try_ksl_adagram_step(M, torch.from_numpy(rng.standard_normal(d)), 0.1)
    assert isinstance(out, Declined) and out.code == "view"


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("square", [True, False])
def test_compiled_passes_sum_over_many_blocks(rng, monkeypatch, square, overwrite):
    """The compiled passes (partial sums per ``SUM_ROWS`` rows) against the NumPy blocks at a
    ``d`` that spans several partial sums, both directions, with a refresh step; also above
    ``MAX_SQUARE_RANK``, where the symmetric direction's rank-squared passes are NumPy
    blocks between compiled ones, and the writing pass is compiled only in place
    (``SEPARATE_WRITE_MAX_RANK``)."""
    from lowrank_precond.backends import numba_kernels

    if not numba_kernels.AVAILABLE:
        pytest.skip("numba is not installed (the 'fast' extra): no compiled passes")
    r = 4 if square else numba_kernels.MAX_SQUARE_RANK + 2
    jit = numba_kernels.ksl_kernels(r)
    assert (jit.gbar_sym is not None, jit.project_sym is not None) == (square, square)
    d = 5 * numba_kernels.SUM_ROWS + 17
    U, S, V = random_state(rng, d, r)
    grads = [rng.standard_normal(d) for _ in range(12)]
    for direction in ("published", "symmetric"):
        runs = []
        for min_rows in (0, 1 << 62):
            monkeypatch.setattr(numba_kernels, "MIN_ROWS", min_rows)
            M, ps = LowRank(U, S, V), []
            for i, g in enumerate(grads):
                out = try_ksl_adagram_step(
                    M, g, 0.1, direction=direction, refresh=i == 7, overwrite=overwrite
                )
                assert not isinstance(out, Declined), out
                if overwrite and i > 0:  # the input is then a (2r, d) buffer of a step's output
                    assert np.shares_memory(out.lowrank.U, M.U) or out.lowrank.U is M.U
                M = out.lowrank
                ps.append(out.direction)
            runs.append((M.U @ M.S @ M.V.T, np.array(ps)))
        (A, pa), (B, pb) = runs
        assert rel(A, B) < 1e-13
        assert rel(pa, pb) < (1e-13 if direction == "published" else 1e-10)


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("kind", ["random", "near_span"])
@pytest.mark.parametrize("direction", ["published", "symmetric"])
def test_overwrite_writes_the_same_numbers_into_the_input_buffer(rng, direction, kind):
    """``overwrite=True``: the new factors land in the memory of the old ones (the (2r, d)
    buffer of a previous step's outputs), bit for bit what a fresh buffer would hold, also
    on the re-orthogonalising path (a gradient near span U); a step refused by ``accept``
    writes nothing."""
    d, r = 400, 3
    M = LowRank(*random_state(rng, d, r))
    M = ksl_adagram_step(M, rng.standard_normal(d), 0.1, direction=direction).lowrank
    g = rng.standard_normal(d)
    if kind == "near_span":
        g = M.U @ rng.standard_normal(r) + 0.05 * g / np.linalg.norm(g)
    before = (M.U.copy(), M.V.copy(), M.S.copy())
    fresh = ksl_adagram_step(M, g, 0.1, direction=direction)
    assert np.array_equal(M.U, before[0]) and np.array_equal(M.V, before[1])

    refused = try_ksl_adagram_step(
        M, g, 0.1, direction=direction, overwrite=True, accept=lambda gg, nu: False
    )
    assert isinstance(refused, Declined) and refused.code == "caller"
    assert np.array_equal(M.U, before[0]) and np.array_equal(M.V, before[1])

    seen = []
    out = try_ksl_adagram_step(
        M, g, 0.1, direction=direction, overwrite=True, accept=lambda *a: seen.append(a) or True
    )
    assert not isinstance(out, Declined)
    assert out.cgs2[0] is (kind == "near_span")
    assert seen == [(fresh.gnorm_sq, fresh.nu)]
    assert np.shares_memory(out.lowrank.U, M.U) and np.shares_memory(out.lowrank.V, M.V)
    assert np.array_equal(out.lowrank.U, fresh.lowrank.U)
    assert np.array_equal(out.lowrank.V, fresh.lowrank.V)
    assert np.array_equal(out.lowrank.S, fresh.lowrank.S)
    assert np.array_equal(out.direction, fresh.direction)


def test_compiled_passes_do_not_depend_on_where_the_arrays_lie(rng):
    """Equal inputs give equal bits wherever they lie in memory (a reassociated, vectorised
    sum would start at an alignment boundary that moves with the address)."""
    from lowrank_precond.backends import numba_kernels

    kernels = numba_kernels.ksl_kernels(3)
    if kernels is None:
        pytest.skip("numba is not installed (the 'fast' extra): no compiled passes")
    d, r = 3 * numba_kernels.SUM_ROWS + 5, 3
    W0, g0 = rng.standard_normal((2 * r, d)), rng.standard_normal(d)
    t = rng.standard_normal(r)
    C = rng.standard_normal((r, r))

    def placed(x, shift):  # x copied to an address `shift` elements past a fresh buffer
        buf = np.empty(x.size + 8)
        out = buf[shift : shift + x.size].reshape(x.shape)
        out[...] = x
        return out

    results = []
    for shift in range(4):
        W, g, p = placed(W0, shift), placed(g0, 3 - shift), placed(np.zeros(d), shift)
        results.append(
            (
                kernels.project_sym(W, g),
                kernels.gbar_sym(W, g, t, 0.3, p, C),
                p.copy(),
            )
        )
    for res in results[1:]:
        for a, b in zip(
            [*results[0][0], *results[0][1], results[0][2]], [*res[0], *res[1], res[2]], strict=True
        ):
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_compiled_write_into_a_separate_buffer_stops_at_its_rank(rng, monkeypatch):
    """Above ``SEPARATE_WRITE_MAX_RANK`` the compiled writing pass runs only in place (into a
    separate buffer its row streams thrash the cache); at or below it, both ways."""
    import dataclasses

    from lowrank_precond.backends import numba_kernels

    if not numba_kernels.AVAILABLE:
        pytest.skip("numba is not installed (the 'fast' extra): no compiled passes")
    monkeypatch.setattr(numba_kernels, "MIN_ROWS", 0)
    calls = []
    real = numba_kernels.ksl_kernels

    def spied(r):
        k = real(r)
        return dataclasses.replace(k, write=lambda *a: (calls.append(a[1] is a[0]), k.write(*a)))

    monkeypatch.setattr(numba_kernels, "ksl_kernels", spied)
    for r in (numba_kernels.SEPARATE_WRITE_MAX_RANK, numba_kernels.SEPARATE_WRITE_MAX_RANK + 1):
        d = 4 * r + 40
        M = ksl_adagram_step(LowRank(*random_state(rng, d, r)), rng.standard_normal(d), 0.1)
        M = M.lowrank  # outputs: halves of one (2r, d) buffer, which overwrite can reuse
        for overwrite in (False, True):
            calls.clear()
            out = try_ksl_adagram_step(M, rng.standard_normal(d), 0.1, overwrite=overwrite)
            assert not isinstance(out, Declined), out
            compiled = overwrite or r <= numba_kernels.SEPARATE_WRITE_MAX_RANK
            assert calls == ([overwrite] if compiled else []), (r, overwrite, calls)
            M = out.lowrank
