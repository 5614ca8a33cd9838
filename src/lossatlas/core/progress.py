"""Progress bars for every loop longer than a second (rich), quiet under ``LOSSATLAS_QUIET=1``,
and the Ctrl-C that every such loop honours (:func:`catch_interrupts`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

_pending_interrupt = False


def _on_sigint(signum, frame) -> None:
    global _pending_interrupt
    _pending_interrupt = True
    raise KeyboardInterrupt


def catch_interrupts() -> None:
    """Install the Ctrl-C handler of the command line (main thread only): it raises
    KeyboardInterrupt as Python's default handler does, and also remembers the Ctrl-C, so that
    when the raise is lost (it landed in a ``__del__`` or a weakref callback of the garbage
    collector, where Python prints "Exception ignored" and goes on) the next step of a
    :func:`track` loop raises it again instead of finishing the work as if nothing happened."""
    import signal
    import threading

    global _pending_interrupt
    _pending_interrupt = False
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)


def raise_pending_interrupt() -> None:
    """Raise KeyboardInterrupt when a Ctrl-C was caught and not yet delivered (see
    :func:`catch_interrupts`)."""
    global _pending_interrupt
    if _pending_interrupt:
        _pending_interrupt = False
        raise KeyboardInterrupt


def quiet() -> bool:
    """True when progress output is switched off (``LOSSATLAS_QUIET=1`` or ``progress=False``)."""
    return os.environ.get("LOSSATLAS_QUIET", "") not in ("", "0")


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
        disable=quiet(),
    )


def track(
    iterable: Iterable[T],
    description: str = "working",
    total: int | None = None,
    disable: bool | None = None,
) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr.

    A loop that stops before ``total`` (a ``break``, a converged solver) leaves the bar at the
    count it reached, shown as complete (144/144), not stuck at 144/1000.
    ``disable=None`` follows :func:`quiet`; ``disable=True`` never shows a bar.
    """
    if disable is None:
        disable = quiet()
    if disable:
        for item in iterable:
            raise_pending_interrupt()
            yield item
        return
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with make_progress() as progress:
        task = progress.add_task(description, total=total)
        done = 0
        try:
            for item in iterable:
                raise_pending_interrupt()
                done += 1  # handed out: its work counts even if the consumer stops after it
                yield item
                progress.advance(task)
        finally:  # a loop that ends early (Lanczos converged at 144/1000) closes at its count
            progress.update(task, total=done, completed=done)
