import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lowrank_precond import backends

ROOT = Path(__file__).resolve().parents[2]


def test_available_lists_installed_backends():
    found = backends.available()
    assert "numpy" in found and found["numpy"]["version"] == np.__version__
    assert found["numpy"]["devices"] == ["cpu"]
    for name in ("torch", "array_api_strict"):
        pytest.importorskip(name)
        assert name in found and found[name]["version"] != "unknown"


def test_get_unknown_and_missing():
    with pytest.raises(ValueError, match="backend: unknown backend 'jax'"):
        backends.get("jax")


def test_missing_backend_names_the_extra(monkeypatch):
    real_import = backends.importlib.import_module

    def fake(name, *a, **k):
        if name == "torch":
            raise ImportError("No module named 'torch'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(backends.importlib, "import_module", fake)
    with pytest.raises(ImportError, match=r"pip install 'lowrank-precond\[torch\]'"):
        backends.get("torch")


def test_roundtrip_and_helpers(xp):
    a = np.arange(6.0).reshape(2, 3)
    x = xp.asarray(a)
    assert backends.array_namespace(x) is not None
    assert backends.name_of(x) == xp.name.replace("-cuda", "")
    np.testing.assert_array_equal(xp.to_numpy(x), a)
    y = backends.asarray([1, 2, 3], like=x)
    assert y.dtype == x.dtype and backends.device_of(y) == backends.device_of(x)
    x32 = xp.asarray(a.astype(np.float32))
    assert backends.is_float32(x32) and not backends.is_float32(x)
    assert backends.core_dtype(x32) == xp.float64
    assert backends.to_core(x32).dtype == xp.float64
    backends.synchronize(x)  # no-op on CPU, real sync on CUDA; must not raise


def test_array_namespace_rejects_mixed_and_empty():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError):
        backends.array_namespace(np.ones(2), torch.ones(2))
    with pytest.raises(TypeError, match="at least one array"):
        backends.array_namespace(1.0, None)


def test_checks_name_the_argument():
    with pytest.raises(ValueError, match=r"eps: must be finite and > 0, got -1"):
        backends.check_positive("eps", -1)
    with pytest.raises(TypeError, match="lr: expected a real number"):
        backends.check_positive("lr", "0.1")
    with pytest.raises(ValueError, match=r"rank: must be <= the dimension d=3, got 4"):
        backends.check_rank("rank", 4, 3)
    with pytest.raises(TypeError, match="rank: expected an integer, got 2.5"):
        backends.check_rank("rank", 2.5)
    with pytest.raises(TypeError, match="g: expected a real floating-point array, got dtype int64"):
        backends.check_vector("g", np.arange(3))
    with pytest.raises(ValueError, match=r"g: expected length 4, got shape \(3,\)"):
        backends.check_vector("g", np.zeros(3), 4)
    with pytest.raises(ValueError, match="V: has 3 rows but U has 4"):
        backends.check_matching_rows(U=np.zeros((4, 1)), V=np.zeros((3, 1)))
    with pytest.raises(ValueError, match="integrator: expected one of"):
        backends.check_in("integrator", "qr", ("svd",))
    assert not backends.all_finite(np.array([1.0, np.nan]))


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([exe], cwd=root, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def lint_available():
    pytest.importorskip("importlinter", reason="import-linter not installed (test extra)")


def test_import_contracts_hold(lint_available):
    res = _lint_imports(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(
    "path, line",
    [
        ("lowrank_precond/linalg/_violation.py", "import numpy\n"),
        ("lowrank_precond/preconditioners/_violation.py", "import torch\n"),
        ("lowrank_precond/linalg/_violation.py", "import lowrank_precond.preconditioners.base\n"),
        ("lowrank_precond/backends/_violation.py", "import lowrank_precond.linalg.lowrank\n"),
    ],
)
def test_import_contracts_can_fail(lint_available, tmp_path, path, line):
    shutil.copytree(ROOT / "lowrank_precond", tmp_path / "lowrank_precond")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / path).write_text(line)
    res = _lint_imports(tmp_path)
    assert res.returncode != 0, res.stdout
    assert "BROKEN" in res.stdout or "broken" in res.stdout.lower()
