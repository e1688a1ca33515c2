"""``torch.optim.Optimizer`` classes: ``from lowrank_precond.torch import AdaGram``.

A thin public alias of :mod:`lowrank_precond.optim.torch` (needs the ``torch`` extra).
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "lowrank_precond.torch needs PyTorch: pip install 'lowrank-precond[torch]'"
    ) from exc

from lowrank_precond.optim.torch import *  # noqa: F401,F403,E402
from lowrank_precond.optim.torch import __all__  # noqa: F401,E402
