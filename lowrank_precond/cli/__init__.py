"""The ``lowrank-precond`` command.

Subcommands (each a module of this package with ``add_parser(subparsers)`` and
``run(args) -> int``):

``info``     package version, backends with versions and devices, BLAS threads, missing extras
``compare``  fit GLMs on bundled real data with every method; table, ``results.json``, plot
``bench``    ms per step of every method against the memory-bandwidth floor
``train``    a small MLP on Fashion-MNIST with every torch optimizer class; table, JSON, plot
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from lowrank_precond import __version__

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

#: subcommand name -> module (relative to this package)
SUBCOMMANDS = ("info", "compare", "bench", "train")


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="lowrank-precond",
        description="Low-rank full-matrix adaptive preconditioning: compare methods on real "
        "GLMs, benchmark step times, inspect backends.",
    )
    parser.add_argument("--version", action="version", version=f"lowrank-precond {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"lowrank_precond.cli.{name}")
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input, 130 interrupted).

    ``main(["compare", "--quick"])`` does what ``lowrank-precond compare --quick`` does in
    the shell (``argv=None`` reads ``sys.argv``). Bad input prints one line to stderr and
    returns 2; an interrupt (Ctrl-C) prints one line and returns 130; ``--help`` and
    ``--version`` exit through ``SystemExit`` as argparse does.

    Examples
    --------
    >>> import contextlib, io, json
    >>> import lowrank_precond
    >>> from lowrank_precond.cli import main
    >>> out, err = io.StringIO(), io.StringIO()
    >>> with contextlib.redirect_stdout(out):
    ...     code = main(["info", "--json"])
    >>> code, json.loads(out.getvalue())["lowrank_precond"] == lowrank_precond.__version__
    (0, True)
    >>> with contextlib.redirect_stderr(err):
    ...     code = main(["compare", "--rank", "0"])
    >>> code, err.getvalue().strip()
    (2, 'lowrank-precond compare: error: --rank: must be >= 1, got 0')
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except UsageError as exc:
        print(f"lowrank-precond {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lowrank-precond {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
