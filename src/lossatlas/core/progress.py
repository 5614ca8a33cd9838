"""Progress bars for every loop longer than a second (rich), quiet under ``LOSSATLAS_QUIET=1``."""

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
        yield from iterable
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
                done += 1  # handed out: its work counts even if the consumer stops after it
                yield item
                progress.advance(task)
        finally:  # a loop that ends early (Lanczos converged at 144/1000) closes at its count
            progress.update(task, total=done, completed=done)
