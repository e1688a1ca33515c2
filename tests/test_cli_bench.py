"""``lowrank-precond bench`` (lowrank_precond.cli.bench): the table, JSON rows and errors.

Speed is never asserted; these tests check what the command measures and reports.
"""

import json

import pytest

from lowrank_precond.cli import main
from lowrank_precond.cli.bench import METHOD_SPECS, run


def test_run_rows_and_ratios():
    rows = run(dims=[600], ranks=[2], methods=["adagrad", "adagram ksl published"], repeat=2)
    assert [r.method for r in rows] == ["adagrad", "adagram ksl published"]
    for r in rows:
        assert (r.d, r.rank, r.backend, r.dtype) == (600, 2, "numpy", "float64")
        assert r.ms > 0 and r.floor_ms > 0
        assert r.ratio_floor == pytest.approx(r.ms / r.floor_ms)
    assert rows[0].ratio_adagrad == pytest.approx(1.0)
    assert rows[1].ratio_adagrad == pytest.approx(rows[1].ms / rows[0].ms)


@pytest.mark.parametrize("stream", ["distinct", "repeated"])
def test_streams_and_dense_baseline_cap(stream):
    rows = run(
        dims=[300, 2500],
        ranks=[3],
        methods=["full_matrix_adagrad", "sketched_adagrad"],
        repeat=1,
        stream=stream,
    )
    dense = [r for r in rows if r.method == "full_matrix_adagrad"]
    assert [r.d for r in dense] == [300]  # skipped above its max_dim
    assert {r.d for r in rows if r.method == "sketched_adagrad"} == {300, 2500}


def test_bad_arguments():
    with pytest.raises(ValueError, match="stream"):
        run(dims=[100], methods=["adagrad"], stream="cycled")
    with pytest.raises(ValueError, match="methods"):
        run(dims=[100], methods=["nope"])
    with pytest.raises(ValueError, match="ranks"):
        run(dims=[4], ranks=[5], methods=["adagrad"])


def test_cli_json_and_table(capsys):
    assert (
        main(
            [
                "bench",
                "--json",
                "--dims",
                "500",
                "--ranks",
                "2",
                "--repeat",
                "1",
                "--methods",
                "adagrad,adagram ksl symmetric",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["adagrad", "adagram ksl symmetric"]
    assert {"ms", "floor_ms", "ratio_floor", "ratio_adagrad"} <= set(rows[0])
    assert (
        main(
            [
                "bench",
                "--dims",
                "500",
                "--ranks",
                "2",
                "--repeat",
                "1",
                "--methods",
                "adagrad",
                "--stream",
                "repeated",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "x floor" in out and "gradients: repeated" in out
    assert main(["bench", "--dtypes", "float16", "--dims", "100"]) != 0
    assert len(METHOD_SPECS) >= 8


def _bench_error(capsys, argv):
    """Run ``bench argv``; return its exit code and the error line (no traceback)."""
    try:
        code = main(["bench", "--methods", "adagrad", "--repeat", "1", *argv])
    except SystemExit as exc:  # argparse's parser.error
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("lowrank-precond bench: error: "), err
    return code, last


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--dims", "inf"], "--dims"),
        (["--dims", "1e13"], "--dims"),  # an integer, but no machine holds its arrays
        (["--dims", "1.7"], "--dims"),
        (["--dims", "nan"], "--dims"),
        (["--dims", "0"], "--dims"),
        (["--dims", "-5"], "--dims"),
        (["--dims", ""], "--dims"),
        (["--dims", "100", "--ranks", "1e400"], "--ranks"),
        (["--dims", "100", "--ranks", "2.5"], "--ranks"),
        (["--dims", "100", "--ranks", "-1"], "--ranks"),
        (["--dims", "100", "--ranks", "200"], "--ranks"),
        (["--dims", "100", "--repeat", "0"], "--repeat"),
        (["--dims", "100", "--repeat", "nan"], "--repeat"),
        (["--dims", "100", "--repeat", "1e15"], "--repeat"),  # a gradient per timed call
        (["--dims", "100", "--dtypes", ""], "--dtypes"),
        (["--dims", "100", "--threads", "0"], "--threads"),
        (["--dims", "100", "--device", "cuda"], "--device"),  # NumPy has no CUDA device
    ],
)
def test_bad_numbers_and_devices_are_one_error_line(capsys, argv, says):
    code, line = _bench_error(capsys, argv)
    assert code == 2 and says in line


def test_torch_cuda_without_cuda_is_one_error_line(capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, line = _bench_error(capsys, ["--backend", "torch", "--device", "cuda", "--dims", "100"])
    assert code == 2 and "--device" in line and "CUDA is not available" in line
    code, line = _bench_error(capsys, ["--backend", "torch", "--device", "gpu9", "--dims", "100"])
    assert code == 2 and "--device" in line


def test_scientific_integers_are_accepted(capsys):
    assert main("bench --json --dims 1e3 --ranks 2 --repeat 1 --methods adagrad".split()) == 0
    assert [r["d"] for r in json.loads(capsys.readouterr().out)] == [1000]


def test_run_checks_every_size_before_timing_any(monkeypatch):
    import lowrank_precond.cli.bench as bench

    def timed(*args, **kwargs):
        raise AssertionError("a cell was timed before the sizes were checked")

    monkeypatch.setattr(bench, "_time_method", timed)
    with pytest.raises(ValueError, match="ranks"):
        run(dims=[100, 4], ranks=[5], methods=["adagrad"])
    with pytest.raises(TypeError, match="dims"):
        run(dims=[1.7], methods=["adagrad"])
    with pytest.raises(ValueError, match="repeat"):
        run(dims=[100], methods=["adagrad"], repeat=0)
    with pytest.raises(ValueError, match="dims"):
        run(dims=[10**13], methods=["adagrad"])


def test_each_ratio_uses_the_floor_of_the_state_dtype():
    """A float32 parameter with float64 factors (the default) is compared with the float64
    floor; with float32 factors, with the float32 floor (both measured in the cell)."""
    rows = run(
        dims=[400],
        ranks=[2],
        dtypes=["float32"],
        methods=["adagram ksl published", "adagram ksl published float32 factors", "adagrad"],
        repeat=2,
    )
    by = {r.method: r for r in rows}
    assert by["adagram ksl published"].state_dtype == "float64"
    assert by["adagram ksl published float32 factors"].state_dtype == "float32"
    assert by["adagrad"].state_dtype == "float32"
    assert by["adagrad"].floor_ms == by["adagram ksl published float32 factors"].floor_ms
    for r in rows:
        assert r.dtype == "float32" and r.timed == "update"
        assert r.ratio_floor == pytest.approx(r.ms / r.floor_ms)


def test_published_rows_time_the_published_direction():
    specs = {s.label: s for s in METHOD_SPECS}
    for label, spec in specs.items():
        if "published" in label:
            assert spec.kwargs["direction"] == "published", label
        if "symmetric" in label:
            assert spec.kwargs["direction"] == "symmetric", label


def test_torch_backend_also_times_the_optimizer_step():
    pytest.importorskip("torch", reason="torch not installed: pip install 'lowrank-precond[torch]'")
    rows = run(
        backend="torch",
        dims=[300],
        ranks=[2],
        methods=["adagrad", "sketched_adagrad"],
        repeat=1,
    )
    kinds = {(r.method, r.timed) for r in rows}
    assert kinds == {
        (m, t) for m in ("adagrad", "sketched_adagrad") for t in ("update", "optimizer.step")
    }
    for r in rows:
        assert r.state_dtype == "float64" and r.ms > 0 and r.floor_ms > 0
        base = next(b for b in rows if b.method == "adagrad" and b.timed == r.timed)
        assert r.ratio_adagrad == pytest.approx(r.ms / base.ms)


def test_threads_hold_while_timing_and_are_restored(monkeypatch):
    """``threads``: the floor and every method are timed with that many BLAS (and torch)
    threads; the process's settings come back afterwards, also when the run fails."""
    torch = pytest.importorskip("torch", reason="torch not installed")
    from threadpoolctl import threadpool_info

    import lowrank_precond.cli.bench as bench

    seen = []
    real = bench._floor_fn

    def spy(*args, **kwargs):
        blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
        seen.append((torch.get_num_threads(), blas))
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "_floor_fn", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run(backend="torch", dims=[200], ranks=[2], methods=["adagrad"], repeat=1)
        assert seen and all(t == 1 and set(b) <= {1} for t, b in seen)
        assert torch.get_num_threads() == 2
        seen.clear()
        run(backend="torch", dims=[200], ranks=[2], methods=["adagrad"], repeat=1, threads=None)
        assert seen and all(t == 2 for t, _ in seen)
        monkeypatch.setattr(bench, "_floor_fn", lambda *a, **k: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            run(backend="torch", dims=[200], ranks=[2], methods=["adagrad"], repeat=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_bad_threads():
    with pytest.raises(ValueError, match="threads"):
        run(dims=[100], methods=["adagrad"], threads=0)
    with pytest.raises(TypeError, match="threads"):
        run(dims=[100], methods=["adagrad"], threads=1.5)
