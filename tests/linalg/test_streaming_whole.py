"""The whole-array fused AdaGram KSL step against its definition and the blocked step
(docs/theory.rst: theory-adagram-step, theory-integrator-ksl, theory-streamed-ksl,
theory-adagram-directions).

Tolerances: the whole-array step computes the same KSL step as ``rank_one_increment`` +
``projector_splitting`` and the blocked step, in a different order of roundings. In float64
the measured differences of ``U S V^T`` and of the published direction stay below ``5e-15``
relative over 30 chained steps; the tests allow ``1e-12`` (a margin for other BLAS and
GPU summation orders). The symmetric direction of the reference path and of the fused
steps both carry a relative error ``~u sqrt(lambda_max / eps)`` (:ref:`theory-adagram-directions`;
``~1e-12`` measured here), hence ``1e-10`` against the dense reference, as in
``test_streaming.py``. float32 factors against the float64 chain: ``u = 6e-8`` per step, a
few ``1e-7`` measured over the chain; ``2e-5`` allowed (the blocked step's float32 test
allows ``1e-5`` for one step).
"""

import numpy as np
import pytest
from streaming_states import dense_symmetric, near_subspace, orth, random_state, rel

from lowrank_precond.backends.fused import Declined, fused_kernels
from lowrank_precond.linalg import (
    Factored,
    LowRank,
    projector_splitting,
    rank_one_increment,
    symmetric_direction,
)
from lowrank_precond.linalg import streaming_torch as whole
from lowrank_precond.linalg.streaming import StreamedStep, try_ksl_adagram_step
from lowrank_precond.linalg.streaming_torch import (
    ksl_adagram_whole_available,
    try_ksl_adagram_step_whole,
)


def dense(xp, M):
    return xp.to_numpy(M.U) @ xp.to_numpy(M.S) @ xp.to_numpy(M.V).T


def on(xp, M, dtype=None):
    cast = (lambda a: a) if dtype is None else (lambda a: a.astype(dtype))
    return LowRank(*(xp.asarray(cast(np.asarray(a))) for a in (M.U, M.S, M.V)))


def orthonormality(xp, F):
    F = xp.to_numpy(F).astype(np.float64)
    return float(np.abs(F.T @ F - np.eye(F.shape[1])).max())


def test_matches_increment_then_projector_splitting(xp, rng):
    """Eight chained steps (outputs fed back) against the reference chain, every backend
    (array_api_strict proves the step uses only the standard; CUDA where present)."""
    d, r, eps = 120, 4, 1e-3
    M0 = LowRank(*random_state(rng, d, r))
    Mw, Mr = on(xp, M0), M0
    for _ in range(8):
        g = rng.standard_normal(d) * rng.uniform(0.1, 10.0)
        info = rank_one_increment(Mr, g, eps)
        Mr = projector_splitting(Mr, info.x, info.y)
        out = try_ksl_adagram_step_whole(Mw, xp.asarray(g), eps)
        assert isinstance(out, StreamedStep)
        assert out.cgs2 == (False, False)
        assert rel(dense(xp, out.lowrank), Mr.dense()) < 1e-12
        assert rel(xp.to_numpy(out.direction), info.published) < 1e-12
        assert out.nu == pytest.approx(info.nu, rel=1e-12)
        assert out.s == pytest.approx(info.s, rel=1e-12)
        assert out.gnorm_sq == pytest.approx(g @ g, rel=1e-12)
        for F in (out.lowrank.U, out.lowrank.V):
            assert orthonormality(xp, F) < 1e-13
        Mw = out.lowrank


def test_agrees_with_the_blocked_step_and_its_layout(rng):
    """NumPy: the same numbers as the blocked step, outputs in its ``(2r, d)`` layout (the
    blocked step reads them stacked), and the two steps can alternate."""
    d, r, eps = 150, 5, 0.05
    M = LowRank(*random_state(rng, d, r))
    for i in range(6):
        g = rng.standard_normal(d)
        a = try_ksl_adagram_step_whole(M, g, eps)
        b = try_ksl_adagram_step(M, g, eps)
        assert fused_kernels(a.lowrank.U).stacked(a.lowrank.U.T, a.lowrank.V.T) is not None
        assert rel(a.lowrank.dense(), b.lowrank.dense()) < 1e-12
        assert rel(a.direction, b.direction) < 1e-12
        assert (a.nu, a.s) == pytest.approx((b.nu, b.s), rel=1e-12)
        M = (a if i % 2 else b).lowrank


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_cpu(rng, dtype):
    """torch CPU tensors, float64 and float32 factors: torch outputs of the factors' dtype,
    the float32 chain within its rounding of the float64 reference chain."""
    torch = pytest.importorskip("torch")
    d, r, eps = 100, 3, 0.01
    M0 = LowRank(*random_state(rng, d, r))
    tdt = getattr(torch, dtype)
    Mt = LowRank(*(torch.from_numpy(a.copy()).to(tdt) for a in (M0.U, M0.S, M0.V)))
    Mr = M0
    tol = 1e-12 if dtype == "float64" else 2e-5
    for _ in range(6):
        g = rng.standard_normal(d)
        info = rank_one_increment(Mr, g, eps)
        Mr = projector_splitting(Mr, info.x, info.y)
        out = try_ksl_adagram_step_whole(Mt, torch.from_numpy(g).to(tdt), eps)
        for x in (out.lowrank.U, out.lowrank.S, out.lowrank.V, out.direction):
            assert isinstance(x, torch.Tensor) and x.dtype == tdt
        Md = (out.lowrank.U.double(), out.lowrank.S.double(), out.lowrank.V.double())
        assert rel((Md[0] @ Md[1] @ Md[2].T).numpy(), Mr.dense()) < tol
        assert rel(out.direction.double().numpy(), info.published) < tol
        assert orthonormality_t(out.lowrank.U) < (1e-13 if dtype == "float64" else 1e-6)
        Mt = out.lowrank


def orthonormality_t(F):
    F = F.double().numpy()
    return float(np.abs(F.T @ F - np.eye(F.shape[1])).max())


def test_float32_factors_every_backend(xp_fast, rng):
    """float32 factors on every fast backend (CUDA where present) against the float64
    reference chain."""
    xp = xp_fast
    d, r, eps = 200, 5, 0.01
    M0 = LowRank(*random_state(rng, d, r))
    Mw, Mr = on(xp, M0, np.float32), M0
    for _ in range(5):
        g = rng.standard_normal(d)
        info = rank_one_increment(Mr, g, eps)
        Mr = projector_splitting(Mr, info.x, info.y)
        out = try_ksl_adagram_step_whole(Mw, xp.asarray(g.astype(np.float32)), eps)
        assert out.lowrank.U.dtype == xp.float32 and out.direction.dtype == xp.float32
        assert rel(dense(xp, out.lowrank).astype(np.float64), Mr.dense()) < 2e-5
        assert rel(xp.to_numpy(out.direction).astype(np.float64), info.published) < 2e-5
        Mw = out.lowrank


def test_gradient_of_another_dtype_is_cast_first(rng):
    """A float32 gradient with float64 factors: the step of the gradient cast to float64."""
    d, r = 60, 3
    M = LowRank(*random_state(rng, d, r))
    g = rng.standard_normal(d).astype(np.float32)
    a = try_ksl_adagram_step_whole(M, g, 0.1)
    b = try_ksl_adagram_step_whole(M, g.astype(np.float64), 0.1)
    assert a.direction.dtype == np.float64
    assert np.array_equal(a.direction, b.direction)
    assert np.array_equal(a.lowrank.U, b.lowrank.U)


def test_symmetric_direction_matches_dense(xp, rng):
    """The symmetric direction (float64) for generic, nearby (kept) and coinciding (dropped)
    spans, at its exact length ``nu / s``; the factor step is the published one's."""
    d, r, eps = 80, 4, 0.05
    U, S, V = random_state(rng, d, r)
    for angle in (None, 1e-3, 0.0):
        if angle is not None:
            V = near_subspace(rng, U, angle)
        g = rng.standard_normal(d)
        M = LowRank(U, S, V)
        out = try_ksl_adagram_step_whole(on(xp, M), xp.asarray(g), eps, direction="symmetric")
        assert not isinstance(out, Declined), out
        p = xp.to_numpy(out.direction)
        assert rel(p, dense_symmetric(U, S, V, g, eps)) < 1e-10
        blocked = try_ksl_adagram_step(M, g, eps, direction="symmetric")
        assert rel(p, blocked.direction) < 1e-10
        assert abs(float(np.linalg.norm(p)) - out.nu / out.s) <= 1e-14 * out.nu / out.s
        info = rank_one_increment(M, g, eps)
        assert rel(dense(xp, out.lowrank), projector_splitting(M, info.x, info.y).dense()) < 1e-12


def test_symmetric_direction_against_the_library_reference(rng):
    """Chained steps against ``symmetric_direction`` of ``M^+ = U S V^T + x y^T``."""
    d, r, eps = 90, 3, 0.1
    Mw = Mr = LowRank(*random_state(rng, d, r))
    for _ in range(5):
        g = rng.standard_normal(d)
        info = rank_one_increment(Mr, g, eps)
        plus = Factored(np.column_stack([Mr.U @ Mr.S, info.x]), np.column_stack([Mr.V, info.y]))
        ref = symmetric_direction(plus, g, eps)
        Mr = projector_splitting(Mr, info.x, info.y)
        out = try_ksl_adagram_step_whole(Mw, g, eps, direction="symmetric")
        assert rel(out.direction, ref) < 1e-10
        assert rel(out.lowrank.dense(), Mr.dense()) < 1e-12
        Mw = out.lowrank


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_orthonormal_over_many_steps(rng, dtype):
    """Without any refresh, ``|U^T U - I|`` grows by O(u) per step and does not compound:
    measured after these 600 steps ``4e-15`` (float64) and ``5e-7`` (float32, which writes
    ``[U V]`` plus its change so that the coefficients' rounding does not round the kept
    part); limits 25x and 20x above (the module notes give the measurements)."""
    d, r, eps = 60, 5, 1e-3
    U, S, V = random_state(rng, d, r)
    M = LowRank(U.astype(dtype), (0.5 * S).astype(dtype), V.astype(dtype))
    for _ in range(600):
        out = try_ksl_adagram_step_whole(M, rng.standard_normal(d).astype(dtype), eps)
        M = out.lowrank
    limit = 1e-13 if dtype == np.float64 else 1e-5
    for F in (M.U, M.V):
        assert np.abs(F.T.astype(np.float64) @ F - np.eye(r)).max() < limit


def test_declines_where_the_reference_path_must_decide(rng):
    """Each decline has the blocked step's code and a reason; nothing is modified."""
    d, r = 40, 3
    U, S, V = random_state(rng, d, r)
    M = LowRank(U, S, V)
    before = (U.copy(), S.copy(), V.copy())
    nan = rng.standard_normal(d)
    nan[3] = np.nan
    span = LowRank(U, np.diag([1.0, 0.8, 0.6]), U.copy())  # span V = span U
    near = U @ rng.standard_normal(r) + 1e-7 * rng.standard_normal(d)
    cases = [
        (M, np.zeros(d), 0.1, "gradient"),  # gbar = 0: a skipped step
        (M, nan, 0.1, "gradient"),  # non-finite: the reference path raises
        (M, np.full(d, 1e160), 1e-8, "gradient"),  # |gbar|^2 overflows
        (M, np.full(d, 1e-170), 1.0, "gradient"),  # |gbar|^2 underflows
        (span, U @ rng.standard_normal(r), 0.1, "geometry"),  # gbar in span U
        (span, near, 0.1, "geometry"),  # gbar within 1e-7 of span U: CGS2 needed
        (LowRank(U[:7], S, V[:7]), rng.standard_normal(7), 0.1, "size"),
    ]
    for lowrank, grad, eps, code in cases:
        out = try_ksl_adagram_step_whole(lowrank, grad, eps)
        assert isinstance(out, Declined) and out.code == code and out.reason
        blocked = try_ksl_adagram_step(lowrank, grad, eps)
        if code != "geometry":  # the blocked step re-orthogonalises instead
            assert blocked.code == code
    for a, b in zip((M.U, M.S, M.V), before, strict=True):
        assert np.array_equal(a, b)
    assert "2 rank + 2 = 8" in try_ksl_adagram_step_whole(cases[-1][0], cases[-1][1], 0.1).reason


def test_declines_of_the_symmetric_direction_and_bad_arguments(rng):
    d, r = 60, 3
    U = orth(rng.standard_normal((d, r)))
    S = np.diag([1.0, 0.9, 0.8])
    g = rng.standard_normal(d)
    gray = LowRank(U, S, near_subspace(rng, U, 3e-7))  # sines in (SYM_DROP, SYM_KEEP)
    assert try_ksl_adagram_step_whole(gray, g, 0.1, direction="symmetric").code == "geometry"
    assert not isinstance(try_ksl_adagram_step_whole(gray, g, 0.1), Declined)
    f32 = LowRank(U.astype(np.float32), S.astype(np.float32), U.astype(np.float32))
    out = try_ksl_adagram_step_whole(f32, g.astype(np.float32), 0.1, direction="symmetric")
    assert out.code == "dtype" and "float64" in out.reason
    f16 = LowRank(U.astype(np.float16), S.astype(np.float16), U.astype(np.float16))
    assert try_ksl_adagram_step_whole(f16, g.astype(np.float16), 0.1).code == "dtype"
    with pytest.raises(ValueError, match="direction"):
        try_ksl_adagram_step_whole(gray, g, 0.1, direction="newton")


def test_static_query():
    x = np.zeros(3)
    assert ksl_adagram_whole_available(x, 100, 5) == (True, "")
    assert ksl_adagram_whole_available(x, 12, 5) == (True, "")
    ok, why = ksl_adagram_whole_available(x, 11, 5)
    assert not ok and "2 rank + 2 = 12" in why
    ok, why = ksl_adagram_whole_available(x, 100, 5, dtype=np.float32, direction="symmetric")
    assert not ok and "float64" in why
    assert ksl_adagram_whole_available(x, 100, 5, dtype=np.float32) == (True, "")
    ok, why = ksl_adagram_whole_available(x, 100, 5, direction="newton")
    assert not ok and "newton" in why


def test_accept_is_asked_before_the_write(rng):
    d, r = 50, 3
    M = LowRank(*random_state(rng, d, r))
    g = rng.standard_normal(d)
    seen = []
    out = try_ksl_adagram_step_whole(M, g, 0.1, accept=lambda gg, nu: seen.append((gg, nu)))
    assert isinstance(out, Declined) and out.code == "caller"
    ok = try_ksl_adagram_step_whole(M, g, 0.1, accept=lambda gg, nu: True)
    assert seen == [(pytest.approx(g @ g, rel=1e-14), pytest.approx(ok.nu, rel=1e-14))]


def test_one_read_and_one_upload(rng, monkeypatch):
    """The structure of the host traffic: ``_read_small`` once (the decisions),
    ``_upload`` once (the small coefficients), for both directions."""
    d, r = 70, 3
    M = LowRank(*random_state(rng, d, r))
    calls = []
    for name in ("_read_small", "_upload"):
        orig = getattr(whole, name)
        monkeypatch.setattr(whole, name, lambda *a, _o=orig, _n=name: calls.append(_n) or _o(*a))
    for direction in ("published", "symmetric"):
        calls.clear()
        out = try_ksl_adagram_step_whole(M, rng.standard_normal(d), 0.1, direction=direction)
        assert not isinstance(out, Declined)
        assert calls == ["_read_small", "_upload"]
    calls.clear()
    assert try_ksl_adagram_step_whole(M, np.zeros(d), 0.1).code == "gradient"
    assert calls == ["_read_small"]  # a decline reads once and uploads nothing


@pytest.mark.parametrize("direction", ["published", "symmetric"])
def test_torch_reads_values_only_in_the_one_read(rng, direction):
    """On torch (CPU here), every torch call of the step is recorded: the only ones that
    bring values to the host are the one ``.numpy()`` of ``_read_small``, the only transfer
    back is the one ``asarray`` of ``_upload``, and no call moves a tensor to another device:
    on CUDA that is one synchronising read for the decisions and one upload."""
    torch = pytest.importorskip("torch")
    from torch.overrides import TorchFunctionMode

    host_reads = {"item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__"}
    host_reads |= {"__array__", "cpu", "cuda"}

    class Record(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", str(func))
            moves = name == "to" and any(
                isinstance(a, (torch.device, str)) for a in (*args[1:], *kwargs.values())
            )
            self.calls.append("to(device)" if moves else name)
            return func(*args, **kwargs)

    d, r = 80, 3
    M0 = LowRank(*random_state(rng, d, r))
    M = LowRank(*(torch.from_numpy(a) for a in (M0.U, M0.S, M0.V)))
    g = torch.from_numpy(rng.standard_normal(d))
    with Record() as rec:
        out = try_ksl_adagram_step_whole(M, g, 0.1, direction=direction)
    assert not isinstance(out, Declined)
    reads = [c for c in rec.calls if c in host_reads]
    assert reads == ["cpu", "numpy"]  # to_numpy: x.detach().cpu().numpy()
    assert rec.calls.count("asarray") == 1 and "tensor" not in rec.calls
    assert "to(device)" not in rec.calls


# ----------------------------------------------------------------------------- CUDA only


def _cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
    return torch


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cuda_matches_reference(rng, dtype):
    """The chained comparison of the CPU tests on ``torch.device("cuda")``."""
    torch = _cuda()
    dev = torch.device("cuda")
    d, r, eps = 300, 5, 0.01
    M0 = LowRank(*random_state(rng, d, r))
    tdt = getattr(torch, dtype)
    Mt = LowRank(*(torch.from_numpy(a.copy()).to(dev, tdt) for a in (M0.U, M0.S, M0.V)))
    Mr = M0
    tol = 1e-12 if dtype == "float64" else 2e-5
    for direction in ("published", "symmetric") if dtype == "float64" else ("published",):
        for _ in range(5):
            g = rng.standard_normal(d)
            info = rank_one_increment(Mr, g, eps)
            ref = info.published
            if direction == "symmetric":
                ref = dense_symmetric(Mr.U, Mr.S, Mr.V, g, eps)
            Mr = projector_splitting(Mr, info.x, info.y)
            gt = torch.from_numpy(g).to(dev, tdt)
            out = try_ksl_adagram_step_whole(Mt, gt, eps, direction=direction)
            assert out.lowrank.U.device.type == "cuda" and out.direction.device.type == "cuda"
            U1, S1, V1 = (
                x.double().cpu().numpy() for x in (out.lowrank.U, out.lowrank.S, out.lowrank.V)
            )
            assert rel(U1 @ S1 @ V1.T, Mr.dense()) < tol
            dtol = tol if direction == "published" else 1e-10
            assert rel(out.direction.double().cpu().numpy(), ref) < dtol
            Mt = out.lowrank


@pytest.mark.gpu
@pytest.mark.parametrize("direction", ["published", "symmetric"])
def test_cuda_synchronises_only_in_the_read_and_the_upload(rng, monkeypatch, direction):
    """``torch.cuda.set_sync_debug_mode("error")`` for the whole step except inside
    ``_read_small`` and ``_upload``: any other synchronising call (a ``float()`` of a device
    value, an ``.item()``, a host copy) raises; each of the two runs once."""
    torch = _cuda()
    dev = torch.device("cuda")
    d, r = 4096, 5
    M0 = LowRank(*random_state(rng, d, r))
    M = LowRank(*(torch.from_numpy(a).to(dev) for a in (M0.U, M0.S, M0.V)))
    g = torch.from_numpy(rng.standard_normal(d)).to(dev)
    calls = []
    for name in ("_read_small", "_upload"):
        orig = getattr(whole, name)

        def allowed(*args, _o=orig, _n=name):
            calls.append(_n)
            torch.cuda.set_sync_debug_mode("default")
            try:
                return _o(*args)
            finally:
                torch.cuda.set_sync_debug_mode("error")

        monkeypatch.setattr(whole, name, allowed)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = try_ksl_adagram_step_whole(M, g, 0.1, direction=direction)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not isinstance(out, Declined)
    assert calls == ["_read_small", "_upload"]
