"""What a command asks of the machine, checked before it starts: the device, memory, disk.

A grid of ``n`` points along ``k`` axes holds, while it is computed (``landscape._run``), about
``GRID_BYTES_FIXED + GRID_BYTES_PER_AXIS * k`` bytes per point in memory: loss, accuracy and
the done mask (17 bytes) twice (the arrays and the result read back), the int64 list of points
to do (8), the meshgrid and the stacked coordinates (2 x 8 per axis). Its file holds 17 bytes
a point. :func:`check_grid` refuses a grid beyond the memory this machine has available
(``MemAvailable`` of ``/proc/meminfo``, bounded by a cgroup limit) or beyond the free disk
space under its file, stating the figures.

>>> check_grid((11, 11), "resolution=11") is None
True
>>> device("cpu")
device(type='cpu')
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import torch

from lossatlas.errors import LossAtlasError

__all__ = ["available_memory", "check_grid", "device", "free_disk", "grid_bytes", "human"]

GRID_BYTES_FIXED = 43  # 2 x 17 (loss, accuracy, done: arrays and the result) + 8 + 1 (to do)
GRID_BYTES_PER_AXIS = 16  # meshgrid + stacked coordinates, float64 each
FILE_BYTES_PER_POINT = 17  # loss and accuracy (float64), done (bool)


def human(nbytes: float) -> str:
    """``1536`` -> ``'1.5 KiB'``: a byte count in binary units, 3 significant digits."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    i = 0 if nbytes < 1024 else min(len(units) - 1, int(math.log(nbytes, 1024)))
    return f"{nbytes / 1024 ** i:.3g} {units[i]}"


def available_memory() -> int:
    """Bytes this process can still allocate: ``MemAvailable`` (else free pages), bounded by a
    cgroup v2 limit when one is set."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 2**63 - 1  # unknown: do not refuse
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit.isdigit():
            avail = min(avail, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail


def free_disk(path: str | os.PathLike) -> int:
    """Free bytes on the file system that would hold ``path`` (its nearest existing folder)."""
    p = Path(path).absolute().parent
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return 2**63 - 1


def grid_bytes(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(memory, file)`` bytes of a grid of ``shape`` (see the module docstring)."""
    n = math.prod(int(s) for s in shape)
    return n * (GRID_BYTES_FIXED + GRID_BYTES_PER_AXIS * len(shape)), n * FILE_BYTES_PER_POINT


def check_grid(shape: tuple[int, ...], what: str, path: str | os.PathLike | None = None) -> None:
    """Refuse a grid whose arrays exceed the available memory, or whose new file at ``path``
    exceeds the free disk space; ``what`` names the argument (``"--resolution 100000"``)."""
    memory, file = grid_bytes(shape)
    n = math.prod(int(s) for s in shape)
    per = memory // max(n, 1)
    avail = available_memory()
    if memory > avail:
        most = int((avail / per) ** (1 / len(shape)))
        raise LossAtlasError(
            f"{what} asks for {n:,} points, about {human(memory)} of memory ({per} bytes a "
            f"point) but this machine has {human(avail)} available; pass fewer than {most:,} "
            f"points{'' if len(shape) == 1 else ' per axis (a square grid)'}"
        )
    if path is not None and not Path(path).exists():
        free = free_disk(path)
        if file > free:
            raise LossAtlasError(
                f"{what} needs a file of about {human(file)} but the disk under "
                f"{str(path)!r} has {human(free)} free; pass fewer points or another path"
            )


def _pass(what: str, value: str) -> str:
    """How the user writes ``what`` = ``value``: ``--device cpu`` or ``device='cpu'``."""
    return f"{what} {value}" if what.startswith("-") else f"{what}={value!r}"


def device(spec: str | torch.device | None, what: str = "device") -> torch.device:
    """``torch.device(spec)``, refused in one sentence when torch does not know the name or
    this machine lacks the device (no CUDA, a CUDA index out of range, no MPS)."""
    if isinstance(spec, torch.device):
        dev = spec
    else:
        try:
            dev = torch.device(str(spec))
        except (RuntimeError, ValueError):
            raise LossAtlasError(
                f"{what} {str(spec)!r} is not a torch device; use {_pass(what, 'cpu')} (or "
                "cuda, cuda:1, mps)"
            ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA" if torch.version.cuda is None else \
                "no CUDA device is visible"
            raise LossAtlasError(
                f"{what} {str(spec)!r} needs a CUDA GPU but {build} (torch "
                f"{torch.__version__}); use {_pass(what, 'cpu')}"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise LossAtlasError(
                f"{what} {str(spec)!r} names CUDA device {dev.index} but this machine has "
                f"{count}; use {_pass(what, 'cuda:0')}"
            )
    elif dev.type != "cpu":
        backend = getattr(torch.backends, dev.type, None) or getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if available is not None and not available():
            raise LossAtlasError(f"{what} {str(spec)!r} needs a {dev.type} device, which this "
                                 f"machine lacks; use {_pass(what, 'cpu')}")
    return dev
