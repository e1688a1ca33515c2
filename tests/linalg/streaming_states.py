"""Small helpers shared by the streamed-step tests (importable: this folder is on the path)."""

from __future__ import annotations

import math

import numpy as np


def orth(A):
    return np.linalg.qr(A)[0]


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def random_state(rng, d, r):
    """``(U, S, V)``: orthonormal ``U``, ``V`` and a well-conditioned non-diagonal ``S``."""
    U, V = orth(rng.standard_normal((d, r))), orth(rng.standard_normal((d, r)))
    return U, np.diag(rng.random(r) + 0.5) + 0.1 * rng.standard_normal((r, r)), V


def dense_symmetric(U, S, V, g, eps):
    """``G^{-1/2} g = eps^{-1/2} |I - M^+| g`` for ``M^+ = U S V^T + x y^T`` (the symmetric
    direction of docs/theory.rst, theory-adagram-directions)."""
    Y0 = U @ S @ V.T
    gbar = (g - Y0 @ g) / math.sqrt(eps)
    s = math.hypot(1.0, np.linalg.norm(gbar))
    Mp = Y0 + np.outer(gbar / (s * (1 + s)), gbar - Y0.T @ gbar)
    _, sig, Wt = np.linalg.svd(np.eye(U.shape[0]) - Mp)
    return (Wt.T * sig) @ (Wt @ g) / math.sqrt(eps)


def near_subspace(rng, U, angle):
    """An orthonormal ``V`` with ``span V`` at principal angles ``angle`` from ``span U``."""
    d, r = U.shape
    N = orth(np.column_stack([U, rng.standard_normal((d, r))]))[:, r:]  # orthogonal to U
    return U * math.cos(angle) + N * math.sin(angle)
