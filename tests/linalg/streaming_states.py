"""Small helpers shared by the streamed-step tests (importable: this folder is on the path)."""

from __future__ import annotations

import numpy as np


def orth(A):
    return np.linalg.qr(A)[0]


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def random_state(rng, d, r):
    """``(U, S, V)``: orthonormal ``U``, ``V`` and a well-conditioned non-diagonal ``S``."""
    U, V = orth(rng.standard_normal((d, r))), orth(rng.standard_normal((d, r)))
    return U, np.diag(rng.random(r) + 0.5) + 0.1 * rng.standard_normal((r, r)), V
