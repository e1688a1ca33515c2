"""The single-threaded BLAS scope of the fused steps: process-wide limits, restored exactly.

threadpoolctl's limits are process-wide. The fused steps set NumPy's BLAS to one thread while
they run; these tests check that no interleaving of concurrent steps leaves the process with
changed limits, and that the torch CPU step (which runs NumPy's kernels on views of its
tensors) is limited too.
"""

import threading
import time

import numpy as np
import pytest
import threadpoolctl

from lowrank_precond.backends import blas, numpy_kernels
from lowrank_precond.linalg import GramSketch, LowRank
from lowrank_precond.linalg.streaming import ksl_adagram_step
from lowrank_precond.linalg.streaming_sketch import fd_sketch_step

pytestmark = pytest.mark.skipif(
    not any(i["user_api"] == "blas" for i in threadpoolctl.threadpool_info()),
    reason="NumPy's BLAS is not visible to threadpoolctl, so there is no limit to observe",
)


def blas_threads():
    """The thread counts of every BLAS library loaded, in a stable order."""
    return sorted(
        (i["filepath"], i["num_threads"])
        for i in threadpoolctl.threadpool_info()
        if i["user_api"] == "blas"
    )


def set_blas_threads(limits):
    """Set BLAS thread counts (``threadpoolctl`` limits: an int or ``{filepath: n}``) and
    leave no thread in control of them, as in a program that never limited its BLAS."""
    threadpoolctl.ThreadpoolController().limit(limits=limits, user_api="blas")
    clear = getattr(threadpoolctl, "OpenBLASController", None)
    if clear is not None and hasattr(clear, "clear_controlling_thread"):
        clear.clear_controlling_thread()


@pytest.fixture
def two_blas_threads():
    """Run the test with BLAS at 2 threads, so that a limit of 1 is observable."""
    original = dict(blas_threads())
    set_blas_threads(2)
    before = blas_threads()
    assert all(n == 2 for _, n in before)
    yield before
    set_blas_threads(original)


def test_scopes_in_two_threads_restore_the_limits(two_blas_threads):
    """A enters, B tries to enter while A runs, A leaves, B leaves (the order in which two
    save-and-restore scopes leave the process at 1 thread): each saw one thread while it ran,
    and afterwards the process has its original limits."""
    a_in, b_started, a_left = threading.Event(), threading.Event(), threading.Event()
    seen = {}
    errors = []

    def a():
        try:
            with blas.single_threaded_blas():
                a_in.set()
                assert b_started.wait(10)
                time.sleep(0.05)  # B is now waiting to enter (or inside)
                seen["a"] = blas_threads()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            a_left.set()

    def b():
        try:
            assert a_in.wait(10)
            b_started.set()
            with blas.single_threaded_blas():
                assert a_left.wait(10)  # B leaves last
                seen["b"] = blas_threads()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors
    assert all(n == 1 for _, n in seen["a"]) and all(n == 1 for _, n in seen["b"])
    assert blas_threads() == two_blas_threads


def test_the_limits_can_be_changed_after_a_scope_in_another_thread(two_blas_threads):
    """A scope run in a worker thread leaves no thread in control of the BLAS pool: the main
    thread can still change the limits afterwards."""
    done = threading.Event()

    def run():
        with blas.single_threaded_blas():
            pass
        done.set()

    worker = threading.Thread(target=run)
    worker.start()
    assert done.wait(10)
    worker.join(10)
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        assert all(n == 1 for _, n in blas_threads())
    assert blas_threads() == two_blas_threads


def test_two_threads_stepping_concurrently_restore_the_limits(two_blas_threads, rng):
    """Two threads run numpy fused steps at the same time, many times; afterwards the
    process has its original BLAS limits."""
    d, r = 300, 3
    U, _ = np.linalg.qr(rng.standard_normal((d, r)))
    V, _ = np.linalg.qr(rng.standard_normal((d, r)))
    grads = [rng.standard_normal(d) for _ in range(8)]
    start = threading.Barrier(2)
    errors = []

    def run():
        try:
            M = LowRank(U.copy(), np.diag([1.0, 0.9, 0.8]), V.copy())
            start.wait(10)
            for i in range(200):
                out = ksl_adagram_step(M, grads[i % 8], 0.1)
                M = out.lowrank
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert blas_threads() == two_blas_threads


def test_torch_steps_run_single_threaded_blas(two_blas_threads, rng, monkeypatch):
    """The torch CPU step runs NumPy's BLAS on views of its tensors: limited to one thread
    while it runs (observed from inside a kernel), restored afterwards."""
    torch = pytest.importorskip("torch")
    observed = []
    real = numpy_kernels.residual_into

    def spy(*args, **kwargs):
        observed.append(blas_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(numpy_kernels, "residual_into", spy)
    d, r = 200, 3
    U, _ = np.linalg.qr(rng.standard_normal((d, r)))
    V, _ = np.linalg.qr(rng.standard_normal((d, r)))
    M = LowRank(torch.from_numpy(U), torch.eye(r, dtype=torch.float64), torch.from_numpy(V))
    out = ksl_adagram_step(M, torch.from_numpy(rng.standard_normal(d)), 0.1)
    assert out is not None and isinstance(out.direction, torch.Tensor)
    assert observed and all(n == 1 for seen in observed for _, n in seen)
    assert blas_threads() == two_blas_threads
    observed.clear()
    sk = GramSketch(torch.from_numpy(U.copy()), torch.ones(r, dtype=torch.float64),
                    torch.tensor(0.0, dtype=torch.float64))  # fmt: skip
    out = fd_sketch_step(sk, torch.from_numpy(rng.standard_normal(d)), 0.1)
    assert out is not None and isinstance(out.direction, torch.Tensor)
    assert observed and all(n == 1 for seen in observed for _, n in seen)
    assert blas_threads() == two_blas_threads
