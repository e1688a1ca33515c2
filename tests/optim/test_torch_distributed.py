"""The torch optimizers on 2 and 4 processes (torch.distributed, gloo on CPU, spawned here).

Every scenario of ``distributed_worker.SCENARIOS`` trains 30 steps under DDP (replicated
parameters) and under FSDP2 (``fully_shard``: DTensor parameters), and must end where the
single-process run with the same gradients ends, to 1e-10 in float64. The sharded ones
(``shard_state=True``) must also keep only their block of rows and, after the warm-up, take
the fused step that all-reduces only small sums.
"""

from __future__ import annotations

import socket

import pytest
import torch

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

import distributed_worker as W  # noqa: E402  (after the skip)
import torch.multiprocessing as mp  # noqa: E402

WRAPPERS = ("ddp", "fsdp")
JOBS = [(w, n) for w in WRAPPERS for n in W.SCENARIOS] + [(w, "checkpoint") for w in WRAPPERS]
JOBS.append(("none", "gather"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=[2, 4], ids=lambda n: f"world{n}")
def world(request, tmp_path_factory):
    """Run every job once on ``n`` spawned processes; their results, per (job, rank)."""
    n = request.param
    out = tmp_path_factory.mktemp(f"world{n}")
    mp.spawn(W.worker, args=(n, _free_port(), str(out), JOBS), nprocs=n, join=True)
    results = {}
    for wrapper, name in JOBS:
        results[wrapper, name] = [
            torch.load(out / f"{wrapper}-{name}-{rank}.pt", weights_only=False) for rank in range(n)
        ]
    return n, results


_REFERENCES: dict = {}


def _reference(name):
    if name not in _REFERENCES:
        _REFERENCES[name] = W.reference(name)
    return _REFERENCES[name]


def _check_ok(res):
    for r in res:
        assert "error" not in r, r.get("error")


@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("name", sorted(W.SCENARIOS))
def test_every_process_ends_where_one_process_ends(world, wrapper, name):
    n, results = world
    res = results[wrapper, name]
    _check_ok(res)
    ref = _reference(name)
    for rank, r in enumerate(res):
        for p, q in zip(r["params"], ref, strict=True):
            err = float((p - q).abs().max())
            assert err <= 1e-10, f"rank {rank}: max error {err:.3g}"


@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("name", ["adagram", "adagram-published", "sketched"])
def test_sharded_state_keeps_its_rows_and_reduces_only_small_sums(world, wrapper, name):
    n, results = world
    res = results[wrapper, name]
    _check_ok(res)
    d = W.D_IN * W.D_HIDDEN + W.D_HIDDEN + W.D_HIDDEN * W.D_OUT + W.D_OUT
    starts = []
    for r in res:
        start, stop, size = r["shards"]
        assert size == d
        starts.append((start, stop))
        rows = stop - start
        # every row field has this process's rows only, about d / n of them
        assert abs(rows - d / n) <= d / n * 0.5, (rows, d, n)
        assert r["rows"]["U"][0] == rows
        # after the warm-up (rank 3: four steps) every step is the fused, reduce-only one
        assert r["impls"][4:] == ["fused"] * (W.STEPS - 4), r["impls"]
    assert sorted(starts)[0][0] == 0 and sorted(starts)[-1][1] == d
    # the fused steps gather nothing: only the warm-up's few gathers of U, V, P, Q and g;
    # the all-reduces are a few passes of O(r^2) float64 numbers per step, not O(d)
    traffic = res[0]["traffic"]
    per_step = traffic["allreduce_bytes"] / W.STEPS
    assert per_step < 8 * 200, traffic
    assert traffic["gather_bytes"] < 5 * 8 * d * 8, traffic


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_a_sharded_checkpoint_resumes_bit_for_bit(world, wrapper):
    n, results = world
    res = results[wrapper, "checkpoint"]
    _check_ok(res)
    for r in res:
        for a, b in zip(r["resumed"], r["straight"], strict=True):
            assert torch.equal(a, b)


def test_the_collectives_gather_and_sum_every_block(world):
    n, results = world
    res = results["none", "gather"]
    _check_ok(res)
    for r in res:
        for label in ("equal", "unequal"):
            rows2, rows1, (total, ones), d = r[label]
            expect = torch.arange(d, dtype=torch.float64)
            assert torch.equal(rows2, expect.reshape(-1, 1).repeat(1, 2))
            assert rows1.tolist() == expect.tolist()  # a NumPy array in, one out
            assert total == float(expect.sum()) and ones.tolist() == [float(n)]


def test_shard_state_needs_a_process_group_and_a_spanning_state():
    from lowrank_precond.torch import AdaDiag, AdaGram

    p = [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))]
    if not dist.is_initialized():
        with pytest.raises(ValueError, match="shard_state: needs torch.distributed"):
            AdaGram(p, shard_state=True)
    with pytest.raises(TypeError, match="shard_state"):
        AdaDiag(p, shard_state=True)
    with pytest.raises(ValueError, match="process_group: only used with shard_state"):
        AdaGram(p, process_group=object())
    with pytest.raises(TypeError, match="shard_state"):
        AdaGram(p, shard_state="yes")
