"""The atlas's sections: one registered function per measurement, in page order.

A section is a function ``fn(ctx, opts) -> Output`` decorated with :func:`section`. It computes
one measurement for the run in ``ctx`` (an :class:`~lossatlas.report.context.AtlasContext`),
writes its files under ``ctx.folder(name)`` and returns what the page shows: figures, a
caption, key numbers, the ``lossatlas`` command that recomputes it and its provenance.

``options`` are the section's defaults (``quick`` overrides them for smoke runs and tests; the
user's ``--set name.key=value`` overrides both). ``inputs`` names what else the result depends
on (``"run"``, ``"run_b"``, ``"sweep"``, ``"table:NAME"`` for a tracked table, or another
section's name), and ``when(ctx)`` says whether the section applies to this run at all. The
cache key is a hash of these, so an unchanged section is read back instead of recomputed.
Adding a section later is one function (``sections/tracking.py`` is this one)::

    @section("sharpness", "Sharpness during training", inputs=("run", "table:sharpness"),
             when=lambda ctx: "sharpness" in ctx.run.info.get("tracks", []))
    def sharpness(ctx, opts):
        ...
        return Output(figures=[Figure(path, "λ_max per step")], numbers={...}, ...)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lossatlas.core.errors import LossAtlasError

__all__ = ["SECTIONS", "Figure", "Output", "Section", "section", "sections"]


@dataclass
class Figure:
    """One figure of a section: a PNG (``path``) or a plotly JSON spec (``interactive``: the
    ``{"data", "layout"}`` of a figure drawn in the page), with its one-line ``title``."""

    path: Path
    title: str = ""
    interactive: bool = False


@dataclass
class Output:
    """What a section returns (and what is read back from ``section.json`` on a rerun).

    ``numbers`` are plain floats / ints / strings (they go to ``atlas.json``); ``summary`` the
    ones that also go to the summary card; ``caption`` paragraphs (HTML allowed) say what the
    figure shows, the paper and figure it reproduces and how to read it; ``verdict`` is a
    one-line honest reading ("target shape reached" or not); ``files`` every data file
    written; ``command`` the ``lossatlas`` commands that recompute it; ``provenance`` where the
    numbers come from (files, version, seeds, BN policy, data subset); ``table`` optional rows
    for a small HTML table (first row is the header)."""

    figures: list[Figure] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    caption: list[str] = field(default_factory=list)
    verdict: str | None = None
    files: list[Path] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    table: list[list[str]] = field(default_factory=list)


@dataclass
class Section:
    name: str
    title: str
    fn: Callable[..., Output]
    paper: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] = ("run",)
    when: Callable[[Any], bool] | None = None
    version: int = 1

    def resolved(self, quick: bool, overrides: Mapping[str, Any] | None = None) -> dict:
        """The options this run uses: defaults, then ``quick``, then the user's overrides."""
        opts = {**self.options, **(self.quick if quick else {})}
        for key, value in (overrides or {}).items():
            if key not in opts:
                raise LossAtlasError(
                    f"option {self.name}.{key} is unknown; use one of "
                    f"{', '.join(f'{self.name}.{k}' for k in opts) or '(none)'}"
                )
            opts[key] = value
        return opts


#: name -> Section, in page order (registration order).
SECTIONS: dict[str, Section] = {}


def section(name: str, title: str, *, paper: str = "", options: Mapping | None = None,
            quick: Mapping | None = None, inputs: Sequence[str] = ("run",),
            when: Callable[[Any], bool] | None = None, version: int = 1):
    """Register ``fn(ctx, opts) -> Output`` as the atlas section ``name`` (see the module
    docstring); ``version`` is part of the cache key (bump it when the code's output
    changes)."""

    def deco(fn: Callable[..., Output]) -> Callable[..., Output]:
        SECTIONS[name] = Section(name, title, fn, paper, dict(options or {}), dict(quick or {}),
                                 tuple(inputs), when, version)
        return fn

    return deco


def sections(only: Sequence[str] | None = None) -> list[Section]:
    """The registered sections in page order (``only``: those names, checked)."""
    import importlib

    importlib.import_module("lossatlas.report.sections")  # registers the built-ins

    if only is None:
        return list(SECTIONS.values())
    unknown = [n for n in only if n not in SECTIONS]
    if unknown:
        raise LossAtlasError(
            f"section {unknown[0]!r} is unknown; use one of {', '.join(SECTIONS)}"
        )
    return [s for s in SECTIONS.values() if s.name in only]
