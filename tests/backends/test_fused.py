"""backends.fused: which arrays have fused kernels, the static query, and the host views."""

import numpy as np
import pytest

from lowrank_precond.backends.fused import (
    Declined,
    fused_available,
    fused_declined,
    fused_kernels,
)


def test_numpy_has_kernels_for_float32_and_float64_only():
    k = fused_kernels(np.zeros(2))
    assert k is not None and k.name == "numpy"
    for dt in (np.float32, np.float64):
        assert fused_available(np.zeros(2, dtype=dt)) == (True, "")
    ok, why = fused_available(np.zeros(2), dtype=np.float16)
    assert not ok and "float16" in why and "float32 or float64" in why
    assert fused_declined(np.zeros(2, dtype=np.int32)).code == "dtype"
    x = np.arange(3.0)
    assert k.host(x) is x and k.wrap(x) is x  # NumPy: the arrays themselves


def test_backends_without_kernels_are_named():
    xps = pytest.importorskip("array_api_strict")
    x = xps.zeros(2, dtype=xps.float64)
    assert fused_kernels(x) is None
    ok, why = fused_available(x)
    assert not ok and why.startswith("no fused kernels for array_api_strict arrays")
    assert fused_declined(x) == Declined("backend", why)


def test_torch_cpu_runs_on_zero_copy_views():
    torch = pytest.importorskip("torch")
    t = torch.arange(6.0, dtype=torch.float64).reshape(2, 3)
    k = fused_kernels(t)
    assert k is not None and k.name == "torch-cpu"
    h = k.host(t)
    assert isinstance(h, np.ndarray)
    h[0, 0] = 42.0  # the same memory
    assert float(t[0, 0]) == 42.0
    back = k.wrap(h)
    assert isinstance(back, torch.Tensor) and back.data_ptr() == t.data_ptr()
    assert fused_available(t, dtype=torch.float32) == (True, "")
    ok, why = fused_available(t, dtype=torch.bfloat16)
    assert not ok and "bfloat16" in why
    assert k.host(t.to(torch.bfloat16)) is None  # NumPy has no bfloat16
    assert k.host(torch.zeros(2, dtype=torch.float64)._neg_view()) is None  # negative bit


def test_torch_factors_keep_their_one_buffer_layout_on_the_host():
    """U, V that are halves of one (2r, d) tensor become halves of one host array (the
    fused step then reads both with one product per block)."""
    torch = pytest.importorskip("torch")
    k = fused_kernels(torch.zeros(1))
    W = torch.arange(24.0, dtype=torch.float64).reshape(4, 6)
    assert k.stacked(W[:2], W[2:]) is not None
    assert k.stacked(W[:2], W[2:].clone()) is None
    top, bottom = k.host_rows(W[:2], W[2:])
    assert fused_kernels(top).stacked(top, bottom) is not None
    assert np.array_equal(np.vstack([top, bottom]), W.numpy())
    top, bottom = k.host_rows(W[:2], W[2:].clone())
    assert fused_kernels(top).stacked(top, bottom) is None


def test_torch_on_other_devices_has_no_kernels():
    torch = pytest.importorskip("torch")
    x = torch.zeros(2, device="meta")
    assert fused_kernels(x) is None
    ok, why = fused_available(x)
    assert not ok and why.startswith("no fused kernels for torch tensors on meta")


def test_declined_is_falsy_and_readable():
    d = Declined("gradient", "|gbar|^2 is zero")
    assert not d and d.code == "gradient" and "zero" in d.reason
