"""Plain-NumPy dense float64 reference implementations, written from ALGORITHMS.md.

Importable by any test file: from a test in this directory ``from dense_reference import
...`` (pytest puts the directory of a test file on ``sys.path``; ``tests/`` has no
``__init__.py``); from another test directory, first
``sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "preconditioners"))``.
Every function forms
the dense matrices literally as the spec writes them (``G_0 = eps I``, ``eigh`` of the dense
matrix, ``svd(full_matrices=True)``), so it shares no code with the library.

Functions are *step* functions on plain dicts: ``p, state = dense_xxx_step(state, g, ...)``
with ``state`` a dict of NumPy arrays and ints (the input dict is not modified).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "assert_directions_close",
    "assert_snapshot_equal",
    "check_float32",
    "check_nonfinite",
    "check_roundtrip",
    "dense_adadiag_init",
    "dense_adadiag_step",
    "dense_adagrad_init",
    "dense_adagrad_step",
    "dense_adam_init",
    "dense_adam_step",
    "dense_asgo_init",
    "dense_asgo_step",
    "dense_full_adagrad_init",
    "dense_full_adagrad_step",
    "dense_inverse_root",
    "dense_polar_factor",
    "gradient_stream",
    "run_preconditioner",
    "run_reference",
    "state_snapshot",
]


def gradient_stream(rng: np.random.Generator, shape: tuple, steps: int) -> list[np.ndarray]:
    """A seeded list of ``steps`` float64 gradients of ``shape``.

    Scales vary by column and over time (as real gradients do), so adaptive methods are
    exercised away from their trivial regimes.
    """
    col = np.exp(rng.uniform(-1.0, 1.0, size=shape[-1:] if shape else ()))
    out = []
    for s in range(steps):
        g = rng.standard_normal(shape) * col * (1.0 + 0.5 * np.sin(0.3 * s))
        out.append(np.asarray(g, dtype=np.float64))
    return out


def run_reference(step, state: dict, grads, **kwargs) -> tuple[list[np.ndarray], dict]:
    """Apply ``step`` to each gradient; return the list of directions and the final state."""
    directions = []
    for g in grads:
        p, state = step(state, g, **kwargs)
        directions.append(p)
    return directions, state


# --------------------------------------------------------------------------- section E


def dense_adagrad_init(shape) -> dict:
    return {"t": 0, "h": np.zeros(shape)}


def dense_adagrad_step(state: dict, g: np.ndarray, *, eps: float, eps_inside_sqrt: bool = True):
    """``h += g*g``; ``g / sqrt(eps + h)`` or (torch) ``g / (sqrt(h) + eps)``."""
    h = state["h"] + g * g
    p = g / np.sqrt(eps + h) if eps_inside_sqrt else g / (np.sqrt(h) + eps)
    return p, {"t": state["t"] + 1, "h": h}


def dense_adam_init(shape) -> dict:
    return {"t": 0, "m": np.zeros(shape), "v": np.zeros(shape)}


def dense_adam_step(state: dict, g: np.ndarray, *, betas=(0.9, 0.999), eps: float = 1e-8):
    """Section E: ``(m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)``."""
    b1, b2 = betas
    t = state["t"] + 1
    m = b1 * state["m"] + (1 - b1) * g
    v = b2 * state["v"] + (1 - b2) * g * g
    p = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return p, {"t": t, "m": m, "v": v}


def dense_full_adagrad_init(d: int, eps: float) -> dict:
    """``G_0 = eps I`` (eps inside the root)."""
    return {"t": 0, "G": eps * np.eye(d)}


def dense_full_adagrad_step(state: dict, g: np.ndarray):
    """``G += g g^T``; ``p = E diag(w^{-1/2}) E^T g`` from ``eigh(G)`` (g is flattened)."""
    shape = g.shape
    g = g.reshape(-1)
    G = state["G"] + np.outer(g, g)
    w, E = np.linalg.eigh(G)
    p = E @ ((E.T @ g) / np.sqrt(w))
    return p.reshape(shape), {"t": state["t"] + 1, "G": G}


# --------------------------------------------------------------------------- section D


def dense_inverse_root(V: np.ndarray, eps: float) -> np.ndarray:
    """``E diag((max(w,0) + eps)^{-1/2}) E^T`` with ``w, E = eigh((V + V^T)/2)``."""
    w, E = np.linalg.eigh((V + V.T) / 2)
    return (E / np.sqrt(np.maximum(w, 0.0) + eps)) @ E.T


def dense_asgo_init(m: int, n: int) -> dict:
    return {"t": 0, "V": np.zeros((m, m)), "R": None, "B": np.zeros((m, n))}


def dense_asgo_step(
    state: dict,
    G: np.ndarray,
    *,
    update_freq: int = 1,
    eps: float = 1e-8,
    beta1: float = 0.0,
    beta2: float | None = None,
):
    """Section D on an ``(m, n)`` matrix gradient (preconditioner on the m side)."""
    GGt = G @ G.T
    V = state["V"] + GGt if beta2 is None else beta2 * state["V"] + (1 - beta2) * GGt
    R = state["R"]
    if state["t"] % update_freq == 0:
        R = dense_inverse_root(V, eps)
    B = G if beta1 == 0.0 else beta1 * state["B"] + (1 - beta1) * G
    return R @ B, {"t": state["t"] + 1, "V": V, "R": R, "B": B}


# --------------------------------------------------------------------------- section C


def dense_adadiag_init(m: int, n: int, *, two_sided: bool) -> dict:
    """Moments ``(m, n)``; bases start at the identity (the first refresh aligns to it)."""
    state = {"t": 0, "M": np.zeros((m, n)), "V": np.zeros((m, n)), "P": np.eye(m)}
    if two_sided:
        state["Q"] = np.eye(n)
    return state


def _aligned_svd(G: np.ndarray, P_old: np.ndarray, Q_old: np.ndarray | None):
    """``svd(G, full_matrices=True)`` with ``p_new . p_old >= 0`` per column of P.

    Column ``j < m`` of ``Q`` flips together with column ``j`` of ``P`` (so that
    ``G = P diag(sig) Q^T`` still holds); the remaining columns of ``Q`` (the null space of
    ``G``) are aligned with the previous ``Q`` on their own.
    """
    P, sig, Qt = np.linalg.svd(G, full_matrices=True)
    Q = Qt.T
    m = P.shape[0]
    s = np.where(np.sum(P * P_old, axis=0) < 0, -1.0, 1.0)
    P = P * s
    Q = Q.copy()
    Q[:, :m] = Q[:, :m] * s
    if Q_old is not None and Q.shape[1] > m:
        sq = np.where(np.sum(Q[:, m:] * Q_old[:, m:], axis=0) < 0, -1.0, 1.0)
        Q[:, m:] = Q[:, m:] * sq
    return P, sig, Q


def dense_adadiag_step(
    state: dict,
    G: np.ndarray,
    *,
    two_sided: bool,
    update_freq: int,
    betas=(0.9, 0.999),
    eps: float = 1e-8,
    exact_refresh_projection: bool = False,
):
    """Section C on an ``(m, n)`` gradient with ``m <= n`` (the caller transposes).

    ``exact_refresh_projection=True`` uses ``P^T G Q = [diag(sig), 0]`` (its exact value) at a
    two-sided refresh instead of the computed product, whose zero entries carry rounding noise
    that ``N`` amplifies to ``~u|G|/eps`` (section C pitfall (iii)).
    """
    b1, b2 = betas
    P, Q = state["P"], state.get("Q")
    refresh = state["t"] % update_freq == 0
    if refresh:
        P, sig, Qfull = _aligned_svd(G, P, Q)
        if two_sided:
            Q = Qfull
    t = state["t"] + 1
    Gt = P.T @ G @ Q if two_sided else P.T @ G
    if two_sided and refresh and exact_refresh_projection:
        Gt = np.zeros_like(G)
        Gt[np.arange(G.shape[0]), np.arange(G.shape[0])] = sig
    M = b1 * state["M"] + (1 - b1) * Gt
    V = b2 * state["V"] + (1 - b2) * Gt**2
    N = (M / (1 - b1**t)) / (np.sqrt(V / (1 - b2**t)) + eps)
    p = P @ N @ Q.T if two_sided else P @ N
    new = {"t": t, "M": M, "V": V, "P": P}
    if two_sided:
        new["Q"] = Q
    return p, new


def dense_polar_factor(G: np.ndarray) -> np.ndarray:
    """``U V^T`` from the thin SVD ``G = U S V^T`` [C02]."""
    U, _, Vt = np.linalg.svd(G, full_matrices=False)
    return U @ Vt


# --------------------------------------------------------------------------- protocol checks
# Generic checks of the Preconditioner protocol (base.py), shared by the test files. They take
# NumPy inputs; ``xp`` is a conftest ``Backend`` (``xp.asarray`` / ``xp.to_numpy``).


def run_preconditioner(pre, x: np.ndarray, grads, xp=None):
    """Run ``pre`` over ``grads`` from ``pre.init(x)``; return (NumPy directions, final state)."""
    conv = (lambda a: a) if xp is None else xp.asarray
    back = np.asarray if xp is None else xp.to_numpy
    state = pre.init(conv(x))
    directions = []
    for g in grads:
        p, state = pre.update(conv(g), state)
        directions.append(np.array(back(p), dtype=np.float64, copy=True))
    return directions, state


def assert_directions_close(got, want, rtol: float) -> None:
    """Every direction within ``rtol`` of the reference, relative to the reference's norm."""
    assert len(got) == len(want)
    for s, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.shape == b.shape, (s, a.shape, b.shape)
        err = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)
        assert err <= rtol, f"step {s}: relative error {err:.3e} > {rtol:.1e}"


def state_snapshot(state) -> dict:
    """Deep NumPy copy of a flat dataclass state (to check bit-identity later)."""
    import dataclasses

    from lowrank_precond import backends

    out = {}
    for f in dataclasses.fields(state):
        v = getattr(state, f.name)
        scalar = isinstance(v, (int, float, str))
        out[f.name] = v if scalar else np.array(backends.to_numpy(v), copy=True)
    return out


def assert_snapshot_equal(state, snap: dict) -> None:
    now = state_snapshot(state)
    assert now.keys() == snap.keys()
    for k in snap:
        np.testing.assert_array_equal(np.asarray(now[k]), np.asarray(snap[k]), err_msg=k)


def check_nonfinite(factory, x: np.ndarray, grads, **kwargs) -> None:
    """NaN/inf raise ``FloatingPointError`` by default; ``"skip"`` returns zeros + same state."""
    import pytest

    bad = np.array(grads[-1], copy=True)
    bad.reshape(-1)[0] = np.nan
    inf = np.array(grads[-1], copy=True)
    inf.reshape(-1)[-1] = np.inf
    pre = factory(**kwargs)
    _, state = run_preconditioner(pre, x, grads[:3])
    snap = state_snapshot(state)
    with pytest.raises(FloatingPointError, match="grad"):
        pre.update(bad, state)
    assert_snapshot_equal(state, snap)
    skip = factory(**kwargs, nonfinite="skip")
    _, state = run_preconditioner(skip, x, grads[:3])
    snap = state_snapshot(state)
    for g in (bad, inf):
        p, new = skip.update(g, state)
        assert new is state
        assert p.shape == g.shape and not np.any(p)
        assert_snapshot_equal(new, snap)
    # and the run continues exactly as if the bad steps never happened
    p_skip, _ = skip.update(grads[3], state)
    p_ref, _ = run_preconditioner(pre, x, grads[:4])
    np.testing.assert_array_equal(p_skip, p_ref[-1])


def check_roundtrip(pre, state_cls, x: np.ndarray, grads, split: int) -> None:
    """``asdict`` / ``state_from_dict`` mid-run continues bit-identically."""
    import dataclasses

    from lowrank_precond.preconditioners.base import state_from_dict, state_to_dict

    p_all, _ = run_preconditioner(pre, x, grads)
    _, state = run_preconditioner(pre, x, grads[:split])
    assert isinstance(state, state_cls)
    data = dataclasses.asdict(state)
    assert data.keys() == state_to_dict(state).keys()
    for v in data.values():
        assert isinstance(v, (int, float, str, np.ndarray)), type(v)  # flat: no containers
    restored = state_from_dict(
        state_cls,
        {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v for k, v in data.items()},
    )
    for s, g in enumerate(grads[split:]):
        p, restored = pre.update(g, restored)
        np.testing.assert_array_equal(p, p_all[split + s])


def check_float32(pre, x: np.ndarray, grads, xp) -> list[np.ndarray]:
    """float32 in, float32 directions out, all finite; returns them (float64 copies)."""
    x32 = x.astype(np.float32)
    state = pre.init(xp.asarray(x32))
    out = []
    for g in grads:
        p, state = pre.update(xp.asarray(g.astype(np.float32)), state)
        assert p.dtype == xp.float32
        pn = xp.to_numpy(p)
        assert np.all(np.isfinite(pn))
        out.append(pn.astype(np.float64))
    return out
