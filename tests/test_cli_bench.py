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
    rows = run(dims=[300, 2500], ranks=[3], methods=["full_matrix_adagrad", "sketched_adagrad"],
               repeat=1, stream=stream)
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
    assert main(["bench", "--json", "--dims", "500", "--ranks", "2", "--repeat", "1",
                 "--methods", "adagrad,adagram ksl symmetric"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["adagrad", "adagram ksl symmetric"]
    assert {"ms", "floor_ms", "ratio_floor", "ratio_adagrad"} <= set(rows[0])
    assert main(["bench", "--dims", "500", "--ranks", "2", "--repeat", "1",
                 "--methods", "adagrad", "--stream", "repeated"]) == 0
    out = capsys.readouterr().out
    assert "x floor" in out and "gradients: repeated" in out
    assert main(["bench", "--dtypes", "float16", "--dims", "100"]) != 0
    assert len(METHOD_SPECS) >= 8
