"""Where independent jobs run: in this process, in worker processes, or on a Ray cluster.

Every executor offers the same two calls over a top-level (picklable) ``fn`` and an iterable
of ``items``:

- ``as_completed(fn, items)`` yields ``(item, fn(item))`` pairs as the jobs finish;
- ``map(fn, items)`` yields the results alone, in completion order. This is the interface of
  ``la.surface(..., executor=)``, ``la.curve`` and ``la.interpolate``, whose chunks carry their own
  grid indices, so the order does not matter there.

``items`` is consumed lazily, with at most ``prefetch`` jobs in flight, so a large surface's
chunks are not all built at once. The driver (the caller) alone writes files: workers only
return values. Every job runs with ``threads`` torch threads (1 by default), in every executor,
so a job computes the same floats wherever it runs: a Ray run equals the local run bit for bit.
Worker processes die with the process that started them, even when it is SIGKILLed. They are
forked from the driver when that is safe (see :func:`fork_is_safe`; they start in milliseconds),
else from a fork server that imports torch first (seconds).

>>> ex = LocalExecutor()
>>> sorted(ex.map(abs, [-2, 1, -3]))
[1, 2, 3]
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from itertools import islice
from typing import Any

import numpy as np
import torch

from lossatlas.core.errors import LossAtlasError

__all__ = ["PRELOAD", "Executor", "LocalExecutor", "ProcessExecutor", "RayExecutor",
           "fork_is_safe", "make_executor", "run_job", "shutdown_pools", "threads", "warm_pool"]


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (``None``: leave it), restored after."""
    if n is None:
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def run_job(fn: Callable, item: Any, n_threads: int | None = 1) -> Any:
    """``fn(item)`` with ``n_threads`` torch threads; what every executor runs for one job."""
    with threads(n_threads):
        return fn(item)


def _check_threads(n: int | None) -> int | None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise LossAtlasError(f"threads={n!r} must be a positive integer or None; pass threads=1.")
    return n


class Executor:
    """Base class: subclasses implement :meth:`as_completed`; :meth:`map` drops the items."""

    threads: int | None = 1

    def as_completed(self, fn: Callable, items: Iterable) -> Iterator[tuple[Any, Any]]:
        raise NotImplementedError

    def map(self, fn: Callable, items: Iterable) -> Iterator[Any]:
        """The results of ``fn`` over ``items``, in completion order."""
        for _, result in self.as_completed(fn, items):
            yield result

    @property
    def workers(self) -> int:
        return 1

    def close(self) -> None:
        """Release workers (a no-op for executors that hold none)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> dict:
        return {"executor": type(self).__name__, "workers": self.workers,
                "threads": self.threads}


class LocalExecutor(Executor):
    """Jobs one after another in this process, in order (the default)."""

    def __init__(self, threads: int | None = 1):
        self.threads = _check_threads(threads)

    def as_completed(self, fn: Callable, items: Iterable) -> Iterator[tuple[Any, Any]]:
        for item in items:
            yield item, run_job(fn, item, self.threads)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in the block (main thread only): a process exec'd here inherits it, so
    Ctrl-C while the fork server imports its preload prints no traceback there; the driver
    alone handles Ctrl-C."""
    with _sigint_handler(signal.SIG_IGN):
        yield


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Ctrl-C in the block is held and raised as KeyboardInterrupt at its end: workers being
    started when the driver quits would die on its vanished semaphores, with tracebacks."""
    hits: list[int] = []
    with _sigint_handler(lambda *_: hits.append(1)):
        yield
    if hits:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _sigint_handler(handler) -> Iterator[None]:
    try:
        old = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _init_worker(n_threads: int | None, driver: int | None = None) -> None:
    # Ctrl-C reaches the whole process group: the driver alone handles it (it cancels what is
    # pending and reports what was kept), so a worker finishes its job without a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a worker forked from the driver starts as one from the fork server would: gradients on
    # and float32 by default, whatever the driver's thread had set when it forked
    torch.set_grad_enabled(True)
    torch.set_default_dtype(torch.float32)
    if n_threads is not None:
        torch.set_num_threads(n_threads)
    os.environ.setdefault("LOSSATLAS_QUIET", "1")  # no progress bars from inside workers
    if driver is not None:
        _die_with(driver)


def _parent_is_forkserver() -> bool:
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            return b"forkserver" in f.read()
    except OSError:
        return False


def _die_with(driver: int) -> None:
    """Make this worker die with the ``driver`` process, even when the driver is SIGKILLed.

    Workers are children of the fork server, not of the driver, and nothing tells them the
    driver is gone: a watch thread waits on the driver's pidfd (Linux >= 5.3; elsewhere it
    polls), then kills the fork server (the worker's parent) and this worker. On Linux the
    worker also gets ``PR_SET_PDEATHSIG`` = SIGKILL, so it dies when the fork server does.
    The resource tracker exits by itself once they are all gone."""
    import signal
    import threading
    import time

    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG

    def alive() -> bool:
        try:
            os.kill(driver, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def watch() -> None:
        try:
            fd = os.pidfd_open(driver)
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            import select

            select.select([fd], [], [])  # readable once the driver has exited
        else:
            while alive():
                time.sleep(0.5)
        if _parent_is_forkserver():
            with contextlib.suppress(OSError):
                os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    if not alive():
        watch()
    threading.Thread(target=watch, name="lossatlas-lifeline", daemon=True).start()


#: Modules every worker needs (a sweep job trains, measures the Hessian, reads the digits):
#: imported once before the workers start, by the driver when the workers are forked from it,
#: else by the fork server. ``torch._dynamo`` is here because the optimizers import it on their
#: first call (``torch._disable_dynamo``), ``sklearn.datasets`` for the digits.
PRELOAD = ["torch", "torch._dynamo", "sklearn.datasets", "lossatlas.sweeps.jobs",
           "lossatlas.batteries.training", "lossatlas.batteries.datasets",
           "lossatlas.batteries.zoo", "lossatlas.core.objective", "lossatlas.measurements.hessian",
           "lossatlas.measurements.similarity", "lossatlas.measurements.connect",
           "lossatlas.measurements.landscape.engine"]


def _forkserver_context() -> mp.context.BaseContext:
    # forkserver: workers fork from a clean server (no OpenMP state inherited), cheaply.
    if sys.platform.startswith("linux"):
        ctx = mp.get_context("forkserver")
        # imported once in the server, so each worker starts without re-importing torch
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return mp.get_context("spawn")


def fork_is_safe(threads: int | None) -> bool:
    """Whether workers may be forked from this process (no fork server to start): on Linux,
    with one torch thread per worker (a forked OpenMP thread pool is unusable, but one thread
    never enters it), CUDA not initialized, and no other Python thread running (a lock held by
    one would stay held in the children). What DataLoader's forked workers rely on too."""
    import threading

    return (sys.platform.startswith("linux") and threads == 1
            and threading.active_count() == 1 and not torch.cuda.is_initialized())


def _preload() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)


def _default_context(threads: int | None) -> mp.context.BaseContext:
    """``fork`` when :func:`fork_is_safe` (the modules of :data:`PRELOAD` imported here
    first, usually a no-op: a worker then starts in milliseconds, where a fork server first
    imports torch and the rest, seconds), else the preloaded fork server (``spawn`` off
    Linux)."""
    if fork_is_safe(threads):
        _preload()
        if fork_is_safe(threads):  # an import may have started a thread
            return mp.get_context("fork")
    return _forkserver_context()


def _ready() -> int:
    """A no-op job: sent once per worker when a pool is warmed, so every worker is forked and
    initialized before the first real job."""
    return os.getpid()


#: Warm pools by (workers, threads, start method): started once, reused by every
#: ProcessExecutor with the same settings, shut down at exit (or by :func:`shutdown_pools`).
_POOLS: dict[tuple, futures.ProcessPoolExecutor] = {}


def _start_pool(workers: int, threads: int | None, context: mp.context.BaseContext | None
                ) -> futures.ProcessPoolExecutor:
    """A new pool whose workers all start now (one :func:`_ready` job each) while Ctrl-C waits,
    so an interrupt never lands in a half-started worker; the fork server ignores Ctrl-C.
    ``context`` None: :func:`_default_context`, decided now (its imports before Ctrl-C
    waits: nothing is started yet)."""
    context = context or _default_context(threads)
    with _sigint_deferred():
        if context.get_start_method() == "forkserver":
            from multiprocessing import forkserver

            with _sigint_ignored():  # the fork server inherits "ignore Ctrl-C"
                forkserver.ensure_running()
        pool = futures.ProcessPoolExecutor(workers, mp_context=context,
                                           initializer=_init_worker,
                                           initargs=(threads, os.getpid()))
        pool.start_method = context.get_start_method()  # read by ProcessExecutor.describe
        for _ in range(workers):
            pool.submit(_ready)
    return pool


def warm_pool(workers: int, threads: int | None, context: mp.context.BaseContext | None
              ) -> futures.ProcessPoolExecutor:
    """The process-wide pool for these settings, started (all workers forked, from this
    process when :func:`fork_is_safe`, else from the preloaded fork server; one :func:`_ready`
    job each, not waited for) on first use and reused after; a pool broken by a dead worker
    is replaced. ``context`` None: the default choice."""
    method = context.get_start_method() if context is not None else "default"
    key = (workers, threads, method, os.getpid())  # not a forked parent's
    pool = _POOLS.get(key)
    if pool is None or getattr(pool, "_broken", False) or getattr(pool, "_shutdown_thread",
                                                                  False):
        pool = _start_pool(workers, threads, context)
        _POOLS[key] = pool
    return pool


def shutdown_pools() -> None:
    """Stop every warm pool (at interpreter exit, or to free their memory now)."""
    while _POOLS:
        _, pool = _POOLS.popitem()
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown_pools)


class ProcessExecutor(Executor):
    """Jobs in ``workers`` separate processes (default: every core), ``threads`` torch threads
    each. ``fn`` and the items must be picklable (``fn`` a module-level function).

    ``warm=True`` (the default): the workers come from a process-wide pool (:func:`warm_pool`)
    that starts when the executor is made and stays up after :meth:`close` for the next
    executor with the same settings, so a second short sweep or surface pays no start-up.
    ``warm=False``: a private pool, started on first use and shut down by :meth:`close` (or
    the end of the ``with`` block). ``context``: the start method (``"fork"``,
    ``"forkserver"``, ``"spawn"``); by default the workers are forked from this process when
    :func:`fork_is_safe` (they start in milliseconds, with everything this process imported),
    else from a fork server that first imports :data:`PRELOAD` (seconds: torch and the rest).
    ``start_method``: the one the pool used (None before it starts)."""

    def __init__(self, workers: int | None = None, threads: int | None = 1,
                 prefetch: int | None = None, context: str | None = None, warm: bool = True):
        n = (os.cpu_count() or 1) if workers is None else workers
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise LossAtlasError(f"workers={workers!r} must be a positive integer; pass workers=2.")
        self._workers = n
        self.threads = _check_threads(threads)
        self.prefetch = prefetch or 2 * n
        if context and context not in mp.get_all_start_methods():
            raise LossAtlasError(f"context={context!r} is not a start method here; use one of "
                                 f"{', '.join(mp.get_all_start_methods())} or None (default)")
        self._context = mp.get_context(context) if context else None
        self.warm = bool(warm)
        self._pool: futures.ProcessPoolExecutor | None = None
        if self.warm:
            self._get_pool()

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def start_method(self) -> str | None:
        return getattr(self._pool, "start_method", None)

    def describe(self) -> dict:
        return {**super().describe(), "start_method": self.start_method}

    def _get_pool(self) -> futures.ProcessPoolExecutor:
        if self.warm:
            self._pool = warm_pool(self._workers, self.threads, self._context)
        elif self._pool is None:
            self._pool = _start_pool(self._workers, self.threads, self._context)
        return self._pool

    def as_completed(self, fn: Callable, items: Iterable) -> Iterator[tuple[Any, Any]]:
        pool = self._get_pool()
        it = iter(items)
        pending: dict[futures.Future, Any] = {}

        def submit(k: int) -> None:
            for item in islice(it, k):
                pending[pool.submit(run_job, fn, item, self.threads)] = item

        submit(self.prefetch)
        try:
            while pending:
                done, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
                for fut in done:
                    item = pending.pop(fut)
                    yield item, fut.result()
                submit(len(done))
        finally:
            for fut in pending:
                fut.cancel()

    def close(self) -> None:
        """Shut a private pool down; a warm pool stays up for the next executor."""
        if self._pool is not None and not self.warm:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None


class _Shared:
    """A field of a job that many jobs share, sent once to Ray's object store (see
    :meth:`RayExecutor.as_completed`)."""

    __slots__ = ("ref",)

    def __init__(self, ref):
        self.ref = ref


_WORKER_SHARED: dict[str, Any] = {}  # in a Ray worker: object id -> value, a few kept


def _unshare(item: Any) -> Any:
    """In the worker: put the shared fields back (each fetched and unpickled once per worker)."""
    if not (dataclasses.is_dataclass(item) and not isinstance(item, type)):
        return item
    changes = {}
    for f in dataclasses.fields(item):
        v = getattr(item, f.name)
        if isinstance(v, _Shared):
            key = v.ref.hex()
            if key not in _WORKER_SHARED:
                import ray

                while len(_WORKER_SHARED) >= 4:
                    _WORKER_SHARED.pop(next(iter(_WORKER_SHARED)))
                _WORKER_SHARED[key] = ray.get(v.ref)
            changes[f.name] = _WORKER_SHARED[key]
    return dataclasses.replace(item, **changes) if changes else item


def _run_shared(fn: Callable, item: Any, n_threads: int | None) -> Any:
    return run_job(fn, _unshare(item), n_threads)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast (Ray itself retries for minutes) when ``host:port`` does not answer."""
    import socket

    host_port = address.split("://", 1)[-1]
    host, sep, port = host_port.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" or a form Ray resolves itself
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise LossAtlasError(
            f"address={address!r}: nothing answers there ({exc.strerror or exc}); start a "
            "cluster with `ray start --head`, check host and port, or pass --ray local"
        ) from None


def _import_ray():
    try:
        import ray
    except ImportError:
        raise LossAtlasError(
            "--ray / RayExecutor needs Ray; install the extra: pip install 'lossatlas[ray]' "
            "-c constraints.txt"
        ) from None
    return ray


class RayExecutor(Executor):
    """Jobs as Ray tasks on a cluster; the driver (this process) alone writes files.

    When the jobs are dataclasses (like the chunks of ``la.surface``), a field that holds the
    same object in many jobs (the objective with its data, the center, the directions) goes
    to Ray's object store once and is unpickled once per worker, instead of once per job.

    ``address``: ``"auto"`` (the cluster this machine belongs to, e.g. after ``ray start
    --head``), ``"ray://host:10001"`` / ``"host:6379"`` (a given cluster), or ``"local"`` (start
    a private one-machine cluster with ``num_cpus`` CPUs). If Ray is already initialized in
    this process it is used as is. A task that fails (worker crash or exception) is retried up
    to ``max_retries`` times. Each task asks for ``num_cpus_per_task`` CPUs and runs with
    ``threads`` torch threads, so results equal those of :class:`LocalExecutor`.
    """

    def __init__(self, address: str | None = "auto", *, max_retries: int = 3,
                 threads: int | None = 1, num_cpus: int | None = None,
                 num_cpus_per_task: float = 1, prefetch: int | None = None,
                 **init_kwargs: Any):
        self.ray = _import_ray()
        self.threads = _check_threads(threads)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise LossAtlasError(f"max_retries={max_retries!r} must be an integer >= 0.")
        self.max_retries = max_retries
        self.num_cpus_per_task = num_cpus_per_task
        self._owns = False
        if not self.ray.is_initialized():
            kw = {"include_dashboard": False, "log_to_driver": False, **init_kwargs}
            kw.setdefault("runtime_env", {"env_vars": {"LOSSATLAS_QUIET": "1"}})
            try:
                if address in (None, "local"):
                    self.ray.init(num_cpus=num_cpus, **kw)
                else:
                    _check_reachable(address)
                    self.ray.init(address=address, **kw)
            except ConnectionError as exc:
                raise LossAtlasError(
                    f"address={address!r}: no Ray cluster answered ({str(exc).splitlines()[0]}); "
                    "start one with `ray start --head` or pass --ray local"
                ) from None
            self._owns = True
        self.address = address
        self.prefetch = prefetch or max(2, 2 * self.workers)
        self._remote = self.ray.remote(_run_shared)

    @property
    def workers(self) -> int:
        try:
            return max(1, int(self.ray.cluster_resources().get("CPU", 1) // self.num_cpus_per_task))
        except Exception:  # cluster_resources can fail while the cluster shuts down
            return 1

    def as_completed(self, fn: Callable, items: Iterable) -> Iterator[tuple[Any, Any]]:
        ray = self.ray
        task = self._remote.options(max_retries=self.max_retries, retry_exceptions=True,
                                    num_cpus=self.num_cpus_per_task)
        fn_ref = ray.put(fn)
        it = iter(items)
        pending: dict[Any, Any] = {}
        shared: dict[int, tuple[Any, Any]] = {}  # id -> (object, ref): kept alive for the run

        def pack(item: Any) -> Any:
            # A dataclass job (e.g. a surface chunk) sends its large fields (objective, center,
            # directions) once: the same object in many jobs becomes one object-store entry.
            if not (dataclasses.is_dataclass(item) and not isinstance(item, type)):
                return item
            changes = {}
            for f in dataclasses.fields(item):
                v = getattr(item, f.name)
                if v is None or isinstance(v, (bool, int, float, str, bytes, np.ndarray)):
                    continue
                if id(v) not in shared:
                    shared[id(v)] = (v, ray.put(v))
                changes[f.name] = _Shared(shared[id(v)][1])
            return dataclasses.replace(item, **changes) if changes else item

        def submit(k: int) -> None:
            for item in islice(it, k):
                pending[task.remote(fn_ref, pack(item), self.threads)] = item

        submit(self.prefetch)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    item = pending.pop(ref)
                    yield item, ray.get(ref)
                submit(len(done))
        finally:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)

    def close(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns = False

    def describe(self) -> dict:
        return {**super().describe(), "address": self.address, "max_retries": self.max_retries}


def make_executor(ray: str | None = None, workers: int | None = None,
                  threads: int | None = 1) -> Executor:
    """The executor the CLI options ask for: ``--ray ADDRESS`` -> :class:`RayExecutor`;
    ``--workers N`` with N > 1 -> :class:`ProcessExecutor`; otherwise :class:`LocalExecutor`."""
    if ray:
        return RayExecutor(ray, threads=threads)
    if workers is None or workers == 1:
        return LocalExecutor(threads=threads)
    return ProcessExecutor(workers, threads=threads)
