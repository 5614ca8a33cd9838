"""Atomic file writes: a file is written beside its final path, as ``<name>.tmp``, and moved
over it with one ``os.replace``, so a reader (or a run resumed after a crash) finds the old file
or the new one, never half of one.

The temporary name is always ``path.name + ".tmp"`` (:func:`tmp_path`): the run folders clean
up ``*.tmp`` files a killed writer left behind. A write that raises removes its temporary file
and leaves ``path`` as it was.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
>>> write_text(path, "hello").read_text()
'hello'
>>> with replacing(path) as tmp:
...     _ = tmp.write_text("bye")
...     path.read_text()  # the old file until the block ends
'hello'
>>> path.read_text(), tmp_path(path).exists()
('bye', False)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TMP_SUFFIX", "h5_file", "replacing", "tmp_path", "write_bytes", "write_text"]

TMP_SUFFIX = ".tmp"


def tmp_path(path: str | os.PathLike) -> Path:
    """The temporary file beside ``path`` that an atomic write of ``path`` uses."""
    path = Path(path)
    return path.with_name(path.name + TMP_SUFFIX)


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield :func:`tmp_path` of ``path`` to write; when the block ends it replaces ``path``
    (``os.replace``), when the block raises it is removed and ``path`` is untouched."""
    tmp = tmp_path(path)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextlib.contextmanager
def h5_file(path: str | os.PathLike):
    """A new HDF5 file (``h5py.File(tmp, "w")``) that replaces ``path`` once the block ends
    and the file is closed."""
    import h5py

    with replacing(path) as tmp, h5py.File(tmp, "w") as f:
        yield f
