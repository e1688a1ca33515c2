"""Diagonal baselines: AdaGrad and Adam (:ref:`theory-baselines`).

Both act elementwise, so they accept a parameter of any shape (0-D included) and keep their
state in the parameter's shape, dtype and device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lowrank_precond.backends import array_namespace
from lowrank_precond.preconditioners._common import (
    adam_ratio,
    check_betas,
    check_bool,
    check_eps,
    check_grad_like,
    check_param,
    ema,
)
from lowrank_precond.preconditioners.base import (
    Preconditioner,
    check_statistic,
    make_preconditioner,
)

__all__ = ["AdaGradState", "AdamState", "adagrad", "adam"]


@dataclass
class AdaGradState:
    """State of :func:`adagrad`.

    Attributes
    ----------
    t : int
        Number of updates applied.
    h : array, the parameter's shape
        Sum of squared gradients ``sum_s g_s * g_s``.
    """

    t: int
    h: Any


@dataclass
class AdamState:
    """State of :func:`adam`.

    Attributes
    ----------
    t : int
        Number of updates applied.
    m, v : array, the parameter's shape
        First moment (EMA of ``g``) and second moment (EMA of ``g * g``), not bias-corrected.
    """

    t: int
    m: Any
    v: Any


def adagrad(
    eps: float = 1e-8, eps_inside_sqrt: bool = True, nonfinite: str = "raise"
) -> Preconditioner:
    """Diagonal AdaGrad.

    ``h <- h + g * g`` and the direction is ``g / sqrt(eps + h)`` (``eps_inside_sqrt=True``,
    the AdaGrad-family convention of this package: ``G_0 = eps I``, the same eps as
    full-matrix AdaGrad, ASGO and AdaGram) or ``g / (sqrt(h) + eps)`` (``False``:
    ``torch.optim.Adagrad``'s convention; with ``lr_decay=0`` and
    ``initial_accumulator_value=0`` the iterates ``x <- x - lr * direction`` equal torch's).

    Parameters
    ----------
    eps : float, > 0
        Damping.
    eps_inside_sqrt : bool
        Where ``eps`` goes (see above).
    nonfinite : {"raise", "skip"}
        What ``update`` does with a gradient containing NaN/inf (see
        :func:`~lowrank_precond.preconditioners.base.guard_nonfinite`).

    Returns
    -------
    Preconditioner
        ``init(x) -> AdaGradState`` for ``x`` of any shape;
        ``update(g, state) -> (direction, AdaGradState)``. O(d) memory and time.

    References
    ----------
    Duchi, Hazan, Singer, "Adaptive subgradient methods for online learning and stochastic
    optimization", JMLR 2011. :ref:`theory-baselines`.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond import preconditioners as pc
    >>> pre = pc.adagrad(eps=1e-8)
    >>> state = pre.init(np.zeros(2))
    >>> p, state = pre.update(np.array([3.0, -4.0]), state)
    >>> bool(np.allclose(p, [1.0, -1.0]))
    True
    >>> state.t, state.h
    (1, array([ 9., 16.]))
    """
    eps = check_eps("eps", eps)
    eps_inside_sqrt = check_bool("eps_inside_sqrt", eps_inside_sqrt)

    def init(x: Any) -> AdaGradState:
        xp = check_param("x", x)
        return AdaGradState(t=0, h=xp.zeros_like(x))

    def update(grad: Any, state: AdaGradState) -> tuple[Any, AdaGradState]:
        check_grad_like(grad, state.h)
        xp = array_namespace(grad)
        h = state.h + grad * grad
        check_statistic("h", h)
        denom = xp.sqrt(h + eps) if eps_inside_sqrt else xp.sqrt(h) + eps
        return grad / denom, AdaGradState(t=state.t + 1, h=h)

    return make_preconditioner(
        "adagrad",
        init,
        update,
        {"eps": eps, "eps_inside_sqrt": eps_inside_sqrt, "nonfinite": nonfinite},
    )


def adam(
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, nonfinite: str = "raise"
) -> Preconditioner:
    """Adam's direction (bias-corrected, eps outside the root).

    ``m <- b1 m + (1-b1) g``, ``v <- b2 v + (1-b2) g*g``, ``t <- t + 1`` and the direction is
    ``(m / (1-b1^t)) / (sqrt(v) / sqrt(1-b2^t) + eps)``, so ``x <- x - lr * direction`` gives
    the iterates of ``torch.optim.Adam`` (same ``betas``, ``eps``, ``weight_decay=0``).

    Weight decay is the caller's job: AdamW is ``x <- x - lr * (direction + wd * x)``
    (decoupled); Adam-L2 adds ``wd * x`` to ``g`` before calling ``update``.

    Parameters
    ----------
    betas : (float, float), each in [0, 1)
        ``(b1, b2)``.
    eps : float, > 0
        Added to the root of the bias-corrected second moment.
    nonfinite : {"raise", "skip"}
        What ``update`` does with a gradient containing NaN/inf.

    Returns
    -------
    Preconditioner
        ``init(x) -> AdamState`` for ``x`` of any shape;
        ``update(g, state) -> (direction, AdamState)``. O(d) memory and time.

    References
    ----------
    Kingma, Ba, "Adam: a method for stochastic optimization", arXiv:1412.6980;
    Loshchilov, Hutter, "Decoupled weight decay regularization", arXiv:1711.05101.
    :ref:`theory-baselines` [E02].

    Examples
    --------
    A constant gradient gives ``g / (|g| + eps)`` at every step [E02]:

    >>> import numpy as np
    >>> from lowrank_precond import preconditioners as pc
    >>> pre = pc.adam()
    >>> state = pre.init(np.zeros(2))
    >>> for _ in range(3):
    ...     p, state = pre.update(np.array([2.0, -0.5]), state)
    >>> bool(np.allclose(p, [1.0, -1.0])), state.t
    (True, 3)
    """
    betas = check_betas("betas", betas)
    eps = check_eps("eps", eps)
    b1, b2 = betas

    def init(x: Any) -> AdamState:
        xp = check_param("x", x)
        return AdamState(t=0, m=xp.zeros_like(x), v=xp.zeros_like(x))

    def update(grad: Any, state: AdamState) -> tuple[Any, AdamState]:
        check_grad_like(grad, state.m)
        xp = array_namespace(grad)
        t = state.t + 1
        m = ema(state.m, grad, b1)
        v = ema(state.v, grad * grad, b2)
        return adam_ratio(xp, m, v, t, betas, eps), AdamState(t=t, m=m, v=v)

    return make_preconditioner(
        "adam",
        init,
        update,
        {"betas": betas, "eps": eps, "nonfinite": nonfinite},
    )
