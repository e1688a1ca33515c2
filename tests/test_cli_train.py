"""``lowrank-precond train``: the MLP job's JSON, its skips and its errors (tiny configs)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from lowrank_precond.cli import main
from lowrank_precond.glm import datasets

pytest.importorskip("torch")

from lowrank_precond.cli.train import OPTIMIZERS, skip_reason, summarize  # noqa: E402

HAVE_FASHION = os.path.exists(
    os.path.join(datasets.FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")
)
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION,
    reason="Fashion-MNIST needs the Debian package dataset-fashion-mnist "
    "(apt-get install dataset-fashion-mnist)",
)

RUN_KEYS = {
    "label",
    "optimizer",
    "lr",
    "lr_on_grid_edge",
    "tuning",
    "skipped",
    "diverged",
    "final_train_loss",
    "final_test_accuracy",
    "seconds",
    "median_epoch_seconds",
    "history",
}
HISTORY_KEYS = {"epoch", "seconds", "train_loss", "test_loss", "test_accuracy"}


def test_every_torch_class_and_the_torch_baselines_are_listed():
    import lowrank_precond.torch as lpt

    named = {n for n in lpt.__all__ if n != "PreconditionedOptimizer"}
    assert named | {"torch.Adam", "torch.Adagrad"} == set(OPTIMIZERS)


def test_skip_reasons():
    reason = skip_reason("FullMatrixAdaGrad", 101770, 5)
    assert reason.startswith("skipped: its d x d matrix would need 82.9 GB (d = 101770")
    assert skip_reason("FullMatrixAdaGrad", 4000, 5) is None
    assert "AdamGram with a finite rank" in skip_reason("AdamGram", 101770, 5)
    assert skip_reason("SketchedAdaGrad", 101770, 5) is None


def test_summary_equal_epochs_and_equal_time():
    def run(label, seconds, losses):
        hist = {"seconds": seconds, "train_loss": losses}
        return {"label": label, "skipped": None, "diverged": False, "history": hist}

    runs = [run("slow", [0, 5, 10], [2, 1, 0.5]), run("fast", [0, 2, 4], [2, 1.5, 0.9])]
    runs.append({"label": "x", "skipped": "skipped: ...", "diverged": False, "history": None})
    s = summarize(runs)
    assert s["equal_epochs"]["winner"] == "slow"
    assert s["equal_time"]["seconds"] == 4 and s["equal_time"]["winner"] == "fast"
    assert s["equal_time"]["train_loss"] == {"slow": 2, "fast": 0.9}


def test_unknown_optimizer_is_a_usage_error(capsys):
    assert main(["train", "--optimizers", "Adam,Nope"]) == 2
    assert "--optimizers: unknown optimizer 'Nope'" in capsys.readouterr().err


@needs_fashion
@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_train_tiny_writes_the_documented_json(tmp_path):
    out = tmp_path / "res"
    argv = ["train", "--subset", "300", "--hidden", "8", "--epochs", "2", "--batch-size", "100"]
    argv += ["--tune-rows", "100", "--lr-grid", "0.001,0.01", "--threads", "1"]
    argv += ["--optimizers", "Adam,torch.Adam,SketchedAdaGrad,FullMatrixAdaGrad"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res) >= {"lowrank_precond", "dataset", "settings", "runs", "summary"}
    st = res["settings"]
    assert st["parameters"] == 784 * 8 + 8 + 8 * 10 + 10 and st["epochs"] == 2
    assert res["dataset"]["n_train"] == 300 and res["dataset"]["n_test"] == 10000
    runs = {r["label"]: r for r in res["runs"]}
    assert list(runs) == ["Adam", "torch.Adam", "SketchedAdaGrad", "FullMatrixAdaGrad"]
    for r in res["runs"]:
        assert set(r) == RUN_KEYS
    assert runs["FullMatrixAdaGrad"]["skipped"].startswith("skipped: its d x d matrix would")
    for label in ("Adam", "torch.Adam", "SketchedAdaGrad"):
        r = runs[label]
        assert r["skipped"] is None and not r["diverged"] and r["lr"] in (0.001, 0.01)
        assert set(r["history"]) == HISTORY_KEYS and r["history"]["epoch"] == [0, 1, 2]
        assert all(0.0 <= a <= 1.0 for a in r["history"]["test_accuracy"])
        assert r["history"]["seconds"] == sorted(r["history"]["seconds"])
        assert set(r["tuning"]) == {"0.001", "0.01"}
    # the library's Adam is torch.optim.Adam (same init, same minibatches, same lr)
    a, b = runs["Adam"]["history"], runs["torch.Adam"]["history"]
    assert runs["Adam"]["lr"] == runs["torch.Adam"]["lr"]
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert res["summary"]["equal_epochs"]["winner"] in runs
    assert (out / "training.png").stat().st_size > 0
    assert "equal wall time" in (out / "table.txt").read_text()
