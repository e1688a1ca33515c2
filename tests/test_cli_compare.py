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
        (["--dataset", "cifar10"], "--dataset"),
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


# --------------------------------------------------------------------------- --out


SMALL = ["--methods", "adagrad", "--epochs", "2", "--lr-grid", "0.1", "--quiet"]


def _no_computation(monkeypatch):
    """Make any computation fail the test: the reference optimum is the first thing run."""
    import lowrank_precond.cli.compare as cmp

    def computed(*args, **kwargs):
        raise AssertionError("compare computed before checking --out")

    monkeypatch.setattr(cmp, "reference_optimum", computed)


def _one_error_line(err, flag):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lowrank-precond compare: error: ") and flag in lines[0]
    return lines[0]


def test_out_below_a_file_fails_before_computing(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _no_computation(monkeypatch)
    code = main(["compare", *SMALL, "--out", str(blocker / "results")])
    assert code == 2
    line = _one_error_line(capsys.readouterr().err, "--out")
    assert "cannot create" in line


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="/proc/self is an unwritable folder on Linux only"
)
def test_unwritable_out_fails_before_computing(capsys, monkeypatch):
    # /proc/self exists and is a folder, but no file can be created in it, not even by root
    _no_computation(monkeypatch)
    assert main(["compare", *SMALL, "--out", "/proc/self"]) == 2
    line = _one_error_line(capsys.readouterr().err, "--out")
    assert "cannot write" in line


def test_missing_out_is_created(tmp_path):
    out = tmp_path / "a" / "b"
    assert main(["compare", *SMALL, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "results.json",
        "suboptimality.png",
        "table.txt",
    ]


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_failed_write_keeps_previous_results(tmp_path, capsys, monkeypatch):
    import lowrank_precond.cli.compare as cmp

    out = tmp_path / "res"
    assert main(["compare", *SMALL, "--out", str(out)]) == 0
    before = _snapshot(out)

    def disk_full(obj):  # called after the table and the plot are written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cmp, "_jsonable", disk_full)
    capsys.readouterr()
    assert main(["compare", *SMALL, "--epochs", "3", "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, "--out")
    assert _snapshot(out) == before  # no new table or plot next to the old JSON, no temp file


def test_interrupt_while_writing_keeps_previous_results(tmp_path, capsys, monkeypatch):
    import lowrank_precond.cli.compare as cmp

    out = tmp_path / "res"
    assert main(["compare", *SMALL, "--out", str(out)]) == 0
    before = _snapshot(out)

    def interrupted(obj):
        raise KeyboardInterrupt

    monkeypatch.setattr(cmp, "_jsonable", interrupted)
    try:
        code = main(["compare", *SMALL, "--epochs", "3", "--out", str(out)])
    except KeyboardInterrupt:
        code = "KeyboardInterrupt escaped main"
    assert code == 130
    assert capsys.readouterr().err.strip() == "lowrank-precond compare: interrupted"
    assert _snapshot(out) == before


@pytest.mark.skipif(
    __import__("threading").current_thread() is not __import__("threading").main_thread(),
    reason="signal handlers can only be installed from the main thread",
)
def test_interrupt_during_the_renames_is_held_until_all_are_done(tmp_path, monkeypatch):
    import os
    import signal

    import lowrank_precond.cli.compare as cmp

    out = tmp_path / "res"
    assert main(["compare", *SMALL, "--out", str(out)]) == 0
    real_replace = os.replace
    calls = []

    def replace_after_ctrl_c(src, dst):
        if not calls:
            signal.raise_signal(signal.SIGINT)
        calls.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(cmp.os, "replace", replace_after_ctrl_c)
    try:
        code = main(["compare", *SMALL, "--epochs", "3", "--out", str(out)])
    except KeyboardInterrupt:
        code = "KeyboardInterrupt escaped main"
    monkeypatch.undo()
    assert code == 130 and len(calls) == 3
    # all three files are the new run's
    results = load_results(out / "results.json")
    assert results["settings"]["epochs"] == 3
    assert "3 epochs" in (out / "table.txt").read_text()
    assert sorted(p.name for p in out.iterdir()) == [
        "results.json",
        "suboptimality.png",
        "table.txt",
    ]


def test_rerun_says_it_replaces_and_drops_a_stale_plot(tmp_path, capsys, monkeypatch):
    out = tmp_path / "res"
    assert main(["compare", *SMALL, "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "replaced" not in first
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # this run makes no plot
    assert main(["compare", *SMALL, "--epochs", "3", "--out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "replaced" in line]
    assert lines == [
        f"replaced the results of an earlier run in {out}: "
        "table.txt, suboptimality.png, results.json"
    ]
    # the old plot would show other numbers than the new results: it is gone
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "table.txt"]
    assert load_results(out / "results.json")["plot"] is None


# --------------------------------------------------------------------------- --methods keys


def test_lr_in_a_method_entry_fixes_its_rate(tmp_path, capsys):
    out = tmp_path / "fixed"
    argv = ["compare", "--methods", "adagrad:lr=0.5,adam", "--lr-grid", "0.01,0.1"]
    assert main([*argv, "--epochs", "3", "--out", str(out), "--quiet"]) == 0
    stdout = capsys.readouterr().out
    adagrad, adam = load_results(out / "results.json")["methods"]
    assert adagrad["lr"] == 0.5 and adagrad["lr_fixed"] is True
    assert [g["lr"] for g in adagrad["grid"]] == [0.5]  # one run, not tuned
    assert adagrad["lr_on_grid_edge"] is False and adagrad["options"] == {}
    assert adam["lr_fixed"] is False and [g["lr"] for g in adam["grid"]] == [0.01, 0.1]
    assert "0.5 fixed" in stdout and "fixed: lr set in --methods" in stdout


def test_weight_decay_in_a_method_entry_is_used(tmp_path):
    out = tmp_path / "wd"
    argv = ["compare", "--methods", "adagrad,adagrad:weight_decay=1", "--lr-grid", "0.1"]
    assert main([*argv, "--epochs", "5", "--out", str(out), "--quiet"]) == 0
    plain, decayed = load_results(out / "results.json")["methods"]
    assert decayed["options"] == {"weight_decay": 1}
    assert decayed["history"]["loss"][1:] != plain["history"]["loss"][1:]


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("adagrad:maxiter=5", "--epochs"),
        ("adagrad:gtol=1e-3", "--epochs"),
        ("adagrad:ftol=1e-3", "--epochs"),
        ("adagrad:lr=0.1:lr=0.2", "given twice"),
        ("adagrad:lr=-1", "lr"),
        ("adagrad:lr=0", "lr"),
        ("adagrad:lr=nan", "lr"),
        ("adagrad:lr=1e999", "lr"),
        ("adagrad:lr=fast", "lr"),
    ],
)
def test_method_keys_compare_sets_itself_are_rejected(tmp_path, capsys, monkeypatch, entry, says):
    _no_computation(monkeypatch)
    code = main(["compare", "--methods", entry, "--out", str(tmp_path / "x")])
    assert code == 2
    line = _one_error_line(capsys.readouterr().err, "--methods")
    assert says in line
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- default methods


def _specs(*argv):
    from lowrank_precond.cli import build_parser
    from lowrank_precond.cli.compare import _settings

    return _settings(build_parser().parse_args(["compare", *argv]))["specs"]


def test_default_methods_include_the_recommended_sketches():
    specs = {s.label: s for s in _specs()}
    assert list(specs) == list(DEFAULT_METHODS)
    sketches = [s for s in specs.values() if s.method == "sketched_adagrad"]
    assert sorted(s.options["rank"] for s in sketches if "betas" not in s.options) == [1, 2, 5]
    (momentum,) = [s for s in sketches if "betas" in s.options]
    assert momentum.options["betas"] == (0.9, 0.0)
    assert all(s.lr is None for s in specs.values())  # every default method is tuned


def test_default_methods_drop_a_repeat_made_by_rank():
    labels = [s.label for s in _specs("--rank", "2")]
    assert "sketched_adagrad" in labels and "sketched_adagrad:rank=2" not in labels
    assert len(labels) == len(DEFAULT_METHODS) - 1
    # an explicit list is run as given
    labels = [s.label for s in _specs("--rank", "2", "--methods", "adagrad,adam")]
    assert labels == ["adagrad", "adam"]


def test_help_documents_the_method_keys_and_out(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # unwrap argparse's line breaks
    assert "lr=V (fixes that method's learning rate" in text
    assert "maxiter, gtol and ftol are rejected" in text
    assert "checked to be writable before anything is computed" in text
    assert "sketched_adagrad:rank=1" in text and "sketched_adagrad_momentum" in text
