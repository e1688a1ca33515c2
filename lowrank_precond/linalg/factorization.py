"""AdaGram's rank-one inverse-factor update and its three directions.

Full-matrix AdaGrad keeps ``G_t = eps*I + sum_{s<=t} g_s g_s^T``. AdaGram keeps a
(non-symmetric) factor ``L_t`` with ``L_t L_t^T = G_t`` through its inverse

    ``L_t^{-1} = eps^{-1/2} (I - M_t)``,   ``M_t = M_{t-1} + x y^T``,   ``M_0 = 0``,

so ``M`` is low-rank: :class:`~lowrank_precond.linalg.Factored` ``P Q^T`` (exact, one column
per accepted step) or :class:`~lowrank_precond.linalg.LowRank` ``U S V^T`` (after
truncation, :ref:`theory-integrators`). For any such ``M`` the matrix it represents is
``G = eps (I - M)^{-1} (I - M)^{-T}``, and this module provides

* :func:`rank_one_increment` -- the rank-one term ``x y^T`` of one step
  (:ref:`theory-adagram-step`), for either container (the truncated mode feeds it to an
  integrator);
* :func:`inverse_factor_update` -- the exact step ``P <- [P, x]``, ``Q <- [Q, y]``;
* :func:`published_direction` ``L^{-1} g``, :func:`symmetric_direction` ``G^{-1/2} g`` (the
  true full-matrix AdaGrad step) and :func:`newton_direction` ``G^{-1} g``
  (:ref:`theory-adagram-directions`);
* :func:`factor_health` -- the singular values of ``I - M`` (:ref:`theory-truncation`), whose
  healthy range is ``[sqrt(eps/(eps + sum_s |g_s|^2)), 1]`` [A10].

No function forms a ``d x d`` matrix; the work is O(d k) except the symmetric direction and
:func:`factor_health` (O(d k^2) for one Householder QR of ``[P Q]`` plus O(k^3)).

Each public function validates its arguments once -- kinds, dtypes, shapes and devices, then
the scalars, then the finiteness of ``g`` and of ``M``'s arrays
(``ValueError("NAME: contains NaN or inf")``, one host transfer on a device) -- and calls its
unchecked kernel, the same name with a leading underscore and the namespace first (e.g.
``_symmetric_direction(xp, M, g, eps, clip)``). The kernels call kernels only and check
nothing; :mod:`lowrank_precond.linalg._unchecked` collects them for the preconditioners.

References
----------
:ref:`theory-adagram`, :ref:`theory-integrators-warmup`, :ref:`theory-truncation`; the
checks [A01]-[A15] are listed in :ref:`theory-checks`. AdaGram: arXiv 2508.21106.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lowrank_precond.backends import (
    array_namespace,
    check_positive,
    check_vector,
    device_of,
)
from lowrank_precond.linalg._numerics import (
    as_core,
    nonfinite_message,
    require_finite,
    scaled_norm_xp,
)
from lowrank_precond.linalg.lowrank import Factored, LowRank, _factored

__all__ = [
    "IncrementInfo",
    "factor_health",
    "inverse_factor_update",
    "newton_direction",
    "published_direction",
    "rank_one_increment",
    "symmetric_direction",
]


@dataclass(frozen=True)
class IncrementInfo:
    """The quantities of one AdaGram step, from :func:`rank_one_increment`.

    Theory: :ref:`theory-adagram-step`.

    Attributes
    ----------
    gbar : array, shape (d,)
        ``L_{t-1}^{-1} g = (g - M_{t-1} g) / sqrt(eps)`` (old ``M``).
    nu : float
        ``|gbar|`` (scaled, overflow-safe norm). A Python float: it is the one value brought
        to the host per step (needed for the ``nu == 0`` test), so ``s``, ``a`` and ``b`` are
        computed on the host in double precision at no further cost.
    s : float
        ``hypot(1, nu) = sqrt(1 + nu^2)`` without overflow.
    x : array, shape (d,)
        ``b * gbar`` with ``b = 1/(s (1+s))``, evaluated as ``(gbar / s) / (1 + s)`` so that
        ``b`` itself never underflows (``|x| ~ 1/nu`` for large ``nu``).
    y : array, shape (d,)
        ``gbar - M_{t-1}^T gbar``. The step is ``M_t = M_{t-1} + x y^T``.
    skipped : bool
        ``nu == 0`` (``g = 0`` or ``g`` in the null space of ``I - M``): the step changes
        nothing, ``x = y = 0`` and every direction is zero [A09].

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import Factored, rank_one_increment
    >>> M0 = Factored.zeros(3, like=np.zeros(3))
    >>> info = rank_one_increment(M0, np.array([3.0, 0.0, 4.0]), eps=1.0)
    >>> info.nu, info.skipped, bool(np.isclose(info.s, np.sqrt(26.0)))
    (5.0, False, True)
    """

    gbar: Any
    nu: float
    s: float
    x: Any
    y: Any
    skipped: bool

    @property
    def a(self) -> float:
        """``1/(1+s)``: ``L_t = L_{t-1}(I + a gbar gbar^T)`` (-> 1/2 as ``nu -> 0``) [A01]."""
        return 1.0 / (1.0 + self.s)

    @property
    def b(self) -> float:
        """``(1/s)(1/(1+s))``: ``(I + a gbar gbar^T)^{-1} = I - b gbar gbar^T`` [A01]."""
        return (1.0 / self.s) * (1.0 / (1.0 + self.s))

    @property
    def published(self) -> Any:
        """``gbar / s = L_t^{-1} g``, the published direction of the updated factor, O(d) [A05].

        Equal to ``published_direction(M_t, g, eps)`` for ``M_t = M_{t-1} + x y^T``, and to
        ``0`` when the step was skipped.
        """
        return self.gbar / self.s


def _check_operator(name: str, M: Any) -> Any:
    """``M`` must be a Factored/LowRank with one floating dtype; return one of its arrays."""
    if isinstance(M, Factored):
        arrays = (M.P, M.Q)
    elif isinstance(M, LowRank):
        arrays = (M.U, M.S, M.V)
    else:
        raise TypeError(f"{name}: expected a Factored or LowRank, got {type(M).__name__}")
    ref = arrays[0]
    for a in arrays[1:]:
        if a.dtype != ref.dtype:
            raise TypeError(f"{name}: its arrays have mixed dtypes ({ref.dtype} and {a.dtype})")
    return ref


def _check_inputs(name: str, M: Any, g: Any, eps: Any) -> tuple[Any, float]:
    """Validate the kinds, dtypes, shapes and devices of ``(M, g)`` and ``eps``; return the
    namespace and ``eps`` as a float. Finiteness is :func:`_require_finite_inputs`, last."""
    ref = _check_operator(name, M)
    check_vector("g", g, M.shape[0])
    if g.dtype != ref.dtype:
        raise TypeError(f"g: dtype {g.dtype} does not match {name}'s dtype {ref.dtype}")
    try:
        xp = array_namespace(ref, g)
    except TypeError:
        raise TypeError(
            f"g: array type {type(g).__name__} differs from {name}'s ({type(ref).__name__})"
        ) from None
    if device_of(g) != device_of(ref):
        raise ValueError(f"g: on device {device_of(g)} but {name} is on {device_of(ref)}")
    return xp, check_positive("eps", eps)


def _operator_arrays(name: str, M: Factored | LowRank) -> tuple[tuple[str, Any], ...]:
    if isinstance(M, Factored):
        return ((f"{name}.P", M.P), (f"{name}.Q", M.Q))
    return ((f"{name}.U", M.U), (f"{name}.S", M.S), (f"{name}.V", M.V))


def _require_finite_inputs(xp: Any, name: str, M: Any, g: Any) -> None:
    """``ValueError("NAME: contains NaN or inf")`` for ``g``, then ``M``'s arrays."""
    require_finite(xp, ("g", g), *_operator_arrays(name, M))


def _rank_one_increment(xp: Any, M: Any, g: Any, eps: float) -> IncrementInfo:
    """Unchecked :func:`rank_one_increment` (docs/theory.rst#theory-adagram-step).

    For validated inputs (finite ``g`` and ``M``, ``eps`` a float ``> 0``). One host
    synchronisation (``nu``), no state written. ``gbar`` overflowing still raises
    ``ValueError`` (the test is on ``nu``, which is on the host anyway).
    """
    root = math.sqrt(eps)
    gbar = (g - M.matvec(g)) / root
    nu = float(scaled_norm_xp(xp, gbar))
    if not math.isfinite(nu):
        if not bool(xp.all(xp.isfinite(g))):  # only on this error path: say which it was
            raise ValueError(nonfinite_message("g"))
        raise ValueError(
            "g: gbar = (g - M g)/sqrt(eps) overflows the dtype "
            f"{g.dtype} (|g| too large for eps={eps!r})"
        )
    if nu == 0.0:
        zero = xp.zeros_like(gbar)
        return IncrementInfo(gbar=gbar, nu=0.0, s=1.0, x=zero, y=zero, skipped=True)
    s = math.hypot(1.0, nu)
    x = (gbar / s) / (1.0 + s)
    y = gbar - M.rmatvec(gbar)
    return IncrementInfo(gbar=gbar, nu=nu, s=s, x=x, y=y, skipped=False)


def rank_one_increment(M: Any, g: Any, eps: float) -> IncrementInfo:
    """The rank-one term ``x y^T`` that one gradient adds to ``M``.

    Theory: :ref:`theory-adagram-step`, :ref:`theory-integrators-warmup`.

    With the current (old) ``M = M_{t-1}``::

        gbar = (g - M g) / sqrt(eps)            nu = |gbar|     s = hypot(1, nu)
        x = b gbar,  b = (1/s)(1/(1+s))          y = gbar - M^T gbar

    and the updated matrix is ``M_t = M + x y^T`` (``I - M_t = (I - b gbar gbar^T)(I - M)``).
    Nothing is modified; :func:`inverse_factor_update` appends the columns (exact mode), an
    integrator truncates ``U S V^T + x y^T`` (rank-``r`` mode).

    Parameters
    ----------
    M : Factored or LowRank
        The current matrix ``M_{t-1}``, shape ``(d, d)``.
    g : array, shape (d,)
        The gradient; same backend, device and floating dtype as ``M``. Must be finite.
    eps : float
        ``> 0``, the AdaGrad ``eps`` (inside the root: ``G_0 = eps I``).

    Returns
    -------
    IncrementInfo
        ``gbar, x, y`` arrays of shape ``(d,)`` and dtype of ``g``; ``nu, s`` Python floats;
        ``skipped`` (``nu == 0``: then ``x = y = 0``). ``info.published = gbar / s`` is the
        published direction of ``M_t`` [A05].

    Raises
    ------
    TypeError
        ``M`` of another type, ``g`` not floating or of another dtype/backend than ``M``.
    ValueError
        ``g`` of the wrong shape, ``g`` or an array of ``M`` with NaN/inf
        (``"g: contains NaN or inf"``, ``"M.P: ..."``), ``gbar`` overflowing, ``eps <= 0``.

    Notes
    -----
    Cost O(d k); the arithmetic makes exactly one device-to-host transfer (``nu``), the
    finiteness check of the arguments one more. ``s = hypot(1, nu)`` and the scaled norm
    keep every quantity finite for ``|g|`` from the smallest subnormal to ``~max_float / sqrt(d)``
    (:ref:`theory-adagram-numerics`).

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import Factored
    >>> M = Factored.zeros(3, like=np.zeros(3))
    >>> info = rank_one_increment(M, np.array([3.0, 0.0, 4.0]), eps=1.0)
    >>> info.nu, round(info.s, 12), info.skipped
    (5.0, 5.099019513593, False)
    >>> bool(np.allclose(info.x, info.b * info.gbar)) and bool(np.allclose(info.y, info.gbar))
    True
    >>> rank_one_increment(M, np.zeros(3), eps=1.0).skipped
    True
    """
    xp, eps = _check_inputs("M", M, g, eps)
    _require_finite_inputs(xp, "M", M, g)
    return _rank_one_increment(xp, M, g, eps)


def inverse_factor_update(
    state: Factored, g: Any, eps: float, *, balance: bool = True
) -> tuple[Factored, IncrementInfo]:
    """One exact AdaGram step: append the rank-one term of ``g`` to ``M = P Q^T``.

    Theory: :ref:`theory-adagram-step`.

    ``M_t = M_{t-1} + x y^T`` with ``x, y`` from :func:`rank_one_increment`; the new state is
    ``Factored([P, x'], [Q, y'])`` with ``x' y'^T = x y^T``, so that afterwards
    ``eps^{-1/2}(I - P Q^T) = L_t^{-1}`` and ``L_t L_t^T = eps I + sum_s g_s g_s^T`` [A03, A04].

    Parameters
    ----------
    state : Factored
        ``P, Q`` of shape ``(d, k)``; ``Factored.zeros(d, like=g)`` to start.
    g : array, shape (d,)
        Finite gradient of the state's backend, device and floating dtype.
    eps : float
        ``> 0``.
    balance : bool, default True
        Store the pair rescaled to equal norms, ``x' = x c``, ``y' = y / c`` with
        ``c = sqrt(|y|/|x|)`` (``|x| ~ 1/nu`` and ``|y| ~ nu`` otherwise,
        :ref:`theory-adagram-numerics`). ``M`` is the
        same; the columns stay ``O(|x y^T|^{1/2}) <= O(1)``, so later products ``Q^T g`` do
        not overflow in float32 even for ``|g| ~ 1e19``. ``False`` appends ``x`` and ``y``
        exactly as :ref:`theory-adagram-step` writes them.

    Returns
    -------
    state : Factored
        ``(d, k+1)`` factors (new arrays), or the *same object* when the step is skipped.
    info : IncrementInfo
        The step's quantities (``info.x``, ``info.y`` are the unbalanced ``b gbar`` and
        ``gbar - Q P^T gbar``); ``info.published`` is the published direction.

    Raises
    ------
    TypeError
        ``state`` not a ``Factored`` (use :func:`rank_one_increment` and an integrator for a
        ``LowRank``), integer or mismatched dtype of ``g``.
    ValueError
        ``g`` of the wrong shape, ``g``, ``state.P`` or ``state.Q`` with NaN/inf
        (``"g: contains NaN or inf"``), ``eps <= 0``. The state is never modified.

    Notes
    -----
    ``nu == 0`` (``g = 0``, or ``gbar = 0``) returns the unchanged ``state`` object and
    ``info.skipped = True`` [A09]. Memory grows by ``2d`` per accepted step
    (:ref:`theory-costs`): cap ``k`` and switch to a ``LowRank`` (``recompress``) for long runs.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import Factored
    >>> rng = np.random.default_rng(0)
    >>> eps, d = 0.5, 4
    >>> state, G = Factored.zeros(d, like=np.zeros(d)), eps * np.eye(d)
    >>> for _ in range(6):
    ...     g = rng.standard_normal(d)
    ...     state, info = inverse_factor_update(state, g, eps)
    ...     G += np.outer(g, g)
    >>> state.rank
    6
    >>> Linv = (np.eye(d) - state.dense()) / np.sqrt(eps)          # L^{-1}, L L^T = G
    >>> bool(np.allclose(Linv.T @ Linv, np.linalg.inv(G)))
    True
    >>> inverse_factor_update(state, np.zeros(d), eps)[0] is state
    True
    """
    if not isinstance(state, Factored):
        raise TypeError(
            f"state: expected a Factored, got {type(state).__name__} "
            "(for a LowRank use rank_one_increment and an integrator)"
        )
    xp, eps = _check_inputs("state", state, g, eps)
    _require_finite_inputs(xp, "state", state, g)
    return _inverse_factor_update(xp, state, g, eps, balance)


def _inverse_factor_update(
    xp: Any, state: Factored, g: Any, eps: float, balance: bool = True
) -> tuple[Factored, IncrementInfo]:
    """Unchecked :func:`inverse_factor_update` (validated ``Factored`` state, finite ``g``)."""
    info = _rank_one_increment(xp, state, g, eps)
    if info.skipped:
        return state, info
    x, y = info.x, info.y
    if balance:
        # |x| = b nu exactly; evaluated as (nu/s)/(1+s) so it cannot underflow.
        sqrt_nx = math.sqrt((info.nu / info.s) / (1.0 + info.s))
        ny = scaled_norm_xp(xp, y)
        ny_safe = xp.where(ny > 0, ny, xp.ones_like(ny))
        # x' = (gbar/nu) sqrt(|x||y|),  y' = y sqrt(|x|/|y|)   (y = 0 -> x' = y' = 0)
        x = (info.gbar / info.nu) * (sqrt_nx * xp.sqrt(ny))
        y = y * (sqrt_nx / xp.sqrt(ny_safe))
    d = state.shape[0]
    P = xp.concat([state.P, xp.reshape(x, (d, 1))], axis=1)
    Q = xp.concat([state.Q, xp.reshape(y, (d, 1))], axis=1)
    return _factored(P, Q), info


def published_direction(M: Any, g: Any, eps: float) -> Any:
    """The published AdaGram direction ``L^{-1} g = eps^{-1/2} (g - M g)``.

    Theory: :ref:`theory-adagram-directions`.

    Parameters
    ----------
    M : Factored or LowRank
        The *updated* matrix ``M_t`` (after the step that used ``g``), shape ``(d, d)``.
    g : array, shape (d,)
        Same backend, device and floating dtype as ``M``.
    eps : float
        ``> 0``.

    Returns
    -------
    array, shape (d,)
        ``eps^{-1/2}(g - M g)``; for ``M_t`` built from ``g`` it equals ``gbar / s`` [A05]
        and has norm ``nu / s < 1`` [A06]. O(d k).

    Notes
    -----
    ``L = G^{1/2} O`` is not symmetric, so this is the AdaGrad step rotated by ``O^T``; it can
    point uphill (:ref:`theory-adagram-directions`, [A13]). Use :func:`symmetric_direction`
    for the true full-matrix AdaGrad step.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import Factored
    >>> g, eps = np.array([1.0, 2.0, 2.0]), 1.0
    >>> M, info = inverse_factor_update(Factored.zeros(3, like=g), g, eps)
    >>> p = published_direction(M, g, eps)
    >>> bool(np.allclose(p, info.gbar / info.s)), round(float(np.linalg.norm(p)), 12)
    (True, 0.948683298051)
    """
    xp, eps = _check_inputs("M", M, g, eps)
    _require_finite_inputs(xp, "M", M, g)
    return _published_direction(xp, M, g, eps)


def _published_direction(xp: Any, M: Any, g: Any, eps: float) -> Any:
    """Unchecked :func:`published_direction`."""
    return (g - M.matvec(g)) / math.sqrt(eps)


def newton_direction(M: Any, g: Any, eps: float) -> Any:
    """The Newton-like direction ``G^{-1} g = eps^{-1} (I - M)^T (I - M) g``.

    Theory: :ref:`theory-adagram-directions`.

    Parameters
    ----------
    M : Factored or LowRank
        The updated matrix ``M_t``; ``G = eps (I - M)^{-1}(I - M)^{-T}``.
    g : array, shape (d,)
        Same backend, device and floating dtype as ``M``.
    eps : float
        ``> 0``.

    Returns
    -------
    array, shape (d,)
        ``G^{-1} g`` [A08], O(d k): for exact states ``solve(eps I + sum g g^T, g)``; equal
        to ``eps^{-1/2}(gbar/s - Q (P^T gbar/s))``. Units ``~ g / lambda`` (it needs its own
        learning rate); relative error ``~ u kappa(G)`` [B11]. ``g . p >= 0``.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import Factored
    >>> g, eps = np.array([1.0, 2.0, 2.0]), 0.5
    >>> M, _ = inverse_factor_update(Factored.zeros(3, like=g), g, eps)
    >>> G = eps * np.eye(3) + np.outer(g, g)
    >>> bool(np.allclose(newton_direction(M, g, eps), np.linalg.solve(G, g)))
    True
    """
    xp, eps = _check_inputs("M", M, g, eps)
    _require_finite_inputs(xp, "M", M, g)
    return _newton_direction(xp, M, g, eps)


def _newton_direction(xp: Any, M: Any, g: Any, eps: float) -> Any:
    """Unchecked :func:`newton_direction`."""
    root = math.sqrt(eps)
    h = (g - M.matvec(g)) / root
    return (h - M.rmatvec(h)) / root


def _core(xp: Any, M: Any) -> tuple[Any, Any] | None:
    """``Z`` ``(d, q)`` and ``C = I_q - m`` (core dtype) with ``I - M = I - Z m Z^T``.

    The symmetric direction of docs/theory.rst#theory-adagram-directions.

    ``Z R = qr([P Q])`` (Householder: ``[P Q]`` has rank ``k``, not ``2k`` [A11]), so
    ``M = Z (R[:, :k] R[:, k:]^T) Z^T``; for ``LowRank`` the blocks are ``[U V]`` and the core
    is ``R[:, :r] S R[:, r:]^T``. ``None`` when ``M`` has no columns (``M = 0``).
    """
    if isinstance(M, Factored):
        left, right, S = M.P, M.Q, None
    else:
        left, right, S = M.U, M.V, M.S
    k = int(left.shape[1])
    if k == 0:
        return None
    Z, R = xp.linalg.qr(xp.concat([left, right], axis=1))
    R = as_core(xp, R)
    R1, R2 = R[:, :k], R[:, k:]
    m = R1 @ R2.T if S is None else R1 @ as_core(xp, S) @ R2.T
    q = int(R.shape[0])
    return Z, xp.eye(q, dtype=R.dtype, device=device_of(R)) - m


def _check_clip(clip: Any) -> tuple[float, float] | None:
    if clip is None:
        return None
    try:
        lo, hi = clip
    except (TypeError, ValueError):
        raise TypeError(f"clip: expected None or a pair (lo, hi), got {clip!r}") from None
    lo = check_positive("clip[0]", lo, allow_zero=True)
    hi = check_positive("clip[1]", hi)
    if not lo <= 1.0 <= hi:
        raise ValueError(f"clip: need 0 <= lo <= 1 <= hi (1 is the eps scale), got {clip!r}")
    return lo, hi


def symmetric_direction(M: Any, g: Any, eps: float, clip: tuple[float, float] | None = None) -> Any:
    """The full-matrix AdaGrad step ``G^{-1/2} g = eps^{-1/2} |I - M| g``.

    Theory: :ref:`theory-adagram-directions`.

    ``G = eps (I - M)^{-1}(I - M)^{-T}`` gives ``G^{-1/2} = eps^{-1/2} ((I-M)^T (I-M))^{1/2}
    = eps^{-1/2} |I - M|``. With ``Z R = qr([P Q])`` (``[U V]`` for ``LowRank``),
    ``I - M = Z (I_q - m) Z^T + (I - Z Z^T)`` and the small SVD
    ``I_q - m = W_l diag(sig) W_r^T``::

        p = eps^{-1/2} (g + Z (W_r diag(sig) W_r^T - I) Z^T g)

    Parameters
    ----------
    M : Factored or LowRank
        The updated matrix ``M_t``, shape ``(d, d)``, ``k`` (or ``r``) columns; ``k = 0``
        gives ``g / sqrt(eps)``. For the truncated-mode direction of
        ``M^+ = U S V^T + x y^T`` (:ref:`theory-integrators-warmup`) pass
        ``Factored(concat([U S, x]), concat([V, y]))``.
    g : array, shape (d,)
        Same backend, device and floating dtype as ``M``.
    eps : float
        ``> 0``.
    clip : (float, float), optional
        ``(lo, hi)`` with ``0 <= lo <= 1 <= hi``: clip ``sig`` into ``[lo, hi]`` first (a
        remedy for a truncated factor, :ref:`theory-truncation`). Use
        ``(sqrt(eps/(eps + sumsq)), 1.0)``, the interval an exact factor satisfies [A10]. The
        other ``d - q`` singular values of ``I - M`` are exactly 1 and already inside, so the
        result is ``eps^{-1/2} V clip(Sigma) V^T g`` for the full SVD ``I - M = W Sigma V^T``.
        ``None`` (default): no clipping.

    Returns
    -------
    array, shape (d,)
        ``G^{-1/2} g``; for exact states full-matrix AdaGrad's step to ~1e-11 [A07], with
        ``|p| = |published_direction| < 1`` [A06] and ``g . p > 0``.

    Notes
    -----
    O(d k^2) for one Householder QR of the ``d x 2k`` block (Cholesky-QR is unsafe: the block
    has rank ``k`` [A11]) plus an O(k^3) SVD, done in float64 for float32 input. Never
    forms a ``d x d`` matrix. ``g`` is split as ``Z c + r`` with two projections
    (``c = Z^T g``, then ``Z^T r`` once more), so ``Z``'s loss of orthogonality (~``d u``) is
    not amplified by the cancellation in ``g - Z c`` (``|p| << |g|/sqrt(eps)`` when
    ``lambda_max(G) >> eps``). Relative error ``~u sqrt(lambda_max(G)/eps)`` [A15].

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import Factored
    >>> rng = np.random.default_rng(1)
    >>> d, eps = 5, 0.1
    >>> M, G = Factored.zeros(d, like=np.zeros(d)), eps * np.eye(d)
    >>> for _ in range(3):
    ...     g = rng.standard_normal(d)
    ...     M, _ = inverse_factor_update(M, g, eps)
    ...     G += np.outer(g, g)
    >>> lam, E = np.linalg.eigh(G)
    >>> p = symmetric_direction(M, g, eps)
    >>> bool(np.allclose(p, E @ ((E.T @ g) / np.sqrt(lam))))
    True
    """
    xp, eps = _check_inputs("M", M, g, eps)
    bounds = _check_clip(clip)
    _require_finite_inputs(xp, "M", M, g)
    return _symmetric_direction(xp, M, g, eps, bounds)


def _symmetric_direction(
    xp: Any, M: Any, g: Any, eps: float, clip: tuple[float, float] | None = None
) -> Any:
    """Unchecked :func:`symmetric_direction` (``clip`` None or a checked ``(lo, hi)``)."""
    root = math.sqrt(eps)
    core = _core(xp, M)
    if core is None:
        return g / root
    Z, C = core
    _, sig, WrT = xp.linalg.svd(C, full_matrices=False)
    if clip is not None:
        sig = xp.clip(sig, min=clip[0], max=clip[1])
    # g = Z c' + r with r orthogonal to range(Z): project twice ("twice is enough") so that
    # the loss of orthogonality of Z (~d u, worse for float32 QR on some backends) is not
    # amplified by the cancellation g - Z c (|p| ~ |g| sqrt(eps/lambda_max) << |g|).
    c = Z.T @ g
    r = g - Z @ c
    c2 = Z.T @ r
    r = r - Z @ c2
    cc = as_core(xp, c) + as_core(xp, c2)
    t = WrT.T @ (sig * (WrT @ cc))
    return (r + Z @ xp.astype(t, g.dtype)) / root


def factor_health(M: Any) -> Any:
    """Singular values of the core ``I_q - m`` of ``I - M`` in the ``Z`` basis.

    Theory: :ref:`theory-truncation`.

    With ``Z R = qr([P Q])`` (``[U V]`` for ``LowRank``), ``I - M = Z (I_q - m) Z^T +
    (I - Z Z^T)``, so these are the nontrivial singular values of ``I - M`` (the other
    ``d - q`` are exactly 1) [B13]; ``sig_i = sqrt(eps / lambda_i(G))`` for
    ``G = eps (I-M)^{-1}(I-M)^{-T}`` [A10].

    Parameters
    ----------
    M : Factored or LowRank
        ``(d, d)`` with ``k`` (``r``) columns.

    Returns
    -------
    array, shape (q,)
        Descending, ``q = min(d, 2k)`` (``min(d, 2r)``), dtype of ``M``; empty for ``k = 0``.
        Exact states have ``k`` of them equal to 1 (``span P = span Q``).

    Notes
    -----
    **Healthy interval** ``[sqrt(eps/(eps + sumsq)), 1]``, ``sumsq = sum_s |g_s|^2`` over
    the accepted gradients: every exact factor satisfies it [A10]. After truncation
    ``sig_max > 1`` means ``G >= eps I`` was lost and ``sig_min`` below the bound means
    over-confident, nearly frozen directions (remedy: ``symmetric_direction(clip=...)`` or a
    reset). Cost O(d k^2) + O(k^3) (free alongside :func:`symmetric_direction`).

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_precond.linalg import Factored
    >>> g, eps = np.array([0.0, 3.0, 4.0]), 1.0
    >>> M, _ = inverse_factor_update(Factored.zeros(3, like=g), g, eps)
    >>> sig = factor_health(M)                       # sqrt(eps/(eps + 25)) and 1
    >>> bool(np.allclose(sig, [1.0, np.sqrt(1 / 26)]))
    True
    """
    ref = _check_operator("M", M)
    xp = array_namespace(ref)
    require_finite(xp, *_operator_arrays("M", M))
    return _factor_health(xp, M)


def _factor_health(xp: Any, M: Any) -> Any:
    """Unchecked :func:`factor_health`."""
    ref = M.P if isinstance(M, Factored) else M.U
    core = _core(xp, M)
    if core is None:
        return xp.zeros((0,), dtype=ref.dtype, device=device_of(ref))
    return xp.astype(xp.linalg.svdvals(core[1]), ref.dtype)
