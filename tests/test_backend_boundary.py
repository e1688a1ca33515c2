"""Backend code lives in ``lowrank_precond/backends/`` only.

The math layers (``linalg``, ``preconditioners``) ask :mod:`lowrank_precond.backends` for
capabilities (``on_host``, ``prefers_row_blocks``, ``backends.fused.fused_kernels``) and
never branch on a backend's name, a device string or an ``is_<backend>_array`` test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lowrank_precond"
NAMES = {"numpy", "torch", "cupy", "array_api_strict", "jax", "cpu", "cuda", "mps"}
MATH = sorted(p for d in ("linalg", "preconditioners") for p in (PACKAGE / d).rglob("*.py"))


def _backend_tests(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                if isinstance(side, ast.Constant) and side.value in NAMES:
                    found.append((node.lineno, f"compares with {side.value!r}"))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name.startswith("is_") and name.endswith("_array"):
                found.append((node.lineno, f"calls {name}"))
    return found


@pytest.mark.parametrize("path", MATH, ids=[str(p.relative_to(PACKAGE)) for p in MATH])
def test_math_modules_never_test_a_backend_name(path: Path) -> None:
    found = _backend_tests(ast.parse(path.read_text(encoding="utf-8")))
    assert not found, f"{path.relative_to(PACKAGE)}: backend-specific branches {found}"


def test_the_check_finds_what_it_looks_for() -> None:
    code = "if name_of(x) == 'numpy': pass\nif 'cpu' in str(d): pass\nis_torch_array(x)\n"
    assert len(_backend_tests(ast.parse(code))) == 3
