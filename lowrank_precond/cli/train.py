"""``lowrank-precond train``: a small MLP on Fashion-MNIST with every torch optimizer class.

The model is ``Linear(784, H) -> ReLU -> Linear(H, 10)`` (float32; ``H = 128``: 101770
parameters), trained with cross-entropy on minibatches of the standardized pixels
(:func:`lowrank_precond.glm.datasets.load`, the published 60000 / 10000 split). The model's
parameters form ONE param group, so AdaGram, SketchedAdaGrad and FullMatrixAdaGrad span all of
them (one preconditioner of dimension ``d`` = every parameter). Compared: every class of
:mod:`lowrank_precond.torch` and ``torch.optim.Adam`` / ``torch.optim.Adagrad``.

Learning rates are tuned for each optimizer on the grid ``--lr-grid``: every grid point trains
``--tune-epochs`` epochs on the first ``--tune-rows`` training rows (a seeded choice) and the
rate with the smallest training loss on those rows wins; the full run then uses it (``*`` in the
table: the winner is on the edge of the grid). Every run starts from the same initial weights
(``torch.manual_seed(--seed)``) and sees the same minibatches.

A class that cannot run at this size is skipped with the reason: FullMatrixAdaGrad (its
``d x d`` matrix: 82.9 GB in float64 for ``d = 101770``) above its ``max_dim``, and any class
whose construction refuses the configuration (AdamGram refuses momentum at a finite rank) --
its own message is reported.

Per epoch, each run records the training loss on all training rows (evaluation mode, not
timed), the test loss and test accuracy, and ``seconds``: the wall time of its training steps
(forward, backward and optimizer step; the evaluations excluded). At equal epochs the winner is
the smallest final training loss; at equal wall time, the smallest training loss recorded
within the time the fastest run took for all epochs (``summary`` in ``results.json``).

Outputs, in ``--out`` (default ``./lowrank_precond_train``): ``table.txt`` (also on stdout),
``results.json`` and ``training.png`` (training loss and test accuracy against epochs and
against seconds; needs matplotlib). ``results.json`` keys: ``lowrank_precond`` (version),
``dataset``, ``settings`` (``hidden``, ``parameters``, ``epochs``, ``batch_size``, ``rank``,
``lr_grid``, ``tune_rows``, ``tune_epochs``, ``seed``, ``threads``, ``subset``), ``runs`` (one
per optimizer: ``label``, ``optimizer``, ``lr``, ``lr_on_grid_edge``, ``tuning`` (``lr`` ->
tuning loss or null), ``skipped`` (reason or null), ``diverged``, ``final_train_loss``,
``final_test_accuracy``, ``seconds``, ``median_epoch_seconds`` (robust to a busy machine),
``history`` with ``epoch``, ``seconds``, ``train_loss``,
``test_loss``, ``test_accuracy``), ``summary`` (``equal_epochs``, ``equal_time``) and
``definitions``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from lowrank_precond import __version__
from lowrank_precond.cli import UsageError
from lowrank_precond.cli.compare import (
    _float,
    _int,
    prepare_out,
    write_outputs,
)
from lowrank_precond.glm import datasets
from lowrank_precond.preconditioners.full import DEFAULT_MAX_DIM

__all__ = ["OPTIMIZERS", "add_parser", "run", "train"]

#: label -> (description, whether it takes ``rank``); the labels of ``--optimizers``
OPTIMIZERS: dict[str, tuple[str, bool]] = {
    "AdaGram": ("lowrank_precond.torch.AdaGram", True),
    "AdamGram": ("lowrank_precond.torch.AdamGram", True),
    "SketchedAdaGrad": ("lowrank_precond.torch.SketchedAdaGrad", True),
    "FullMatrixAdaGrad": ("lowrank_precond.torch.FullMatrixAdaGrad", False),
    "AdaDiag": ("lowrank_precond.torch.AdaDiag", False),
    "ASGO": ("lowrank_precond.torch.ASGO", False),
    "AdaGrad": ("lowrank_precond.torch.AdaGrad", False),
    "Adam": ("lowrank_precond.torch.Adam", False),
    "torch.Adam": ("torch.optim.Adam", False),
    "torch.Adagrad": ("torch.optim.Adagrad", False),
}

DEFAULT_OUT = "lowrank_precond_train"
DEFAULT_HIDDEN = 128
DEFAULT_EPOCHS = 3
DEFAULT_BATCH = 256
DEFAULT_RANK = 5
DEFAULT_LR_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
DEFAULT_TUNE_ROWS = 10000
DEFAULT_TUNE_EPOCHS = 1
PLOT_FILE = "training.png"
#: a run whose training loss exceeds this multiple of its initial loss counts as diverged
DIVERGENCE_FACTOR = 10.0


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise UsageError("train needs PyTorch: pip install 'lowrank-precond[torch]'") from None
    return torch


def make_optimizer(label: str, params: Sequence[Any], lr: float, rank: int) -> Any:
    """The optimizer ``label`` of :data:`OPTIMIZERS` over ``params`` (one param group).

    Examples
    --------
    >>> import torch
    >>> p = [torch.nn.Parameter(torch.zeros(3))]
    >>> type(make_optimizer("SketchedAdaGrad", p, 0.1, 2)).__name__
    'SketchedAdaGrad'
    """
    torch = _torch()
    if label == "torch.Adam":
        return torch.optim.Adam(params, lr=lr)
    if label == "torch.Adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    import lowrank_precond.optim.torch as lpt  # (cli may not import lowrank_precond.torch)

    cls = getattr(lpt, label)
    return cls(params, lr=lr, rank=rank) if OPTIMIZERS[label][1] else cls(params, lr=lr)


def skip_reason(label: str, n_params: int, rank: int) -> str | None:
    """Why optimizer ``label`` cannot train ``n_params`` parameters, or None.

    Examples
    --------
    >>> skip_reason("FullMatrixAdaGrad", 101770, 5)[:51]
    'skipped: its d x d matrix would need 82.9 GB (d = 1'
    >>> skip_reason("Adam", 101770, 5) is None
    True
    """
    if label == "FullMatrixAdaGrad" and n_params > DEFAULT_MAX_DIM:
        gb = 8.0 * n_params * n_params / 1e9
        return (
            f"skipped: its d x d matrix would need {gb:.1f} GB (d = {n_params} parameters, "
            f"float64) and an O(d^3) eigendecomposition per step; d exceeds max_dim = "
            f"{DEFAULT_MAX_DIM}"
        )
    torch = _torch()
    try:
        make_optimizer(label, [torch.nn.Parameter(torch.zeros(2))], 1e-3, rank)
    except (ValueError, TypeError) as exc:
        return f"skipped: the constructor refuses it: {exc}"
    return None


def make_model(n_in: int, hidden: int, n_out: int, seed: int) -> Any:
    """``Linear(n_in, hidden) -> ReLU -> Linear(hidden, n_out)``, float32, seeded."""
    torch = _torch()
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_out)
    )


@dataclass
class Data:
    """Training and test tensors (float32 features, int64 labels)."""

    X: Any
    y: Any
    X_test: Any
    y_test: Any


def load_data(seed: int, subset: int | None) -> Data:
    """Fashion-MNIST, standardized, as torch tensors (``subset``: seeded training rows)."""
    torch = _torch()
    try:
        X, y, _ = datasets.load("fashion_mnist", split="train", dtype=np.float32)
        X_test, y_test, _ = datasets.load("fashion_mnist", split="test", dtype=np.float32)
    except (ImportError, FileNotFoundError) as exc:
        raise UsageError(f"train: Fashion-MNIST cannot be loaded: {exc}") from None
    if subset is not None:
        if subset > X.shape[0]:
            raise UsageError(f"--subset: must be <= {X.shape[0]} (training rows), got {subset}")
        keep = np.sort(np.random.default_rng(seed).permutation(X.shape[0])[:subset])
        X, y = X[keep], y[keep]
    return Data(
        torch.from_numpy(np.ascontiguousarray(X)),
        torch.from_numpy(y),
        torch.from_numpy(np.ascontiguousarray(X_test)),
        torch.from_numpy(y_test),
    )


def _evaluate(model: Any, X: Any, y: Any, chunk: int = 8192) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(X, y)``."""
    torch = _torch()
    loss, hits = 0.0, 0
    with torch.no_grad():
        for start in range(0, X.shape[0], chunk):
            out = model(X[start : start + chunk])
            target = y[start : start + chunk]
            loss += float(torch.nn.functional.cross_entropy(out, target, reduction="sum"))
            hits += int((out.argmax(dim=1) == target).sum())
    return loss / X.shape[0], hits / X.shape[0]


def train_one(
    label: str,
    lr: float,
    data: Data,
    *,
    hidden: int,
    epochs: int,
    batch_size: int,
    rank: int,
    seed: int,
    evaluate_test: bool = True,
) -> dict[str, Any]:
    """Train a fresh model with optimizer ``label`` at ``lr``; the per-epoch history.

    Returns ``{"diverged": bool, "history": {"epoch", "seconds", "train_loss", "test_loss",
    "test_accuracy"}}`` (epoch 0 is the initial model). Minibatches: a fresh permutation of
    the rows per epoch from ``numpy.random.default_rng(seed)``.
    """
    torch = _torch()
    model = make_model(data.X.shape[1], hidden, 10, seed)
    opt = make_optimizer(label, list(model.parameters()), lr, rank)
    rng = np.random.default_rng(seed)
    n = data.X.shape[0]
    hist: dict[str, list[Any]] = {
        "epoch": [],
        "seconds": [],
        "train_loss": [],
        "test_loss": [],
        "test_accuracy": [],
    }
    seconds = 0.0

    def record(epoch: int) -> float:
        f, _ = _evaluate(model, data.X, data.y)
        tl, ta = _evaluate(model, data.X_test, data.y_test) if evaluate_test else (None, None)
        hist["epoch"].append(epoch)
        hist["seconds"].append(seconds)
        hist["train_loss"].append(f)
        hist["test_loss"].append(tl)
        hist["test_accuracy"].append(ta)
        return f

    f0 = record(0)
    diverged = False
    for epoch in range(1, epochs + 1):
        perm = torch.from_numpy(rng.permutation(n))
        start = time.perf_counter()
        try:
            for b in range(0, n, batch_size):
                idx = perm[b : b + batch_size]
                opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(data.X[idx]), data.y[idx])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss {float(loss)}")
                loss.backward()
                opt.step()
        except FloatingPointError:
            diverged = True
        seconds += time.perf_counter() - start
        if diverged:
            break
        f = record(epoch)
        if not math.isfinite(f) or f > DIVERGENCE_FACTOR * max(f0, 1.0):
            diverged = True
            break
    return {"diverged": diverged, "history": hist}


def _tuning_data(data: Data, rows: int, seed: int) -> Data:
    torch = _torch()
    if rows >= data.X.shape[0]:
        return data
    keep = np.sort(np.random.default_rng(seed + 1).permutation(data.X.shape[0])[:rows])
    keep = torch.from_numpy(keep)
    return Data(data.X[keep], data.y[keep], data.X_test, data.y_test)


def _at_time(hist: dict[str, list[Any]], budget: float) -> float:
    """The last training loss recorded within ``budget`` seconds."""
    best = hist["train_loss"][0]
    for s, f in zip(hist["seconds"], hist["train_loss"], strict=True):
        if s <= budget * (1 + 1e-12):
            best = f
    return best


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Winners at equal epochs (final training loss) and at equal wall time.

    The time budget is the total seconds of the fastest run that finished every epoch; each
    run is scored by the last training loss it recorded within that budget.

    Examples
    --------
    >>> h = lambda s, f: {"seconds": s, "train_loss": f}
    >>> runs = [{"label": "a", "skipped": None, "diverged": False, "history": h([0, 10], [2, 1])},
    ...         {"label": "b", "skipped": None, "diverged": False, "history": h([0, 4], [2, 1.5])}]
    >>> s = summarize(runs)
    >>> s["equal_epochs"]["winner"], s["equal_time"]["winner"], s["equal_time"]["seconds"]
    ('a', 'b', 4)
    """
    done = [r for r in runs if not r["skipped"] and not r["diverged"]]
    if not done:
        return {"equal_epochs": None, "equal_time": None}
    final = {r["label"]: r["history"]["train_loss"][-1] for r in done}
    budget = min(r["history"]["seconds"][-1] for r in done)
    timed = {r["label"]: _at_time(r["history"], budget) for r in done}
    return {
        "equal_epochs": {"winner": min(final, key=final.get), "train_loss": final},
        "equal_time": {"seconds": budget, "winner": min(timed, key=timed.get), "train_loss": timed},
    }


def train(
    labels: Sequence[str],
    data: Data,
    *,
    hidden: int = DEFAULT_HIDDEN,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH,
    rank: int = DEFAULT_RANK,
    lr_grid: Sequence[float] = DEFAULT_LR_GRID,
    tune_rows: int = DEFAULT_TUNE_ROWS,
    tune_epochs: int = DEFAULT_TUNE_EPOCHS,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Tune and train every optimizer of ``labels``; the ``runs`` of ``results.json``.

    ``progress(text)``, if given, is called after each tuning run and each full run.
    """
    n_params = sum(p.numel() for p in make_model(data.X.shape[1], hidden, 10, seed).parameters())
    tune = _tuning_data(data, tune_rows, seed)
    runs = []
    for label in labels:
        entry: dict[str, Any] = {
            "label": label,
            "optimizer": OPTIMIZERS[label][0],
            "lr": None,
            "lr_on_grid_edge": None,
            "tuning": {},
            "skipped": skip_reason(label, n_params, rank),
            "diverged": False,
            "final_train_loss": None,
            "final_test_accuracy": None,
            "seconds": None,
            "median_epoch_seconds": None,
            "history": None,
        }
        runs.append(entry)
        if entry["skipped"]:
            if progress is not None:
                progress(f"{label} skipped")
            continue
        scores = {}
        for lr in lr_grid:
            out = train_one(
                label,
                lr,
                tune,
                hidden=hidden,
                epochs=tune_epochs,
                batch_size=batch_size,
                rank=rank,
                seed=seed,
                evaluate_test=False,
            )
            f = out["history"]["train_loss"][-1]
            scores[lr] = None if out["diverged"] or not math.isfinite(f) else f
            if progress is not None:
                progress(f"{label} tune lr={lr:g}")
        entry["tuning"] = {f"{lr:g}": f for lr, f in scores.items()}
        finite = {lr: f for lr, f in scores.items() if f is not None}
        if not finite:
            entry["diverged"] = True
            continue
        lr = min(finite, key=lambda k: (finite[k], k))
        grid = sorted(lr_grid)
        entry["lr"] = lr
        entry["lr_on_grid_edge"] = len(grid) > 1 and lr in (grid[0], grid[-1])
        out = train_one(
            label,
            lr,
            data,
            hidden=hidden,
            epochs=epochs,
            batch_size=batch_size,
            rank=rank,
            seed=seed,
        )
        h = out["history"]
        per_epoch = np.diff(h["seconds"])
        entry.update(
            diverged=out["diverged"],
            history=h,
            final_train_loss=h["train_loss"][-1],
            final_test_accuracy=h["test_accuracy"][-1],
            seconds=h["seconds"][-1],
            median_epoch_seconds=float(np.median(per_epoch)) if len(per_epoch) else None,
        )
        if progress is not None:
            progress(f"{label} lr={lr:g}")
    return runs


def format_table(results: dict[str, Any]) -> str:
    """The text table: one row per optimizer, then the winners."""
    st = results["settings"]
    lines = [
        f"fashion_mnist MLP 784-{st['hidden']}-10: {st['parameters']} parameters in one param "
        f"group, {results['dataset']['n_train']} train / {results['dataset']['n_test']} test "
        f"rows, batch {st['batch_size']}, {st['epochs']} epochs, rank {st['rank']}",
        f"lr tuned per optimizer on {', '.join(f'{v:g}' for v in st['lr_grid'])} "
        f"({st['tune_epochs']} epoch(s) on {st['tune_rows']} training rows)",
        "",
    ]
    head = ["optimizer", "lr", "train loss", "test loss", "test acc", "time s", "median s/epoch"]
    rows = []
    for r in results["runs"]:
        if r["skipped"] or r["diverged"] or r["history"] is None:
            what = "skipped" if r["skipped"] else "diverged"
            rows.append([r["label"], what, *["-"] * (len(head) - 2)])
            continue
        h = r["history"]
        rows.append(
            [
                r["label"],
                f"{r['lr']:g}" + ("*" if r["lr_on_grid_edge"] else ""),
                f"{h['train_loss'][-1]:.4f}",
                f"{h['test_loss'][-1]:.4f}",
                f"{h['test_accuracy'][-1]:.4f}",
                f"{h['seconds'][-1]:.1f}",
                "-" if r["median_epoch_seconds"] is None else f"{r['median_epoch_seconds']:.2f}",
            ]
        )
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]

    def fmt_row(row: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    lines += [fmt_row(head), fmt_row(["-" * w for w in widths]), *map(fmt_row, rows)]
    if any(r["lr_on_grid_edge"] for r in results["runs"]):
        lines.append("* chosen lr is on the edge of the grid")
    lines += [f"{r['label']}: {r['skipped']}" for r in results["runs"] if r["skipped"]]
    s = results["summary"]
    if s["equal_epochs"] is not None:
        lines.append("")
        lines.append(
            f"equal epochs ({st['epochs']}): lowest training loss {s['equal_epochs']['winner']}"
        )
        lines.append(
            f"equal wall time ({s['equal_time']['seconds']:.1f} s, the fastest run's total): "
            f"lowest training loss {s['equal_time']['winner']}"
        )
    return "\n".join(lines)


def write_plot(results: dict[str, Any], path: str) -> str | None:
    """Training loss and test accuracy against epochs and seconds; why skipped, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'lowrank-precond[plot]')"
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    for r in results["runs"]:
        h = r["history"]
        if r["skipped"] or h is None:
            continue
        label = f"{r['label']} (lr={r['lr']:g})"
        (line,) = axes[0, 0].semilogy(h["epoch"], h["train_loss"], label=label)
        c = line.get_color()
        axes[0, 1].semilogy(h["seconds"], h["train_loss"], color=c)
        axes[1, 0].plot(h["epoch"], h["test_accuracy"], color=c)
        axes[1, 1].plot(h["seconds"], h["test_accuracy"], color=c)
    for ax in axes[:, 0]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 1]:
        ax.set_xlabel("training seconds")
    for ax in axes[0]:
        ax.set_ylabel("training loss")
    for ax in axes[1]:
        ax.set_ylabel("test accuracy")
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    st = results["settings"]
    fig.suptitle(
        f"Fashion-MNIST MLP ({st['parameters']} parameters), tuned lr per optimizer, "
        f"rank {st['rank']}"
    )
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a small MLP on Fashion-MNIST with every torch optimizer class: table, "
        "results.json, plot",
        description=(__doc__ or "").split("\n\n")[1] if __doc__ else None,
        epilog="Optimizers: " + ", ".join(OPTIMIZERS) + ". Needs torch and the Debian package "
        "dataset-fashion-mnist.",
    )
    p.add_argument(
        "--optimizers",
        metavar="LIST",
        default=None,
        help="comma-separated, from: " + ", ".join(OPTIMIZERS) + " (default all)",
    )
    p.add_argument("--hidden", metavar="H", default=str(DEFAULT_HIDDEN), help="hidden units")
    p.add_argument("--epochs", metavar="N", default=str(DEFAULT_EPOCHS), help="epochs")
    p.add_argument("--batch-size", metavar="B", default=str(DEFAULT_BATCH), help="batch size")
    p.add_argument("--rank", metavar="R", default=str(DEFAULT_RANK), help="rank (low-rank ones)")
    p.add_argument(
        "--lr-grid",
        metavar="LIST",
        default=None,
        help="learning rates tuned over (default "
        + ",".join(f"{v:g}" for v in DEFAULT_LR_GRID)
        + ")",
    )
    p.add_argument(
        "--tune-rows", metavar="M", default=str(DEFAULT_TUNE_ROWS), help="rows the lr is tuned on"
    )
    p.add_argument(
        "--tune-epochs", metavar="N", default=str(DEFAULT_TUNE_EPOCHS), help="epochs per tuning run"
    )
    p.add_argument(
        "--subset", metavar="M", default=None, help="train on M training rows (seeded choice)"
    )
    p.add_argument("--seed", metavar="S", default="0", help="seed of init, minibatches, subsets")
    p.add_argument("--threads", metavar="T", default=None, help="torch CPU threads")
    p.add_argument(
        "--out", metavar="DIR", default=DEFAULT_OUT, help="output folder (default ./%(default)s)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    if args.optimizers is None:
        labels = list(OPTIMIZERS)
    else:
        labels = [t.strip() for t in args.optimizers.split(",")]
        for t in labels:
            if t not in OPTIMIZERS:
                raise UsageError(
                    f"--optimizers: unknown optimizer {t!r}; expected one of "
                    + ", ".join(OPTIMIZERS)
                )
        if len(set(labels)) != len(labels):
            raise UsageError("--optimizers: an optimizer is listed twice")
    if args.lr_grid is None:
        grid = DEFAULT_LR_GRID
    else:
        grid = tuple(_float("--lr-grid", v) for v in args.lr_grid.split(","))
        bad = [v for v in grid if v <= 0]
        if bad:
            raise UsageError(f"--lr-grid: learning rates must be > 0, got {bad[0]:g}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out: {args.out!r} exists and is not a folder")
    return {
        "labels": labels,
        "hidden": _int("--hidden", args.hidden, 1),
        "epochs": _int("--epochs", args.epochs, 1),
        "batch_size": _int("--batch-size", args.batch_size, 1),
        "rank": _int("--rank", args.rank, 1),
        "lr_grid": grid,
        "tune_rows": _int("--tune-rows", args.tune_rows, 1),
        "tune_epochs": _int("--tune-epochs", args.tune_epochs, 1),
        "subset": None if args.subset is None else _int("--subset", args.subset, 2),
        "seed": _int("--seed", args.seed, 0),
        "threads": None if args.threads is None else _int("--threads", args.threads, 1),
    }


def run(args: argparse.Namespace) -> int:
    s = _settings(args)
    torch = _torch()
    if s["threads"] is not None:
        torch.set_num_threads(s["threads"])
    data = load_data(s["seed"], s["subset"])
    prepare_out(args.out)
    n_params = sum(p.numel() for p in make_model(784, s["hidden"], 10, 0).parameters())
    total = len(s["labels"]) * (len(s["lr_grid"]) + 1)
    quiet = args.quiet or not sys.stderr.isatty()
    started = time.perf_counter()
    with tqdm(total=total, desc="train", unit="run", disable=quiet, leave=False) as bar:

        def progress(text: str) -> None:
            bar.set_postfix_str(text, refresh=False)
            bar.update(1)

        runs = train(
            s["labels"],
            data,
            hidden=s["hidden"],
            epochs=s["epochs"],
            batch_size=s["batch_size"],
            rank=s["rank"],
            lr_grid=s["lr_grid"],
            tune_rows=s["tune_rows"],
            tune_epochs=s["tune_epochs"],
            seed=s["seed"],
            progress=progress,
        )
    results: dict[str, Any] = {
        "lowrank_precond": __version__,
        "dataset": {
            "name": "fashion_mnist",
            "n_train": int(data.X.shape[0]),
            "n_test": int(data.X_test.shape[0]),
            "features": int(data.X.shape[1]),
            "classes": 10,
        },
        "settings": {
            "hidden": s["hidden"],
            "parameters": int(n_params),
            "epochs": s["epochs"],
            "batch_size": s["batch_size"],
            "rank": s["rank"],
            "lr_grid": list(s["lr_grid"]),
            "tune_rows": min(s["tune_rows"], int(data.X.shape[0])),
            "tune_epochs": s["tune_epochs"],
            "seed": s["seed"],
            "threads": torch.get_num_threads(),
            "subset": s["subset"],
        },
        "runs": runs,
        "summary": summarize(runs),
        "definitions": {
            "train_loss": "mean cross-entropy on all training rows at the end of the epoch",
            "seconds": "wall time of the training steps (forward, backward, optimizer step); "
            "evaluations excluded",
            "equal_epochs": "lowest final training loss after all epochs",
            "equal_time": "lowest training loss recorded within the total seconds of the "
            "fastest run that finished every epoch",
            "lr": "the grid rate with the smallest training loss after tune_epochs on "
            "tune_rows training rows",
        },
    }
    results["settings"]["wall_seconds"] = time.perf_counter() - started
    table = format_table(results)
    print(table)
    notes = write_outputs(args.out, results, table, plot_file=PLOT_FILE, plot=write_plot)
    others = ["table.txt", *([PLOT_FILE] if results["plot"] else [])]
    print(f"\nwrote {os.path.join(args.out, 'results.json')}, {', '.join(others)}")
    for line in notes:
        print(line)
    print(f"total {results['settings']['wall_seconds']:.1f} s")
    return 0
