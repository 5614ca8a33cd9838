"""What a command asks of the machine, checked before it starts: the device, memory, disk.

A grid of ``n`` points whose axes have ``m`` coordinates in all (``nx + ny`` for a surface,
``n`` for a curve) needs, while it is computed and written (``landscape._run``), about
``BYTES_PER_POINT * n + BYTES_PER_COORDINATE * m`` bytes of memory: per point, loss, accuracy
and the done mask in memory, in the file's layout and read back, the points to do, the
meshgrid and the stacked coordinates; per coordinate, its float in the provenance signature
(a Python list and its JSON text, several copies). Its file holds ``FILE_BYTES_PER_POINT * n +
FILE_BYTES_PER_COORDINATE * m`` bytes. The constants are the peaks traced with ``tracemalloc``
(``tests/test_bad_input.py`` checks them: a 200 x 200 surface and a 50,000-point curve). The
model, the data and torch's own buffers come on top. :func:`check_grid` refuses a grid
beyond the memory this machine has available (``MemAvailable`` of ``/proc/meminfo``, bounded by
a cgroup limit) or beyond the free disk space under its file, stating the figures.

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

from lossatlas.core.errors import LossAtlasError

__all__ = ["available_memory", "check_grid", "device", "free_disk", "grid_bytes", "human"]

BYTES_PER_POINT = 85  # traced: 74-82 on a surface written to a file, 48 without
BYTES_PER_COORDINATE = 100  # traced: a curve with a file needs 158-171 a point, 85 + 73-86
FILE_BYTES_PER_POINT = 17  # loss and accuracy (float64), done (bool)
FILE_BYTES_PER_COORDINATE = 30  # xcoordinates (float64) + its JSON text in the signature


def human(nbytes: float) -> str:
    """A byte count in binary units, 3 significant digits.

    >>> human(1000), human(1536), human(80 * 10**10)
    ('1000 B', '1.5 KiB', '745 GiB')
    """
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    if nbytes < 1024:
        return f"{int(nbytes)} B"
    i = min(len(units) - 1, int(math.log(nbytes, 1024)))
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
    """``(memory, file)`` bytes of a grid of ``shape`` (see the module docstring).

    >>> grid_bytes((11, 11))
    (12485, 2717)
    """
    n, m = math.prod(int(s) for s in shape), sum(int(s) for s in shape)
    return (n * BYTES_PER_POINT + m * BYTES_PER_COORDINATE,
            n * FILE_BYTES_PER_POINT + m * FILE_BYTES_PER_COORDINATE)


def check_grid(shape: tuple[int, ...], what: str, path: str | os.PathLike | None = None) -> None:
    """Refuse a grid whose arrays exceed the available memory, or whose new file at ``path``
    exceeds the free disk space; ``what`` names the argument (``"--resolution 100000"``)."""
    memory, file = grid_bytes(shape)
    n = math.prod(int(s) for s in shape)
    per = round(memory / max(n, 1))
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
