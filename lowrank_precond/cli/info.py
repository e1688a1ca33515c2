"""``lowrank-precond info``: versions, backends, devices, BLAS threads, missing extras."""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform

from lowrank_precond import __version__, backends

#: extra -> modules it provides
EXTRAS = {
    "torch": ("torch",),
    "cupy": ("cupy",),
    "fast": ("numba",),
    "plot": ("matplotlib",),
    "data": ("sklearn", "statsmodels"),
    "dask": ("dask",),
    "test": ("pytest", "hypothesis", "array_api_strict", "xdist", "importlinter"),
    "bench": ("asv",),
    "docs": ("sphinx", "numpydoc", "pydata_sphinx_theme"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="print package version, backends (version, devices), BLAS threads, missing extras",
        description="Print the package version, every installed array backend with its version "
        "and devices, BLAS/OpenMP thread pools (threadpoolctl) and which extras are missing.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(run=run)


def collect() -> dict:
    """Everything ``info`` prints, as a dict."""
    from threadpoolctl import threadpool_info

    missing = {
        extra: [m for m in modules if importlib.util.find_spec(m) is None]
        for extra, modules in EXTRAS.items()
    }
    return {
        "lowrank_precond": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backends": backends.available(),
        "threadpools": [
            {k: pool.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
            for pool in threadpool_info()
        ],
        "missing_extras": {extra: mods for extra, mods in missing.items() if mods},
    }


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(
        f"lowrank_precond {info['lowrank_precond']} (Python {info['python']}, {info['platform']})"
    )
    print("backends:")
    for name in backends.BACKENDS:
        entry = info["backends"].get(name)
        if entry is None:
            print(f"  {name:<17} not installed")
        else:
            devices = ", ".join(entry["devices"]) or "no usable device"
            print(f"  {name:<17} {entry['version']:<14} devices: {devices}")
    print("thread pools:")
    for pool in info["threadpools"]:
        print(
            f"  {pool['user_api']:<7} {pool['internal_api']:<10} threads={pool['num_threads']}"
            f" version={pool['version']}"
        )
    if info["missing_extras"]:
        print("missing extras:")
        for extra, mods in info["missing_extras"].items():
            print(
                f"  {extra:<6} (missing {', '.join(mods)}): pip install 'lowrank-precond[{extra}]'"
            )
    else:
        print("missing extras: none")
    return 0
