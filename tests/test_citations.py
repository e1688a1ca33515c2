"""The package cites only documentation its users have: ``docs/theory.rst``.

* no file under ``lowrank_precond/`` mentions ``ALGORITHMS.md`` (the development
  specification, not shipped), an issue number, or a bare specification section number such
  as ``(A.6)``, ``B.2.2`` or ``(section B)``;
* every ``:ref:`theory-...``` role and every ``docs/theory.rst#theory-...`` pointer in the
  package names a label of ``docs/theory.rst``, and that label sits directly before a
  section title (so a ``:ref:`` without an explicit title resolves);
* every check tag such as ``[A05]`` or ``[F01]-[F04]`` is listed in the "Checked identities"
  section of ``docs/theory.rst``.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lowrank_precond"
THEORY = ROOT / "docs" / "theory.rst"

SUFFIXES = {".py", ".pyi", ".rst", ".md", ".txt", ".toml", ".cfg", ".json"}

#: ``.. _label:`` lines of an rst file
LABEL_RE = re.compile(r"^\.\. _([A-Za-z0-9_.:+-]+):\s*$")
#: ``:ref:`theory-x``` or ``:ref:`text <theory-x>``` (Sphinx labels are case-insensitive)
REF_RE = re.compile(r":ref:`(?:[^`<]*<)?\s*(theory[A-Za-z0-9_.:+-]*)\s*>?`")
#: a ``:ref:`` role broken over a line (its label would not be seen by the check above)
BROKEN_REF_RE = re.compile(r":ref:`[^`]*$")
#: ``docs/theory.rst#theory-x``
POINTER_RE = re.compile(r"docs/theory\.rst#([A-Za-z0-9_-]+(?:[.:+][A-Za-z0-9_-]+)*)")
#: issue numbers: ``issue #12``, ``issue 12``, ``Issue 12``, ``issues 3 and 4``
ISSUE_RE = re.compile(r"\bissues?\s*#?\s*\d+", re.IGNORECASE)
#: bare section numbers of the development specification: ``A.6``, ``B.2.2``, ``(section B)``
SECTION_RE = re.compile(r"(?<![\w.])[A-G]\.\d+(?:\.\d+)?(?!\w)|\bsections? [A-G]\b")
#: a bracketed group of check tags: ``[A05]``, ``[B14, B13]``, ``[F01-F04]``
TAG_GROUP_RE = re.compile(r"\[((?:[A-G]\d{2})(?:\s*(?:,|-|–|and)\s*[A-G]\d{2})*)\]")
TAG_RE = re.compile(r"[A-G]\d{2}")
#: how docs/theory.rst lists a check: ``- **[A05]** ...``
LISTED_TAG_RE = re.compile(r"^\s*[-*] \*\*\[([A-G]\d{2})\]\*\*", re.MULTILINE)


def _package_files() -> list[Path]:
    return sorted(
        p
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts
    )


def _lines():
    for path in _package_files():
        rel = path.relative_to(ROOT)
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            yield f"{rel}:{lineno}", line


def _theory_labels() -> dict[str, bool]:
    """Each label of docs/theory.rst -> whether a section title follows it directly."""
    lines = THEORY.read_text(encoding="utf-8").splitlines()
    labels: dict[str, bool] = {}
    for i, line in enumerate(lines):
        m = LABEL_RE.match(line)
        if not m:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        titled = (
            j + 1 < len(lines)
            and bool(lines[j].strip())
            and not lines[j].startswith(("..", " "))
            and re.fullmatch(r"([=\-~^\"'`#*+<>])\1+", lines[j + 1].strip() or "x") is not None
            and len(lines[j + 1].rstrip()) >= len(lines[j].rstrip())
        )
        labels[m.group(1).lower()] = titled
    return labels


def test_no_algorithms_md():
    bad = [f"{where}: {line.strip()}" for where, line in _lines() if "ALGORITHMS.md" in line]
    assert not bad, "cite docs/theory.rst (see its labels) instead of ALGORITHMS.md:\n" + "\n".join(
        bad
    )


def test_no_issue_numbers():
    bad = [f"{where}: {line.strip()}" for where, line in _lines() if ISSUE_RE.search(line)]
    assert not bad, "issue numbers mean nothing to users; say what it is about:\n" + "\n".join(bad)


def test_no_bare_section_numbers():
    bad = [f"{where}: {line.strip()}" for where, line in _lines() if SECTION_RE.search(line)]
    assert not bad, (
        "bare specification section numbers (A.6, B.2.2, section B) cite ALGORITHMS.md; use "
        ":ref:`theory-...` (docs/theory.rst labels) instead:\n" + "\n".join(bad)
    )


def test_theory_labels_are_titled_sections():
    labels = _theory_labels()
    assert "theory" in labels and "theory-checks" in labels
    untitled = sorted(name for name, titled in labels.items() if not titled)
    assert not untitled, f"labels not directly before a section title: {untitled}"


def test_cited_theory_labels_exist():
    labels = _theory_labels()
    bad = []
    for where, line in _lines():
        cited = REF_RE.findall(line) + POINTER_RE.findall(line)
        bad += [f"{where}: {name}" for name in cited if name.lower() not in labels]
        if BROKEN_REF_RE.search(line):
            bad.append(f"{where}: :ref: role broken across lines")
    assert not bad, "unknown docs/theory.rst labels:\n" + "\n".join(bad)


def test_cited_check_tags_are_listed():
    listed = set(LISTED_TAG_RE.findall(THEORY.read_text(encoding="utf-8")))
    assert {"A05", "B07", "F02"} <= listed  # the list itself is there
    bad = []
    for where, line in _lines():
        for group in TAG_GROUP_RE.findall(line):
            bad += [f"{where}: [{tag}]" for tag in TAG_RE.findall(group) if tag not in listed]
    assert not bad, "check tags not listed in docs/theory.rst, Checked identities:\n" + "\n".join(
        bad
    )


def test_theory_tags_are_listed():
    """Every tag docs/theory.rst cites in its prose is in its own list."""
    text = THEORY.read_text(encoding="utf-8")
    listed = set(LISTED_TAG_RE.findall(text))
    cited = {tag for group in TAG_GROUP_RE.findall(text) for tag in TAG_RE.findall(group)}
    cited |= {
        tag
        for m in re.finditer(r"\\text\{\[([^\]]*)\]\}", text)
        for tag in TAG_RE.findall(m.group(1))
    }
    assert cited - listed == set()
