"""``U^T V`` carried from one symmetric fused step to the next (``StreamedStep.C``).

The next step then skips measuring it in pass 1; it must equal the measured ``U1^T V1`` to
rounding on every path (implicit extension, no change, refresh), be dropped after the
re-orthogonalisation pass (its closed form would cancel there), and leave the direction as
accurate as the measured one.
"""

from __future__ import annotations

import numpy as np
import pytest

from lowrank_precond import preconditioners as pc
from lowrank_precond.linalg import LowRank
from lowrank_precond.linalg.streaming import try_ksl_adagram_step


def _streams(kind, rng, d, steps):
    basis = rng.standard_normal((d, 3))
    for t in range(steps):
        if kind == "random":
            yield rng.standard_normal(d)
        elif kind == "repeated":  # gbar nearly in span U: the re-orthogonalisation pass
            yield basis[:, t % 3] * (1.0 + 0.1 * np.sin(t))
        else:  # mixed
            yield rng.standard_normal(d) if t % 2 else basis @ rng.standard_normal(3)


@pytest.mark.parametrize("kind", ["random", "repeated", "mixed"])
def test_the_carried_product_is_the_measured_one(kind):
    rng = np.random.default_rng(5)
    d, r, eps = 250, 4, 1e-3
    grads = list(_streams(kind, rng, d, 205))
    # an AdaGram state of this stream (its warm-up), then the fused steps
    pre = pc.adagram(rank=r, eps=eps, impl="reference")
    state = pre.init(np.zeros(d))
    for g in grads[:5]:
        _, state = pre.update(g, state)
    M = M_measured = LowRank(state.U, state.S, state.V)
    C = None
    carried = dropped = 0
    for t, g in enumerate(grads[5:]):
        refresh = t % 50 == 0
        out = try_ksl_adagram_step(M, g, eps, direction="symmetric", refresh=refresh, C=C)
        ref = try_ksl_adagram_step(M_measured, g, eps, direction="symmetric", refresh=refresh)
        if hasattr(ref, "code"):  # left to the general path: both decline, skip it
            assert hasattr(out, "code") and out.code == ref.code
            C = None
            continue
        scale = np.linalg.norm(ref.direction)
        assert np.linalg.norm(out.direction - ref.direction) <= 1e-11 * scale, t
        if any(out.cgs2):
            assert out.C is None  # measured again by the next step
            dropped += 1
        else:
            measured = out.lowrank.U.T @ out.lowrank.V
            assert np.max(np.abs(out.C - measured)) <= 1e-13, t
            carried += 1
        M, M_measured, C = out.lowrank, ref.lowrank, out.C
    # every step of the repeated stream re-orthogonalises; the others carry C
    assert (dropped > 0) if kind == "repeated" else (carried > 100)


def test_the_published_direction_carries_nothing():
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((40, 2)))
    out = try_ksl_adagram_step(LowRank(U, np.eye(2) * 0.5, U), rng.standard_normal(40), 0.1)
    assert out.C is None
