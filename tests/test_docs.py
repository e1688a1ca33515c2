"""The documentation keeps up with the code (issue 9).

* every public name has a real docstring (a dataclass's generated ``Name(field, ...)`` does
  not count; module-level data needs a ``#:`` comment) with an ``Examples`` section
  (functions and classes), and is listed in ``docs/api.rst``;
* the README's two set-up commands appear verbatim in ``docs/getting_started.rst``;
* every Python example of ``docs/getting_started.rst`` runs as written, and so does every one
  of ``docs/scaling.rst`` (skipping, with the reason, when its optional extra is missing);
* with numpydoc installed (the ``docs`` extra), every public docstring parses cleanly.

The Sphinx build itself (``sphinx-build -W``) is a separate CI step: the test extras do not
include Sphinx.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import importlib.util
import inspect
import io
import re
import sys
import textwrap
import types
import warnings
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API_RST = DOCS / "api.rst"

#: modules whose whole ``__all__`` is public API (``lowrank_precond.torch`` added with torch)
PUBLIC_MODULES = [
    "lowrank_precond.backends",
    "lowrank_precond.linalg",
    "lowrank_precond.preconditioners",
    "lowrank_precond.glm",
    "lowrank_precond.glm.datasets",
    "lowrank_precond.optim.scipy",
]
if importlib.util.find_spec("torch") is not None:
    PUBLIC_MODULES.append("lowrank_precond.torch")

#: public names outside those modules: the top-level entry points and the CLI's entry point
EXTRA_NAMES = [
    ("lowrank_precond", "minimize"),
    ("lowrank_precond", "scipy_method"),
    ("lowrank_precond.cli", "main"),
]


def public_names() -> list[tuple[str, str]]:
    names = []
    for module in PUBLIC_MODULES:
        mod = importlib.import_module(module)
        names += [(module, name) for name in mod.__all__]
    return names + EXTRA_NAMES


PUBLIC = public_names()
IDS = [f"{m}.{n}" for m, n in PUBLIC]


def _resolve(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def _is_data(obj: Any) -> bool:
    return not (inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj))


# --------------------------------------------------------------------------- docstrings


def _dataclass_default_doc(obj: Any) -> bool:
    """True when ``obj.__doc__`` is the ``Name(field, ...)`` text ``@dataclass`` generates."""
    if not (inspect.isclass(obj) and dataclasses.is_dataclass(obj)):
        return False
    doc = (obj.__doc__ or "").strip()
    try:
        generated = obj.__name__ + str(inspect.signature(obj)).replace(" -> None", "")
    except (TypeError, ValueError):
        generated = None
    return doc == generated or re.fullmatch(rf"{re.escape(obj.__name__)}\(.*\)", doc) is not None


def own_docstring(obj: Any) -> str:
    """The object's own docstring ("" when missing or inherited/generated)."""
    if inspect.ismodule(obj) or inspect.isroutine(obj):
        return inspect.cleandoc(obj.__doc__ or "")
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__") or ""
        if _dataclass_default_doc(obj):
            return ""
        return inspect.cleandoc(doc)
    raise TypeError(f"not a documented kind of object: {obj!r}")


def _attribute_comment(module: str, name: str, seen: set[str] | None = None) -> str:
    """The ``#:`` comment (or the string after the assignment) of ``module.name``; follows
    ``from X import name`` re-exports. "" when there is none."""
    seen = set() if seen is None else seen
    if module in seen:
        return ""
    seen.add(module)
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return ""
    source = Path(spec.origin).read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source)
    for i, node in enumerate(tree.body):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            comment = []
            j = node.lineno - 2
            while j >= 0 and lines[j].strip().startswith("#:"):
                comment.insert(0, lines[j].strip()[2:].strip())
                j -= 1
            if comment:
                return " ".join(comment)
            after = tree.body[i + 1] if i + 1 < len(tree.body) else None
            if (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                return after.value.value.strip()
            return ""
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if any((a.asname or a.name) == name for a in node.names):
                return _attribute_comment(node.module, name, seen)
    return ""


def docstring_of(module: str, name: str) -> str:
    obj = _resolve(module, name)
    if _is_data(obj):
        return _attribute_comment(module, name)
    return own_docstring(obj)


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=IDS)
def test_public_name_has_docstring(module: str, name: str) -> None:
    doc = docstring_of(module, name)
    assert len(doc.split()) >= 3, (
        f"{module}.{name} has no real docstring (data: add a '#:' comment above it)"
    )


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=IDS)
def test_public_name_has_examples(module: str, name: str) -> None:
    obj = _resolve(module, name)
    if _is_data(obj) or inspect.ismodule(obj):
        pytest.skip("data and modules need no Examples section")
    doc = own_docstring(obj)
    assert re.search(r"^Examples\n-{8,}\n", doc, flags=re.M), (
        f"{module}.{name}: the docstring has no numpydoc 'Examples' section"
    )
    assert ">>>" in doc.split("Examples", 1)[1], f"{module}.{name}: 'Examples' has no doctest"


def test_dataclass_generated_docstring_is_rejected() -> None:
    @dataclasses.dataclass
    class Undocumented:
        a: int
        b: float = 0.0

    @dataclasses.dataclass
    class Documented:
        """Two numbers that belong together."""

        a: int

    assert own_docstring(Undocumented) == ""
    assert own_docstring(Documented) == "Two numbers that belong together."


# --------------------------------------------------------------------------- API reference


def api_references(text: str) -> set[str]:
    """Fully qualified names listed in ``autosummary`` blocks and ``auto*`` directives,
    resolved against the ``currentmodule`` / ``module`` in force."""
    refs: set[str] = set()
    current = ""
    in_autosummary = False
    for line in text.splitlines():
        m = re.match(r"\.\. (?:py:)?(?:currentmodule|module)::\s*(\S+)", line)
        if m:
            current = "" if m.group(1) == "None" else m.group(1)
            in_autosummary = False
            continue
        m = re.match(r"\.\. auto(?:function|class|data|attribute|module|method)::\s*(\S+)", line)
        if m:
            target = m.group(1)
            refs.add(target if "." in target or not current else f"{current}.{target}")
            in_autosummary = False
            continue
        if re.match(r"\.\. autosummary::", line):
            in_autosummary = True
            continue
        if in_autosummary:
            if line.strip() == "" or line.lstrip().startswith(":"):
                continue
            if not line.startswith(" "):
                in_autosummary = False
                continue
            entry = line.strip().lstrip("~")
            if entry.startswith("lowrank_precond."):
                refs.add(entry)
            else:
                refs.add(f"{current}.{entry}" if current else entry)
    return refs


def _resolve_dotted(dotted: str) -> Any:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def is_referenced(module: str, name: str, refs: set[str]) -> bool:
    if f"{module}.{name}" in refs:
        return True
    obj = _resolve(module, name)
    return any(r.rsplit(".", 1)[-1] == name and _resolve_dotted(r) is obj for r in refs)


API_REFS = api_references(API_RST.read_text(encoding="utf-8"))


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=IDS)
def test_public_name_in_api_reference(module: str, name: str) -> None:
    assert is_referenced(module, name, API_REFS), (
        f"{module}.{name} is missing from docs/api.rst (add it to an autosummary list)"
    )


def test_api_reference_parser() -> None:
    text = (
        ".. currentmodule:: lowrank_precond.linalg\n\n.. autosummary::\n   :toctree: g\n\n"
        "   LowRank\n   ~lowrank_precond.glm.objective\n\nText.\n\n"
        ".. autofunction:: lowrank_precond.backends.get\n"
    )
    refs = api_references(text)
    assert refs == {
        "lowrank_precond.linalg.LowRank",
        "lowrank_precond.glm.objective",
        "lowrank_precond.backends.get",
    }
    assert is_referenced("lowrank_precond.linalg", "LowRank", refs)
    assert not is_referenced("lowrank_precond.linalg", "Factored", refs)


def test_api_reference_documents_the_cli() -> None:
    text = API_RST.read_text(encoding="utf-8")
    assert ".. lowrank-precond-cli::" in text
    assert "lowrank-precond-cli" in (DOCS / "conf.py").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- README


def readme_command(marker: str) -> str:
    """The first command line of the ```bash block after ``<!-- ci:marker -->`` (as
    ``.ci/run`` reads it)."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index(f"<!-- ci:{marker} -->")
    in_block = False
    for line in lines[start + 1 :]:
        if not in_block and line.startswith("```bash"):
            in_block = True
        elif in_block and line.startswith("```"):
            break
        elif in_block and line.strip():
            return line.strip()
    raise AssertionError(f"README.md: no bash command after <!-- ci:{marker} -->")


@pytest.mark.parametrize("marker", ["main", "test"])
def test_readme_commands_in_getting_started(marker: str) -> None:
    command = readme_command(marker)
    page = (DOCS / "getting_started.rst").read_text(encoding="utf-8")
    code_lines = {ln.strip() for ln in page.splitlines() if ln.startswith("   ")}
    assert command in code_lines, (
        f"the README's ci:{marker} command is not verbatim in docs/getting_started.rst:\n{command}"
    )


# --------------------------------------------------------------------------- examples


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line, code)`` of every ``.. code-block:: python`` in an rst file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == ".. code-block:: python":
            start = i + 1
            body = []
            i += 1
            while i < len(lines) and (lines[i].startswith("   ") or not lines[i].strip()):
                body.append(lines[i][3:])
                i += 1
            blocks.append((start, "\n".join(body).strip("\n") + "\n"))
        else:
            i += 1
    return blocks


GETTING_STARTED = python_blocks(DOCS / "getting_started.rst")


def test_getting_started_has_examples_for_every_audience() -> None:
    code = "\n".join(c for _, c in GETTING_STARTED)
    for needle in (
        "lowrank_precond.linalg",
        "lowrank_precond.torch",
        "lp.minimize",
        "lp.scipy_method",
        "preconditioners",
    ):
        assert needle in code, f"getting_started.rst has no example using {needle}"


@pytest.mark.parametrize(
    "code", [c for _, c in GETTING_STARTED], ids=[f"line{n}" for n, _ in GETTING_STARTED]
)
def test_getting_started_example_runs(code: str) -> None:
    if "import torch" in code:
        pytest.importorskip("torch")
    if "datasets.load" in code:
        pytest.importorskip("sklearn")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(code, "getting_started.rst", "exec"), {"__name__": "__docs__"})
    assert out.getvalue().strip(), "each example prints its result"


SCALING = python_blocks(DOCS / "scaling.rst")


@pytest.mark.parametrize("code", [c for _, c in SCALING], ids=[f"line{n}" for n, _ in SCALING])
def test_scaling_example_runs(code: str) -> None:
    if "import dask" in code:
        pytest.importorskip(
            "dask", reason="dask is not installed (pip install 'lowrank-precond[dask]')"
        )
    if "datasets.load" in code:
        pytest.importorskip("sklearn")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(code, "scaling.rst", "exec"), {"__name__": "__docs__"})
    assert out.getvalue().strip(), "each example prints its result"


ARCHITECTURE = python_blocks(DOCS / "architecture.rst")


def test_architecture_worked_example_runs() -> None:
    """The worked example of adding a preconditioner runs as written (it asserts its results)."""
    assert ARCHITECTURE, "docs/architecture.rst has no python example"
    module = types.ModuleType("architecture_example")  # dataclasses look their module up
    sys.modules[module.__name__] = module
    try:
        for _, code in ARCHITECTURE:
            exec(compile(textwrap.dedent(code), "architecture.rst", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]


# --------------------------------------------------------------------------- numpydoc


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=IDS)
def test_docstring_parses_with_numpydoc(module: str, name: str) -> None:
    docscrape = pytest.importorskip("numpydoc.docscrape")
    obj = _resolve(module, name)
    if _is_data(obj) or inspect.ismodule(obj):
        pytest.skip("data comments and module docstrings are free-form")
    doc = own_docstring(obj)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parsed = docscrape.NumpyDocString(doc)
    if "Parameters" in doc and inspect.isroutine(obj):
        assert parsed["Parameters"], f"{module}.{name}: 'Parameters' did not parse"
