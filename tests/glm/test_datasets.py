"""Bundled real data sets: shapes, labels, standardization statistics, splits, errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from lowrank_precond.glm import datasets

EXPECTED = {  # name: (family, n, d, label set or None)
    "breast_cancer": ("logistic", 569, 30, {0, 1}),
    "digits": ("multinomial", 1797, 64, set(range(10))),
    "diabetes": ("least_squares", 442, 10, None),
    "randhie": ("poisson", 20190, 9, None),
    "heart_scale": ("logistic", 270, 13, {0, 1}),
}


def _load(name, **kw):
    try:
        return datasets.load(name, **kw)
    except FileNotFoundError as exc:  # heart_scale needs Debian's liblinear-tools
        assert "apt-get install liblinear-tools" in str(exc)
        pytest.skip(str(exc))


def test_names():
    # the image sets are tested in test_datasets_large.py
    assert datasets.names() == tuple(sorted([*EXPECTED, "mnist", "fashion_mnist"]))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_load_whole_data_set(name):
    fam, n, d, labels = EXPECTED[name]
    A, y, info = _load(name)
    assert A.shape == (n, d) and y.shape == (n,)
    assert A.dtype == np.float64 and np.all(np.isfinite(A)) and np.all(np.isfinite(y))
    assert info["name"] == name and info["family"] == fam
    assert (info["n"], info["d"], info["n_total"]) == (n, d, n)
    assert info["split"] is None and info["stats_from"] == "all" and info["n_train"] is None
    assert info["lam"] == 1.0 / n and info["fit_intercept"] is True
    assert len(info["feature_names"]) == d and isinstance(info["source"], str)
    if labels is not None:
        assert y.dtype == np.int64 and set(np.unique(y).tolist()) == labels
        assert info["n_classes"] == len(labels)
    else:
        assert y.dtype == np.float64 and info["n_classes"] is None
    if fam == "poisson":
        assert np.all(y >= 0) and np.all(y == np.round(y))
        np.testing.assert_allclose(y.mean(), 2.86, atol=0.01)  # mdvis, DATASETS.md
    # standardized with the statistics of all rows
    std = A.std(axis=0)
    constant = info["feature_std"] == 1.0
    np.testing.assert_allclose(A.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(std[std > 0], 1.0, rtol=1e-12)
    assert np.all(std[std == 0] == 0) and np.all(constant[std == 0])
    if name == "digits":
        assert np.sum(std == 0) == 3  # blank pixels: centred only
    if fam == "least_squares":
        np.testing.assert_allclose([y.mean(), y.std()], [0.0, 1.0], atol=1e-12)
        assert info["target_std"] > 0
    else:
        assert info["target_mean"] is None and info["target_std"] is None


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_standardization_inverts_to_raw(name):
    """A = (X - feature_mean) / feature_std with the recorded statistics, X as shipped."""
    X, y_raw, info_raw = _load(name, standardize=False)
    A, y, info = _load(name)
    assert not info_raw["standardized"] and info["standardized"]
    np.testing.assert_allclose(
        A * info["feature_std"] + info["feature_mean"], X, rtol=1e-12, atol=1e-12 * np.abs(X).max()
    )
    np.testing.assert_allclose(info["feature_mean"], X.mean(axis=0), rtol=1e-12, atol=1e-14)
    if info["family"] == "least_squares":
        np.testing.assert_allclose(y * info["target_std"] + info["target_mean"], y_raw, rtol=1e-12)
    else:
        np.testing.assert_array_equal(y, y_raw)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_split_uses_train_statistics(name):
    fam, n, d, labels = EXPECTED[name]
    A_tr, y_tr, info_tr = _load(name, split="train")
    A_te, y_te, info_te = _load(name, split="test")
    X_tr, _, _ = _load(name, split="train", standardize=False)
    X_te, y_te_raw, _ = _load(name, split="test", standardize=False)
    n_test = round(0.2 * n)
    assert A_te.shape == (n_test, d) and A_tr.shape == (n - n_test, d)
    assert info_tr["n_train"] == info_te["n_train"] == n - n_test
    assert info_tr["n_test"] == n_test and info_tr["stats_from"] == "train"
    assert info_tr["lam"] == info_te["lam"] == 1.0 / (n - n_test)
    # mean ~0, std ~1 on the train part; the test part is transformed with those statistics
    std = A_tr.std(axis=0)
    np.testing.assert_allclose(A_tr.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(std[std > 0], 1.0, rtol=1e-12)
    np.testing.assert_array_equal(info_te["feature_mean"], info_tr["feature_mean"])
    np.testing.assert_array_equal(info_te["feature_std"], info_tr["feature_std"])
    np.testing.assert_allclose(info_tr["feature_mean"], X_tr.mean(axis=0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        A_te * info_tr["feature_std"] + info_tr["feature_mean"],
        X_te,
        rtol=1e-12,
        atol=1e-12 * np.abs(X_te).max(),
    )
    assert not np.allclose(A_te.mean(axis=0), 0.0, atol=1e-12)  # test stats were not used
    if fam == "least_squares":
        np.testing.assert_allclose([y_tr.mean(), y_tr.std()], [0.0, 1.0], atol=1e-12)
        np.testing.assert_allclose(
            y_te * info_tr["target_std"] + info_tr["target_mean"], y_te_raw, rtol=1e-12
        )
        assert info_te["target_mean"] == info_tr["target_mean"]
    if labels is not None:  # stratified: class shares within one row of the exact quota
        _, y_all, _ = _load(name)
        for c in labels:
            assert abs(np.sum(y_te == c) - 0.2 * np.sum(y_all == c)) <= 1.0
    # the parts partition the rows: together they are the whole data set, row for row
    X_all, y_all, _ = _load(name, standardize=False)
    tr, te = datasets.split_indices(y_all, test_fraction=0.2, seed=0, stratify=labels is not None)
    np.testing.assert_array_equal(X_all[tr], X_tr)
    np.testing.assert_array_equal(X_all[te], X_te)


def test_split_is_deterministic_and_seeded():
    a = datasets.load("diabetes", split="test", seed=3)
    b = datasets.load("diabetes", split="test", seed=3)
    c = datasets.load("diabetes", split="test", seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    A_tr, y_tr, info = datasets.load("breast_cancer", split="train", test_fraction=0.5)
    assert info["n_train"] == 569 - 284 and info["test_fraction"] == 0.5


def test_split_indices_and_train_test_split():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    for stratify in (False, True):
        tr, te = datasets.split_indices(y, test_fraction=0.25, seed=1, stratify=stratify)
        assert len(te) == 25 and len(tr) == 75
        assert np.array_equal(np.sort(np.r_[tr, te]), np.arange(100))
        assert np.all(np.diff(tr) > 0) and np.all(np.diff(te) > 0)
    tr, te = datasets.split_indices(y, test_fraction=0.25, seed=1, stratify=True)
    assert np.bincount(y[te]).tolist() == [13, 7, 5]  # quotas 12.5, 7.5, 5: tie -> class 0
    y2 = np.repeat([0, 1, 2], [45, 35, 20])
    _, te2 = datasets.split_indices(y2, test_fraction=0.25, seed=1, stratify=True)
    assert np.bincount(y2[te2]).tolist() == [11, 9, 5]  # 11.25, 8.75, 5: largest remainder
    A = np.arange(200.0).reshape(100, 2)
    A_tr, A_te, y_tr, y_te = datasets.train_test_split(
        A, y, test_fraction=0.25, seed=1, stratify=True
    )
    np.testing.assert_array_equal(A_te, A[te])
    np.testing.assert_array_equal(y_tr, y[tr])
    with pytest.raises(ValueError, match="test_fraction"):
        datasets.split_indices(y, test_fraction=1.0)
    with pytest.raises(ValueError, match="test_fraction"):
        datasets.split_indices(y[:2], test_fraction=0.1)
    with pytest.raises(TypeError, match="seed"):
        datasets.split_indices(y, seed=0.5)
    with pytest.raises(ValueError, match="A"):
        datasets.train_test_split(A[:10], y)


def test_float32_and_errors():
    A, y, _ = datasets.load("diabetes", dtype=np.float32)
    assert A.dtype == np.float32 and y.dtype == np.float32
    A, y, _ = datasets.load("digits", dtype="float32")
    assert A.dtype == np.float32 and y.dtype == np.int64
    with pytest.raises(
        ValueError,
        match=r"name: unknown data set 'cifar10'.*'breast_cancer'.*"
        r"'randhie'",
    ):
        datasets.load("cifar10")
    with pytest.raises(ValueError, match="split"):
        datasets.load("digits", split="validation")
    with pytest.raises(ValueError, match="dtype"):
        datasets.load("digits", dtype=np.int32)


def test_missing_optional_packages_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'lowrank-precond\[data\]'"):
        datasets.load("breast_cancer")
    monkeypatch.setitem(sys.modules, "statsmodels", None)
    monkeypatch.setitem(sys.modules, "statsmodels.datasets", None)
    monkeypatch.setitem(sys.modules, "statsmodels.datasets.randhie", None)
    with pytest.raises(ImportError, match=r"statsmodels.*lowrank-precond\[data\]"):
        datasets.load("randhie")


def test_heart_scale_reader_and_missing_file(monkeypatch, tmp_path):
    """The LIBSVM reader on a small file of heart_scale's format; the message when absent."""
    monkeypatch.setattr(datasets, "HEART_SCALE_PATH", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="apt-get install liblinear-tools"):
        datasets.load("heart_scale")
    lines = [
        "+1 1:0.708333 2:1 3:1 4:-0.320755 13:-1",
        "-1 1:0.583333 2:-1 5:0.5 12:-1",
        "+1 1:0.166667 2:1 3:-0.333333 13:1",
        "-1 1:0.458333 2:1 3:1 4:-0.358491",
        "-1 2:1 6:1 7:-1",
    ]
    path = tmp_path / "heart_scale"
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(datasets, "HEART_SCALE_PATH", str(path))
    A, y, info = datasets.load("heart_scale", standardize=False)
    assert A.shape == (5, 13) and y.tolist() == [1, 0, 1, 0, 0] and y.dtype == np.int64
    assert A[0, 0] == 0.708333 and A[0, 12] == -1.0 and A[1, 4] == 0.5 and A[4, 0] == 0.0
    assert info["family"] == "logistic" and info["n_classes"] == 2
