"""``lowrank-precond compare``: fit a GLM on bundled real data with every method.

For each method the learning rate is tuned on a log grid (every grid point is a full run; the
winner is the run with the smallest final full-batch training loss), unless its ``--methods``
entry fixes one (``adam:lr=0.01``: one run, not tuned), and the winner's run is reported: per
epoch the training loss ``f``, the gradient norm, the suboptimality ``f - f*``, the test
accuracy (classification) or test loss (regression) and the optimizer's wall time
(evaluations for the record excluded).

Definitions (also written into ``results.json``)
------------------------------------------------
``f*``
    The training objective's minimum: ``scipy.optimize.minimize(method="L-BFGS-B")`` on the
    full-batch objective (``gtol=1e-10``, ``ftol=1e-15``), lowered to the smallest loss any
    run recorded if one went below it (so ``f - f* >= 0``).
relative suboptimality
    ``(f - f*) / max(|f*|, 1)``.
steps to ``tol``
    The optimizer steps (``epoch * steps_per_epoch``) at the first recorded epoch whose
    relative suboptimality is ``<= tol``; ``null`` / ``-`` when never reached.

The image data sets (``mnist``, ``fashion_mnist``) train on minibatches by default
(``--batch-size 500``, ``--epochs 5``, lr grid 1e-3 ... 1 in decades). ``--features N`` maps
the standardized inputs through ``N`` seeded random Fourier features
(:class:`lowrank_precond.glm.features.RandomFourierFeatures`, projection drawn from ``--seed``),
which makes ``K (N + 1)`` unknowns (200010 for Fashion-MNIST with ``N = 20000``); its defaults
are ``--batch-size 1000``, ``--epochs 2``, lr grid 0.01, 0.1, 1 and the methods adagram,
sketched_adagrad, adagrad, adam and full_matrix_adagrad (``--methods`` to change). Those
features are never stored: each minibatch's are computed when it is drawn, and every
(method, lr) run steps on it in lockstep (the same minibatch sequence each run would see
alone); the full training objective and the test accuracy are evaluated at the end of each
epoch in chunks. ``f*`` is then the smallest full training loss any run recorded (L-BFGS-B
would need hundreds of passes over the data), so ``f - f*`` is measured against the best run,
not against the optimum; the seconds of a run are the seconds it would take alone (the
computation of the minibatch's features, its gradient and its step; the evaluations for the
record excluded). Dense full-matrix AdaGrad is skipped, with the reason (the GB its
``d x d`` matrix would need), whenever the unknowns exceed its ``max_dim`` (4096).

Outputs, in ``--out`` (default ``./lowrank_precond_results``): the table on stdout and in
``table.txt``, ``results.json`` (every number finite, ``null`` for "never reached" or
"diverged") and ``suboptimality.png`` (``f - f*`` on a log scale against epochs and seconds;
needs the ``plot`` extra, matplotlib: without it the plot is skipped with one line). The folder
is created, and checked to be writable, before anything is computed. The files are written
under temporary names in that folder and renamed into place together at the end, so an
interrupted run leaves the previous results untouched (a result set is never half old, half
new; a plot left from an earlier run is removed when this run makes none).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import json
import math
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.optimize
from tqdm import tqdm

from lowrank_precond import __version__, backends
from lowrank_precond import preconditioners as pc
from lowrank_precond.backends import all_finite
from lowrank_precond.cli import UsageError
from lowrank_precond.glm import datasets, family, objective
from lowrank_precond.glm.features import FeatureObjective, RandomFourierFeatures
from lowrank_precond.optim.scipy import minimize, resolve_options
from lowrank_precond.preconditioners.compose import (
    add_decayed_weights,
    apply_updates,
    chain,
    scale_by,
    scale_by_learning_rate,
)
from lowrank_precond.preconditioners.full import DEFAULT_MAX_DIM

__all__ = [
    "ALIASES",
    "CONTROLLED_OPTIONS",
    "DEFAULT_METHODS",
    "TOLERANCES",
    "MethodSpec",
    "add_parser",
    "compare",
    "parse_methods",
    "run",
]

#: short names for method variants: label -> (method, options)
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "adagram": ("adagram", {"integrator": "projector_splitting", "direction": "published"}),
    "adagram_sym": ("adagram", {"integrator": "projector_splitting", "direction": "symmetric"}),
    "sketched_adagrad_momentum": ("sketched_adagrad", {"betas": (0.9, 0.0)}),
}

#: the methods compared when ``--methods`` is not given: the library's recommended
#: configurations (the sketch at ``--rank`` and at ranks 1 and 2, and with momentum) next to
#: AdaGram (both directions), the diagonal baselines and dense full-matrix AdaGrad
DEFAULT_METHODS = (
    "adagram",
    "adagram_sym",
    "sketched_adagrad",
    "sketched_adagrad:rank=1",
    "sketched_adagrad:rank=2",
    "sketched_adagrad_momentum",
    "adagrad",
    "adam",
    "full_matrix_adagrad",
)

#: driver options of :func:`lowrank_precond.minimize` that ``compare`` sets itself for every
#: run, with the reason given when a ``--methods`` entry sets one
CONTROLLED_OPTIONS: dict[str, str] = {
    "maxiter": "compare runs every method for the same number of steps: use --epochs",
    "gtol": "compare runs every method for exactly --epochs epochs (no early stop)",
    "ftol": "compare runs every method for exactly --epochs epochs (no early stop)",
}

#: relative suboptimality levels of the "steps to" columns
TOLERANCES = (1e-3, 1e-4, 1e-6)

DEFAULT_DATASET = "breast_cancer"
DEFAULT_OUT = "lowrank_precond_results"
DEFAULT_RANK = 5
#: default epochs: full batch / minibatch (``--batch-size``)
DEFAULT_EPOCHS = (200, 30)
#: 10**-3 ... 10**1 in half decades
DEFAULT_LR_GRID = tuple(float(10.0 ** (k / 2)) for k in range(-6, 3))
QUICK_EPOCHS = 20
QUICK_LR_GRID = (0.01, 0.1, 1.0)
BACKEND_CHOICES = ("numpy", "torch", "cupy", "dask")
#: ``--backend dask``: the data as dask arrays in this many row blocks (weights on NumPy)
DASK_BLOCKS = 4
#: a run whose training loss exceeds this multiple of ``max(|f(x0)|, 1)`` counts as diverged
DIVERGENCE_FACTOR = 100.0
PLOT_FILE = "suboptimality.png"
#: the data sets that train on minibatches by default (images: 784 pixels, many rows)
MINIBATCH_DATASETS = ("fashion_mnist", "mnist")
#: their defaults: batch size, epochs, lr grid (10**-3 ... 1 in decades)
MINIBATCH_DEFAULTS = (500, 5, (0.001, 0.01, 0.1, 1.0))
#: the defaults with ``--features`` (every step computes features; d ~ 1e5): batch size,
#: epochs, lr grid, and the methods (one of each kind; the dense one to show its skip)
FEATURE_DEFAULTS = (
    1000,
    2,
    (0.01, 0.1, 1.0),
    ("adagram", "sketched_adagrad", "adagrad", "adam", "full_matrix_adagrad"),
)


def dense_skip_reason(
    spec_method: str, options: dict[str, Any], unknowns: int, rows: int | None = None
) -> str | None:
    """Why a method with a dense square state cannot run at this size, or None.

    Dense full-matrix AdaGrad keeps a ``d x d`` float64 matrix (``d = unknowns``) and
    eigendecomposes it every step; above its ``max_dim`` (default 4096) the run is skipped
    with the memory it would need. ASGO with ``side="left"`` (its default) keeps a ``p x p``
    matrix for a ``(p, K)`` unknown (``rows = p``); it is skipped above 4096 rows likewise.

    Examples
    --------
    >>> dense_skip_reason("full_matrix_adagrad", {}, 200010)[:52]
    'skipped: its d x d matrix would need 320.0 GB (d = 2'
    >>> dense_skip_reason("full_matrix_adagrad", {}, 31) is None
    True
    """
    if spec_method == "asgo" and rows is not None and options.get("side", "left") == "left":
        if rows <= DEFAULT_MAX_DIM:
            return None
        gb = 8.0 * rows * rows / 1e9
        return (
            f"skipped: its p x p matrix would need {gb:.1f} GB (p = {rows} rows of the "
            f"unknown, float64) and an eigendecomposition per step; p exceeds {DEFAULT_MAX_DIM} "
            "(side='right' preconditions the other side)"
        )
    if spec_method != "full_matrix_adagrad":
        return None
    max_dim = int(options.get("max_dim", DEFAULT_MAX_DIM))
    if unknowns <= max_dim:
        return None
    gb = 8.0 * unknowns * unknowns / 1e9
    return (
        f"skipped: its d x d matrix would need {gb:.1f} GB (d = {unknowns} unknowns, float64) "
        f"and an O(d^3) eigendecomposition per step; d exceeds max_dim = {max_dim}"
    )


# --------------------------------------------------------------------------- method specs


@dataclass(frozen=True)
class MethodSpec:
    """One compared method: its label, the preconditioner name and the options it gets.

    ``lr`` is the learning rate fixed by the ``--methods`` entry (``lr=...``): that method
    then runs once at this rate instead of being tuned on the grid. ``None``: tuned.
    """

    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    lr: float | None = None


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses/brackets: ``"a:b=(1,2),c"`` -> two items."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items]


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _accepts(method: str, name: str) -> bool:
    return name in inspect.signature(pc.get(method)).parameters


def parse_methods(text: str, rank: int) -> list[MethodSpec]:
    """Parse ``--methods``: comma-separated ``name[:key=value[:key=value...]]``.

    ``name`` is a method of :data:`lowrank_precond.preconditioners.METHODS` or an alias of
    :data:`ALIASES`; each ``key=value`` is an option of :func:`lowrank_precond.minimize`
    for it (values are Python literals, else strings). ``rank`` is given to every method
    that takes a ``rank`` and does not set one. Every key is used or rejected:

    * ``lr=V`` fixes the method's learning rate (:attr:`MethodSpec.lr`): one run at ``V``,
      no tuning on the grid;
    * ``weight_decay`` and the options of the method's factory are passed on;
    * the driver options of :data:`CONTROLLED_OPTIONS` (``maxiter``, ``gtol``, ``ftol``) are
      set by ``compare`` itself and rejected, as are unknown keys and a key given twice.

    Errors are :class:`~lowrank_precond.cli.UsageError` (one line, exit code 2).

    Examples
    --------
    >>> [s.label for s in parse_methods("adagrad,adagram:integrator=truncated_svd", 5)]
    ['adagrad', 'adagram:integrator=truncated_svd']
    >>> parse_methods("adam:betas=(0.9,0.99)", 5)[0].options
    {'betas': (0.9, 0.99)}
    >>> spec = parse_methods("sketched_adagrad:rank=2:lr=0.5", 5)[0]
    >>> spec.options, spec.lr
    ({'rank': 2}, 0.5)
    """
    specs: list[MethodSpec] = []
    valid = ", ".join(list(pc.METHODS) + sorted(ALIASES))
    for token in _split_top_level(text):
        if not token:
            raise UsageError(f"--methods: empty method name in {text!r}")
        name, *pairs = token.split(":")
        name = name.strip()
        if name in ALIASES:
            method, options = ALIASES[name][0], dict(ALIASES[name][1])
        elif name in pc.METHODS:
            method, options = name, {}
        else:
            raise UsageError(f"--methods: unknown method {name!r}; expected one of {valid}")
        given: set[str] = set()
        for pair in pairs:
            key, sep, value = pair.partition("=")
            key = key.strip()
            if not sep or not key:
                raise UsageError(f"--methods: {token!r}: expected key=value, got {pair!r}")
            if key in given:
                raise UsageError(f"--methods: {token!r}: {key!r} is given twice")
            if key in CONTROLLED_OPTIONS:
                raise UsageError(
                    f"--methods: {token!r}: {key!r} cannot be set per method; "
                    f"{CONTROLLED_OPTIONS[key]}"
                )
            given.add(key)
            options[key] = _literal(value.strip())
        lr = options.pop("lr", None)
        if "rank" not in options and _accepts(method, "rank"):
            options["rank"] = rank
        try:
            _, settings = resolve_options(method, {**options, "lr": 1.0 if lr is None else lr})
        except (ValueError, TypeError) as exc:
            raise UsageError(f"--methods: {token}: {exc}") from None
        if any(s.label == token for s in specs):
            raise UsageError(f"--methods: {token!r} is listed twice")
        specs.append(MethodSpec(token, method, options, None if lr is None else settings["lr"]))
    return specs


def _drop_repeats(specs: list[MethodSpec]) -> list[MethodSpec]:
    """``specs`` without entries that run the same as an earlier one (default list only:
    ``--rank 2`` makes ``sketched_adagrad`` and ``sketched_adagrad:rank=2`` the same)."""
    kept: list[MethodSpec] = []
    for spec in specs:
        key = (spec.method, repr(sorted(spec.options.items())), spec.lr)
        if all(key != (k.method, repr(sorted(k.options.items())), k.lr) for k in kept):
            kept.append(spec)
    return kept


# --------------------------------------------------------------------------- problem


@dataclass
class Problem:
    """The training objective, its full-batch twin, the test metric and the start point."""

    name: str
    info: dict[str, Any]
    fun: Any  # lowrank_precond.glm.Objective (minibatch or full batch)
    full: Any  # full-batch training objective
    test_metric: str  # "accuracy" or "loss"
    test_eval: Callable[[Any], float]
    x0: Any
    #: streamed features (``--features``): runs step in lockstep, evaluations in chunks
    streamed: bool = False
    test_many: Callable[[list[Any]], list[float]] | None = None


def _dask_rows(*arrays: Any) -> list[Any]:
    """``arrays`` as dask arrays in :data:`DASK_BLOCKS` row blocks (``--backend dask``)."""
    try:
        import dask.array as da
    except ImportError:
        raise UsageError(
            "--backend: 'dask' needs the dask package: pip install 'lowrank-precond[dask]'"
        ) from None
    return [da.from_array(a, chunks=(-(-len(a) // DASK_BLOCKS), *a.shape[1:])) for a in arrays]


def _backend_zeros(backend: str, shape: tuple[int, ...]) -> Any:
    """float64 zeros on ``backend`` (torch: CUDA when available, else CPU; CuPy: its GPU)."""
    if backend == "dask":  # the data is on dask, the weights stay in memory
        return np.zeros(shape)
    try:
        xp = backends.get(backend)
    except ImportError as exc:
        raise UsageError(f"--backend: {exc}") from None
    if backend == "torch":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return xp.zeros(shape, dtype=xp.float64, device=device)
    try:
        return xp.zeros(shape, dtype=xp.float64)
    except Exception as exc:  # CuPy installed without a usable GPU or CUDA runtime
        raise UsageError(f"--backend: {backend!r} has no usable device: {exc}") from None


def load_problem(
    name: str,
    *,
    lam: float | None,
    batch_size: int | None,
    seed: int,
    backend: str,
    features: int | None = None,
    subset: int | None = None,
) -> Problem:
    """Train/test parts of data set ``name`` (:func:`datasets.load`) as objectives.

    ``features=N`` maps the inputs through ``N`` random Fourier features drawn from ``seed``
    (a :class:`~lowrank_precond.glm.features.FeatureObjective`, NumPy only). ``subset=m``
    keeps ``m`` training rows (a ``seed``-ed choice, in their original order; the test part
    is kept whole), for quick runs; the recommended ``lam`` is then ``1 / m``.
    """
    try:
        A, y, info = datasets.load(name, split="train", seed=seed)
        A_test, y_test, _ = datasets.load(name, split="test", seed=seed)
    except (ImportError, FileNotFoundError) as exc:
        raise UsageError(f"--dataset: {name!r} cannot be loaded: {exc}") from None
    if subset is not None:
        if subset > A.shape[0]:
            raise UsageError(f"--subset: must be <= {A.shape[0]} (training rows), got {subset}")
        keep = np.sort(np.random.default_rng(seed).permutation(A.shape[0])[:subset])
        A, y = A[keep], y[keep]
        info = {**info, "n_train": int(subset), "n": int(subset), "lam": 1.0 / subset}
    lam = info["lam"] if lam is None else lam
    info = {**info, "lam": lam}
    fam: Any = info["family"]
    if fam == "multinomial":  # the test part must use the training part's K
        fam = family("multinomial", n_classes=info["n_classes"])
    if batch_size is not None and batch_size > A.shape[0]:
        raise UsageError(f"--batch-size: must be <= {A.shape[0]} (training rows), got {batch_size}")
    if features is not None:
        if backend != "numpy":
            raise UsageError(f"--backend: --features runs on numpy only, got {backend!r}")
        phi = RandomFourierFeatures(A.shape[1], features, seed=seed)
        info = {**info, "features": repr(phi), "n_features_in": int(A.shape[1])}
        fun = FeatureObjective(fam, A, y, phi, lam=lam, batch_size=batch_size, rng=seed)
        if fun.family.is_classifier:

            def test_many(xs: list[Any]) -> list[float]:
                return fun.accuracies(xs, A_test, y_test)

            metric = "accuracy"
        else:
            test_fun = FeatureObjective(fam, A_test, y_test, phi, lam=0.0)

            def test_many(xs: list[Any]) -> list[float]:
                return test_fun.losses(xs)

            metric = "loss"
        return Problem(
            name,
            info,
            fun,
            fun.full(),
            metric,
            lambda x: test_many([x])[0],
            np.zeros(fun.shape),
            streamed=True,
            test_many=test_many,
        )
    if backend == "dask":
        A, y, A_test, y_test = _dask_rows(A, y, A_test, y_test)
    fun = objective(fam, A, y, lam=lam, batch_size=batch_size, rng=seed, fit_intercept=True)
    test = objective(fam, A_test, y_test, lam=0.0, fit_intercept=True)
    if fun.family.is_classifier:
        metric, test_eval = "accuracy", test.accuracy
    else:
        metric = "loss"

        def test_eval(x: Any) -> float:
            return float(test(x)[0])

    x0 = _backend_zeros(backend, fun.shape)
    return Problem(name, info, fun, fun.full(), metric, test_eval, x0)


def reference_optimum(problem: Problem) -> dict[str, Any]:
    """``f*`` from L-BFGS-B on the full-batch training objective (NumPy, float64)."""
    full = problem.full
    start = time.perf_counter()
    res = scipy.optimize.minimize(
        full,
        np.zeros(full.dim),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 20000, "maxfun": 40000, "ftol": 1e-15, "gtol": 1e-10},
    )
    seconds = time.perf_counter() - start
    x = res.x.reshape(full.shape)
    return {
        "f_star": float(res.fun),
        "nit": int(res.nit),
        "grad_max": float(np.max(np.abs(res.jac))),
        "message": str(res.message),
        "seconds": seconds,
        "test": problem.test_eval(x),
    }


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    """The record of one (method, lr) run."""

    lr: float
    epoch: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    test: list[float] = field(default_factory=list)
    diverged: bool = False
    status: int = 0
    message: str = ""

    @property
    def final_loss(self) -> float | None:
        return None if self.diverged or not self.loss else self.loss[-1]


def _norm(g: Any) -> float:
    xp = backends.array_namespace(g)
    return float(xp.linalg.vector_norm(g))


def run_method(problem: Problem, spec: MethodSpec, lr: float, epochs: int) -> Run:
    """Run ``spec`` with step size ``lr`` for ``epochs`` epochs; record every epoch."""
    fun, full = problem.fun, problem.full
    fun.reset()
    spe = fun.batches_per_epoch
    run = Run(lr=lr)
    clock = {"opt": 0.0, "resume": 0.0}
    limit = [math.inf]

    def record(x: Any, f: float | None, g: Any | None, nit: int) -> None:
        if f is None or fun.stochastic:
            f_full, g = full(x)
            f = float(f_full)
        run.epoch.append(nit // spe)
        run.steps.append(nit)
        run.seconds.append(clock["opt"])
        run.loss.append(f)
        run.grad_norm.append(_norm(g))
        run.test.append(problem.test_eval(x))
        if not math.isfinite(f) or f > limit[0]:
            run.diverged = True

    def callback(intermediate_result: Any) -> None:
        backends.synchronize(intermediate_result.x)
        clock["opt"] += time.perf_counter() - clock["resume"]
        nit = intermediate_result.nit
        if nit % spe == 0:
            record(intermediate_result.x, intermediate_result.fun, intermediate_result.jac, nit)
            if run.diverged:
                raise StopIteration
        clock["resume"] = time.perf_counter()

    record(problem.x0, None, None, 0)
    fun.reset()
    limit[0] = DIVERGENCE_FACTOR * max(abs(run.loss[0]), 1.0)
    options = {**spec.options, "lr": lr, "maxiter": epochs * spe, "gtol": 0.0}
    clock["resume"] = time.perf_counter()
    # a too-large lr on the grid is expected to overflow: minimize stops such a run (status 3)
    # and it is reported as diverged, so NumPy's overflow warnings would only be noise
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        res = minimize(fun, problem.x0, method=spec.method, options=options, callback=callback)
    run.status, run.message = int(res.status), str(res.message)
    if res.status == 3:  # non-finite loss, gradient or iterate
        run.diverged = True
    return run


@dataclass
class _Live:
    """One (method, lr) run of the lockstep loop."""

    record: Run
    step: Any
    state: Any
    x: Any
    seconds: float = 0.0


def run_lockstep(
    problem: Problem,
    specs: Sequence[MethodSpec],
    lr_grid: Sequence[float],
    epochs: int,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[Run]]:
    """Run every (method, lr) of ``specs`` on the same minibatches, one step each in turn.

    Each minibatch's features are computed once and every live run steps on them, exactly as
    :func:`lowrank_precond.minimize` would (``x <- x - lr (p + weight_decay x)``), so a run
    sees the sequence it would see alone. At the end of each epoch the full training loss and
    the test metric of every live run are evaluated in one chunked pass each (not timed);
    ``progress`` is called once per epoch. A run stops as diverged (status 3) on a non-finite
    loss, gradient or iterate, a refused step, or a loss above ``DIVERGENCE_FACTOR * max(|f(x0)|,
    1)``. ``Run.seconds``: the run's own gradient and step plus the shared feature time of
    each of its minibatches, i.e. what the run would take alone.
    """
    fun, full = problem.fun, problem.full
    fun.reset()
    spe = fun.batches_per_epoch
    f0 = full.losses([problem.x0])[0]
    t0 = problem.test_many([problem.x0])[0]
    limit = DIVERGENCE_FACTOR * max(abs(f0), 1.0)
    runs: dict[str, list[Run]] = {}
    live: list[_Live] = []
    for spec in specs:
        runs[spec.label] = []
        for lr in lr_grid if spec.lr is None else (spec.lr,):
            pre, settings = resolve_options(spec.method, {**spec.options, "lr": lr})
            step = chain(
                scale_by(pre),
                add_decayed_weights(settings["weight_decay"]),
                scale_by_learning_rate(settings["lr"]),
            )
            record = Run(lr=lr, epoch=[0], steps=[0], seconds=[0.0], loss=[f0], test=[t0])
            record.grad_norm = []
            x = np.array(problem.x0, copy=True)
            runs[spec.label].append(record)
            live.append(_Live(record, step, step.init(x), x))

    def stop(run: _Live, status: int, message: str) -> None:
        run.record.diverged, run.record.status, run.record.message = True, status, message

    nit = 0
    for epoch in range(1, epochs + 1):
        for _ in range(spe):
            start = time.perf_counter()
            Phi, Y = fun.next_batch()
            shared = time.perf_counter() - start
            nit += 1
            for run in live:
                if run.record.diverged:
                    continue
                start = time.perf_counter()
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    f, g = fun.loss_and_grad(run.x, Phi, Y)
                    if not (math.isfinite(f) and all_finite(g)):
                        stop(run, 3, f"non-finite loss or gradient at step {nit}")
                        continue
                    try:
                        updates, run.state = run.step.update(g, run.state, run.x)
                    except FloatingPointError as exc:
                        stop(run, 3, f"step {nit} was refused: {exc}")
                        continue
                    x_new = apply_updates(run.x, updates)
                if not all_finite(x_new):
                    stop(run, 3, f"step {nit} produced a non-finite iterate")
                    continue
                run.x = x_new
                run.seconds += shared + time.perf_counter() - start
        alive = [run for run in live if not run.record.diverged]
        losses = full.losses([run.x for run in alive]) if alive else []
        tests = problem.test_many([run.x for run in alive]) if alive else []
        for run, f, t in zip(alive, losses, tests, strict=True):
            rec = run.record
            rec.epoch.append(epoch)
            rec.steps.append(nit)
            rec.seconds.append(run.seconds)
            rec.loss.append(f)
            rec.test.append(t)
            if not math.isfinite(f) or f > limit:
                stop(run, 3, f"full training loss {f:.3g} after epoch {epoch} (diverged)")
        if progress is not None:
            progress(f"epoch {epoch}/{epochs}")
    for run in live:
        if not run.record.diverged:
            run.record.status, run.record.message = 1, "all epochs done"
        run.record.grad_norm = [math.nan] * len(run.record.loss)
    return runs


# --------------------------------------------------------------------------- the comparison


def _steps_to(run: Run, rel: list[float], tol: float) -> tuple[int | None, float | None]:
    for steps, seconds, r in zip(run.steps, run.seconds, rel, strict=True):
        if r <= tol:
            return steps, seconds
    return None, None


def compare(
    problem: Problem,
    specs: Sequence[MethodSpec],
    lr_grid: Sequence[float],
    epochs: int,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Tune, run and score every method; return the content of ``results.json``.

    Each method runs at every learning rate of ``lr_grid``, or only at its
    :attr:`MethodSpec.lr` when that is set. ``progress(text)``, if given, is called after each
    (method, lr) run.

    A method that cannot run at this size (dense full-matrix AdaGrad above its ``max_dim``,
    :func:`dense_skip_reason`) is not run; its entry says why (``skipped``). A streamed
    problem (``--features``) runs every (method, lr) in lockstep (:func:`run_lockstep`, its
    ``progress`` called once per epoch) and takes ``f*`` as the smallest recorded loss.
    """
    rows = problem.fun.shape[0] if len(problem.fun.shape) == 2 else None
    skipped = {
        s.label: dense_skip_reason(s.method, s.options, problem.fun.dim, rows) for s in specs
    }
    active = [s for s in specs if skipped[s.label] is None]
    runs, ref = _run_all(problem, active, lr_grid, epochs, progress)
    recorded = [f for rs in runs.values() for r in rs for f in r.loss if math.isfinite(f)]
    f_star = min([ref["f_star"], *recorded])
    if problem.streamed:
        best_runs = [r for rs in runs.values() for r in rs if r.final_loss is not None]
        if best_runs:
            winner = min(best_runs, key=lambda r: min(r.loss))
            ref["test"] = winner.test[winner.loss.index(min(winner.loss))]
    scale = max(abs(f_star), 1.0)
    grid = sorted(lr_grid)
    methods = [
        _method_entry(spec, runs.get(spec.label, []), skipped[spec.label], f_star, scale, grid)
        for spec in specs
    ]
    return {
        **_description(problem, epochs, lr_grid),
        "reference": {**ref, "f_star_used": f_star},
        "methods": methods,
    }


def _run_all(
    problem: Problem,
    active: Sequence[MethodSpec],
    lr_grid: Sequence[float],
    epochs: int,
    progress: Callable[[str], None] | None,
) -> tuple[dict[str, list[Run]], dict[str, Any]]:
    """Every (method, lr) run of :func:`compare` and the reference it measures them by."""
    runs: dict[str, list[Run]] = {}
    if problem.streamed:
        runs = run_lockstep(problem, active, lr_grid, epochs, progress=progress)
        ref: dict[str, Any] = {
            "kind": "best_recorded",
            "f_star": math.inf,
            "nit": None,
            "grad_max": None,
            "message": "smallest full training loss recorded by any run (no L-BFGS-B "
            "reference: it would need hundreds of passes over the streamed features)",
            "seconds": None,
            "test": None,
        }
    else:
        ref = {"kind": "lbfgsb", **reference_optimum(problem)}
        for spec in active:
            runs[spec.label] = []
            for lr in lr_grid if spec.lr is None else (spec.lr,):
                runs[spec.label].append(run_method(problem, spec, lr, epochs))
                if progress is not None:
                    progress(f"{spec.label} lr={lr:g}")

    return runs, ref


def _method_entry(
    spec: MethodSpec,
    runs: list[Run],
    skipped: str | None,
    f_star: float,
    scale: float,
    grid: list[float],
) -> dict[str, Any]:
    """One method's entry of ``results.json``: its grid, the best run and its history."""
    entry: dict[str, Any] = {
        "label": spec.label,
        "method": spec.method,
        "options": spec.options,
        "preconditioner": repr(resolve_options(spec.method, {**spec.options, "lr": 1.0})[0]),
        "grid": [],
        "lr": None,
        "lr_fixed": spec.lr is not None,
        "lr_on_grid_edge": None,
        "diverged": False,
        "skipped": skipped,
    }
    if skipped is not None:
        return entry
    candidates = [r for r in runs if r.final_loss is not None]
    best = min(candidates, key=lambda r: (r.final_loss, r.lr)) if candidates else None
    entry["grid"] = [
        {"lr": r.lr, "final_loss": r.final_loss, "diverged": r.diverged, "status": r.status}
        for r in runs
    ]
    entry["diverged"] = best is None
    if best is None:
        return entry
    subopt = [f - f_star for f in best.loss]
    rel = [s / scale for s in subopt]
    reach = {f"{tol:g}": _steps_to(best, rel, tol) for tol in TOLERANCES}
    entry.update(
        lr=best.lr,
        lr_on_grid_edge=spec.lr is None and len(grid) > 1 and best.lr in (grid[0], grid[-1]),
        final_loss=best.loss[-1],
        final_subopt=subopt[-1],
        final_rel_subopt=rel[-1],
        steps_to={k: v[0] for k, v in reach.items()},
        seconds_to={k: v[1] for k, v in reach.items()},
        seconds=best.seconds[-1],
        final_test=best.test[-1],
        history={
            "epoch": best.epoch,
            "steps": best.steps,
            "seconds": best.seconds,
            "loss": best.loss,
            "grad_norm": best.grad_norm,
            "subopt": subopt,
            "rel_subopt": rel,
            "test": best.test,
        },
    )
    return entry


def _description(problem: Problem, epochs: int, lr_grid: Sequence[float]) -> dict[str, Any]:
    """The parts of ``results.json`` that describe the run: version, data, settings,
    definitions and the test metric."""
    info = problem.info
    fun = problem.fun
    return {
        "lowrank_precond": __version__,
        "dataset": {
            "name": problem.name,
            "family": info["family"],
            "n_train": info["n_train"],
            "n_test": info["n_test"],
            "d": info["d"],
            "n_classes": info["n_classes"] if info["family"] == "multinomial" else None,
            "features": info.get("features"),
            "unknowns": fun.dim,
            "shape": list(fun.shape),
            "lam": info["lam"],
            "fit_intercept": True,
            "source": info["source"],
        },
        "settings": {
            "epochs": epochs,
            "batch_size": fun.batch_size if fun.stochastic else None,
            "steps_per_epoch": fun.batches_per_epoch,
            "streamed": problem.streamed,
            "backend": backends.name_of(problem.x0),
            "device": str(backends.device_of(problem.x0)),
            "lr_grid": list(lr_grid),
            "tolerances": list(TOLERANCES),
            "lr_selection": "smallest final full-batch training loss over the grid, "
            "unless the method's entry fixes lr (lr_fixed)",
        },
        "definitions": {
            "f_star": "smallest full training loss recorded by any run (streamed features: "
            "not the optimum)"
            if problem.streamed
            else "min(L-BFGS-B optimum of the full-batch training objective (gtol=1e-10, "
            "ftol=1e-15), smallest loss recorded by any run)",
            "rel_subopt": "(f - f_star) / max(|f_star|, 1)",
            "steps_to": "optimizer steps at the first recorded epoch with rel_subopt <= tol; "
            "null if never reached",
            "seconds": "optimizer wall time, evaluations made for the record excluded"
            + (
                " (lockstep: the run's own gradient and step plus the shared computation of "
                "each minibatch's features, i.e. the time the run would take alone)"
                if problem.streamed
                else ""
            ),
            "skipped": "why a method was not run (dense full-matrix AdaGrad above max_dim)",
            "test": "test accuracy"
            if problem.test_metric == "accuracy"
            else "mean test loss (no penalty)",
        },
        "test_metric": problem.test_metric,
    }


# --------------------------------------------------------------------------- output


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN/inf become ``None``."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is None or isinstance(obj, str):
        return obj
    return repr(obj)


def _fmt(v: float | None, spec: str = ".2e") -> str:
    return "-" if v is None else format(v, spec)


def _tol_name(tol: float) -> str:
    """``1e-3`` for 0.001 (powers of ten), else ``%g``."""
    k = round(math.log10(tol))
    return f"1e{k}" if math.isclose(tol, 10.0**k) else f"{tol:g}"


def format_table(results: dict[str, Any]) -> str:
    """The text table: one row per method plus the L-BFGS-B reference."""
    ds, st, ref = results["dataset"], results["settings"], results["reference"]
    test_head = "test acc" if results["test_metric"] == "accuracy" else "test loss"
    batch = "full batch" if st["batch_size"] is None else f"batch {st['batch_size']}"
    feats = f" -> {ds['features']}" if ds.get("features") else ""
    if ref.get("kind") == "best_recorded":
        ref_line = f"f* = {ref['f_star_used']:.10g} (the best recorded loss, not the optimum)"
        ref_name = "best run (f*)"
    else:
        ref_line = (
            f"f* = {ref['f_star_used']:.10g} (L-BFGS-B: {ref['nit']} iterations, "
            f"max|g| = {ref['grad_max']:.1e})"
        )
        ref_name = "L-BFGS-B (f*)"
    lines = [
        f"{ds['name']} ({ds['family']}): {ds['n_train']} train / {ds['n_test']} test rows, "
        f"d={ds['d']}{feats}, {ds['unknowns']} unknowns, lam={ds['lam']:.3g}, intercept",
        f"{batch}, {st['epochs']} epochs of {st['steps_per_epoch']} step(s), backend "
        f"{st['backend']}, lr grid {', '.join(f'{v:g}' for v in st['lr_grid'])}",
        f"{ref_line}; rel = (f - f*) / max(|f*|, 1)",
        "",
    ]
    tol_heads = [f"steps to {_tol_name(t)}" for t in st["tolerances"]]
    head = ["method", "lr", "f - f*", *tol_heads, "time s", test_head]
    rows = []
    for m in results["methods"]:
        if m.get("skipped"):
            rows.append([m["label"], "skipped", "-", *["-"] * len(tol_heads), "-", "-"])
            continue
        if m["diverged"]:
            rows.append([m["label"], "diverged", "-", *["-"] * len(tol_heads), "-", "-"])
            continue
        lr = f"{m['lr']:.3g}" + ("*" if m["lr_on_grid_edge"] else "")
        lr += " fixed" if m.get("lr_fixed") else ""
        steps = [_fmt(m["steps_to"][f"{t:g}"], "d") for t in st["tolerances"]]
        test = m["final_test"]
        rows.append(
            [
                m["label"],
                lr,
                _fmt(m["final_subopt"]),
                *steps,
                f"{m['seconds']:.3f}",
                _fmt(test, ".4f"),
            ]
        )
    rows.append(
        [
            ref_name,
            "-",
            "0",
            *["-"] * len(tol_heads),
            "-" if ref["seconds"] is None else f"{ref['seconds']:.3f}",
            _fmt(ref["test"], ".4f"),
        ]
    )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt_row = lambda r: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
    )
    lines += [fmt_row(head), fmt_row(["-" * w for w in widths]), *map(fmt_row, rows)]
    if any(m.get("lr_on_grid_edge") for m in results["methods"]):
        lines.append("* chosen lr is on the edge of the grid: widen --lr-grid for a fair tuning")
    if any(m.get("lr_fixed") for m in results["methods"]):
        lines.append("fixed: lr set in --methods, not tuned on the grid")
    lines += [f"{m['label']}: {m['skipped']}" for m in results["methods"] if m.get("skipped")]
    lines.append("")
    lines += [f"{m['label']}: {m['preconditioner']}" for m in results["methods"]]
    return "\n".join(lines)


def write_plot(results: dict[str, Any], path: str) -> str | None:
    """Save ``f - f*`` (log) vs epoch and vs seconds; return why it was skipped, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'lowrank-precond[plot]')"
    floor = 1e-16 * max(abs(results["reference"]["f_star_used"]), 1.0)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for m in results["methods"]:
        if m["diverged"] or m.get("skipped"):
            continue
        h = m["history"]
        sub = [max(s, floor) for s in h["subopt"]]
        label = f"{m['label']} (lr={m['lr']:.3g})"
        (line,) = axes[0].semilogy(h["epoch"], sub, label=label)
        axes[1].semilogy(h["seconds"], sub, color=line.get_color())
    ds = results["dataset"]
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("optimizer seconds")
    for ax in axes:
        ax.set_ylabel("f - f*")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{ds['name']} ({ds['family']}), tuned lr per method")
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return None


# --------------------------------------------------------------------------- command line


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="fit a GLM on bundled real data with every method: table, results.json, plot",
        description="Fit a GLM on bundled real data with every method. "
        + (__doc__.split("\n\n")[1] if __doc__ else ""),
        epilog=f"Method names: {', '.join(pc.METHODS)}; aliases: "
        + "; ".join(f"{k} = {v[0]} {v[1]}" for k, v in ALIASES.items())
        + ". Options per method: name:key=value:key=value (e.g. adagram:integrator="
        "truncated_svd:rank=10), any option of the method's factory, plus lr=V (fixes that "
        "method's learning rate: one run at V, not tuned on --lr-grid) and weight_decay=W; "
        "maxiter, gtol and ftol are rejected (compare runs every method for --epochs epochs). "
        "Data sets: " + ", ".join(datasets.names()) + ". "
        "Example of the low-rank regime (200010 unknowns): compare --dataset fashion_mnist "
        "--features 20000.",
    )
    p.add_argument(
        "--dataset", metavar="NAME", default=DEFAULT_DATASET, help="data set (default %(default)s)"
    )
    p.add_argument(
        "--methods",
        metavar="LIST",
        default=None,
        help="comma-separated methods, each name[:key=value...], e.g. "
        "adam:lr=0.01,sketched_adagrad:rank=2 (default " + ", ".join(DEFAULT_METHODS) + ")",
    )
    p.add_argument(
        "--rank",
        metavar="R",
        default=str(DEFAULT_RANK),
        help="rank of the low-rank methods whose entry sets none (default 5)",
    )
    p.add_argument(
        "--epochs",
        metavar="N",
        default=None,
        help=f"epochs (default {DEFAULT_EPOCHS[0]} full batch, {DEFAULT_EPOCHS[1]} with "
        f"--batch-size, {MINIBATCH_DEFAULTS[1]} for {', '.join(MINIBATCH_DATASETS)}, "
        f"{QUICK_EPOCHS} with --quick)",
    )
    p.add_argument(
        "--batch-size",
        metavar="B",
        default=None,
        help=f"minibatch size (default: full batch; {MINIBATCH_DEFAULTS[0]} for "
        f"{', '.join(MINIBATCH_DATASETS)}); 'full' forces full batch",
    )
    p.add_argument(
        "--features",
        metavar="N",
        default=None,
        help="map the standardized inputs through N seeded random Fourier features (seed "
        "--seed), computed per minibatch and never stored: K (N + 1) unknowns for K classes "
        "(N = 20000 gives 200010 on fashion_mnist); runs in lockstep, f* = best recorded loss; "
        f"defaults: batch {FEATURE_DEFAULTS[0]}, {FEATURE_DEFAULTS[1]} epochs, lr grid "
        f"{', '.join(f'{v:g}' for v in FEATURE_DEFAULTS[2])}, methods "
        f"{', '.join(FEATURE_DEFAULTS[3])}",
    )
    p.add_argument(
        "--backend",
        metavar="NAME",
        default="numpy",
        help="numpy, torch, cupy or dask (default numpy); dask: the data as dask arrays in "
        f"{DASK_BLOCKS} row blocks, the weights on numpy, minibatches drawn inside one block "
        "(the dask extra)",
    )
    p.add_argument(
        "--lr-grid",
        metavar="LIST",
        default=None,
        help="comma-separated learning rates (default 1e-3 ... 10 in half decades; "
        f"{', '.join(MINIBATCH_DATASETS)}: 1e-3 ... 1 in decades; --quick: 0.01,0.1,1)",
    )
    p.add_argument("--lam", metavar="LAM", default=None, help="L2 strength (default 1/n_train)")
    p.add_argument(
        "--subset",
        metavar="M",
        default=None,
        help="train on M training rows only (seeded choice; the test part is kept whole)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default=DEFAULT_OUT,
        help="output folder (default ./%(default)s), created if missing and checked to be "
        "writable before anything is computed; the files of an earlier run there are replaced "
        "all at once at the end (never half old, half new), and a line says so",
    )
    p.add_argument(
        "--seed", metavar="S", default="0", help="seed of the train/test split and minibatches"
    )
    p.add_argument("--quick", action="store_true", help="few epochs and a tiny grid (for CI)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _int(flag: str, text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{flag}: expected an integer, got {text!r}") from None
    if value < minimum:
        raise UsageError(f"{flag}: must be >= {minimum}, got {value}")
    return value


def _float(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag}: expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise UsageError(f"{flag}: must be finite, got {text!r}")
    return value


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Validate the command line; every problem is a :class:`UsageError` (one line, exit 2)."""
    if args.dataset not in datasets.names():
        raise UsageError(
            f"--dataset: unknown data set {args.dataset!r}; expected one of "
            f"{', '.join(datasets.names())}"
        )
    if args.backend not in BACKEND_CHOICES:
        raise UsageError(
            f"--backend: unknown backend {args.backend!r}; expected one of "
            f"{', '.join(BACKEND_CHOICES)}"
        )
    rank = _int("--rank", args.rank, 1)
    images = args.dataset in MINIBATCH_DATASETS
    features = None if args.features is None else _int("--features", args.features, 1)
    if args.batch_size is None and features is not None:
        batch_size = FEATURE_DEFAULTS[0]
    elif args.batch_size is None:
        batch_size = MINIBATCH_DEFAULTS[0] if images else None
    elif args.batch_size == "full":
        batch_size = None
    else:
        batch_size = _int("--batch-size", args.batch_size, 1)
    if features is not None and batch_size is None:
        raise UsageError("--batch-size: --features needs minibatches (the features are streamed)")
    if args.epochs is not None:
        epochs = _int("--epochs", args.epochs, 1)
    elif args.quick:
        epochs = QUICK_EPOCHS
    elif features is not None:
        epochs = FEATURE_DEFAULTS[1]
    elif images:
        epochs = MINIBATCH_DEFAULTS[1]
    else:
        epochs = DEFAULT_EPOCHS[batch_size is not None]
    if args.lr_grid is None:
        grid = QUICK_LR_GRID if args.quick else DEFAULT_LR_GRID
        if images and not args.quick:
            grid = MINIBATCH_DEFAULTS[2]
        if features is not None and not args.quick:
            grid = FEATURE_DEFAULTS[2]
    else:
        grid = tuple(_float("--lr-grid", v) for v in args.lr_grid.split(","))
        bad = [v for v in grid if v <= 0]
        if bad:
            raise UsageError(f"--lr-grid: learning rates must be > 0, got {bad[0]:g}")
        if len(set(grid)) != len(grid):
            raise UsageError("--lr-grid: repeated learning rate")
    lam = None
    if args.lam is not None:
        lam = _float("--lam", args.lam)
        if lam < 0:
            raise UsageError(f"--lam: must be >= 0, got {lam:g}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out: {args.out!r} exists and is not a folder")
    if args.methods is None:
        default = DEFAULT_METHODS if features is None else FEATURE_DEFAULTS[3]
        specs = _drop_repeats(parse_methods(",".join(default), rank))
    else:
        specs = parse_methods(args.methods, rank)
    return {
        "specs": specs,
        "epochs": epochs,
        "grid": grid,
        "batch_size": batch_size,
        "lam": lam,
        "seed": _int("--seed", args.seed, 0),
        "features": features,
        "subset": None if args.subset is None else _int("--subset", args.subset, 2),
    }


#: the files of one result set, in the order they are put in place (``results.json`` last)
OUTPUT_FILES = ("table.txt", PLOT_FILE, "results.json")


def _temp_name(folder: str, name: str) -> str:
    """A fresh hidden name in ``folder`` for the file to become ``name``."""
    return os.path.join(folder, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def prepare_out(folder: str) -> None:
    """Create ``folder`` if missing and check that a file can be written in it.

    Raises :class:`~lowrank_precond.cli.UsageError` (one line, exit code 2) otherwise; run
    before anything is computed.
    """
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out: cannot create folder {folder!r}: {exc.strerror or exc}") from None
    probe = _temp_name(folder, "write-test")
    try:
        with open(probe, "x", encoding="utf-8") as fh:
            fh.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise UsageError(f"--out: cannot write in {folder!r}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _interrupts_deferred() -> Any:
    """Hold SIGINT/SIGTERM until the block ends, then deliver them (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    old: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not None:  # None: a handler not installed from Python
            old[sig] = signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


def write_outputs(
    folder: str,
    results: dict[str, Any],
    table: str,
    *,
    plot_file: str = PLOT_FILE,
    plot: Callable[[dict[str, Any], str], str | None] | None = None,
) -> list[str]:
    """Write ``table.txt``, the plot and ``results.json`` into ``folder`` all or nothing.

    ``plot(results, path)`` draws the figure into ``plot_file`` (default :func:`write_plot`;
    ``lowrank-precond train`` passes its own) and returns why it was skipped, or ``None``.

    Every file is first written under a temporary name in ``folder``; only when all are
    complete are they renamed (:func:`os.replace`) into place, with interrupts held for those
    few renames, and a plot left from an earlier run is removed if this run made none. Sets
    ``results["plot"]``. Returns the lines to print: the files of an earlier run that
    were replaced or removed (if any) and why the plot was skipped (if it was).
    """
    plot = write_plot if plot is None else plot
    outputs = ("table.txt", plot_file, "results.json")
    staged: dict[str, str] = {}  # final name -> temporary path
    try:
        staged["table.txt"] = _temp_name(folder, "table.txt")
        with open(staged["table.txt"], "x", encoding="utf-8") as fh:
            fh.write(table + "\n")
        staged[plot_file] = _temp_name(folder, plot_file)
        skipped = plot(results, staged[plot_file])
        if skipped is not None:
            with contextlib.suppress(OSError):
                os.remove(staged.pop(plot_file))
        results["plot"] = None if skipped else plot_file
        staged["results.json"] = _temp_name(folder, "results.json")
        with open(staged["results.json"], "x", encoding="utf-8") as fh:
            json.dump(_jsonable(results), fh, indent=1, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        lines = []
        old = [n for n in outputs if os.path.exists(os.path.join(folder, n))]
        if old:
            lines.append(f"replaced the results of an earlier run in {folder}: {', '.join(old)}")
        if skipped is not None:
            lines.append(f"plot skipped: {skipped}")
        with _interrupts_deferred():
            for name in outputs:
                if name in staged:
                    os.replace(staged.pop(name), os.path.join(folder, name))
                elif name in old:
                    os.remove(os.path.join(folder, name))
        return lines
    finally:
        for path in staged.values():
            with contextlib.suppress(OSError):
                os.remove(path)


def run(args: argparse.Namespace) -> int:
    s = _settings(args)
    problem = load_problem(
        args.dataset,
        lam=s["lam"],
        batch_size=s["batch_size"],
        seed=s["seed"],
        backend=args.backend,
        features=s["features"],
        subset=s["subset"],
    )
    prepare_out(args.out)
    if problem.streamed:  # lockstep: one bar step per epoch of every run
        total, unit = s["epochs"], "epoch"
    else:
        total, unit = sum(len(s["grid"]) if spec.lr is None else 1 for spec in s["specs"]), "run"
    quiet = args.quiet or not sys.stderr.isatty()
    started = time.perf_counter()
    with tqdm(total=total, desc="compare", unit=unit, disable=quiet, leave=False) as bar:

        def progress(text: str) -> None:
            bar.set_postfix_str(text, refresh=False)
            bar.update(1)

        results = compare(problem, s["specs"], s["grid"], s["epochs"], progress=progress)
    results["settings"]["seed"] = s["seed"]
    if args.backend == "dask":  # the weights (x0) are NumPy, the data is on dask
        results["settings"]["backend"] = "dask"
    results["settings"]["wall_seconds"] = time.perf_counter() - started

    table = format_table(results)
    print(table)
    try:
        notes = write_outputs(args.out, results, table)
    except OSError as exc:
        raise UsageError(f"--out: cannot write the results in {args.out!r}: {exc}") from None
    others = ["table.txt", *([PLOT_FILE] if results["plot"] else [])]
    print(f"\nwrote {os.path.join(args.out, 'results.json')}, {', '.join(others)}")
    for line in notes:
        print(line)
    print(f"total {results['settings']['wall_seconds']:.1f} s")
    return 0
