"""``lowrank-precond compare``: outputs, their numbers, and one-line errors with exit code 2."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest

from lowrank_precond.cli import main
from lowrank_precond.cli.compare import DEFAULT_METHODS, QUICK_EPOCHS, QUICK_LR_GRID, TOLERANCES

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None,
    reason="scikit-learn not installed: pip install 'lowrank-precond[data]'",
)


def _no_nan(text):
    raise ValueError(f"results.json contains {text}")


def load_results(path):
    """Parse results.json, refusing NaN/Infinity; check every number is finite."""
    data = json.loads(path.read_text(), parse_constant=_no_nan)

    def walk(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)
        elif isinstance(obj, float):
            assert math.isfinite(obj)

    walk(data)
    return data


def check_method_numbers(results):
    """The derived numbers agree with the recorded history."""
    f_star = results["reference"]["f_star_used"]
    scale = max(abs(f_star), 1.0)
    assert f_star <= results["reference"]["f_star"]
    for m in results["methods"]:
        if m["diverged"]:
            continue
        h = m["history"]
        assert min(h["loss"]) >= f_star
        for f, s, r in zip(h["loss"], h["subopt"], h["rel_subopt"], strict=True):
            assert s == f - f_star and r == s / scale
        for tol in TOLERANCES:
            hits = [st for st, r in zip(h["steps"], h["rel_subopt"], strict=True) if r <= tol]
            assert m["steps_to"][f"{tol:g}"] == (hits[0] if hits else None)
        finals = [g["final_loss"] for g in m["grid"] if g["final_loss"] is not None]
        assert m["final_loss"] == min(finals)
        assert m["seconds"] == h["seconds"][-1] and h["seconds"] == sorted(h["seconds"])


def test_quick_writes_table_json_and_png(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["compare", "--quick", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    for label in DEFAULT_METHODS:
        assert label in stdout
    table = (out / "table.txt").read_text()
    assert table.strip() and table.strip() in stdout
    png = (out / "suboptimality.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000

    results = load_results(out / "results.json")
    assert [m["label"] for m in results["methods"]] == list(DEFAULT_METHODS)
    assert results["settings"]["epochs"] == QUICK_EPOCHS
    assert results["settings"]["lr_grid"] == list(QUICK_LR_GRID)
    assert results["dataset"]["name"] == "breast_cancer"
    assert results["test_metric"] == "accuracy"
    assert results["plot"] == "suboptimality.png"
    for m in results["methods"]:
        assert len(m["grid"]) == len(QUICK_LR_GRID)
        if not m["diverged"]:
            assert m["lr"] in QUICK_LR_GRID
            assert len(m["history"]["loss"]) == QUICK_EPOCHS + 1
            assert 0.0 <= m["final_test"] <= 1.0
    check_method_numbers(results)
    # the default adagram is KSL, rank 5, published direction
    adagram = results["methods"][0]
    assert adagram["options"] == {
        "integrator": "projector_splitting",
        "direction": "published",
        "rank": 5,
    }


def test_steps_to_tolerances_when_reached(tmp_path):
    # least squares with full-matrix AdaGrad reaches 1e-6 within 60 steps at lr = 1
    out = tmp_path / "reach"
    argv = [
        "compare",
        "--dataset",
        "diabetes",
        "--methods",
        "full_matrix_adagrad,adagrad",
        "--lr-grid",
        "1",
        "--epochs",
        "60",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    results = load_results(out / "results.json")
    full = results["methods"][0]
    steps = [full["steps_to"][f"{tol:g}"] for tol in TOLERANCES]
    assert all(s is not None for s in steps) and steps == sorted(steps)
    assert all(full["seconds_to"][f"{tol:g}"] is not None for tol in TOLERANCES)
    check_method_numbers(results)


def test_minibatch_regression_and_method_options(tmp_path, capsys):
    out = tmp_path / "mb"
    argv = [
        "compare",
        "--dataset",
        "diabetes",
        "--methods",
        "adagrad,adam:betas=(0.5,0.9)",
        "--batch-size",
        "64",
        "--epochs",
        "3",
        "--lr-grid",
        "0.03,0.3",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    results = load_results(out / "results.json")
    spe = results["settings"]["steps_per_epoch"]
    assert spe == math.ceil(results["dataset"]["n_train"] / 64)
    assert results["test_metric"] == "loss"
    adam = results["methods"][1]
    assert adam["options"] == {"betas": [0.5, 0.9]}
    assert "betas=(0.5, 0.9)" in adam["preconditioner"]
    for m in results["methods"]:
        assert m["history"]["steps"] == [k * spe for k in range(4)]
    check_method_numbers(results)


def test_grid_edge_and_divergence_are_reported(tmp_path, capsys):
    out = tmp_path / "edge"
    # 1e6: the loss explodes (caught by the divergence threshold); 1e300: the first step
    # overflows the loss to inf (minimize stops the run with status 3)
    argv = [
        "compare",
        "--methods",
        "adam",
        "--lr-grid",
        "1e-6,1e-5,1e6,1e300",
        "--epochs",
        "5",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "edge of the grid" not in captured.out
    assert "Warning" not in captured.err
    (adam,) = load_results(out / "results.json")["methods"]
    assert adam["lr"] == 1e-5 and adam["lr_on_grid_edge"] is False
    big, huge = [g for g in adam["grid"] if g["lr"] >= 1e6]
    assert big["diverged"] and big["final_loss"] is None and big["status"] == 99
    assert huge["diverged"] and huge["final_loss"] is None and huge["status"] == 3

    out2 = tmp_path / "edge2"
    assert (
        main(
            [
                "compare",
                "--methods",
                "adam",
                "--lr-grid",
                "1e-6,1e-5",
                "--epochs",
                "5",
                "--out",
                str(out2),
            ]
        )
        == 0
    )
    assert "edge of the grid" in capsys.readouterr().out
    (adam,) = load_results(out2 / "results.json")["methods"]
    assert adam["lr"] == 1e-5 and adam["lr_on_grid_edge"] is True


def test_missing_matplotlib_skips_only_the_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "noplot"
    argv = [
        "compare",
        "--methods",
        "adagrad",
        "--epochs",
        "2",
        "--lr-grid",
        "0.1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert [line for line in stdout.splitlines() if "plot skipped" in line] == [
        "plot skipped: matplotlib is not installed (pip install 'lowrank-precond[plot]')"
    ]
    assert not (out / "suboptimality.png").exists()
    assert load_results(out / "results.json")["plot"] is None
    assert (out / "table.txt").exists()


def test_torch_backend(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "torch"
    argv = [
        "compare",
        "--backend",
        "torch",
        "--methods",
        "adagrad,full_matrix_adagrad",
        "--epochs",
        "3",
        "--lr-grid",
        "0.1,1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    results = load_results(out / "results.json")
    assert results["settings"]["backend"] == "torch"
    check_method_numbers(results)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--dataset", "mnist"], "--dataset"),
        (["--methods", "adagrad,lbfgs"], "--methods"),
        (["--methods", "adagrad:rank=3"], "--methods"),
        (["--methods", "adagram:direction=sideways"], "--methods"),
        (["--methods", "adagrad,,adam"], "--methods"),
        (["--backend", "jax"], "--backend"),
        (["--lr-grid", "0.1,0"], "--lr-grid"),
        (["--lr-grid", "-1"], "--lr-grid"),
        (["--lr-grid", "fast"], "--lr-grid"),
        (["--rank", "0"], "--rank"),
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "ten"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "100000"], "--batch-size"),
        (["--lam", "-1"], "--lam"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, flag):
    code = main(["compare", *argv, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lowrank-precond compare: error: ") and flag in lines[0]
    assert not (tmp_path / "x").exists()
