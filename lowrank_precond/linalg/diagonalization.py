"""SVD bases (AdaDiag, AdaDiag++) and inverse matrix roots (ASGO).

Both helpers work on small ``m x m`` / ``m x n`` matrices (one weight matrix's short side), so
they are dense by design. float32 inputs are factorized in float64 (``backends.to_core``) and
the results cast back to float32: the factorizations cost O(m^2 n) / O(m^3) either way, and the
float64 core keeps an ``eps`` below the float32 ulp of ``diag(V)`` (ASGO) and the orthogonality
of the bases at float32 rounding.

References: :ref:`theory-adadiag` (arXiv 2502.07488) and :ref:`theory-asgo` (arXiv 2503.20762).

Each public function validates its arguments once (kinds, shapes, scalars, then finiteness:
``ValueError("NAME: contains NaN or inf")``) and calls its unchecked kernel
``_svd_basis(xp, G, full, align_to)`` / ``_inverse_root(xp, V, eps, power)``, which checks
nothing (:mod:`lowrank_precond.linalg._unchecked`).
"""

from __future__ import annotations

from typing import Any

from lowrank_precond.backends import check_floating, check_positive
from lowrank_precond.linalg._numerics import as_core, require_finite

__all__ = ["svd_basis", "inverse_root"]


def _check_matrix(name: str, a: Any) -> Any:
    """Kind and shape of a non-empty 2-D floating matrix (finiteness: the caller, last)."""
    xp = check_floating(name, a)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got shape {tuple(a.shape)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty matrix, got shape {tuple(a.shape)}")
    return xp


def _cast(xp: Any, a: Any, dtype: Any) -> Any:
    return a if a.dtype == dtype else xp.astype(a, dtype)


def _signs(xp: Any, new: Any, old: Any) -> Any:
    """Per-column signs ``s_j = +1`` if ``new_j . old_j >= 0`` else ``-1`` (core dtype)."""
    dots = xp.sum(new * old, axis=0)
    one = xp.ones_like(dots)
    return xp.where(dots < 0, -one, one)


def _check_aligned_to(name: str, xp: Any, old: Any, shape: tuple[int, int]) -> None:
    """Validate the kind and shape of an ``align_to`` reference matrix."""
    try:
        xp_old = check_floating(name, old)
    except TypeError as exc:
        raise TypeError(f"align_to: {exc}") from None
    if xp_old is not xp:
        raise TypeError(f"align_to: {name} must be an array of the same kind as G")
    if tuple(old.shape) != shape:
        raise ValueError(f"align_to: {name} must have shape {shape}, got {tuple(old.shape)}")


def _split_align_to(align_to: Any) -> tuple[Any, Any]:
    """``(P_old, Q_old)`` of ``align_to`` (``Q_old`` None for a single matrix)."""
    if isinstance(align_to, tuple):
        if len(align_to) != 2:
            raise ValueError(
                f"align_to: expected P_old or a tuple (P_old, Q_old), got a tuple of "
                f"length {len(align_to)}"
            )
        return align_to
    return align_to, None


def _check_svd_args(G: Any, full: Any, align_to: Any) -> Any:
    """Validate ``svd_basis``'s arguments (finiteness last); return the namespace."""
    xp = _check_matrix("G", G)
    if not isinstance(full, bool):
        raise TypeError(f"full: expected a bool, got {full!r}")
    m, n = int(G.shape[0]), int(G.shape[1])
    if m > n:
        raise ValueError(
            f"G: expected shape (m, n) with m <= n, got {(m, n)}; pass the transpose "
            "(AdaDiag works on the short side)"
        )
    named = [("G", G)]
    if align_to is not None:
        P_old, Q_old = _split_align_to(align_to)
        _check_aligned_to("P_old", xp, P_old, (m, m))
        named.append(("align_to: P_old", P_old))
        if Q_old is not None:
            _check_aligned_to("Q_old", xp, Q_old, (n, n) if full else (n, m))
            named.append(("align_to: Q_old", Q_old))
    require_finite(xp, *named)
    return xp


def svd_basis(G: Any, full: bool = True, align_to: Any = None) -> tuple[Any, Any, Any]:
    """Singular bases of a gradient matrix for AdaDiag / AdaDiag++, with sign alignment.

    ``G = P[:, :m] @ diag(sig) @ Q[:, :m].T`` with ``P`` orthogonal ``(m, m)`` and ``Q`` with
    orthonormal columns; AdaDiag projects gradients as ``P.T @ G`` (one-sided) or
    ``P.T @ G @ Q`` (two-sided, AdaDiag++).

    Parameters
    ----------
    G : array, shape (m, n) with ``1 <= m <= n``, real floating
        The short side comes first: AdaDiag works with ``m <= n`` (:ref:`theory-adadiag`), so a tall
        parameter must be passed transposed (``svd_basis(G.T)``); ``m > n`` raises
        ``ValueError`` rather than transposing silently, because the caller must then also
        transpose its moments and its update. Must be finite.
    full : bool, default True
        ``True``: ``Q`` is the full orthogonal ``(n, n)`` basis (``full_matrices=True``). This
        is what the two-sided method needs: a thin ``Q`` drops the part of *later* gradients
        outside the current row space (29 % in [C01], :ref:`theory-adadiag`).
        ``False``: ``Q`` is the thin ``(n, m)`` factor (enough for one-sided AdaDiag, which
        uses only ``P``; O(m n) memory instead of O(n^2)).
    align_to : array ``P_old`` of shape (m, m), or tuple ``(P_old, Q_old)``, optional
        Sign alignment with the previous basis (pitfall (ii): singular vectors are defined up
        to sign, so a refresh may negate columns and with them the momentum kept in the
        projected coordinates). Column ``j < m`` of ``P`` is negated when
        ``P[:, j] . P_old[:, j] < 0`` and column ``j`` of ``Q`` is negated with it, so
        ``P diag(sig) Q[:, :m]^T = G`` still holds. With a tuple and ``full=True`` the columns
        ``j >= m`` of ``Q`` (a basis of the null space of ``G``, not tied to ``P``) are aligned
        the same way against ``Q_old[:, j]``; ``Q_old`` must have ``Q``'s shape. A zero dot
        product keeps the sign. ``None`` (default): the backend's signs.

    Returns
    -------
    P : array, shape (m, m)
        Left singular vectors (orthogonal).
    sig : array, shape (m,)
        Singular values, non-increasing, ``>= 0``.
    Q : array, shape (n, n) if ``full`` else (n, m)
        Right singular vectors (``Q = Vh.T``).

    All three have ``G``'s dtype, kind and device. A float32 ``G`` is factorized in float64
    and the results are rounded to float32.

    Raises
    ------
    ValueError
        ``G`` not 2-D, empty, with ``m > n`` or non-finite (``"G: contains NaN or inf"``);
        ``align_to`` of the wrong shape or non-finite.
    TypeError
        Non-floating ``G`` or ``align_to``, ``full`` not a bool.

    Notes
    -----
    Cost O(m^2 n) for the thin factor; ``full=True`` adds O(m n^2) flops and O(n^2) memory.
    Entries of ``P.T @ G @ Q`` that vanish in exact arithmetic carry rounding noise
    ``~ u |G|`` (pitfall (iii)): Adam's ``N = M / (sqrt(V) + eps)`` amplifies them to
    ``u |G| / eps``.

    References
    ----------
    :ref:`theory-adadiag` (invariants [C01]-[C03]); AdaDiag, arXiv 2502.07488, Algorithm 1.

    Examples
    --------
    >>> import numpy as np
    >>> G = np.array([[3.0, 0.0, 4.0], [0.0, 1.0, 0.0]])
    >>> P, sig, Q = svd_basis(G)
    >>> P.shape, sig.shape, Q.shape
    ((2, 2), (2,), (3, 3))
    >>> bool(np.allclose(P @ np.diag(sig) @ Q[:, :2].T, G))
    True
    >>> bool(np.allclose(Q.T @ Q, np.eye(3)))
    True

    Sign alignment: a 1 x d parameter keeps ``P = +1`` across refreshes.

    >>> P1, _, Q1 = svd_basis(np.array([[1.0, 2.0]]), align_to=np.ones((1, 1)))
    >>> P2, _, Q2 = svd_basis(np.array([[-3.0, 1.0]]), align_to=P1)
    >>> P1.item(), P2.item()
    (1.0, 1.0)
    >>> bool(np.allclose(Q2[:, 0], np.array([-3.0, 1.0]) / np.sqrt(10.0)))
    True
    """
    xp = _check_svd_args(G, full, align_to)
    return _svd_basis(xp, G, full, align_to)


def _svd_basis(xp: Any, G: Any, full: bool = True, align_to: Any = None) -> tuple[Any, Any, Any]:
    """Unchecked :func:`svd_basis` (``align_to`` None, ``P_old`` or ``(P_old, Q_old)``)."""
    m, n = int(G.shape[0]), int(G.shape[1])
    Gc = as_core(xp, G)
    P, sig, Vh = xp.linalg.svd(Gc, full_matrices=full)
    Q = Vh.T
    if align_to is not None:
        P_old, Q_old = align_to if isinstance(align_to, tuple) else (align_to, None)
        P_old = _cast(xp, P_old, P.dtype)
        s = _signs(xp, P, P_old)
        P = P * s
        if Q_old is not None:
            Q_old = _cast(xp, Q_old, Q.dtype)
        if full and n > m:
            s_rest = _signs(xp, Q[:, m:], Q_old[:, m:]) if Q_old is not None else None
            rest = Q[:, m:] if s_rest is None else Q[:, m:] * s_rest
            Q = xp.concat([Q[:, :m] * s, rest], axis=1)
        else:
            Q = Q * s
    if G.dtype != Gc.dtype:
        P, sig, Q = (xp.astype(a, G.dtype) for a in (P, sig, Q))
    return P, sig, Q


def inverse_root(V: Any, eps: float, power: float = 0.5) -> Any:
    """Damped inverse matrix root ``(V + eps I)^(-power)`` of a symmetric PSD matrix (ASGO).

    ``w, E = eigh((V + V^T) / 2)``;  ``R = E diag((max(w, 0) + eps)^(-power)) E^T``.

    Eigenvalues are clamped at 0 *before* ``eps`` is added, so rounding that makes a PSD
    ``V`` slightly indefinite (or a genuinely indefinite input) never produces NaN or a
    root larger than ``eps^(-power)``.

    Parameters
    ----------
    V : array, shape (m, m), real floating
        Symmetric positive semi-definite (e.g. ASGO's ``sum G G^T``); only its symmetric
        part is used. Must be finite.
    eps : float
        Damping, ``> 0`` (inside the root, as for every AdaGrad-family method).
    power : float, default 0.5
        Exponent, ``> 0``: 0.5 is ASGO's ``(V + eps I)^(-1/2)``; 0.25 gives Shampoo's roots.

    Returns
    -------
    R : array, shape (m, m)
        Exactly symmetric, same dtype, kind and device as ``V``. A float32 ``V`` is
        decomposed in float64 (an ``eps`` below the float32 ulp of ``diag(V)`` would be lost
        otherwise) and ``R`` rounded to float32.

    Raises
    ------
    ValueError
        ``V`` not square 2-D or non-finite; ``eps`` or ``power`` not finite and ``> 0``.
    TypeError
        Non-floating ``V``; non-real ``eps`` or ``power``.

    Notes
    -----
    Cost O(m^3) (dense eigh); meant for the short side of a weight matrix.

    References
    ----------
    :ref:`theory-asgo` (invariant [D01]); ASGO, arXiv 2503.20762.

    Examples
    --------
    >>> import numpy as np
    >>> V = np.array([[4.0, 0.0], [0.0, 0.0]])
    >>> R = inverse_root(V, eps=1e-2)
    >>> bool(np.allclose(R, np.diag([1 / np.sqrt(4.01), 10.0])))
    True
    >>> bool(np.allclose(R @ (V + 1e-2 * np.eye(2)) @ R, np.eye(2)))
    True
    """
    xp = _check_matrix("V", V)
    if V.shape[0] != V.shape[1]:
        raise ValueError(f"V: expected a square matrix, got shape {tuple(V.shape)}")
    eps = check_positive("eps", eps)
    power = check_positive("power", power)
    require_finite(xp, ("V", V))
    return _inverse_root(xp, V, eps, power)


def _inverse_root(xp: Any, V: Any, eps: float, power: float = 0.5) -> Any:
    """Unchecked :func:`inverse_root` (``eps``, ``power`` floats ``> 0``)."""
    Vc = as_core(xp, V)
    w, E = xp.linalg.eigh((Vc + Vc.T) / 2)
    w = xp.where(w > 0, w, xp.zeros_like(w))
    scale = (w + eps) ** (-power)
    R = (E * scale) @ E.T
    R = (R + R.T) / 2
    return R if R.dtype == V.dtype else xp.astype(R, V.dtype)
