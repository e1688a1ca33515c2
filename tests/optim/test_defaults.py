"""One source of defaults: ``lowrank_precond.preconditioners.defaults`` is what ``minimize``,
the torch optimizers and ``docs/choosing.rst`` all say."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import lowrank_precond as lp
from lowrank_precond import preconditioners as pc
from lowrank_precond.optim import scipy as optim_scipy
from lowrank_precond.optim.scipy import resolve_options
from lowrank_precond.preconditioners.defaults import DEFAULT_LR, DEFAULT_METHOD

CHOOSING = Path(__file__).resolve().parents[2] / "docs" / "choosing.rst"


def list_table(text: str, title: str) -> list[list[str]]:
    """The rows (header included) of the ``.. list-table:: <title>`` of an rst page, each
    cell's text joined into one line."""
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.strip() == f".. list-table:: {title}"]
    assert len(starts) == 1, f"docs/choosing.rst: expected one list-table titled {title!r}"
    rows: list[list[str]] = []
    for line in lines[starts[0] + 1 :]:
        if line.strip() == "" or line.lstrip().startswith(":"):
            continue
        if not line.startswith("   "):
            break
        body = line.strip()
        if body.startswith("* - "):
            rows.append([body[4:]])
        elif body.startswith("- "):
            rows[-1].append(body[2:])
        else:  # continuation of the last cell
            rows[-1][-1] += " " + body
    return rows


def literal(cell: str) -> str:
    m = re.fullmatch(r"``([^`]+)``", cell.strip())
    assert m, f"expected a ``literal`` cell, got {cell!r}"
    return m.group(1)


def test_list_table_parser():
    text = (
        "Intro.\n\n.. list-table:: T\n   :header-rows: 1\n\n   * - a\n     - b\n"
        "   * - ``x``\n     - 1.5\n       more\n\nAfter.\n"
    )
    assert list_table(text, "T") == [["a", "b"], ["``x``", "1.5 more"]]


def test_one_table_covers_every_method():
    assert set(DEFAULT_LR) == set(pc.METHODS)
    assert DEFAULT_METHOD in pc.METHODS
    assert all(isinstance(v, float) and v > 0 for v in DEFAULT_LR.values())


def test_scipy_front_end_reads_the_one_table():
    # a re-export of the same object, not a copy that could drift
    assert optim_scipy.DEFAULT_LR is DEFAULT_LR
    assert inspect.signature(lp.minimize).parameters["method"].default == DEFAULT_METHOD
    for name in pc.METHODS:
        params = inspect.signature(pc.get(name)).parameters
        required = {p: None for p, v in params.items() if v.default is inspect.Parameter.empty}
        assert resolve_options(name, required)[1]["lr"] == DEFAULT_LR[name]  # adamgram: rank


def test_docs_table_of_learning_rates_equals_default_lr():
    rows = list_table(
        CHOOSING.read_text(encoding="utf-8"), "Default learning rates (``DEFAULT_LR``)"
    )
    documented = {literal(method): float(lr) for method, lr in rows[1:]}
    assert documented == DEFAULT_LR


def test_docs_table_of_minimize_defaults_equals_the_code():
    rows = list_table(
        CHOOSING.read_text(encoding="utf-8"), "Defaults of ``lowrank_precond.minimize``"
    )
    documented = {literal(row[0]): row[1] for row in rows[1:]}
    pre, settings = resolve_options(DEFAULT_METHOD, None)
    assert literal(documented["method"]) == DEFAULT_METHOD
    assert int(documented["rank"]) == pre.hyperparams["rank"]
    assert float(documented["lr"]) == DEFAULT_LR[DEFAULT_METHOD] == settings["lr"]
    assert int(documented["maxiter"]) == settings["maxiter"]


def test_torch_optimizers_default_lr_is_default_lr():
    pytest.importorskip("torch", reason="torch not installed: pip install 'lowrank-precond[torch]'")
    import lowrank_precond.torch as lpt

    classes = {}
    for name in lpt.__all__:
        cls = getattr(lpt, name)
        factory = getattr(cls, "factory", None)
        if inspect.isclass(cls) and isinstance(factory, str) and factory:
            classes[factory] = cls
    assert set(classes) == set(DEFAULT_LR), "one torch optimizer per method"
    wrong = {
        cls.__name__: (inspect.signature(cls).parameters["lr"].default, DEFAULT_LR[factory])
        for factory, cls in classes.items()
        if inspect.signature(cls).parameters["lr"].default != DEFAULT_LR[factory]
    }
    assert not wrong, (
        f"torch default lr differs from DEFAULT_LR: {{class: (lr, DEFAULT_LR)}} {wrong}"
    )
