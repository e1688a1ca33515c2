"""scipy-style front ends: :func:`minimize` and :func:`scipy_method`.

``lowrank_precond.minimize(fun, x0, method="sketched_adagrad", options={...})`` runs the
preconditioned gradient iteration

    ``x_{k+1} = x_k - lr * (p_k + weight_decay * x_k)``,  ``(p_k, state) = pre.update(g_k, state)``

with any preconditioner of :mod:`lowrank_precond.preconditioners` (by default
``lowrank_precond.preconditioners.defaults.DEFAULT_METHOD``, sketched AdaGrad at rank 5)
and returns a
:class:`scipy.optimize.OptimizeResult`, following ``scipy.optimize.minimize``'s conventions
(``fun(x, *args) -> (f, g)`` with ``jac=True``, ``options`` dict, unknown options are an error,
``callback(intermediate_result)`` may raise ``StopIteration``).

:func:`scipy_method` wraps the same loop as a custom ``method`` for
``scipy.optimize.minimize``. This module holds no math: it owns the state and the bookkeeping.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import array_api_compat
import numpy as np
from scipy.optimize import OptimizeResult

from lowrank_precond import preconditioners as pc
from lowrank_precond.backends import (
    all_finite,
    array_namespace,
    check_int,
    check_positive,
)
from lowrank_precond.preconditioners.base import Preconditioner
from lowrank_precond.preconditioners.compose import (
    add_decayed_weights,
    apply_updates,
    chain,
    scale_by,
    scale_by_learning_rate,
)
from lowrank_precond.preconditioners.defaults import DEFAULT_LR, DEFAULT_METHOD

__all__ = [
    "DEFAULT_LR",
    "DRIVER_OPTIONS",
    "STATUS",
    "ScipyMethod",
    "minimize",
    "resolve_options",
    "scipy_method",
]

#: options that :func:`minimize` itself consumes (every other option goes to the factory)
DRIVER_OPTIONS: dict[str, str] = {
    "lr": "step size (> 0); default: DEFAULT_LR[method]",
    "maxiter": "maximum number of steps (>= 0); default 1000",
    "gtol": "stop when max|g| <= gtol (>= 0; 0 = off); default 1e-5",
    "ftol": "stop when |f_k - f_{k+1}| <= ftol * max(|f_k|, |f_{k+1}|, 1) (>= 0; 0 = off); "
    "default 0",
    "weight_decay": "decoupled weight decay (>= 0): x <- x - lr * (p + weight_decay * x); "
    "default 0",
}

_DEFAULTS = {"maxiter": 1000, "gtol": 1e-5, "ftol": 0.0, "weight_decay": 0.0}

#: ``OptimizeResult.status`` codes and their meaning
STATUS: dict[int, str] = {
    0: "converged (gtol or ftol test passed)",
    1: "maximum number of iterations reached",
    3: "non-finite loss, gradient or iterate",
    99: "callback raised StopIteration",
}


# --------------------------------------------------------------------------- options


def _factory(method: Any) -> tuple[str, Callable[..., Preconditioner] | None]:
    """``(name, factory)`` for a method name, or ``(name, None)`` for a ready Preconditioner."""
    if isinstance(method, Preconditioner):
        return method.name, None
    if not isinstance(method, str) or method not in pc.METHODS:
        raise ValueError(
            f"method: unknown method {method!r}; expected one of {', '.join(pc.METHODS)} "
            "(or a lowrank_precond.preconditioners.Preconditioner)"
        )
    return method, pc.get(method)


def resolve_options(
    method: str | Preconditioner, options: Mapping[str, Any] | None
) -> tuple[Preconditioner, dict[str, Any]]:
    """Validate the ``options`` of :func:`minimize` for ``method``; build the preconditioner.

    Parameters
    ----------
    method : str or Preconditioner
        As in :func:`minimize`.
    options : dict or None
        As in :func:`minimize`.

    Returns
    -------
    pre : Preconditioner
        The method's factory called with the non-driver options (or ``method`` itself).
    settings : dict
        The driver options ``lr``, ``maxiter``, ``gtol``, ``ftol``, ``weight_decay``,
        validated, with defaults filled in.

    Raises
    ------
    ValueError, TypeError
        As :func:`minimize` does for a bad method or option (the message names it).

    Examples
    --------
    >>> pre, settings = resolve_options("adam", {"lr": 0.1, "betas": (0.9, 0.99)})
    >>> pre
    adam(betas=(0.9, 0.99), eps=1e-08, nonfinite='raise')
    >>> settings["lr"], settings["maxiter"]
    (0.1, 1000)
    """
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise TypeError(f"options: expected a dict, got {type(options).__name__}")
    name, factory = _factory(method)
    if factory is None:
        accepted: list[str] = []
    else:
        params = inspect.signature(factory).parameters
        accepted = [
            p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)
        ]
    unknown = sorted(k for k in options if k not in DRIVER_OPTIONS and k not in accepted)
    if unknown:
        valid = sorted(DRIVER_OPTIONS) + sorted(accepted)
        raise ValueError(
            f"options: unknown option(s) {unknown} for method {name!r}; valid options: {valid}"
        )
    settings = dict(_DEFAULTS)
    settings["lr"] = DEFAULT_LR.get(name)
    settings.update({k: v for k, v in options.items() if k in DRIVER_OPTIONS})
    if settings["lr"] is None:
        raise ValueError(f"options: 'lr' is required for method {name!r} (no default)")
    settings["lr"] = check_positive("lr", settings["lr"])
    settings["maxiter"] = check_int("maxiter", settings["maxiter"], minimum=0)
    for key in ("gtol", "ftol", "weight_decay"):
        settings[key] = check_positive(key, settings[key], allow_zero=True)
    if factory is None:
        pre = method
    else:
        pre = factory(**{k: v for k, v in options.items() if k not in DRIVER_OPTIONS})
    return pre, settings


def _as_x0(x0: Any) -> Any:
    """A new floating array holding ``x0``: arrays of a known backend keep their kind, device
    and dtype (ints -> float64 for NumPy); lists, tuples and scalars become 1-D-or-more NumPy
    float64 arrays. Always a copy, so that no result (an early return included) is the
    caller's ``x0`` object or shares its memory."""
    if isinstance(x0, np.ndarray) or not _is_array(x0):
        x = np.array(x0, copy=True)
        if x.ndim == 0:
            x = x.reshape(1)
        if x.dtype.kind in "biu":
            x = x.astype(np.float64)
        if x.dtype.kind != "f":
            raise TypeError(f"x0: expected real floating values, got dtype {x.dtype}")
        return x
    xp = array_namespace(x0)
    if not xp.isdtype(x0.dtype, "real floating"):
        raise TypeError(f"x0: expected a real floating-point array, got dtype {x0.dtype}")
    if array_api_compat.is_torch_array(x0):
        return x0.clone()  # asarray(copy=True) would warn about requires_grad
    return xp.asarray(x0, copy=True)


def _is_array(x: Any) -> bool:
    try:
        array_namespace(x)
    except TypeError:
        return False
    return not isinstance(x, (numbers.Number, list, tuple))


def _callback_caller(callback: Callable[..., Any] | None) -> Callable[[OptimizeResult], None]:
    """scipy's rule: a callback whose only parameter is ``intermediate_result`` gets the
    OptimizeResult; any other callable gets ``x`` (legacy ``callback(xk)``)."""
    if callback is None:
        return lambda res: None
    if not callable(callback):
        raise TypeError(f"callback: expected a callable or None, got {type(callback).__name__}")
    try:
        params = set(inspect.signature(callback).parameters)
    except (TypeError, ValueError):  # builtins without a signature
        params = set()
    if params == {"intermediate_result"}:
        return lambda res: callback(intermediate_result=res)
    return lambda res: callback(res.x)


def _evaluator(
    fun: Callable[..., Any], jac: Any, args: tuple[Any, ...], counts: dict[str, int]
) -> Callable[[Any], tuple[float, Any]]:
    """``evaluate(x) -> (float f, g)`` counting calls in ``counts``."""
    if not callable(fun):
        raise TypeError(f"fun: expected a callable, got {type(fun).__name__}")
    if jac is True:

        def evaluate(x: Any) -> tuple[float, Any]:
            counts["nfev"] += 1
            counts["njev"] += 1
            out = fun(x, *args)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(
                    "fun: with jac=True, fun(x, *args) must return a pair (f, g), got "
                    f"{type(out).__name__}"
                )
            return float(out[0]), out[1]

        return evaluate
    if callable(jac):

        def evaluate(x: Any) -> tuple[float, Any]:
            counts["nfev"] += 1
            f = fun(x, *args)
            counts["njev"] += 1
            return float(f), jac(x, *args)

        return evaluate
    raise ValueError(
        f"jac: these first-order methods need the gradient: pass jac=True (fun returns "
        f"(f, g)) or a callable jac(x, *args) -> g, got {jac!r}"
    )


def _max_abs(g: Any) -> float:
    xp = array_namespace(g)
    return float(xp.max(xp.abs(g))) if math.prod(g.shape) else 0.0


def _check_grad(g: Any, x: Any) -> None:
    if not _is_array(g) or array_namespace(g) is not array_namespace(x):
        raise TypeError(
            f"jac: the gradient must be an array of x's kind ({type(x).__name__}), got "
            f"{type(g).__name__}"
        )
    if tuple(g.shape) != tuple(x.shape):
        raise ValueError(f"jac: gradient shape {tuple(g.shape)} does not match x {tuple(x.shape)}")


# --------------------------------------------------------------------------- minimize


def minimize(
    fun: Callable[..., Any],
    x0: Any,
    method: str | Preconditioner = DEFAULT_METHOD,
    jac: bool | Callable[..., Any] = True,
    args: tuple[Any, ...] = (),
    options: Mapping[str, Any] | None = None,
    callback: Callable[..., Any] | None = None,
) -> OptimizeResult:
    """Minimize ``fun`` with a preconditioned gradient method, in ``scipy.optimize`` style.

    Iterates ``x_{k+1} = x_k - lr * (p_k + weight_decay * x_k)`` where
    ``(p_k, state) = pre.update(g_k, state)`` is the direction of the chosen preconditioner
    (e.g. sketched AdaGrad's ``G_fd^{-1/2} g_t``, full-matrix AdaGrad's ``G_t^{-1/2} g_t``,
    AdaGram's ``L_t^{-1} g_t``; ``docs/theory.rst`` has the formulas). With no ``method`` and
    no ``options`` it runs the recommended default, sketched AdaGrad at rank 5 with
    ``lr = 1.0`` for at most 1000 steps (``docs/choosing.rst`` says why). ``fun`` may be
    deterministic (full batch) or stochastic (a new minibatch per call, e.g.
    :func:`lowrank_precond.glm.objective` with ``batch_size``): one call per step.

    Parameters
    ----------
    fun : callable
        ``fun(x, *args) -> (f, g)`` when ``jac=True`` (``f`` a real scalar: Python float or
        0-d array; ``g`` an array of ``x``'s shape, kind and device), or ``fun(x, *args) -> f``
        when ``jac`` is a callable.
    x0 : array
        Starting point, any shape: a NumPy array (integers become float64; lists and scalars
        become NumPy float64) or a floating array of another backend (torch tensor, CuPy
        array) if ``fun`` accepts it; ``x`` keeps ``x0``'s shape, kind, device and dtype.
        Matrix-shaped ``x0`` (a multinomial ``W`` of shape ``(d, K)``) stays a matrix, which
        AdaDiag and ASGO use as such; AdaGram, sketched AdaGrad and full-matrix AdaGrad
        work on its flattened entries, diagonal methods elementwise.
    method : str or Preconditioner, default "sketched_adagrad"
        ``DEFAULT_METHOD`` of :mod:`lowrank_precond.preconditioners.defaults` (sketched
        AdaGrad at its factory's default rank, 5) when not given; or one of
        :data:`lowrank_precond.preconditioners.METHODS`: ``"adagram"``, ``"adamgram"``,
        ``"sketched_adagrad"``, ``"adadiag"``, ``"asgo"``, ``"adagrad"``, ``"adam"``,
        ``"full_matrix_adagrad"``; or a ready
        :class:`~lowrank_precond.preconditioners.Preconditioner` (then ``options`` takes
        only the driver options below).
    jac : True or callable, default True
        ``True``: ``fun`` returns ``(f, g)``. Callable: ``jac(x, *args) -> g``. There are no
        finite differences: ``False``/``None`` raise ``ValueError``.
    args : tuple
        Extra arguments for ``fun`` (and ``jac``).
    options : dict, optional
        Driver options (see :data:`DRIVER_OPTIONS`):

        ``lr``
            step size > 0; default :data:`DEFAULT_LR` ``[method]``
        ``maxiter``
            maximum number of steps, default 1000
        ``gtol``
            stop (success) when ``max|g_k| <= gtol`` (the gradient ``fun`` returned at
            ``x_k``; with a minibatch objective that is the minibatch gradient); default
            1e-5, as scipy's BFGS; 0 = off
        ``ftol``
            stop (success) when ``|f_k - f_{k+1}| <= ftol * max(|f_k|, |f_{k+1}|, 1)``;
            default 0 (off)
        ``weight_decay``
            decoupled weight decay >= 0, default 0

        and the keyword arguments of the method's factory (``rank``, ``integrator``,
        ``direction``, ``eps``, ``betas``, ``update_freq``, ...; see
        :mod:`lowrank_precond.preconditioners`). Any other key raises ``ValueError`` naming
        it (scipy only warns).
    callback : callable, optional
        Called after every step. ``callback(intermediate_result)`` (the only parameter
        named exactly ``intermediate_result``) receives an ``OptimizeResult`` with ``x``,
        ``fun``, ``jac`` and ``nit`` of the new iterate; any other callable is called as
        ``callback(x)``. Raising ``StopIteration`` ends the run with that iterate
        (``success=False``, ``status=99``, as in scipy).

    Returns
    -------
    scipy.optimize.OptimizeResult
        ``x`` (last finite iterate, ``x0``'s shape and kind; always a new array, never the
        caller's ``x0``, also when no step was taken), ``fun`` (float, ``f(x)``),
        ``jac`` (``g`` at ``x``), ``nit`` (steps taken), ``nfev`` / ``njev`` (evaluations
        of ``fun`` / the gradient: ``nit + 1``, plus one when the run stopped on an
        evaluation that returned a non-finite value), ``success``, ``status`` (see :data:`STATUS`:
        0 converged, 1 ``maxiter`` reached, 3 non-finite, 99 stopped by the callback),
        ``message``.

        A NaN or inf in ``f``, ``g`` or the new iterate stops the run at once with
        ``success=False``, ``status=3``: ``x`` is then the last iterate whose ``f`` and
        ``g`` were finite (a copy of ``x0`` if ``fun(x0)`` is not finite), never a NaN.

    Raises
    ------
    ValueError
        Unknown ``method`` (the message lists the valid ones), unknown option (named),
        bad option values (named), ``jac`` neither True nor callable.
    TypeError
        ``fun`` not callable, ``fun`` not returning a pair with ``jac=True``, a gradient
        of another array kind.

    See Also
    --------
    scipy_method : the same loop as a custom method of ``scipy.optimize.minimize``.

    Notes
    -----
    Each step brings ``f`` (and ``max|g|`` when ``gtol > 0``) to the host, one
    synchronisation per step on a GPU. The state of the preconditioner is not returned;
    use :mod:`lowrank_precond.preconditioners` directly for warm restarts.

    Examples
    --------
    Least squares ``f(x) = |A x - b|^2 / 2`` with full-matrix AdaGrad:

    >>> import numpy as np
    >>> import lowrank_precond as lp
    >>> A = np.array([[2.0, 1.0], [1.0, 3.0], [0.0, 1.0]]); b = np.array([1.0, 2.0, 3.0])
    >>> def fun(x):
    ...     r = A @ x - b
    ...     return 0.5 * float(r @ r), A.T @ r
    >>> res = lp.minimize(fun, np.zeros(2), method="full_matrix_adagrad",
    ...                   options={"lr": 1.0, "maxiter": 5000, "gtol": 1e-10})
    >>> bool(res.success), res.status, res.nfev == res.nit + 1
    (True, 0, True)
    >>> bool(np.allclose(res.x, np.linalg.lstsq(A, b, rcond=None)[0], atol=1e-9))
    True

    Unknown options are an error:

    >>> lp.minimize(fun, np.zeros(2), method="adagrad", options={"rank": 5})
    Traceback (most recent call last):
    ...
    ValueError: options: unknown option(s) ['rank'] for method 'adagrad'; valid options: ...
    """
    pre, settings = resolve_options(method, options)
    if not isinstance(args, tuple):
        args = (args,)
    x = _as_x0(x0)
    counts = {"nfev": 0, "njev": 0}
    evaluate = _evaluator(fun, jac, args, counts)
    notify = _callback_caller(callback)
    lr, wd = settings["lr"], settings["weight_decay"]
    gtol, ftol, maxiter = settings["gtol"], settings["ftol"], settings["maxiter"]

    def result(x: Any, f: float, g: Any, nit: int, status: int, message: str) -> OptimizeResult:
        return OptimizeResult(
            x=x,
            fun=f,
            jac=g,
            nit=nit,
            nfev=counts["nfev"],
            njev=counts["njev"],
            success=status == 0,
            status=status,
            message=message,
        )

    f, g = evaluate(x)
    _check_grad(g, x)
    if not (math.isfinite(f) and all_finite(g)):
        return result(x, f, g, 0, 3, "fun(x0) returned a non-finite loss or gradient.")
    # the step: x <- x - lr (p + wd x), the same chain of transforms for every method
    step = chain(scale_by(pre), add_decayed_weights(wd), scale_by_learning_rate(lr))
    state = step.init(x)
    nit = 0
    while True:
        if gtol > 0 and _max_abs(g) <= gtol:
            return result(x, f, g, nit, 0, f"Converged: max|g| <= gtol = {gtol:g}.")
        if nit >= maxiter:
            return result(x, f, g, nit, 1, "Maximum number of iterations reached (maxiter).")
        try:
            updates, state = step.update(g, state, x)
        except FloatingPointError as exc:  # the preconditioner refused an overflowing step
            return result(x, f, g, nit, 3, f"Step {nit + 1} was refused: {exc}.")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught just below
            x_new = apply_updates(x, updates)
        if not all_finite(x_new):
            message = (
                f"Step {nit + 1} produced a non-finite iterate; returning the last finite one."
            )
            return result(x, f, g, nit, 3, message)
        f_new, g_new = evaluate(x_new)
        _check_grad(g_new, x_new)
        if not (math.isfinite(f_new) and all_finite(g_new)):
            message = (
                f"Non-finite loss or gradient after step {nit + 1} (f = {f_new}); returning the "
                "last finite iterate."
            )
            return result(x, f, g, nit, 3, message)
        converged_f = ftol > 0 and abs(f - f_new) <= ftol * max(abs(f), abs(f_new), 1.0)
        x, f, g = x_new, f_new, g_new
        nit += 1
        try:
            notify(OptimizeResult(x=x, fun=f, jac=g, nit=nit))
        except StopIteration:
            return result(x, f, g, nit, 99, "`callback` raised `StopIteration`.")
        if converged_f:
            message = f"Converged: relative reduction of f <= ftol = {ftol:g}."
            return result(x, f, g, nit, 0, message)


# --------------------------------------------------------------------------- scipy plug-in


class ScipyMethod:
    """A custom ``method`` for :func:`scipy.optimize.minimize`; build it with
    :func:`scipy_method`.

    Calling it as scipy does, ``method(fun, x0, args=..., jac=..., hess=..., hessp=...,
    bounds=..., constraints=..., callback=..., **options)``, runs :func:`minimize` with the
    options given to :func:`scipy_method` updated by the call's options.

    Examples
    --------
    >>> import lowrank_precond as lp
    >>> method = lp.scipy_method("adagram", rank=5, lr=0.5)
    >>> method
    scipy_method('adagram', rank=5, lr=0.5)
    >>> method.method, method.options
    ('adagram', {'rank': 5, 'lr': 0.5})
    """

    def __init__(self, method: str, options: dict[str, Any]) -> None:
        resolve_options(method, options)  # fail at construction on a bad name or option
        self.method = method
        self.options = dict(options)
        self.__name__ = f"scipy_method_{method}"

    def __call__(
        self,
        fun: Callable[..., Any],
        x0: Any,
        args: tuple[Any, ...] = (),
        jac: Any = None,
        hess: Any = None,
        hessp: Any = None,
        bounds: Any = None,
        constraints: Any = (),
        callback: Callable[..., Any] | None = None,
        **options: Any,
    ) -> OptimizeResult:
        del hess, hessp  # first-order methods: accepted and ignored
        if bounds is not None:
            raise ValueError(f"bounds: {self.method!r} is unconstrained; bounds are not supported")
        if constraints:
            raise ValueError(
                f"constraints: {self.method!r} is unconstrained; constraints are not supported"
            )
        merged = {**self.options, **options}
        tol = merged.pop("tol", None)  # scipy passes minimize(tol=...) as options["tol"]
        if tol is not None:
            merged.setdefault("gtol", tol)
        return minimize(
            fun, x0, method=self.method, jac=jac, args=args, options=merged, callback=callback
        )

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"scipy_method({self.method!r}{', ' if opts else ''}{opts})"


def scipy_method(name: str, **options: Any) -> ScipyMethod:
    """A custom ``method`` for :func:`scipy.optimize.minimize` that runs :func:`minimize`.

    ``scipy.optimize.minimize(fun, x0, jac=True, method=scipy_method("adagram", rank=5,
    lr=0.5))`` gives the same iterates, bit for bit, as
    ``lowrank_precond.minimize(fun, x0, "adagram", options={"rank": 5, "lr": 0.5})``.

    Parameters
    ----------
    name : str
        One of :data:`lowrank_precond.preconditioners.METHODS`.
    **options
        Any option of :func:`minimize` (``lr``, ``maxiter``, ``gtol``, ``ftol``,
        ``weight_decay`` and the factory's hyper-parameters), validated now. Options passed
        through ``scipy.optimize.minimize(..., options={...})`` override them;
        ``scipy.optimize.minimize(..., tol=t)`` sets ``gtol=t`` unless ``gtol`` is given.

    Returns
    -------
    ScipyMethod
        A callable following scipy's custom-method protocol; ``callback`` works as in
        :func:`minimize` (``StopIteration`` gives ``status=99``).

    Raises
    ------
    ValueError
        Unknown method or option (at construction), and, when called, ``bounds`` or
        ``constraints`` (the methods are unconstrained) or no gradient (``jac`` not given:
        pass ``jac=True`` with ``fun`` returning ``(f, g)``, or a callable).

    Notes
    -----
    ``scipy.optimize.minimize`` flattens ``x0`` to 1-D (it refuses 2-D ``x0``) and passes
    NumPy arrays, so matrix-shaped unknowns (a multinomial ``W`` for AdaDiag or ASGO, whose
    preconditioners use the matrix structure) need :func:`lowrank_precond.minimize`.
    ``hess`` and ``hessp`` are ignored (first-order methods).

    Examples
    --------
    >>> import numpy as np, scipy.optimize
    >>> import lowrank_precond as lp
    >>> def fun(x):
    ...     return 0.5 * float(x @ x), x.copy()
    >>> res = scipy.optimize.minimize(fun, np.ones(3), jac=True,
    ...                               method=lp.scipy_method("adagrad", lr=0.5, maxiter=50))
    >>> ref = lp.minimize(fun, np.ones(3), method="adagrad", options={"lr": 0.5, "maxiter": 50})
    >>> bool(np.array_equal(res.x, ref.x)), res.nit == ref.nit
    (True, True)
    """
    return ScipyMethod(name, options)
