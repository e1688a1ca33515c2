"""Sphinx configuration for lowrank_precond.

Build (warnings are errors)::

    sphinx-build -W -b html docs docs/_build/html

Offline: no intersphinx inventories are fetched. ``docs/make_figures.py`` regenerates the
measured tables and figures that the pages include (``docs/_generated``, ``docs/_static``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

sys.path.insert(0, os.path.abspath(".."))

import lowrank_precond  # noqa: E402

project = "lowrank_precond"
author = "lowrank_precond developers"
copyright = "2026, lowrank_precond developers"
version = release = lowrank_precond.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "numpydoc",
]
autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "none"
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()
# the docstrings write math in plain text (``G^{-1/2} g``); keep Sphinx from guessing roles
default_role = "literal"
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}  # offline: no inventories
templates_path = ["_templates"]
# docs/_generated holds include fragments (written by make_figures.py), not pages
exclude_patterns = ["_build", "_generated", "_templates"]
html_theme = "pydata_sphinx_theme"
html_title = "lowrank_precond"
html_static_path = ["_static"]
html_theme_options = {"navigation_with_keys": False}
nitpicky = False


# --------------------------------------------------------------------------- CLI reference


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help_text(parser: argparse.ArgumentParser) -> str:
    """``parser.format_help()`` at a fixed width, independent of the terminal."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "96"
    try:
        return parser.format_help()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


class CliHelp(SphinxDirective):
    """``.. lowrank-precond-cli::`` renders the ``lowrank-precond`` command from its parser.

    For the main command and every subcommand: a ``program`` directive, the ``--help`` text as
    a literal block and one ``option`` directive per option (so ``:option:`` can link to
    them). Generated at build time from :func:`lowrank_precond.cli.build_parser`, so the page
    cannot drift from the code.
    """

    has_content = False

    def run(self) -> list[nodes.Node]:
        from lowrank_precond.cli import build_parser

        parser = build_parser()
        lines: list[str] = []

        def emit(prog: str, sub: argparse.ArgumentParser, title: str | None) -> None:
            if title is not None:
                lines.extend([f".. rubric:: {title}", ""])
            lines.extend([f".. program:: {prog}", "", ".. code-block:: text", ""])
            lines.extend("   " + ln if ln.strip() else "" for ln in _help_text(sub).splitlines())
            lines.append("")
            for action in sub._actions:
                if not action.option_strings or action.help == argparse.SUPPRESS:
                    continue
                if isinstance(action, argparse._HelpAction):
                    continue
                names = ", ".join(
                    f"{o} {action.metavar or action.dest.upper()}" if action.nargs != 0 else o
                    for o in action.option_strings
                )
                help_text = (action.help or "").replace("%(default)s", str(action.default))
                help_text = help_text.replace("%(prog)s", prog).replace("*", r"\*")
                # ``--flag`` as literal text (no smart-dash, no markup surprises)
                help_text = re.sub(r"(?<![\w`])(--?[A-Za-z][\w-]*)", r"``\1``", help_text)
                lines.extend([f".. option:: {names}", "", f"   {help_text}", ""])

        emit("lowrank-precond", parser, None)
        for name, sub in _subparsers(parser).items():
            emit(f"lowrank-precond {name}", sub, f"lowrank-precond {name}")
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="<lowrank-precond --help>"), 0, container)
        return container.children


def setup(app):  # noqa: ANN001, ANN201 - Sphinx extension hook
    app.add_directive("lowrank-precond-cli", CliHelp)
    return {"parallel_read_safe": True}
