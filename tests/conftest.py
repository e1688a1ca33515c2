"""Shared fixtures: the backend test matrix.

``xp`` (a :class:`Backend`) is parameterised over every backend: NumPy, PyTorch CPU,
array-api-strict (proves the math uses only the standard), and CuPy / PyTorch CUDA when a
GPU is present; a missing one is skipped with the reason shown in the summary (``-ra``).
Tests build inputs with NumPy (``rng``), move them with ``xp.asarray`` and compare with
``xp.to_numpy``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from lowrank_precond import backends

if importlib.util.find_spec("torch") is not None:
    import torch

    # Tests never measure speed; one intra-op thread per process avoids oversubscribing the
    # cores when pytest-xdist runs several workers (and torch's spin-waits under load).
    torch.set_num_threads(1)


@dataclass(frozen=True)
class Backend:
    """One entry of the test matrix: a namespace plus the device to put arrays on."""

    name: str
    ns: Any
    device: Any = None

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        a = np.asarray(a)
        if dtype is None:
            dtype = {
                np.dtype("float32"): self.ns.float32,
                np.dtype("float64"): self.ns.float64,
            }.get(a.dtype)
        if self.name.startswith("array_api_strict"):
            return self.ns.asarray(a.tolist() if a.ndim else a.item(), dtype=dtype)
        return self.ns.asarray(a, dtype=dtype, device=self.device)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(backends.to_numpy(x))

    def __getattr__(self, item: str) -> Any:  # xp.float64, xp.linalg, ...
        return getattr(self.ns, item)

    def __repr__(self) -> str:
        return self.name


def _torch_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _cupy_gpu() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _make(name: str) -> Backend:
    if name == "numpy":
        return Backend("numpy", backends.get("numpy"))
    if name == "torch":
        pytest.importorskip(
            "torch", reason="torch not installed: pip install 'lowrank-precond[torch]'"
        )
        return Backend("torch", backends.get("torch"), "cpu")
    if name == "torch-cuda":
        if not _torch_cuda():
            pytest.skip("torch-cuda: no CUDA device (torch.cuda.is_available() is False)")
        return Backend("torch-cuda", backends.get("torch"), "cuda")
    if name == "cupy":
        if not _cupy_gpu():
            pytest.skip("cupy: not installed or no CUDA device")
        return Backend("cupy", backends.get("cupy"))
    if name == "array_api_strict":
        pytest.importorskip("array_api_strict", reason="array-api-strict not installed")
        return Backend("array_api_strict", backends.get("array_api_strict"))
    raise AssertionError(name)


BACKEND_NAMES = ("numpy", "torch", "array_api_strict", "cupy", "torch-cuda")


@pytest.fixture(params=BACKEND_NAMES)
def xp(request) -> Backend:
    """Every backend of the test matrix (skipped with a reason when unavailable)."""
    return _make(request.param)


@pytest.fixture(params=("numpy", "torch", "cupy", "torch-cuda"))
def xp_fast(request) -> Backend:
    """The matrix without array_api_strict (for long streams where strict is slow)."""
    return _make(request.param)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261123)
