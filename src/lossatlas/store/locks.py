"""One writer per file or folder: an exclusive ``fcntl.flock`` on a lock file holding the pid.

A surface file ``s.h5`` is guarded by ``s.h5.lock``, a sweep or run folder by ``OUT/.lock``.
The lock lives as long as the writer's process: the kernel drops it when the process ends, even
on SIGKILL, so a stale lock file never blocks anyone (the next writer takes it over). A second
writer gets one sentence naming the holder's pid. Where ``fcntl`` is missing (Windows) there is
no lock.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "x.lock"
>>> with writer_lock(p, "x") as lock:
...     lock.path.read_text().strip() == str(os.getpid())
True
>>> p.exists()
False
"""

from __future__ import annotations

import os
from pathlib import Path

from lossatlas.core.errors import LossAtlasError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["WriterLock", "lock_path", "writer_lock"]


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of ``target`` (a file or folder): its sibling ``NAME.lock``."""
    target = Path(target).absolute()  # "." has no name; its absolute path has
    return target.with_name(target.name + ".lock")


class WriterLock:
    """A held lock; :meth:`release` (or the end of a ``with`` block) drops it and removes the
    file."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() else "another process"


def writer_lock(path: str | os.PathLike, what: str) -> WriterLock:
    """Take the exclusive lock ``path`` for writing ``what`` (named in the error), or raise
    :class:`LossAtlasError` naming the pid that holds it."""
    path = Path(path)
    if fcntl is None:  # pragma: no cover
        return WriterLock(path, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(20):  # retried only when a releasing holder removed the file meanwhile
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise LossAtlasError(
                f"{what} is being written by {holder} (lock file {str(path)!r}); wait for it to "
                "finish or stop that process, then rerun"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return WriterLock(path, fd)
    raise LossAtlasError(f"{what}: the lock file {str(path)!r} keeps changing; rerun")
