"""Doctests of modules whose examples need an optional extra skip, with the reason, when it is
missing (``--doctest-modules`` collects every module of the package; the tests under
``tests/`` skip themselves with ``pytest.importorskip``)."""

from __future__ import annotations

import importlib.util

import pytest

#: module path prefix -> (package its examples import, the extra that provides it)
DOCTEST_NEEDS = {"lowrank_precond/glm/_dask.py": ("dask", "dask")}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for prefix, (package, extra) in DOCTEST_NEEDS.items():
        if importlib.util.find_spec(package) is not None:
            continue
        skip = pytest.mark.skip(
            reason=f"{package} is not installed (pip install 'lowrank-precond[{extra}]')"
        )
        for item in items:
            if item.nodeid.startswith(prefix):
                item.add_marker(skip)
