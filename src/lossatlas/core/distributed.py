"""Data-parallel evaluation on ``torch.distributed``: shards and one exact all-reduce.

Every rank holds the same model and evaluates its contiguous shard of the data,
rank r of W taking samples ``[⌊rN/W⌋, ⌊(r+1)N/W⌋)`` (N need not divide by W). What the
:class:`~lossatlas.Objective` adds up is a *weighted sum*, so summing it over the ranks gives the
exact full-data value, not a mean of per-rank means::

    L(θ) = (1/N) Σ_r Σ_{b ∈ shard r} n_b L_b(θ),   N = Σ_r Σ_b n_b   (n_b: targets in batch b)

and likewise for ∇L, Hv and the accuracy. One ``all_reduce(SUM)`` per data pass (per loss,
gradient, Hessian product or chunk of grid points) makes the value identical on every rank, so
iterative methods (Lanczos, XTrace, ARPACK) take the same steps everywhere given the same seeds.
hessian-eigenthings' DDP operator instead averages per-rank means after a
``DistributedSampler``, which pads the data with repeated samples when N does not divide by W
and weights every rank equally; both make its result differ from the single-process one.

Use it under ``torchrun`` (``la.distributed.init()`` reads the launcher's environment; gloo on
CPU, NCCL when the objective lives on a GPU), or let :func:`launch` start ``nproc`` local
processes on a loopback store (what ``lossatlas hessian --nproc N`` does). Progress bars are
shown by rank 0 only; writing files is the caller's job, on rank 0 (:func:`is_main`).
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from lossatlas.core.errors import LossAtlasError

__all__ = ["Group", "init", "is_main", "launch", "rank", "resolve", "shard_range",
           "world_size"]

MODES = (None, True, False, "shard", "local")


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Samples ``[lo, hi)`` of rank ``rank`` among ``world``: contiguous, sizes differ by at most
    one, every sample in exactly one shard.

    >>> [shard_range(5, r, 2) for r in range(2)]
    [(0, 2), (2, 5)]
    """
    if n < world:
        raise LossAtlasError(
            f"the data has {n} samples for {world} processes; use at most {n} processes "
            "(--nproc) or more data"
        )
    return rank * n // world, (rank + 1) * n // world


@dataclass
class Group:
    """The ranks an Objective reduces over: ``rank`` of ``world``; ``device`` is where the
    collectives run (the GPU for NCCL, the CPU for gloo); ``mode`` is ``"shard"`` (every rank
    passed the full data and keeps its shard) or ``"local"`` (each rank passed its own part)."""

    rank: int
    world: int
    device: torch.device
    mode: str = "shard"
    group: Any = None

    def all_sum(self, x):
        """Σ over ranks of ``x`` (a tensor, returned as a new tensor on ``x``'s device and dtype,
        or a float / numpy array, summed in float64). Every rank must call it in the same
        order with the same shape."""
        if isinstance(x, torch.Tensor):
            t = x.detach().to(self.device).clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
            return t.to(x.device, x.dtype)
        arr = np.asarray(x, dtype=np.float64)
        t = torch.from_numpy(arr.copy()).to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        out = t.cpu().numpy()
        return float(out) if arr.ndim == 0 else out

    def gather(self, value) -> list:
        """``value`` of every rank (picklable Python objects), in rank order."""
        out: list = [None] * self.world
        dist.all_gather_object(out, value, group=self.group)
        return out

    def broadcast(self, value, src: int = 0):
        """Rank ``src``'s ``value`` on every rank."""
        box = [value]
        dist.broadcast_object_list(box, src=src, group=self.group)
        return box[0]

    def same(self, value, what: str, fix: str) -> None:
        """Raise on every rank when ``value`` differs between ranks."""
        values = self.gather(value)
        if any(v != values[0] for v in values):
            raise LossAtlasError(f"{what} differs between the {self.world} processes "
                                 f"({values[:4]}); {fix}")

    def __reduce__(self):
        raise LossAtlasError(
            "a distributed Objective cannot be sent to another process (executor=, Ray); "
            "run the grid in the ranks themselves or build the Objective with distributed=False"
        )


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Processes in the default group (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and outside a process group): the process that prints and writes."""
    return rank() == 0


def _quiet_unless_main() -> None:
    """Ranks > 0 show no progress bar and no warning (rank 0 says it once)."""
    if not is_main():
        os.environ["LOSSATLAS_QUIET"] = "1"
        warnings.simplefilter("ignore")


def init(backend: str | None = None, timeout_s: float = 1800.0) -> tuple[int, int]:
    """Join the process group described by ``torchrun``'s environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) unless one exists; returns
    ``(rank, world_size)``. ``backend``: ``"nccl"`` when CUDA is available and
    ``LOCAL_RANK`` picks a GPU, else ``"gloo"``. Progress bars are switched off on ranks > 0."""
    if not dist.is_available():
        raise LossAtlasError("torch.distributed is not available in this torch build; "
                             "run in one process")
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise LossAtlasError(
                "la.distributed.init() found no RANK / WORLD_SIZE; launch with "
                "torchrun --nproc_per_node N script.py (or use la.distributed.launch)"
            )
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    _quiet_unless_main()
    return rank(), world_size()


def resolve(mode, device: torch.device) -> Group | None:
    """The Objective's ``distributed=`` argument as a :class:`Group` (None: one process).

    ``None``: shard when a process group with more than one rank is initialized; ``True`` or
    ``"shard"``: shard (a process group is required); ``"local"``: the data each rank passed
    is already its part; ``False``: evaluate everything in this process."""
    if mode not in MODES:
        raise LossAtlasError(
            f"distributed={mode!r} is unknown; use None (auto), True / 'shard', 'local' or False"
        )
    if mode is False:
        return None
    active = dist.is_available() and dist.is_initialized()
    if not active:
        if mode is None:
            return None
        raise LossAtlasError(
            f"distributed={mode!r} needs a torch.distributed process group; call "
            "la.distributed.init() under torchrun first, or pass distributed=False"
        )
    if dist.get_world_size() == 1 and mode is None:
        return None
    nccl = dist.get_backend() == "nccl"
    if nccl and device.type != "cuda":
        raise LossAtlasError(
            "the process group uses NCCL but the objective is on the CPU; pass device='cuda' "
            "(or use the gloo backend for CPU work)"
        )
    _quiet_unless_main()
    comm = device if nccl else torch.device("cpu")
    return Group(dist.get_rank(), dist.get_world_size(), comm,
                 "local" if mode == "local" else "shard")


# -- local launcher ------------------------------------------------------------------------
def _worker(index: int, fn, args, world: int, port: int, threads: int | None, backend: str,
            queue) -> None:
    try:
        if threads:
            torch.set_num_threads(threads)
        if backend == "nccl":
            torch.cuda.set_device(index % torch.cuda.device_count())
        store = dist.TCPStore("127.0.0.1", port, world, False,
                              timeout=datetime.timedelta(seconds=120))
        dist.init_process_group(backend, store=store, rank=index, world_size=world)
        _quiet_unless_main()
        out = fn(*args)
        # plain pickle bytes: torch's queue pickler would pass tensors as shared-memory handles,
        # which die with this process
        queue.put((index, "ok", pickle.dumps(out) if index == 0 else None))
        dist.barrier()
        dist.destroy_process_group()
    except LossAtlasError as exc:
        queue.put((index, "error", str(exc)))
        os._exit(1)  # the other ranks may wait in a collective: let spawn end them
    except BaseException:  # reported to the parent, then the rank ends
        queue.put((index, "crash", traceback.format_exc()))
        os._exit(1)


def launch(fn: Callable[..., Any], nproc: int, *args, threads: int | None = None,
           backend: str = "gloo") -> Any:
    """Run ``fn(*args)`` in ``nproc`` fresh processes joined in a process group on a loopback
    store (127.0.0.1, a free port); returns rank 0's return value (keep it small: it comes back
    pickled). ``fn`` must be picklable (a module-level function). A :class:`LossAtlasError` in
    any rank is raised here with its one sentence; other failures raise with the rank's
    traceback. ``threads``: torch threads per process (default: this process's threads divided
    by ``nproc``, at least 1). ``backend``: ``"gloo"`` (CPU) or ``"nccl"`` (rank r on GPU
    r mod the GPU count)."""
    import torch.multiprocessing as mp

    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise LossAtlasError(f"nproc={nproc!r} must be a positive integer (1 runs in this "
                             "process)")
    if backend not in ("gloo", "nccl"):
        raise LossAtlasError(f'backend={backend!r} is unknown; use "gloo" or "nccl"')
    if backend == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
        raise LossAtlasError("backend='nccl' needs CUDA GPUs and an NCCL build of torch; "
                             "use backend='gloo' (or --device cpu)")
    if threads is None:
        threads = max(1, torch.get_num_threads() // nproc)
    store = dist.TCPStore("127.0.0.1", 0, nproc + 1, True,
                          timeout=datetime.timedelta(seconds=120), wait_for_workers=False)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    failed, reports = None, []
    quiet = logging.getLogger("torch.multiprocessing.spawn")  # "Terminating process ..." lines
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        procs = mp.start_processes(_worker, args=(fn, args, nproc, store.port, threads, backend,
                                                         queue),
                                   nprocs=nproc, join=False, start_method="spawn")
        done = False
        while not done:  # drain the queue while waiting (a full pipe would block a rank)
            try:
                done = procs.join(timeout=0.05)
            except mp.ProcessExitedException as exc:
                failed, done = exc, True
            while not queue.empty():
                reports.append(queue.get())
    finally:
        quiet.setLevel(level)
        del store
    for status in ("error", "crash"):
        bad = [r for r in reports if r[1] == status]
        if bad:
            idx, _, msg = min(bad)
            if status == "error":
                raise LossAtlasError(msg)
            raise RuntimeError(f"rank {idx} of {nproc} failed:\n{msg}")
    if failed is not None:
        raise RuntimeError(f"a rank of {nproc} ended without a report: {failed}")
    return pickle.loads(next(out for idx, status, out in reports if idx == 0))
