"""Validation happens once, at the public entry point; the unchecked kernels do none.

* every kernel of :mod:`lowrank_precond.linalg._unchecked` runs without one call of a
  ``check_*`` helper, ``all_finite`` or ``array_namespace`` (counted by patching them in
  every module that imports them), and returns bit for bit what its public function does;
* every public function still rejects a NaN/inf array, a wrong shape and a wrong dtype,
  naming the argument (``ValueError("NAME: contains NaN or inf")`` for the first).
"""

from __future__ import annotations

import collections
import re
import sys

import numpy as np
import pytest

import lowrank_precond.linalg._unchecked as K
from lowrank_precond.linalg import (
    Factored,
    GramSketch,
    LowRank,
    basis_update_galerkin,
    factor_health,
    inverse_factor_update,
    inverse_root,
    newton_direction,
    orthonormalize,
    projector_splitting,
    published_direction,
    qr_tall,
    rank_one_increment,
    recompress,
    sketch_inverse_sqrt_apply,
    svd_basis,
    symmetric_direction,
    truncated_svd,
)
from lowrank_precond.linalg import gram_sketch_update as gram_sketch_update_

#: the validation helpers a kernel must not call
CHECKS = (
    "all_finite",
    "array_namespace",
    "check_floating",
    "check_in",
    "check_int",
    "check_matching_rows",
    "check_positive",
    "check_rank",
    "check_vector",
)

D, R, EPS = 40, 3, 1e-3


@pytest.fixture
def counted(monkeypatch):
    """Counts of every :data:`CHECKS` call, patched where each module looks it up."""
    counts: collections.Counter = collections.Counter()

    def counting(name, f):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return f(*args, **kwargs)

        return wrapper

    for mod in list(sys.modules.values()):
        if not getattr(mod, "__name__", "").startswith("lowrank_precond"):
            continue
        for name in CHECKS:
            f = getattr(mod, name, None)
            if callable(f):
                monkeypatch.setattr(mod, name, counting(name, f))
    return counts


def _data(xp, rng):
    """Valid inputs of every public function (built before any counting)."""
    gs = [xp.asarray(rng.standard_normal(D)) for _ in range(2 * R + 2)]
    M = Factored.zeros(D, like=gs[0])
    for g in gs[:R]:
        M, _ = inverse_factor_update(M, g, EPS)
    low = recompress(M, R)
    for g in gs[R : 2 * R]:
        info = rank_one_increment(low, g, EPS)
        low = projector_splitting(low, info.x, info.y)
    sketch = GramSketch.empty(D, like=gs[0])
    for g in gs[: R + 1]:
        sketch = gram_sketch_update_(sketch, g, R)
    G = xp.asarray(rng.standard_normal((5, 8)))
    g, x, y = gs[-1], gs[-2], gs[-3]
    return dict(
        M=M, low=low, sketch=sketch, G=G, g=g, x=x, y=y, A=xp.asarray(rng.standard_normal((D, 4)))
    )


def _arrays(out):
    """The arrays of a result, in a fixed order."""
    if isinstance(out, tuple):
        return [a for o in out for a in _arrays(o)]
    if isinstance(out, Factored):
        return [out.P, out.Q]
    if isinstance(out, LowRank):
        return [out.U, out.S, out.V]
    if isinstance(out, GramSketch):
        return [out.U, out.sig2, out.rho]
    if hasattr(out, "gbar"):  # IncrementInfo
        return [out.gbar, out.x, out.y]
    return [out]


def _pairs(ns, d):
    """``(name, public call, kernel call)`` for every kernel the preconditioners use."""
    return _pairs_factorization(ns, d) + _pairs_integrators_sketch_diag(ns, d)


def _pairs_factorization(ns, d):
    """The kernels of :mod:`lowrank_precond.linalg.factorization`."""
    M, low, g = d["M"], d["low"], d["g"]
    return [
        (
            "rank_one_increment/Factored",
            lambda: rank_one_increment(M, g, EPS),
            lambda: K._rank_one_increment(ns, M, g, EPS),
        ),
        (
            "rank_one_increment/LowRank",
            lambda: rank_one_increment(low, g, EPS),
            lambda: K._rank_one_increment(ns, low, g, EPS),
        ),
        (
            "inverse_factor_update",
            lambda: inverse_factor_update(M, g, EPS),
            lambda: K._inverse_factor_update(ns, M, g, EPS),
        ),
        (
            "published_direction",
            lambda: published_direction(low, g, EPS),
            lambda: K._published_direction(ns, low, g, EPS),
        ),
        (
            "newton_direction",
            lambda: newton_direction(M, g, EPS),
            lambda: K._newton_direction(ns, M, g, EPS),
        ),
        (
            "symmetric_direction",
            lambda: symmetric_direction(M, g, EPS),
            lambda: K._symmetric_direction(ns, M, g, EPS),
        ),
        (
            "symmetric_direction/clip",
            lambda: symmetric_direction(low, g, EPS, clip=(0.1, 1.0)),
            lambda: K._symmetric_direction(ns, low, g, EPS, (0.1, 1.0)),
        ),
        ("factor_health", lambda: factor_health(low), lambda: K._factor_health(ns, low)),
    ]


def _pairs_integrators_sketch_diag(ns, d):
    """The rest of :func:`_pairs`: integrators, sketch, diagonalization, QR, containers."""
    M, low, sk, g, x, y, G = d["M"], d["low"], d["sketch"], d["g"], d["x"], d["y"], d["G"]
    P, _, _ = svd_basis(G)
    V = G @ G.T
    return [
        (
            "truncated_svd",
            lambda: truncated_svd(low, x, y, R),
            lambda: K._truncated_svd(ns, low, x, y, R),
        ),
        (
            "truncated_svd/padded",
            lambda: truncated_svd(low, x, y, R + 2),
            lambda: K._truncated_svd(ns, low, x, y, R + 2),
        ),
        (
            "projector_splitting",
            lambda: projector_splitting(low, x, y),
            lambda: K._projector_splitting(ns, low, x, y, 1),
        ),
        (
            "projector_splitting/strang",
            lambda: projector_splitting(low, x, y, order=2),
            lambda: K._projector_splitting(ns, low, x, y, 2),
        ),
        (
            "basis_update_galerkin",
            lambda: basis_update_galerkin(low, x, y),
            lambda: K._basis_update_galerkin(ns, low, x, y),
        ),
        (
            "basis_update_galerkin/adaptive",
            lambda: basis_update_galerkin(low, x, y, rank_adaptive=True, tol=1e-3, max_rank=R + 1),
            lambda: K._basis_update_galerkin(ns, low, x, y, True, 1e-3, R + 1),
        ),
        ("recompress", lambda: recompress(M, R - 1), lambda: K._recompress(ns, M, R - 1)),
        ("recompress/padded", lambda: recompress(M, R + 2), lambda: K._recompress(ns, M, R + 2)),
        (
            "gram_sketch_update",
            lambda: gram_sketch_update_(sk, g, R),
            lambda: K._gram_sketch_update(ns, sk, g, R),
        ),
        (
            "gram_sketch_update/plain",
            lambda: gram_sketch_update_(sk, g, R, shrink=False),
            lambda: K._gram_sketch_update(ns, sk, g, R, False),
        ),
        (
            "gram_sketch_update/ksl",
            lambda: gram_sketch_update_(sk, g, R, integrator="projector_splitting"),
            lambda: K._gram_sketch_update(ns, sk, g, R, True, "projector_splitting"),
        ),
        (
            "sketch_inverse_sqrt_apply",
            lambda: sketch_inverse_sqrt_apply(sk, g, EPS),
            lambda: K._sketch_inverse_sqrt_apply(ns, sk, g, EPS),
        ),
        (
            "svd_basis",
            lambda: svd_basis(G, full=True, align_to=P),
            lambda: K._svd_basis(ns, G, True, P),
        ),
        ("svd_basis/thin", lambda: svd_basis(G, full=False), lambda: K._svd_basis(ns, G, False)),
        (
            "inverse_root",
            lambda: inverse_root(V, EPS, 0.25),
            lambda: K._inverse_root(ns, V, EPS, 0.25),
        ),
        ("qr_tall", lambda: qr_tall(d["A"]), lambda: K._qr_tall(ns, d["A"])),
        (
            "containers",
            lambda: (
                Factored(M.P, M.Q),
                LowRank(low.U, low.S, low.V),
                GramSketch(sk.U, sk.sig2, sk.rho),
            ),
            lambda: (
                K._factored(M.P, M.Q),
                K._lowrank(low.U, low.S, low.V),
                K._gram_sketch(sk.U, sk.sig2, sk.rho),
            ),
        ),
    ]


def test_kernels_validate_nothing_and_equal_the_public_functions(xp, rng, counted):
    d = _data(xp, rng)
    for name, public, kernel in _pairs(xp.ns, d):
        counted.clear()
        expected = public()
        assert sum(counted.values()) > 0, name  # the counting sees the public validation
        counted.clear()
        got = kernel()
        assert dict(counted) == {}, f"{name}: the kernel validated {dict(counted)}"
        want, have = _arrays(expected), _arrays(got)
        assert len(want) == len(have), name
        for a, b in zip(want, have, strict=True):
            a, b = xp.to_numpy(a), xp.to_numpy(b)
            assert a.dtype == b.dtype and a.shape == b.shape, name
            np.testing.assert_array_equal(b, a, err_msg=name)  # bit for bit


def test_one_adagram_step_through_the_kernels_validates_nothing(xp, rng, counted):
    """What adagram's truncated step does (increment, integrator, direction of M^+)."""
    d = _data(xp, rng)
    ns, low, g = xp.ns, d["low"], d["g"]
    counted.clear()
    old = K._lowrank(low.U, low.S, low.V)
    info = K._rank_one_increment(ns, old, g, EPS)
    new = K._projector_splitting(ns, old, info.x, info.y, 1)
    plus = K._factored(
        ns.concat([old.U @ old.S, ns.reshape(info.x, (-1, 1))], axis=1),
        ns.concat([old.V, ns.reshape(info.y, (-1, 1))], axis=1),
    )
    p = K._symmetric_direction(ns, plus, g, EPS)
    assert dict(counted) == {}
    assert new.rank == R and tuple(p.shape) == (D,)


# --------------------------------------------------------------------------- rejection
def _nan(xp, a, index=0):
    """A copy of ``a`` with one NaN."""
    h = np.array(xp.to_numpy(a), copy=True)
    h.flat[index] = np.nan
    return xp.asarray(h)


def _inf(xp, a):
    h = np.array(xp.to_numpy(a), copy=True)
    h.flat[-1] = -np.inf
    return xp.asarray(h)


def _nonfinite_cases(xp, d):
    """``(argument name, call with that argument non-finite)``."""
    M, low, sk, g, x, y, G = d["M"], d["low"], d["sketch"], d["g"], d["x"], d["y"], d["G"]
    P, _, Q = svd_basis(G)
    cases = []
    for bad in (_nan, _inf):
        b = lambda a, bad=bad: bad(xp, a)  # noqa: E731
        for f in (rank_one_increment, published_direction, newton_direction, symmetric_direction):
            cases += [
                ("g", lambda f=f, b=b: f(M, b(g), EPS)),
                ("M.P", lambda f=f, b=b: f(Factored(b(M.P), M.Q), g, EPS)),
                ("M.Q", lambda f=f, b=b: f(Factored(M.P, b(M.Q)), g, EPS)),
                ("M.U", lambda f=f, b=b: f(LowRank(b(low.U), low.S, low.V), g, EPS)),
                ("M.S", lambda f=f, b=b: f(LowRank(low.U, b(low.S), low.V), g, EPS)),
                ("M.V", lambda f=f, b=b: f(LowRank(low.U, low.S, b(low.V)), g, EPS)),
            ]
        cases += [
            ("g", lambda b=b: inverse_factor_update(M, b(g), EPS)),
            ("state.P", lambda b=b: inverse_factor_update(Factored(b(M.P), M.Q), g, EPS)),
            ("state.Q", lambda b=b: inverse_factor_update(Factored(M.P, b(M.Q)), g, EPS)),
            ("M.U", lambda b=b: factor_health(LowRank(b(low.U), low.S, low.V))),
            ("factored.P", lambda b=b: recompress(Factored(b(M.P), M.Q), R)),
            ("factored.Q", lambda b=b: recompress(Factored(M.P, b(M.Q)), R)),
        ]
        for f in (truncated_svd, projector_splitting, basis_update_galerkin):
            call = (
                (lambda f, L, x, y: f(L, x, y, R))
                if f is truncated_svd
                else (lambda f, L, x, y: f(L, x, y))
            )
            cases += [
                ("x", lambda f=f, c=call, b=b: c(f, low, b(x), y)),
                ("y", lambda f=f, c=call, b=b: c(f, low, x, b(y))),
                ("lowrank.U", lambda f=f, c=call, b=b: c(f, LowRank(b(low.U), low.S, low.V), x, y)),
                ("lowrank.S", lambda f=f, c=call, b=b: c(f, LowRank(low.U, b(low.S), low.V), x, y)),
                ("lowrank.V", lambda f=f, c=call, b=b: c(f, LowRank(low.U, low.S, b(low.V)), x, y)),
            ]
        for vec, f in (
            ("g", lambda s, v: gram_sketch_update_(s, v, R)),
            ("v", lambda s, v: sketch_inverse_sqrt_apply(s, v, EPS)),
        ):
            cases += [
                (vec, lambda f=f, b=b: f(sk, b(g))),
                ("sketch.U", lambda f=f, b=b: f(GramSketch(b(sk.U), sk.sig2, sk.rho), g)),
                ("sketch.sig2", lambda f=f, b=b: f(GramSketch(sk.U, b(sk.sig2), sk.rho), g)),
                ("sketch.rho", lambda f=f, b=b: f(GramSketch(sk.U, sk.sig2, b(sk.rho)), g)),
            ]
        cases += [
            ("G", lambda b=b: svd_basis(b(G))),
            ("align_to: P_old", lambda b=b: svd_basis(G, align_to=b(P))),
            ("align_to: Q_old", lambda b=b: svd_basis(G, align_to=(P, b(Q)))),
            ("V", lambda b=b: inverse_root(b(G @ G.T), EPS)),
            ("A", lambda b=b: orthonormalize(b(d["A"]))),
            ("A", lambda b=b: qr_tall(b(d["A"]))),
        ]
    return cases


def test_public_functions_reject_nonfinite_arrays_by_name(xp, rng):
    d = _data(xp, rng)
    cases = _nonfinite_cases(xp, d)
    assert len(cases) == 2 * 59  # NaN and -inf in each array argument of each function
    for name, call in cases:
        with pytest.raises(ValueError, match=rf"^{re.escape(name)}: contains NaN or inf$"):
            call()


def test_public_functions_reject_wrong_shapes_by_name(xp, rng):
    d = _data(xp, rng)
    M, low, sk, g, x, y, G = d["M"], d["low"], d["sketch"], d["g"], d["x"], d["y"], d["G"]
    short = g[: D - 1]
    cases = [
        ("g", lambda: rank_one_increment(low, short, EPS)),
        ("g", lambda: inverse_factor_update(M, short, EPS)),
        ("g", lambda: published_direction(M, short, EPS)),
        ("g", lambda: newton_direction(M, short, EPS)),
        ("g", lambda: symmetric_direction(M, short, EPS)),
        ("x", lambda: truncated_svd(low, short, y, R)),
        ("y", lambda: projector_splitting(low, x, short)),
        ("x", lambda: basis_update_galerkin(low, xp.reshape(x, (D, 1)), y)),
        ("rank", lambda: recompress(M, D + 1)),
        ("g", lambda: gram_sketch_update_(sk, short, R)),
        ("v", lambda: sketch_inverse_sqrt_apply(sk, short, EPS)),
        ("G", lambda: svd_basis(G.T)),  # m > n
        ("G", lambda: svd_basis(g)),
        ("align_to", lambda: svd_basis(G, align_to=G)),
        ("V", lambda: inverse_root(G, EPS)),
        ("A", lambda: orthonormalize(g)),
        ("A", lambda: qr_tall(G)),  # more columns than rows
    ]
    for name, call in cases:
        with pytest.raises(ValueError, match=rf"^{re.escape(name)}\b"):
            call()


def test_public_functions_reject_wrong_dtypes_by_name(xp, rng):
    d = _data(xp, rng)
    M, low, sk, x, y = d["M"], d["low"], d["sketch"], d["x"], d["y"]
    Q32 = xp.asarray(xp.to_numpy(M.Q).astype(np.float32))
    ints = xp.asarray(np.arange(D, dtype=np.int64))
    f32 = xp.asarray(np.ones(D, dtype=np.float32))
    cases = [
        ("g", lambda: rank_one_increment(low, ints, EPS)),
        ("g", lambda: inverse_factor_update(M, f32, EPS)),
        ("g", lambda: published_direction(M, ints, EPS)),
        ("g", lambda: newton_direction(low, f32, EPS)),
        ("g", lambda: symmetric_direction(M, f32, EPS)),
        ("x", lambda: truncated_svd(low, ints, y, R)),
        ("y", lambda: projector_splitting(low, x, f32)),
        ("x", lambda: basis_update_galerkin(low, f32, y)),
        ("factored.Q", lambda: recompress(Factored(M.P, Q32), R)),
        ("g", lambda: gram_sketch_update_(sk, f32, R)),
        ("v", lambda: sketch_inverse_sqrt_apply(sk, ints, EPS)),
        ("G", lambda: svd_basis(xp.asarray(np.ones((2, 3), dtype=np.int64)))),
        ("V", lambda: inverse_root(xp.asarray(np.eye(3, dtype=np.int64)), EPS)),
        ("A", lambda: orthonormalize(xp.asarray(np.ones((5, 2), dtype=np.int64)))),
    ]
    for name, call in cases:
        with pytest.raises(TypeError, match=rf"^{re.escape(name)}\b"):
            call()
