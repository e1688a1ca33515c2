"""The torch optimizers on several processes: sharded state and DTensor parameters.

* :class:`TorchShards` is :class:`~lowrank_precond.backends.shards.Shards` on
  ``torch.distributed``: ``allreduce`` packs the small sums of one pass into one float64
  tensor and all-reduces it (one collective per pass), ``gather`` all-gathers rows (padded to
  the longest block: gloo's all-gather needs equal sizes). Both count what they send
  (:attr:`TorchShards.traffic`), which is how ``asv_bench/scripts/distributed_step.py``
  measures the communication per step.
* DTensor parameters (FSDP2's ``fully_shard``, or any ``Shard``/``Replicate`` placement):
  :func:`local_tensor` and :func:`whole_tensor` give a parameter's (or gradient's) local shard
  or the whole tensor, and :func:`local_part` cuts the local shard out of a whole tensor
  without communication (every process holds the same whole tensor there).

See ``docs/scaling.rst``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from lowrank_precond.backends.shards import Shards

try:  # torch >= 2.4
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - older torch: no DTensor parameters to handle
    DTensor, distribute_tensor = None, None

__all__ = ["TorchShards", "Traffic", "agree", "is_dtensor", "local_part", "local_tensor"]


def is_dtensor(t: Any) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor (sharing its memory), or ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t


def whole_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every process must call it), or ``t``."""
    return t.full_tensor() if is_dtensor(t) else t


def local_part(p: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """The part of ``whole`` (shaped like the whole ``p``) that ``p``'s local shard holds."""
    if not is_dtensor(p):
        return whole
    # src_data_rank=None: every process cuts its shard out of its own copy, no communication
    return distribute_tensor(whole, p.device_mesh, p.placements, src_data_rank=None).to_local()


def agree(flags: list[bool], group: Any) -> list[bool]:
    """``flags`` and-ed over the processes of ``group`` (one all-reduce)."""
    if not flags:
        return []
    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
    return [bool(v) for v in t.tolist()]


@dataclass
class Traffic:
    """What one process sent through a :class:`TorchShards` (counted, not measured)."""

    allreduce_calls: int = 0
    allreduce_bytes: int = 0
    gather_calls: int = 0
    gather_bytes: int = 0

    def reset(self) -> None:
        self.allreduce_calls = self.allreduce_bytes = self.gather_calls = self.gather_bytes = 0


class TorchShards(Shards):
    """This process's block of rows, with the collectives on a ``torch.distributed`` group.

    Parameters
    ----------
    counts : sequence of int
        Rows held by each process of ``group``, in rank order (blocks tile ``[0, sum)``).
    group : ProcessGroup or None
        ``None``: the default group.
    """

    def __init__(self, counts: Sequence[int], group: Any = None):
        rank = dist.get_rank(group)
        counts = [int(c) for c in counts]
        start = sum(counts[:rank])
        super().__init__(sum(counts), start, start + counts[rank])
        self.counts, self.group = counts, group
        self.traffic = Traffic()

    def allreduce(self, parts: Sequence[Any]) -> list[Any]:
        arrays = [np.asarray(x) for x in parts]
        flat = torch.from_numpy(
            np.concatenate([np.ravel(a).astype(np.float64, copy=False) for a in arrays])
        )
        dist.all_reduce(flat, group=self.group)
        self.traffic.allreduce_calls += 1
        self.traffic.allreduce_bytes += flat.numel() * flat.element_size()
        out, i, summed = [], 0, flat.numpy()
        for x, a in zip(parts, arrays, strict=True):
            v = summed[i : i + a.size]
            i += a.size
            if isinstance(x, float):
                out.append(float(v[0]))
            else:
                out.append(v.reshape(a.shape).astype(a.dtype, copy=False))
        return out

    def gather(self, x: Any) -> Any:
        if len(self.counts) == 1:
            return x
        numpy_in = isinstance(x, np.ndarray)
        t = torch.from_numpy(x) if numpy_in else x
        rows, top = int(t.shape[0]), max(self.counts)
        if rows == top:
            padded = t.contiguous()
        else:
            padded = t.new_zeros((top, *t.shape[1:]))
            padded[:rows] = t
        # received straight into one buffer: with equal blocks it is the result
        out = t.new_empty((top * len(self.counts), *t.shape[1:]))
        dist.all_gather(list(out.split(top)), padded, group=self.group)
        self.traffic.gather_calls += 1
        self.traffic.gather_bytes += padded.numel() * padded.element_size()
        if any(c != top for c in self.counts):
            out = torch.cat([p[:c] for p, c in zip(out.split(top), self.counts, strict=True)])
        return out.numpy() if numpy_in else out
