"""Single-threaded BLAS for the fused steps, without changing any state that outlives them.

A row-blocked pass makes hundreds of small gemv/gemm calls per step; with OpenBLAS's default
thread pool each call hands work to a second thread and spin-waits for it. That bought
nothing on an idle 2-core machine (same wall time, twice the CPU time) and stalled calls for
milliseconds when the other core was busy. :func:`single_threaded_blas` therefore limits
BLAS to one thread while a fused step runs (``threadpoolctl``, a dependency).

**Why the scopes are serialised.** BLAS limits are process-wide for most builds (OpenBLAS
with pthreads, MKL) but per thread for others (OpenBLAS with OpenMP), and ``threadpoolctl``
(3.6 and later) lets only one Python thread at a time change a process-wide OpenBLAS pool,
silently ignoring the others. Save-and-restore scopes that overlap in two threads then go
wrong whichever way they are counted: with independent scopes, A saves N and sets 1, B saves
1, A restores N, B restores 1 and the process stays at one thread; with a shared counter
(the first entrant saves, the last leaver restores) the leaver may be a thread whose
restore ``threadpoolctl`` ignores, or whose per-thread limit was never the saved one. So
every scope holds one process-wide re-entrant lock and sets and restores the limits in its
own thread, in the ``with`` form that also hands ``threadpoolctl``'s control back: scopes
never overlap across threads, and once none runs, the limits (and which thread controls
them) are what they were. The price: fused steps of different threads run one at a time.
While a scope runs, other threads' BLAS calls may be single-threaded too (process-wide
pools).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["single_threaded_blas"]

#: held by every running scope (re-entrant: a scope may run inside another in one thread)
_LOCK = threading.RLock()
_CONTROLLER: Any = None


def _controller() -> Any:
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the enclosed BLAS calls on one thread; restore the limits on exit.

    Scopes in different threads run one after the other (see the module notes), so the
    limits are restored exactly whatever the interleaving of threads. About 2 us to set and
    restore.

    Examples
    --------
    >>> import numpy as np
    >>> with single_threaded_blas():
    ...     float(np.ones(3) @ np.ones(3))
    3.0
    """
    with _LOCK:
        controller = _controller()
        with controller.limit(limits=1, user_api="blas"):
            yield
