"""The example scripts of ``docs/examples`` (included in ``docs/scaling.rst``) run as written.

Each spawns 2 processes (torch.distributed, gloo on CPU), trains a small model with
``AdaGram(..., shard_state=True)`` and prints its loss every few steps: the script must exit
0 and its last printed loss must be below its first.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
LOSS = re.compile(r"^step\s+\d+\s+loss\s+(\S+)$", re.MULTILINE)


def _needs_gloo() -> None:
    pytest.importorskip("torch")
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available")


def _needs_fully_shard() -> None:
    _needs_gloo()
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        pytest.skip("FSDP2 (torch.distributed.fsdp.fully_shard) needs torch >= 2.6")


@pytest.mark.parametrize(
    ("script", "needs"),
    [("ddp_sharded.py", _needs_gloo), ("fsdp2_sharded.py", _needs_fully_shard)],
    ids=["ddp", "fsdp2"],
)
def test_example_script_runs_and_trains(script, needs) -> None:
    needs()
    path = EXAMPLES / script
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    losses = [float(v) for v in LOSS.findall(proc.stdout)]
    assert len(losses) >= 2, f"{script} printed no losses:\n{proc.stdout}"
    assert losses[-1] < losses[0], f"{script}: the loss did not decrease: {losses}"
    # every process reports the rows of the state it holds
    assert len(re.findall(r"^rank \d: .*U \(\d+, \d+\)", proc.stdout, re.MULTILINE)) == 2
