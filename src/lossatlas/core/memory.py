"""The memory model: one budget that every measurement asks before it chooses a method.

The budget, in bytes, is the first of

1. ``memory=`` given to the call (``"4GB"``, ``"512MiB"``, ``4e9``),
2. the innermost ``with lossatlas.core.memory.limit("4GB"):`` block,
3. the environment variable ``LOSSATLAS_MEMORY`` (same forms),
4. :data:`FRACTION` of the memory available now: ``MemAvailable`` of ``/proc/meminfo`` on the
   CPU (at most :data:`CPU_CAP`: a kept graph makes a product at most about twice as fast,
   which is not worth most of a shared machine's memory), ``torch.cuda.mem_get_info`` on a
   CUDA device.

Costs are measured on the model at hand, never guessed from its size alone: a graph kept for a
second derivative is measured by summing the bytes of the tensors autograd saves
(:func:`saved_bytes`, via ``torch.autograd.graph.saved_tensors_hooks``) on two small probe
batches, fitted as ``fixed + per_sample · n`` (:class:`LinearCost`) and multiplied by
:data:`SLACK` for the allocator and the buffers that live only during a backward (calibrated
against the resident-set growth of resnet20's cached Hessian graph per CIFAR image, and the
peak of a resnet56 SA-3 run in a budget; figures in benchmarks/README.md). A
method whose cost exceeds the budget is not chosen; when none fits, :func:`too_large` words
the one sentence that says how much is needed and how to get it.

>>> parse_bytes("1.5GB"), parse_bytes("512MiB"), parse_bytes(1000)
(1500000000, 536870912, 1000)
>>> with limit("2GB"):
...     budget()
2000000000
>>> fmt(3.2e9)
'3.2 GB'
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from lossatlas.core.errors import LossAtlasError

__all__ = ["CPU_CAP", "ENV", "FRACTION", "HEADROOM", "SLACK", "LinearCost", "available",
           "budget", "fmt", "limit", "parse_bytes", "saved_bytes", "too_large", "usable"]

ENV = "LOSSATLAS_MEMORY"
FRACTION = 0.5  # of the memory available now, when no budget is given
CPU_CAP = 2 * 10**9  # the default budget on the CPU is at most this
HEADROOM = 0.15  # of a budget left out of every plan: allocator caches, convolution workspaces
SLACK = 1.5  # resident bytes per saved byte of an autograd graph (allocator, transients)

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
          "t": 1e12, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("lossatlas_memory",
                                                                   default=None)


def parse_bytes(value: str | float | int, name: str = "memory") -> int:
    """Bytes from ``4e9``, ``"4GB"`` (10⁹), ``"4GiB"`` (2³⁰), ``"500 MB"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        n = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9.]+(?:[eE][0-9+-]+)?)\s*([a-zA-Z]*)\s*", str(value))
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise LossAtlasError(
                f"{name}={value!r} is not a size; write it like 4GB, 512MiB or 4e9 (bytes)"
            )
        n = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(n) or n <= 0:
        raise LossAtlasError(f"{name}={value!r} must be a positive size such as 4GB")
    return int(n)


def fmt(nbytes: float) -> str:
    """A size for people: ``'3.2 GB'``, ``'640 MB'``."""
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= f:
            v = nbytes / f
            return f"{v:.1f} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{int(nbytes)} B"


def available(device: torch.device | str | None = None) -> int:
    """Bytes available now: free memory of a CUDA device, else ``MemAvailable`` (Linux), else
    a quarter of the physical memory."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 4
    except (ValueError, OSError, AttributeError):
        return 4 * 10**9


def budget(memory: str | float | int | None = None,
           device: torch.device | str | None = None) -> int:
    """The memory budget in bytes (see the module docstring for the order of sources)."""
    if memory is not None:
        return parse_bytes(memory)
    scoped = _LIMIT.get()
    if scoped is not None:
        return scoped
    env = os.environ.get(ENV)
    if env:
        return parse_bytes(env, ENV)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    free = FRACTION * available(dev)
    return int(free if dev.type == "cuda" else min(free, CPU_CAP))


def usable(nbytes: float) -> float:
    """The part of a budget that plans may spend (:data:`HEADROOM` is left for what no plan
    sees: allocator caches, convolution workspaces; calibrated on a resnet56 SA-3 run, see
    benchmarks/README.md)."""
    return (1 - HEADROOM) * nbytes


@contextlib.contextmanager
def limit(memory: str | float | int) -> Iterator[int]:
    """Every measurement inside the block plans within ``memory`` bytes (``"4GB"``)."""
    token = _LIMIT.set(parse_bytes(memory))
    try:
        yield _LIMIT.get()
    finally:
        _LIMIT.reset(token)


def saved_bytes(fn: Callable[[], object]) -> tuple[int, object]:
    """``(bytes, fn())``: the bytes of every distinct storage autograd saves for backward while
    ``fn`` runs (a forward, or a backward with ``create_graph=True``), i.e. what a kept graph
    holds. Storages are counted once however many tensors view them."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage
            seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


@dataclass(frozen=True)
class LinearCost:
    """Bytes ``fixed + per_sample · n`` of a structure built over ``n`` samples."""

    fixed: float
    per_sample: float

    def __call__(self, n: int) -> int:
        return int(self.fixed + self.per_sample * n)

    def samples_within(self, nbytes: float) -> int:
        """The largest ``n`` with ``self(n) <= nbytes`` (0 when not even one sample fits)."""
        if self.per_sample <= 0:
            return 2**62 if self.fixed <= nbytes else 0
        return max(0, int((nbytes - self.fixed) // self.per_sample))

    @classmethod
    def fit(cls, n1: int, b1: float, n2: int, b2: float, slack: float = SLACK) -> LinearCost:
        """The line through two probes ``(n1, b1)``, ``(n2, b2)`` (n1 < n2), times ``slack``."""
        per = max(0.0, (b2 - b1) / (n2 - n1)) if n2 != n1 else b2 / max(n2, 1)
        fixed = max(0.0, b1 - per * n1)
        return cls(slack * fixed, slack * per)


def too_large(what: str, need: float, have: float, hints: str) -> LossAtlasError:
    """The one sentence when nothing fits: what needs how much, the budget, how to get there
    (the error carries ``need`` and ``budget`` in bytes, for a caller that rewords it)."""
    err = LossAtlasError(
        f"{what} needs about {fmt(need)} but the memory budget is {fmt(have)}; {hints}, or "
        f"raise the budget with {ENV}=8GB (or lossatlas.core.memory.limit('8GB'))"
    )
    err.need, err.budget = need, have
    return err
