"""``lowrank-precond bench``: ms per preconditioner step against the memory-bandwidth floor.

For each dimension ``d`` (and rank ``r``, dtype) the floor is measured in the same run: the
time to read and write ``U`` and ``V`` (``d x r`` each) once, as an in-place copy into
preallocated arrays (``U2[...] = U; V2[...] = V``), in the dtype of the method's *state*
(its factors): a float32 parameter whose factors are float64 (the default, see
``factor_dtype``) is compared with the float64 floor, since that is the memory it moves.
On the torch backend each method is also timed as a ``torch.optim`` step
(``optimizer.step()``: the gradient check, the update and the parameter write), beside its
``update``. Copying into fresh arrays instead
(``U * 1.0``) also times the kernel's zero-filling of new pages, which is not bandwidth,
varied between runs by 50 % here, and would flatter any step that reuses its buffers. A
rank-r method cannot do its step in less; the ratio ``step / floor`` says how close to that
floor an implementation runs. Diagonal AdaGrad (one pass over ``d``) is the other yardstick.

:func:`run` is the importable core (the asv suite and the docs use it); the subcommand prints
its table or ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from lowrank_precond import backends
from lowrank_precond import preconditioners as pc

__all__ = ["BenchRow", "DTYPES", "METHOD_SPECS", "add_parser", "measure", "run"]

#: the dtypes ``bench`` times
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class MethodSpec:
    """A method as benchmarked: a label, the factory name and its keyword arguments."""

    label: str
    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    uses_rank: bool = True
    max_dim: int | None = None  # skipped above this d (the dense baseline)
    torch_class: str | None = None  # the torch.optim class timed on the torch backend


#: the methods ``bench`` times by default, in table order
METHOD_SPECS: tuple[MethodSpec, ...] = (
    MethodSpec("adagrad", "adagrad", uses_rank=False, torch_class="AdaGrad"),
    MethodSpec("adam", "adam", uses_rank=False, torch_class="Adam"),
    MethodSpec(
        "adagram ksl published",
        "adagram",
        {"integrator": "projector_splitting", "direction": "published"},
        torch_class="AdaGram",
    ),
    MethodSpec(
        "adagram ksl symmetric",
        "adagram",
        {"integrator": "projector_splitting", "direction": "symmetric"},
        torch_class="AdaGram",
    ),
    MethodSpec(
        "adagram ksl published float32 factors",
        "adagram",
        {"integrator": "projector_splitting", "direction": "published", "factor_dtype": "float32"},
        torch_class="AdaGram",
    ),
    MethodSpec(
        "adagram svd published",
        "adagram",
        {"integrator": "truncated_svd", "direction": "published"},
        torch_class="AdaGram",
    ),
    MethodSpec(
        "adagram bug published",
        "adagram",
        {"integrator": "basis_update_galerkin", "direction": "published"},
        torch_class="AdaGram",
    ),
    MethodSpec("sketched_adagrad", "sketched_adagrad", torch_class="SketchedAdaGrad"),
    MethodSpec(
        "sketched_adagrad float32 factors",
        "sketched_adagrad",
        {"factor_dtype": "float32"},
        torch_class="SketchedAdaGrad",
    ),
    MethodSpec(
        "full_matrix_adagrad",
        "full_matrix_adagrad",
        uses_rank=False,
        max_dim=2000,
        torch_class="FullMatrixAdaGrad",
    ),
)


@dataclass
class BenchRow:
    """One line of the table."""

    backend: str
    device: str
    dtype: str
    d: int
    rank: int
    method: str
    ms: float
    floor_ms: float
    ratio_floor: float
    ratio_adagrad: float | None
    #: the dtype of the method's state (its factors), whose floor ``floor_ms`` is
    state_dtype: str = ""
    #: ``"update"`` (the preconditioner's) or ``"optimizer.step"`` (the torch class's)
    timed: str = "update"


def measure(fn: Callable[[], Any], *, repeat: int, sync: Any = None) -> float:
    """Best wall time of ``fn()`` over ``repeat`` calls, in seconds (device synchronised)."""
    best = float("inf")
    for _ in range(repeat):
        backends.synchronize(sync)
        start = time.perf_counter()
        fn()
        backends.synchronize(sync)
        best = min(best, time.perf_counter() - start)
    return best


def _floor_fn(xp: Any, d: int, rank: int, dtype: Any, device: Any) -> Callable[[], Any]:
    U = xp.ones((d, rank), dtype=dtype, device=device)
    V = xp.ones((d, rank), dtype=dtype, device=device)
    U2, V2 = xp.zeros_like(U), xp.zeros_like(V)

    def copy() -> Any:
        U2[...] = U
        V2[...] = V
        return U2, V2

    return copy


def _check_device(xp: Any, backend: str, device: str | None) -> None:
    """Raise ``ValueError`` (one line) unless ``device`` holds an array of ``backend``."""
    if backend == "torch" and device is not None:
        import torch

        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device: {device!r} is not a torch device ({exc})") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device: {device!r} asked for, but CUDA is not available here "
                "(torch.cuda.is_available() is False); use --device cpu"
            )
    if backend == "numpy" and device not in (None, "cpu"):
        raise ValueError(f"device: NumPy runs on the CPU only (device 'cpu'), got {device!r}")
    try:
        xp.zeros((1,), device=device)
    except Exception as exc:  # the backend's own error: no such device, no driver, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"device: {device!r} is not usable with {backend}: {first}") from None


def _bytes_needed(d: int, rank: int, repeat: int, itemsize: int) -> int:
    """A lower bound on the memory of one cell: the gradient pool, the floor's four ``d x r``
    arrays and a rank-r method's ``d x r`` factor and direction."""
    pool = rank + 3 + max(repeat, 4)
    return itemsize * d * (pool + 5 * rank + 1)


def _memory_total(backend: str, device: str | None) -> int | None:
    """Total memory of the device the arrays go to, in bytes (None: unknown)."""
    try:
        if backend == "numpy" or (backend == "torch" and (device is None or "cuda" not in device)):
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        if backend == "torch":
            import torch

            return int(torch.cuda.mem_get_info(torch.device(device))[1])
        if backend == "cupy":
            import cupy

            return int(cupy.cuda.Device().mem_info[1])
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None
    return None


def _check_sizes(
    backend: str,
    device: str | None,
    dims: Sequence[int],
    ranks: Sequence[int],
    dtypes: Sequence[str],
    repeat: int,
) -> None:
    """Raise before anything runs: non-integers or values < 1, a rank above a dimension, a
    cell that cannot fit in the device's memory."""
    from lowrank_precond.backends import check_int

    if not dims or not ranks or not dtypes:
        raise ValueError("dims/ranks/dtypes: each needs at least one value")
    for name, values in (("dims", dims), ("ranks", ranks)):
        for v in values:
            check_int(name, v, minimum=1)
    check_int("repeat", repeat, minimum=1)
    bad = [t for t in dtypes if t not in DTYPES]
    if bad:
        raise ValueError(f"dtypes: expected float32/float64, got {bad}")
    too_big = [(r, d) for d in dims for r in ranks if r > d]
    if too_big:
        r, d = too_big[0]
        raise ValueError(f"ranks: rank {r} exceeds d={d}")
    total = _memory_total(backend, device)
    if total is None:
        return
    itemsize = 8 if "float64" in dtypes else 4
    d, rank = max(dims), max(ranks)
    here = f"the {total / 2**30:.3g} GiB of memory here"
    need = _bytes_needed(d, rank, 1, itemsize)
    if need > total:
        raise ValueError(
            f"dims: d={d} at rank {rank} needs at least {need / 2**30:.3g} GiB, more than {here}"
        )
    need = _bytes_needed(d, rank, repeat, itemsize)
    if need > total:
        raise ValueError(
            f"repeat: {repeat} timed calls at d={d}, rank {rank} need at least "
            f"{need / 2**30:.3g} GiB (a gradient per call), more than {here}"
        )


def _gradients(xp: Any, d: int, count: int, dtype: Any, device: Any, seed: int) -> list[Any]:
    """``count`` seeded standard-normal gradients on the backend (generated once per cell)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [xp.asarray(rng.standard_normal(d), dtype=dtype, device=device) for _ in range(count)]


def _state_dtype(values: Any) -> str:
    """The dtype name of the largest floating array among a state's ``values`` (the factors
    of a rank-r method, the moments of a diagonal one): the memory a step moves."""
    size, name = -1, ""
    for v in values:
        dt = str(getattr(v, "dtype", "")).rsplit(".", 1)[-1]
        if dt in DTYPES and math.prod(v.shape) > size:
            size, name = math.prod(v.shape), dt
    return name


def _time_method(
    spec: MethodSpec,
    rank: int,
    pool: list[Any],
    floor_for: Callable[[str], Callable[[], Any]],
    repeat: int,
    stream: str,
) -> tuple[float, float, str]:
    """``(best update, best floor, state dtype)`` in seconds, the floor of the state's dtype
    timed between the updates.

    The method is warmed up past its exact phase (``rank + 3`` updates) so that the rank-r
    (truncating) step is what is timed. ``stream="distinct"`` feeds every update a new
    gradient (as in training); ``"repeated"`` cycles the first four, so that after the
    warm-up each gradient lies in the span of the stored factors (the degenerate case).
    """
    kwargs = dict(spec.kwargs)
    if spec.uses_rank:
        kwargs["rank"] = rank
    pre = pc.get(spec.factory)(**kwargs)
    cycle = 4 if stream == "repeated" else len(pool)
    state = pre.init(pool[0])
    for i in range(rank + 3):
        _, state = pre.update(pool[i % cycle], state)
    box = {"state": state, "i": rank + 3}
    state_dtype = _state_dtype(getattr(state, f.name) for f in dataclasses.fields(state))

    def step() -> Any:
        direction, box["state"] = pre.update(pool[box["i"] % cycle], box["state"])
        box["i"] += 1
        return direction

    return (*_interleaved(step, floor_for(state_dtype), repeat, pool[0]), state_dtype)


def _time_optimizer_step(
    spec: MethodSpec,
    rank: int,
    pool: list[Any],
    floor_for: Callable[[str], Callable[[], Any]],
    repeat: int,
    stream: str,
) -> tuple[float, float, str]:
    """As :func:`_time_method`, for ``optimizer.step()`` of the method's torch class on one
    parameter tensor of ``d`` entries (its gradient set before each step, untimed)."""
    import torch

    import lowrank_precond.optim.torch as lpt  # (cli may not import lowrank_precond.torch)

    kwargs = dict(spec.kwargs)
    if spec.uses_rank:
        kwargs["rank"] = rank
    p = torch.zeros_like(pool[0], requires_grad=True)
    opt = getattr(lpt, spec.torch_class)([p], lr=1e-6, **kwargs)
    cycle = 4 if stream == "repeated" else len(pool)
    box = {"i": 0}

    def step() -> None:
        p.grad = pool[box["i"] % cycle]
        box["i"] += 1
        opt.step()

    for _ in range(rank + 3):
        step()
    state_dtype = _state_dtype(opt.state[p].values())
    return (*_interleaved(step, floor_for(state_dtype), repeat, pool[0]), state_dtype)


def _interleaved(
    step: Callable[[], Any], floor: Callable[[], Any], repeat: int, like: Any
) -> tuple[float, float]:
    """``(best step, best floor)`` over ``repeat`` rounds, each timing the floor then the step
    (interleaved: both see the same machine load)."""
    best_step = best_floor = float("inf")
    for _ in range(repeat):
        best_floor = min(best_floor, measure(floor, repeat=1, sync=like))
        best_step = min(best_step, measure(step, repeat=1, sync=like))
    return best_step, best_floor


def run(
    *,
    backend: str = "numpy",
    device: str | None = None,
    dims: Sequence[int] = (10_000, 100_000, 1_000_000),
    ranks: Sequence[int] = (5,),
    dtypes: Sequence[str] = ("float64",),
    methods: Sequence[str] | None = None,
    repeat: int = 5,
    seed: int = 0,
    progress: bool = False,
    stream: str = "distinct",
    threads: int | None = 1,
) -> list[BenchRow]:
    """Time one ``update`` of each method; return one :class:`BenchRow` per measurement.

    Parameters
    ----------
    backend : {"numpy", "torch", "cupy"}
    device : str, optional
        ``"cpu"``, ``"cuda"``, ... (torch); default: the backend's default device.
    dims, ranks : sequences of int
    dtypes : sequence of {"float32", "float64"}
    methods : sequence of str, optional
        Labels from :data:`METHOD_SPECS` (default: all).
    repeat : int
        Timed calls per measurement; the best is kept. The floor is timed once before each
        timed call (interleaved, so both see the same machine load) and its best over the
        cell is reported.
    stream : {"distinct", "repeated"}
        ``"distinct"`` (default): every update gets a new gradient, as in training.
        ``"repeated"``: four gradients cycled, so that after the warm-up each one lies in the
        span of the stored factors (the degenerate case of the rank-r integrators).
    threads : int or None
        CPU threads while anything is timed, the same for the floor and every method: BLAS
        (``threadpoolctl``) and torch's intra-op pool; restored afterwards. Default 1 (the
        fused steps run their BLAS on one thread anyway); ``None`` leaves both as they are.

    Raises
    ------
    ValueError
        Before anything is timed: a dimension, rank or ``repeat`` below 1, a rank above a
        dimension, a size whose arrays cannot fit in the device's memory, a device the
        backend cannot use (``"cuda"`` without CUDA), an unknown method, dtype or stream,
        ``threads`` below 1.
    TypeError
        A dimension, rank, ``repeat`` or ``threads`` that is not an integer.

    Examples
    --------
    >>> rows = run(dims=[1000], ranks=[2], methods=["adagrad"], repeat=1)
    >>> rows[0].method, rows[0].d
    ('adagrad', 1000)
    """
    from tqdm.auto import tqdm

    xp = backends.get(backend)
    _check_device(xp, backend, device)
    _check_sizes(backend, device, dims, ranks, dtypes, repeat)
    specs = list(METHOD_SPECS)
    if methods is not None:
        by_label = {s.label: s for s in METHOD_SPECS}
        unknown = [m for m in methods if m not in by_label]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; expected labels from {list(by_label)}")
        specs = [by_label[m] for m in methods]
    if stream not in ("distinct", "repeated"):
        raise ValueError(f"stream: expected 'distinct' or 'repeated', got {stream!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
        raise TypeError(f"threads: expected an int or None, got {threads!r}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads: expected >= 1, got {threads}")
    with _threads(backend, threads):
        jobs = [(dt, d, r) for dt in dtypes for d in dims for r in ranks]
        kinds = [("update", _time_method)]
        if backend == "torch":
            kinds.append(("optimizer.step", _time_optimizer_step))
        rows: list[BenchRow] = []
        for dtype_name, d, rank in tqdm(jobs, disable=not progress, desc="bench", unit="size"):
            floors: dict[str, Callable[[], Any]] = {}

            def floor_for(
                name: str, d: int = d, rank: int = rank, floors: dict[str, Any] = floors
            ) -> Callable[[], Any]:
                if name not in floors:  # the floor of the state's dtype, built once per cell
                    floors[name] = _floor_fn(xp, d, rank, getattr(xp, name), device)
                return floors[name]

            pool = _gradients(
                xp, d, rank + 3 + max(repeat, 4), getattr(xp, dtype_name), device, seed
            )
            for timed, fn in kinds:
                times: dict[str, tuple[float, float, str]] = {}
                for spec in specs:
                    if spec.max_dim is not None and d > spec.max_dim:
                        continue
                    times[spec.label] = fn(spec, rank, pool, floor_for, repeat, stream)
                # each floor: the best seen in this cell for that dtype
                best_floor: dict[str, float] = {}
                for _, fl, dt in times.values():
                    best_floor[dt] = min(best_floor.get(dt, math.inf), fl)
                base = times.get("adagrad")
                for label, (sec, _, dt) in times.items():
                    floor = best_floor[dt]
                    rows.append(
                        BenchRow(
                            backend=backend,
                            device=str(device or "default"),
                            dtype=dtype_name,
                            d=d,
                            rank=rank,
                            method=label,
                            ms=sec * 1e3,
                            floor_ms=floor * 1e3,
                            ratio_floor=sec / floor,
                            ratio_adagrad=None if base is None else sec / base[0],
                            state_dtype=dt,
                            timed=timed,
                        )
                    )
            del pool
        return rows


@contextlib.contextmanager
def _threads(backend: str, threads: int | None) -> Iterator[None]:
    """BLAS and (for the torch backend) torch's intra-op pool on ``threads`` threads."""
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    torch = None
    if backend == "torch":
        import torch
    before = torch.get_num_threads() if torch is not None else None
    try:
        if torch is not None:
            torch.set_num_threads(threads)
        with threadpool_limits(limits=threads, user_api="blas"):
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(before)


def _positive_int(text: str) -> int:
    """``"1000"``, ``"1e4"`` or ``"10_000"`` as an int >= 1; anything else is an argparse error
    (``1.7``, ``inf``, ``nan``, ``0``, ``-5``)."""
    t = text.strip()
    try:
        value = int(t)
    except ValueError:
        try:
            v = float(t)
        except ValueError:
            v = math.nan
        if not (math.isfinite(v) and v == int(v)):
            raise argparse.ArgumentTypeError(f"expected an integer, got {t!r}") from None
        value = int(v)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {t!r}")
    return value


def _ints(text: str) -> list[int]:
    """Comma-separated integers >= 1 (see :func:`_positive_int`), at least one."""
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return [_positive_int(t) for t in items]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="ms per step of each method vs the memory-bandwidth floor and diagonal AdaGrad",
        description="Time one preconditioner update per method and print it next to the "
        "memory-bandwidth floor measured in the same run (read + write U and V once) and "
        "diagonal AdaGrad.",
    )
    p.add_argument("--backend", default="numpy", help="numpy, torch or cupy (default numpy)")
    p.add_argument(
        "--device",
        default=None,
        help="device for torch, e.g. cpu or cuda (checked before anything runs: cuda without "
        "CUDA is an error); NumPy: cpu only",
    )
    p.add_argument(
        "--dims",
        type=_ints,
        default=[10_000, 100_000, 1_000_000],
        help="comma-separated dimensions d, integers >= 1 such as 1000 or 1e5 (default "
        "1e4,1e5,1e6); a size whose arrays cannot fit in memory is refused before it runs",
    )
    p.add_argument(
        "--ranks", type=_ints, default=[5], help="comma-separated ranks, each <= d (default 5)"
    )
    p.add_argument("--dtypes", default="float64", help="float32,float64 (default float64)")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated labels (default all): " + ", ".join(s.label for s in METHOD_SPECS),
    )
    p.add_argument(
        "--repeat", type=_positive_int, default=5, help="timed calls per cell; best kept (>= 1)"
    )
    p.add_argument(
        "--stream",
        default="distinct",
        choices=("distinct", "repeated"),
        help="gradients: a new one per update (default) or four cycled (each in the span "
        "of the stored factors after the warm-up)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="CPU threads (BLAS and torch) for the floor and every method alike (default 1)",
    )
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    p.set_defaults(run=run_cli)


#: messages of :func:`run` that name a flag (``"dims: ..."`` is reported as ``--dims: ...``)
_FLAGS = ("dims:", "ranks:", "repeat:", "dtypes:", "device:", "methods:", "stream:", "threads:")


def run_cli(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from lowrank_precond.cli import UsageError

    if args.backend not in ("numpy", "torch", "cupy"):
        raise UsageError(f"--backend: expected numpy, torch or cupy, got {args.backend!r}")
    dtypes = [t.strip() for t in args.dtypes.split(",") if t.strip()]
    bad = [t for t in dtypes if t not in DTYPES]
    if bad or not dtypes:
        raise UsageError(f"--dtypes: expected float32/float64, got {args.dtypes!r}")
    methods = args.methods.split(",") if args.methods else None
    try:
        rows = run(
            backend=args.backend,
            device=args.device,
            dims=args.dims,
            ranks=args.ranks,
            dtypes=dtypes,
            methods=methods,
            repeat=args.repeat,
            progress=not args.json,
            stream=args.stream,
            threads=args.threads,
        )
    except (ValueError, TypeError, ImportError) as exc:
        raise UsageError(f"--{exc}" if str(exc).startswith(_FLAGS) else str(exc)) from None
    except MemoryError as exc:
        raise UsageError(f"out of memory: {exc or 'the sizes asked for do not fit'}") from None
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError, cupy's OutOfMemoryError
        if "OutOfMemory" not in type(exc).__name__:
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UsageError(f"out of memory on the device: {first}") from None
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    header = (
        f"{'backend':<8} {'dtype':<8} {'state':<8} {'d':>9} {'r':>3} {'method':<38} "
        f"{'timed':<14} {'ms/step':>9} {'floor ms':>9} {'x floor':>8} {'x adagrad':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        adag = "" if r.ratio_adagrad is None else f"{r.ratio_adagrad:9.2f}"
        print(
            f"{r.backend:<8} {r.dtype:<8} {r.state_dtype:<8} {r.d:>9} {r.rank:>3} "
            f"{r.method:<38} {r.timed:<14} {r.ms:9.3f} {r.floor_ms:9.3f} {r.ratio_floor:8.2f} "
            f"{adag:>9}"
        )
    print(
        "floor = read + write U and V (d x r each) once, in place, in the dtype of the "
        "method's state, timed between the steps of this run; best of "
        f"{args.repeat} calls; gradients: {args.stream}"
    )
    return 0
