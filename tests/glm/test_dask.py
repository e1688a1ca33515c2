"""GLM objectives on dask data chunked by rows (``lowrank_precond.glm._dask``).

Against the NumPy path: loss and gradient to 1e-10 on real data split into 4+ row blocks,
every family; ``minimize`` full batch and minibatch; blocks of ``A`` read once per full-batch
call and one block per minibatch, never all of ``A`` at once; the chunking errors.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading

import numpy as np
import pytest

dask = pytest.importorskip(
    "dask", reason="dask is not installed (the 'dask' extra: pip install 'lowrank-precond[dask]')"
)
da = pytest.importorskip("dask.array", reason="dask.array needs the 'dask[array]' extra")

import lowrank_precond as lp  # noqa: E402
from lowrank_precond.glm import datasets, family, objective  # noqa: E402

#: data set -> row blocks (4+, uneven last block included)
DATA = {"breast_cancer": 4, "digits": 5, "randhie": 4, "diabetes": 4}
TOL = 1e-10


def _load(name: str):
    pytest.importorskip("statsmodels" if name == "randhie" else "sklearn")
    return datasets.load(name)


def _rows(n: int, blocks: int) -> int:
    return -(-n // blocks)


def _dask_data(A, y, blocks):
    c = _rows(A.shape[0], blocks)
    return da.from_array(A, chunks=(c, -1)), da.from_array(y, chunks=c)


class BlockCounter:
    """``A`` as a dask array whose blocks record their shape each time they are computed."""

    def __init__(self, A: np.ndarray, rows: int) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self._lock = threading.Lock()

        def read(block: np.ndarray) -> np.ndarray:
            if block.size:  # dask probes the function once on an empty block for its meta
                with self._lock:
                    self.shapes.append(block.shape)
            return block

        self.array = da.from_array(A, chunks=(rows, -1)).map_blocks(read, dtype=A.dtype)

    def take(self) -> list[tuple[int, ...]]:
        shapes, self.shapes = self.shapes, []
        return shapes


def _close(loss, grad, ref_loss, ref_grad) -> None:
    assert abs(loss - ref_loss) <= TOL * max(1.0, abs(ref_loss))
    assert np.max(np.abs(grad - ref_grad)) <= TOL * max(1.0, np.max(np.abs(ref_grad)))


@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("name", sorted(DATA))
def test_loss_and_gradient_match_numpy(name, fit_intercept, rng):
    """Every family (logistic, multinomial, poisson, least squares) to 1e-10, 4+ blocks."""
    A, y, info = _load(name)
    Ad, yd = _dask_data(A, y, DATA[name])
    assert len(Ad.chunks[0]) >= 4
    ref = objective(info["family"], A, y, lam=info["lam"], fit_intercept=fit_intercept)
    fun = objective(info["family"], Ad, yd, lam=info["lam"], fit_intercept=fit_intercept)
    assert type(fun).__name__ == "DaskObjective" and fun.shape == ref.shape
    for scale in (0.0, 0.05):
        w = scale * rng.standard_normal(ref.shape)
        loss, grad = fun(w)
        assert isinstance(loss, float) and isinstance(grad, np.ndarray)
        assert grad.shape == w.shape and grad.dtype == np.float64
        _close(loss, grad, *ref(w))
    flat = 0.05 * rng.standard_normal(ref.dim)  # the flat w of scipy.optimize
    _close(*fun(flat), *ref(flat))


def test_uneven_and_empty_blocks(rng):
    A, y, info = _load("diabetes")
    chunks = (0, 100, 0, 42, 300)
    Ad, yd = da.from_array(A, chunks=(chunks, -1)), da.from_array(y, chunks=(chunks,))
    ref = objective("least_squares", A, y, lam=0.1, fit_intercept=True)
    fun = objective("least_squares", Ad, yd, lam=0.1, fit_intercept=True)
    w = 0.05 * rng.standard_normal(ref.shape)
    _close(*fun(w), *ref(w))
    stoch = objective("least_squares", Ad, yd, batch_size=50, rng=0)
    for _ in range(10):
        loss, grad = stoch(w[:-1])
        assert np.isfinite(loss) and len(stoch.batch_indices()) in (42, 50)  # never empty


def test_in_memory_labels_weights_and_pm1_coding(rng):
    """``y`` and ``sample_weight`` may be NumPy (chunked like ``A`` here) or dask."""
    A, y, info = _load("breast_cancer")
    Ad, yd = _dask_data(A, y, 4)
    s = rng.uniform(0.0, 2.0, A.shape[0])
    ref = objective("logistic", A, y, lam=0.1, sample_weight=s, fit_intercept=True)
    w = 0.05 * rng.standard_normal(ref.shape)
    for labels, weights in ((y, s), (yd, da.from_array(s, chunks=(Ad.chunks[0],)))):
        fun = objective("logistic", Ad, labels, lam=0.1, sample_weight=weights, fit_intercept=True)
        _close(*fun(w), *ref(w))
    pm = 2 * y - 1
    fun = objective(family("logistic", labels="pm1"), Ad, da.from_array(pm, chunks=yd.chunks))
    _close(*fun(w[:-1]), *objective("logistic", A, y)(w[:-1]))


def test_weights_of_other_backends_and_dtypes(rng):
    """The gradient comes back on ``w``'s backend and dtype; float32 runs in float32."""
    A, y, info = _load("digits")
    Ad, yd = _dask_data(A, y, 4)
    fun = objective("multinomial", Ad, yd, lam=0.01)
    ref = objective("multinomial", A, y, lam=0.01)
    w = 0.01 * rng.standard_normal(fun.shape)
    loss, grad = fun(w.astype(np.float32))
    ref_loss, ref_grad = ref(w.astype(np.float32))
    assert grad.dtype == np.float32
    assert abs(loss - ref_loss) <= 1e-5 and np.max(np.abs(grad - ref_grad)) <= 1e-5
    torch = pytest.importorskip("torch")
    loss, grad = fun(torch.from_numpy(w))
    assert isinstance(grad, torch.Tensor) and grad.dtype == torch.float64
    _close(float(loss), grad.numpy(), *ref(w))


def test_blocks_are_read_once_per_call_and_never_all_at_once():
    """Full batch: each block once per call (loss and gradient in one compute); minibatch:
    one block; never a read larger than one block."""
    A, y, info = _load("digits")
    rows = _rows(A.shape[0], 4)
    counter = BlockCounter(A, rows)
    fun = objective("multinomial", counter.array, y, lam=0.01, fit_intercept=True)
    construction = counter.take()  # the finiteness check: one pass
    assert len(construction) == 4
    w = np.zeros(fun.shape)
    for _ in range(3):
        fun(w)
        assert sorted(counter.take()) == sorted(construction)
    stoch = objective(
        "multinomial", counter.array, y, lam=0.01, fit_intercept=True, batch_size=64, rng=0
    )
    counter.take()
    full = stoch.full()
    assert type(full) is type(stoch) and not full.stochastic
    for _ in range(5):
        stoch(w)
        shapes = counter.take()
        assert len(shapes) == 1 and shapes[0][0] <= rows
        idx = stoch.batch_indices()
        assert len(idx) == 64 and len(set(idx // rows)) == 1  # rows of one block
    full(w)
    assert len(counter.take()) == 4
    assert stoch.n_calls == 5 and stoch.epochs == pytest.approx(5 * 64 / A.shape[0], rel=0.05)


def test_minibatch_sampler_is_seeded_and_draws_every_block():
    A, y, info = _load("breast_cancer")
    Ad, yd = _dask_data(A, y, 4)
    fun = objective("logistic", Ad, yd, batch_size=200, rng=3)
    w = np.zeros(fun.shape)
    assert fun.batch_indices() is None
    seen = []
    for _ in range(40):
        fun(w)
        seen.append(fun.batch_indices())
    blocks = {int(i[0]) // Ad.chunks[0][0] for i in seen}
    assert blocks == {0, 1, 2, 3}
    sizes = Ad.chunks[0]  # (143, 143, 143, 140): a batch is capped at its block's rows
    assert all(len(i) == sizes[int(i[0]) // sizes[0]] for i in seen)
    fun.reset()
    fun(w)
    np.testing.assert_array_equal(fun.batch_indices(), seen[0])
    rng_fun = objective("logistic", Ad, yd, batch_size=20, rng=np.random.default_rng(3))
    rng_fun(w)
    assert len(rng_fun.batch_indices()) == 20


def _f_star(ref) -> float:
    import scipy.optimize

    res = scipy.optimize.minimize(
        ref, np.zeros(ref.dim), jac=True, method="L-BFGS-B", options={"gtol": 1e-10}
    )
    return float(res.fun)


def test_minimize_full_batch_matches_numpy():
    """The same iterates as on NumPy (up to rounding) and a suboptimality below 1e-3."""
    A, y, info = _load("breast_cancer")
    Ad, yd = _dask_data(A, y, 4)
    kw = {"lam": info["lam"], "fit_intercept": True}
    ref, fun = objective("logistic", A, y, **kw), objective("logistic", Ad, yd, **kw)
    opts = {"lr": 1.0, "maxiter": 150, "gtol": 0.0}
    res_ref = lp.minimize(ref, ref.zeros(), method="sketched_adagrad", options=opts)
    res = lp.minimize(fun, fun.zeros(), method="sketched_adagrad", options=opts)
    assert res.nit == res_ref.nit == 150 and res.status == res_ref.status
    np.testing.assert_allclose(res.x, res_ref.x, rtol=0, atol=1e-8)
    f_star = _f_star(ref)
    assert res.fun - f_star <= 1e-3 * max(abs(f_star), 1.0)


def test_minimize_minibatch_reaches_the_numpy_solution_region():
    """Minibatches drawn inside blocks: other draws than NumPy's, the same region: full
    loss within 2.5e-3 (relative) of f*, weights within 12 % of the optimum's norm."""
    A, y, info = _load("breast_cancer")
    Ad, yd = _dask_data(A, y, 4)
    kw = {"lam": info["lam"], "fit_intercept": True, "batch_size": 64, "rng": 0}
    ref, fun = objective("logistic", A, y, **kw), objective("logistic", Ad, yd, **kw)
    opts = {"lr": 1.0, "maxiter": 600, "gtol": 0.0}
    res_ref = lp.minimize(ref, ref.zeros(), method="sketched_adagrad", options=opts)
    res = lp.minimize(fun, fun.zeros(), method="sketched_adagrad", options=opts)
    assert res.nit == 600 and fun.n_calls == 601
    import scipy.optimize

    opt = scipy.optimize.minimize(
        ref.full(), np.zeros(ref.dim), jac=True, method="L-BFGS-B", options={"gtol": 1e-10}
    )
    scale, norm = max(abs(opt.fun), 1.0), np.linalg.norm(opt.x)
    assert fun.full()(res.x)[0] - opt.fun <= 2.5e-3 * scale
    assert ref.full()(res_ref.x)[0] - opt.fun <= 2.5e-3 * scale
    assert np.linalg.norm(res.x - opt.x) <= 0.12 * norm
    assert np.linalg.norm(res.x - res_ref.x) <= 0.15 * norm


def test_predictions_on_dask_rows(rng):
    A, y, info = _load("digits")
    Ad, yd = _dask_data(A, y, 4)
    fun = objective("multinomial", Ad, yd, fit_intercept=True)
    ref = objective("multinomial", A, y, fit_intercept=True)
    w = 0.05 * rng.standard_normal(fun.shape)
    z = fun.linear_predictor(w)
    assert type(z).__module__.startswith("dask")
    np.testing.assert_allclose(z.compute(), ref.linear_predictor(w), atol=1e-12)
    np.testing.assert_allclose(fun.predict(w, A[:5]), ref.predict(w, A[:5]), atol=1e-12)
    assert fun.accuracy(w) == pytest.approx(ref.accuracy(w))
    assert fun.accuracy(w, Ad[:100], y[:100]) == pytest.approx(ref.accuracy(w, A[:100], y[:100]))


def _bad(A, y, **kw):
    return objective("logistic", A, y, **kw)


def test_errors_name_the_argument():
    A, y, info = _load("breast_cancer")
    Ad, yd = _dask_data(A, y, 4)
    with pytest.raises(ValueError, match=r"^A: must be chunked by rows only .*\(15, 15\)"):
        _bad(da.from_array(A, chunks=(150, 15)), yd)
    with pytest.raises(ValueError, match=r"^y: its row chunks \(100, .*A's \(143"):
        _bad(Ad, da.from_array(y, chunks=100))
    with pytest.raises(ValueError, match=r"^sample_weight: its row chunks"):
        _bad(Ad, yd, sample_weight=da.ones(A.shape[0], chunks=100))
    with pytest.raises(ValueError, match=r"^A: the dask array has unknown chunk sizes"):
        _bad(Ad[Ad[:, 0] > 0], yd)
    with pytest.raises(TypeError, match=r"^A: y is a dask array but A is a ndarray"):
        _bad(A, yd)
    with pytest.raises(TypeError, match=r"^A: expected a real floating-point array"):
        _bad(Ad.astype(np.int64), yd)
    with pytest.raises(ValueError, match=r"^A: contains non-finite values"):
        _bad(da.where(Ad > 5.0, np.inf, Ad), yd)
    with pytest.raises(ValueError, match=r"^y: expected shape \(569,\)"):
        _bad(Ad, yd[:-1])
    with pytest.raises(ValueError, match=r"^y: logistic labels"):
        _bad(Ad, yd + 5)
    with pytest.raises(ValueError, match=r"^w: expected shape \(30,\)"):
        _bad(Ad, yd)(np.zeros(31))


def test_glm_does_not_import_dask():
    code = (
        "import sys, numpy as np\n"
        "from lowrank_precond.glm import objective\n"
        "objective('least_squares', np.eye(3), np.ones(3))(np.zeros(3))\n"
        "assert not any(m == 'dask' or m.startswith('dask.') for m in sys.modules), 'dask'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_compare_backend_dask(tmp_path, capsys):
    """``compare --backend dask``: the main job on dask gives NumPy's numbers (full batch),
    and runs on minibatches."""
    pytest.importorskip("sklearn")
    import json

    from lowrank_precond.cli import main

    def run(backend, *extra):
        out = tmp_path / f"{backend}{len(extra)}"
        argv = ["--methods", "adagrad,sketched_adagrad", "--epochs", "2", "--lr-grid", "0.3,1"]
        argv += ["--quiet", "--backend", backend, "--out", str(out), *extra]
        assert main(["compare", *argv]) == 0
        return json.loads((out / "results.json").read_text())

    ref, got = run("numpy"), run("dask")
    assert got["settings"]["backend"] == "dask"
    for r, g in zip(ref["methods"], got["methods"], strict=True):
        assert (g["label"], g["lr"]) == (r["label"], r["lr"])
        assert g["final_loss"] == pytest.approx(r["final_loss"], rel=1e-9, abs=1e-12)
    minibatch = run("dask", "--batch-size", "64")
    assert minibatch["settings"]["batch_size"] == 64
    assert all(math.isfinite(m["final_loss"]) for m in minibatch["methods"])
    capsys.readouterr()
