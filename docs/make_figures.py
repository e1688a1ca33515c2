"""Regenerate the measured tables and figures of the documentation by running the real code.

Writes (and overwrites)

* ``docs/_static/gallery/<dataset>.png``: the ``suboptimality.png`` that
  ``lowrank-precond compare --dataset <dataset>`` draws, for each bundled data set that loads;
* ``docs/_generated/gallery_body.rst``: per data set the figure and ``compare``'s table;
* ``docs/_generated/compare_summary.rst``: one table over all data sets (included by
  ``choosing.rst``, section "Measured on real data");
* ``docs/_static/gallery/bench.png`` and ``docs/_generated/bench_table.rst``: from
  ``lowrank-precond bench --json`` (included by ``benchmarks.rst``).

Everything runs in this process through :func:`lowrank_precond.cli.main`, exactly as the
shell commands do; the exact command lines, the machine and the package version are written
into the generated pages. A data set that cannot be loaded (missing ``data`` extra, missing
``heart_scale`` file) or whose run fails is skipped with a note on the page, and the script
still succeeds.

Usage (from the repository root)::

    python docs/make_figures.py                      # everything, full compare runs
    python docs/make_figures.py --quick              # compare --quick (CI-sized runs)
    python docs/make_figures.py --skip-bench --datasets breast_cancer,digits
    python docs/make_figures.py --bench-dims 10000,100000 --bench-repeat 3

then ``sphinx-build -W -b html docs docs/_build/html``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GENERATED = HERE / "_generated"
GALLERY = HERE / "_static" / "gallery"

#: the bundled data sets, in the order the gallery shows them
DATASETS = ("breast_cancer", "digits", "diabetes", "randhie", "heart_scale")
BENCH_DIMS = "10000,100000,1000000"


# --------------------------------------------------------------------------- helpers


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``lowrank-precond <argv>`` in this process: ``(exit code, stdout, stderr)``."""
    from lowrank_precond.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse errors
            rc = exc.code if isinstance(exc.code, int) else 2
    return rc, out.getvalue(), err.getvalue()


def command_line(argv: list[str]) -> str:
    return "lowrank-precond " + " ".join(shlex.quote(a) for a in argv)


def provenance() -> str:
    """One line: package version, git commit, date, machine."""
    import lowrank_precond

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "lowrank_precond"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit = commit + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    today = datetime.date.today().isoformat()
    machine = f"{platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}"
    return (
        f"lowrank_precond {lowrank_precond.__version__} (git {commit}), {today}, {machine}, "
        f"{platform.system()}"
    )


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(HERE.parent)}")


def literal(text: str) -> list[str]:
    return ["::", "", *("    " + ln if ln.strip() else "" for ln in text.splitlines()), ""]


def fmt(v: Any, spec: str = ".1e") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def list_table(header: list[str], rows: list[list[str]], widths: str | None = None) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append(f"   :widths: {widths}")
    lines.append("")
    for row in [header, *rows]:
        lines.append(f"   * - {row[0] or ' '}")
        lines.extend(f"     - {c or ' '}" for c in row[1:])
    return [*lines, ""]


# --------------------------------------------------------------------------- compare


def dataset_problem(name: str) -> str | None:
    """Why data set ``name`` cannot be loaded here, or None when it can."""
    from lowrank_precond.glm import datasets

    if name not in datasets.names():
        return "not a data set of this version of lowrank_precond"
    try:
        datasets.load(name)
    except (ImportError, FileNotFoundError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def run_compare(name: str, extra: list[str], workdir: Path) -> dict[str, Any]:
    """Run ``compare`` on one data set; return a record for the pages."""
    out = workdir / name
    argv = ["compare", "--dataset", name, *extra]
    record: dict[str, Any] = {"name": name, "command": command_line(argv)}
    why = dataset_problem(name)
    if why is not None:
        record["skipped"] = f"data set unavailable ({why})"
        return record
    start = time.perf_counter()
    rc, stdout, stderr = run_cli([*argv, "--out", str(out), "--quiet"])
    record["wall"] = time.perf_counter() - start
    results_path = out / "results.json"
    if rc != 0 or not results_path.exists():
        msg = (stderr.strip() or stdout.strip()).splitlines()
        record["skipped"] = f"compare exited with code {rc}: {msg[-1] if msg else 'no output'}"
        return record
    record["results"] = json.loads(results_path.read_text(encoding="utf-8"))
    table = out / "table.txt"
    record["table"] = table.read_text(encoding="utf-8") if table.exists() else stdout
    plot = out / "suboptimality.png"
    if plot.exists():
        GALLERY.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plot, GALLERY / f"{name}.png")
        record["figure"] = f"/_static/gallery/{name}.png"
    else:
        record["figure"] = None
        # a stale figure from an earlier run must not be shown next to new numbers
        (GALLERY / f"{name}.png").unlink(missing_ok=True)
    return record


def gallery_body(records: list[dict[str, Any]], extra: list[str], prov: str) -> str:
    quick = "--quick" in extra
    lines = [
        ".. This file is generated by docs/make_figures.py; do not edit.",
        "",
        f"Generated by ``python docs/make_figures.py{' --quick' if quick else ''}`` on {prov}.",
        "",
    ]
    if quick:
        lines += [
            ".. note::",
            "",
            "   These runs used ``--quick`` (few epochs and a three-point learning-rate grid), "
            "so they show",
            "   early progress only; run the commands without ``--quick`` for the full comparison.",
            "",
        ]
    for rec in records:
        name = rec["name"]
        lines += [name, "-" * len(name), ""]
        if "skipped" in rec:
            lines += [
                f"*Skipped:* {rec['skipped']}",
                "",
                "Reproduce with::",
                "",
                f"    {rec['command']}",
                "",
            ]
            continue
        ds = rec["results"].get("dataset", {})
        lines += [
            f"Family ``{ds.get('family', '?')}``, {ds.get('n_train', '?')} training / "
            f"{ds.get('n_test', '?')} test rows, {ds.get('unknowns', '?')} unknowns "
            f"(source: {ds.get('source', '?')}). Reproduce with::",
            "",
            f"    {rec['command']}",
            "",
        ]
        if rec.get("figure"):
            lines += [
                f".. figure:: {rec['figure']}",
                f"   :alt: f - f* against epochs and seconds on {name}",
                "   :width: 100%",
                "",
                f"   ``f - f*`` of each method at its tuned learning rate on {name}.",
                "",
            ]
        else:
            lines += ["*No plot* (matplotlib, the ``plot`` extra, is not installed).", ""]
        lines += ["The table ``compare`` printed:", "", *literal(rec["table"].rstrip())]
    return "\n".join(lines)


def compare_summary(records: list[dict[str, Any]], extra: list[str], prov: str) -> str:
    done = [r for r in records if "results" in r]
    quick = "--quick" in extra
    lines = [
        ".. This file is generated by docs/make_figures.py; do not edit.",
        "",
    ]
    if not done:
        lines += [
            "No measurements yet: run ``python docs/make_figures.py`` (it runs ",
            "``lowrank-precond compare`` on each bundled data set).",
            "",
        ]
        lines += [f"* {r['name']}: {r.get('skipped', 'not run')}" for r in records]
        return "\n".join(lines)
    labels: list[str] = []
    for r in done:
        for m in r["results"].get("methods", []):
            if m["label"] not in labels:
                labels.append(m["label"])
    first = done[0]["results"].get("settings", {})
    epochs = first.get("epochs", "?")
    lines += [
        f"Final relative suboptimality ``(f - f*) / max(|f*|, 1)`` of the training objective "
        f"after {epochs} full-batch epochs, each method at the learning rate that did best on "
        f"the grid (``lowrank-precond compare``; low-rank methods at rank "
        f"{_rank_of(done)}; the best value of each row in bold). Produced by "
        f"``docs/make_figures.py{' --quick' if quick else ''}`` on {prov}; the "
        f":doc:`gallery` has the curves, the tables and the commands.",
        "",
    ]
    if quick:
        lines += [
            ".. note::",
            "",
            "   Quick runs (``--quick``: few epochs, three learning rates): early progress only.",
            "",
        ]
    rows = []
    for r in done:
        res = r["results"]
        by_label = {m["label"]: m for m in res.get("methods", [])}
        values = {}
        for label in labels:
            m = by_label.get(label)
            if m is None:
                values[label] = None
            elif m.get("diverged"):
                values[label] = "diverged"
            else:
                values[label] = m.get("final_rel_subopt")
        finite = [v for v in values.values() if isinstance(v, float)]
        best = min(finite) if finite else None
        cells = []
        for label in labels:
            v = values[label]
            if v is None:
                cells.append("-")
            elif v == "diverged":
                cells.append("diverged")
            else:
                text = fmt(v)
                cells.append(f"**{text}**" if best is not None and v == best else text)
        ds = res.get("dataset", {})
        rows.append([f"{r['name']} ({ds.get('family', '?')}, {ds.get('unknowns', '?')})", *cells])
    lines += list_table(["data set (family, unknowns)", *labels], rows)
    skipped = [r for r in records if "skipped" in r]
    if skipped:
        lines += ["Not measured here:", ""]
        lines += [f"* ``{r['name']}``: {r['skipped']}" for r in skipped]
        lines.append("")
    lines += [
        "These are small GLMs (tens to hundreds of unknowns): they show how the methods compare",
        "at equal tuning effort on real data, not how they scale (see :doc:`benchmarks`).",
        "``adagram`` uses the published direction and ``adagram_sym`` the symmetric one",
        "(:doc:`theory`); ``full_matrix_adagrad`` is the exact method the rank-r ones approximate.",
    ]
    return "\n".join(lines)


def _rank_of(done: list[dict[str, Any]]) -> str:
    ranks = set()
    for r in done:
        for m in r["results"].get("methods", []):
            rank = (m.get("options") or {}).get("rank")
            if rank is None and "rank=" in str(m.get("preconditioner", "")):
                text = str(m["preconditioner"]).split("rank=", 1)[1]
                rank = text.split(",", 1)[0].split(")", 1)[0]
            if rank is not None:
                ranks.add(str(rank))
    return ", ".join(sorted(ranks)) or "?"


# --------------------------------------------------------------------------- bench


def run_bench(dims: str, repeat: int, extra: list[str], prov: str) -> None:
    argv = ["bench", "--json", "--dims", dims, "--repeat", str(repeat), *extra]
    rc, stdout, stderr = run_cli(argv)
    lines = [".. This file is generated by docs/make_figures.py; do not edit.", ""]
    if rc != 0:
        msg = (stderr.strip() or stdout.strip()).splitlines()
        lines += [
            f"*Not measured:* ``{command_line(argv)}`` exited with code {rc}"
            + (f": {msg[-1]}" if msg else "."),
            "",
        ]
        write(GENERATED / "bench_table.rst", "\n".join(lines))
        return
    rows = json.loads(stdout)
    figure = bench_plot(rows, GALLERY / "bench.png")
    lines += [
        f"Measured with ``{command_line(argv)}`` on {prov} (best of {repeat} calls per cell; "
        "the machine may have been shared, so read ratios rather than absolute times).",
        "",
    ]
    if figure:
        lines += [
            ".. figure:: /_static/gallery/bench.png",
            "   :alt: milliseconds per step against d for each method",
            "   :width: 100%",
            "",
            "   Time per ``update`` against ``d`` (log-log), with the memory-bandwidth floor "
            "(read and write ``U`` and ``V`` once, in place).",
            "",
        ]
    groups: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["backend"], row["device"], row["dtype"], row["rank"])
        groups.setdefault(key, []).append(row)
    for (backend, device, dtype, rank), group in groups.items():
        lines += [f"**{backend}** ({device}), {dtype}, rank {rank}:", ""]
        table_rows = [
            [
                f"{row['d']:,}",
                row["method"],
                f"{row['ms']:.3g}",
                f"{row['ratio_floor']:.3g}",
                "-" if row["ratio_adagrad"] is None else f"{row['ratio_adagrad']:.3g}",
            ]
            for row in group
        ]
        lines += list_table(
            ["d", "method", "ms / step", "x floor", "x adagrad"], table_rows, "12 40 16 16 16"
        )
    write(GENERATED / "bench_table.rst", "\n".join(lines))


def bench_plot(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        path.unlink(missing_ok=True)
        return False
    keys = sorted({(r["backend"], r["dtype"], r["rank"]) for r in rows})
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 4.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        sub = [r for r in rows if (r["backend"], r["dtype"], r["rank"]) == key]
        methods = list(dict.fromkeys(r["method"] for r in sub))
        for method in methods:
            pts = sorted((r["d"], r["ms"]) for r in sub if r["method"] == method)
            ax.plot(*zip(*pts, strict=True), marker="o", label=method)
        floor = sorted({(r["d"], r["floor_ms"]) for r in sub})
        ax.plot(*zip(*floor, strict=True), "k--", label="floor (read+write U, V in place)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("d")
        ax.set_ylabel("ms per update")
        ax.set_title(f"{key[0]}, {key[1]}, rank {key[2]}")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path.relative_to(HERE.parent)}")
    return True


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to compare")
    parser.add_argument(
        "--datasets", default=",".join(DATASETS), help="comma-separated (default: all bundled)"
    )
    parser.add_argument(
        "--compare-args", default="", help="extra arguments for compare, e.g. '--epochs 100'"
    )
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--bench-dims", default=BENCH_DIMS, help=f"default {BENCH_DIMS}")
    parser.add_argument("--bench-repeat", type=int, default=5)
    parser.add_argument(
        "--bench-args", default="", help="extra arguments for bench, e.g. '--ranks 5,20'"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS/OpenMP threads (default 1: reproducible on a shared machine; 0 = no limit)",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))  # the checkout's package, also when not installed
    limit: Any = contextlib.nullcontext()
    if args.threads > 0:
        # before NumPy/SciPy load their BLAS (when run as a script), and for pools already
        # loaded (when imported)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
        import numpy  # noqa: F401
        import scipy.linalg  # noqa: F401
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(limits=args.threads)
    with limit:
        _run(args, threads=args.threads)
    return 0


def _run(args: argparse.Namespace, threads: int) -> None:
    prov = provenance() + (f", {threads} BLAS thread(s)" if threads > 0 else "")
    if not args.skip_compare:
        extra = shlex.split(args.compare_args) + (["--quick"] if args.quick else [])
        names = [n for n in args.datasets.split(",") if n]
        records = []
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                print(f"compare {name} ...", flush=True)
                rec = run_compare(name, extra, Path(tmp))
                status = rec.get("skipped") or f"done in {rec['wall']:.0f} s"
                print(f"  {name}: {status}", flush=True)
                records.append(rec)
        write(GENERATED / "gallery_body.rst", gallery_body(records, extra, prov))
        write(GENERATED / "compare_summary.rst", compare_summary(records, extra, prov))
    if not args.skip_bench:
        print("bench ...", flush=True)
        run_bench(args.bench_dims, args.bench_repeat, shlex.split(args.bench_args), prov)


if __name__ == "__main__":
    sys.exit(main())
