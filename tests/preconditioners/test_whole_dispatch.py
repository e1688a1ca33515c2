"""AdaGram off the host takes the whole-array fused step (CUDA), on its own terms.

Without a GPU here, the dispatch is exercised on torch CPU tensors by making the library
believe they live off the host; on a CUDA device the same test runs for real.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lowrank_precond import preconditioners as pc  # noqa: E402
from lowrank_precond.linalg.streaming import REFRESH_EVERY  # noqa: E402

# the module (the package re-exports the factory under the same name)
adagram_module = importlib.import_module("lowrank_precond.preconditioners.adagram")


def _run(pre, grads):
    state = pre.init(grads[0] * 0)
    dirs, impls = [], []
    for g in grads:
        p, state = pre.update(g, state)
        dirs.append(p)
        impls.append(state.last_impl)
    return dirs, state, impls


def _devices():
    out = [pytest.param("cpu-as-device", id="cpu-as-device")]
    cuda = torch.cuda.is_available()
    out.append(
        pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not cuda, reason="no CUDA device"))
    )
    return out


@pytest.mark.parametrize("direction", ["published", "symmetric"])
@pytest.mark.parametrize("where", _devices())
def test_off_the_host_adagram_takes_the_whole_array_step(monkeypatch, where, direction):
    if where == "cpu-as-device":
        monkeypatch.setattr(adagram_module, "on_host", lambda x: False)
        device = "cpu"
    else:
        device = "cuda"
    rng = np.random.default_rng(3)
    steps = REFRESH_EVERY + 12  # crosses one refresh step (left to the reference path)
    grads = [torch.tensor(g, device=device) for g in rng.standard_normal((steps, 60))]
    fused, state, impls = _run(pc.adagram(rank=4, eps=0.1, direction=direction), grads)
    ref, ref_state, _ = _run(
        pc.adagram(rank=4, eps=0.1, direction=direction, impl="reference"), grads
    )
    warm = 5  # four exact steps and the recompressing one
    assert impls[warm:REFRESH_EVERY] == ["fused"] * (REFRESH_EVERY - warm)
    assert impls[REFRESH_EVERY].startswith("reference")  # t = REFRESH_EVERY: a refresh step
    assert impls[-1] == "fused"
    for t, (p, q) in enumerate(zip(fused, ref, strict=True)):
        err = float((p - q).abs().max())
        assert err <= 1e-10, (t, err)
    M = state.U @ state.S @ state.V.T
    M_ref = ref_state.U @ ref_state.S @ ref_state.V.T
    assert float((M - M_ref).abs().max()) <= 1e-10
