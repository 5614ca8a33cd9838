"""Ctrl-C: what a command keeps when it is interrupted, and the one line that says so.

A command that writes as it goes tells :func:`on_interrupt` how to describe what it has kept;
:func:`lossatlas.cli.main` prints :func:`interrupted_line` on Ctrl-C (exit code 130).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable

_KEPT: list[tuple[Callable[[], str], bool | Callable[[], bool]]] = []


def on_interrupt(kept: Callable[[], str], resumes: bool | Callable[[], bool] = True) -> None:
    """Tell :func:`lossatlas.cli.main` what this command keeps if it is interrupted: ``kept()``
    says it in words at that moment ("37 of 121 points are kept in s.h5"); ``resumes`` (or
    ``resumes()`` at that moment) says whether the same command line continues from there."""
    _KEPT[:] = [(kept, resumes)]


def interrupted_line(argv: list[str]) -> str:
    """The one line printed on Ctrl-C: what was kept and the exact command to run next."""
    command = shlex.join(["lossatlas", *argv])
    if not _KEPT:
        return (f"interrupted: nothing was kept (this command writes its result when it "
                f"finishes); start it again with: {command}")
    kept, resumes = _KEPT[-1]
    try:
        what = kept()
        resumes = resumes() if callable(resumes) else resumes
    except Exception as exc:  # never a traceback on Ctrl-C
        what, resumes = f"what was kept is unknown ({type(exc).__name__})", False
    verb = "resume with" if resumes else "start it again with"
    return f"interrupted: {what}; {verb}: {command}"
