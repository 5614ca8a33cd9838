"""``la.atlas(run, out)``: every section of the registry for one run, then ``out/index.html``
and ``out/atlas.json``.

Each section prints one line with its time ("computed" or "reused"); a section whose key (see
:mod:`lossatlas.report.cache`) is unchanged is read back from its files. A section that fails
is shown as failed on the page (with the error) and the others still run.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from lossatlas import __version__
from lossatlas.batteries.runs import Run, load_run
from lossatlas.core.errors import LossAtlasError
from lossatlas.report import cache
from lossatlas.report.context import AtlasContext
from lossatlas.report.registry import sections
from lossatlas.store import atomic
from lossatlas.store.encoding import json_safe

__all__ = ["SUMMARY_KEYS", "AtlasResult", "atlas", "parse_sets"]

#: The keys ``atlas.json``'s summary always holds (None where a section did not run).
SUMMARY_KEYS = ("lambda_max", "lambda_min", "trace", "fitting_error", "fitting_error_random",
                "stationary_points", "mc", "cka", "l2", "phase", "train_acc", "test_acc")


@dataclass
class AtlasResult:
    """``out``, ``page`` (index.html), ``json`` (atlas.json), ``doc`` (its content), ``ok``
    (no section failed), ``seconds``."""

    out: Path
    page: Path
    json: Path
    doc: dict
    ok: bool
    seconds: float

    @property
    def summary(self) -> dict:
        return self.doc["summary"]


def parse_sets(pairs: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``["surface.resolution=51"]`` -> ``{"surface": {"resolution": 51}}``."""
    from lossatlas.core.registry import parse_options

    out: dict[str, dict[str, Any]] = {}
    for pair in pairs or []:
        name, dot, rest = pair.partition(".")
        if not dot:
            raise LossAtlasError(
                f"--set {pair!r} is not SECTION.KEY=VALUE; write e.g. --set surface.resolution=51"
            )
        out.setdefault(name, {}).update(parse_options([rest], "--set"))
    return out


def _run_order(active: list) -> list:
    """The sections in page order, except that a section runs after those named in its
    ``inputs`` (the P.E.1 x N.E.1 surface is shown before the Hessian but needs its file)."""
    by_name = {s.name: s for s in active}
    done: list = []

    def visit(sec, stack: tuple = ()) -> None:
        if sec in done:
            return
        if sec.name in stack:
            raise LossAtlasError(f"sections {' -> '.join(stack)} depend on each other in a "
                                 "circle; fix their inputs")
        for dep in sec.inputs:
            if dep in by_name:
                visit(by_name[dep], (*stack, sec.name))
        done.append(sec)

    for sec in active:
        visit(sec)
    return done


def atlas(
    run: Run | str | os.PathLike,
    out: str | os.PathLike,
    *,
    quick: bool = False,
    with_run: str | os.PathLike | None = None,
    sweep: str | os.PathLike | None = None,
    only: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    force: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> AtlasResult:
    """Write the atlas of ``run`` (a run folder or :class:`Run`) into ``out``.

    ``quick`` uses each section's small sizes; ``with_run`` is the independent run B (else the
    atlas trains one from the run's recorded recipe with seed + 1 into ``out/run_b``);
    ``sweep`` a sweep folder whose phase diagram the page shows; ``only`` runs those sections
    (the page keeps the others' last results); ``options`` overrides section options,
    ``{"surface": {"resolution": 51}}``; ``force`` recomputes every section.
    Returns an :class:`AtlasResult`; ``out/index.html`` opens without a network.

    >>> import lossatlas as la  # doctest: +SKIP
    >>> res = la.atlas("runs/mlp-digits-seed0", "atlas")  # doctest: +SKIP
    >>> res.summary["lambda_max"]  # doctest: +SKIP
    """
    from lossatlas.report.page import write_page

    t0 = time.perf_counter()
    console = console or Console(stderr=True)
    run = run if isinstance(run, Run) else load_run(run)
    if run.path is None:
        raise LossAtlasError("run is kept in memory; pass la.train(..., out=FOLDER) so the atlas "
                             "can read its checkpoints and recipe")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for p, what in ((with_run, "with_run"), (sweep, "sweep")):
        if p is not None and not Path(p).is_dir():
            raise LossAtlasError(f"{what}={str(p)!r} is not a folder; pass a run / sweep folder")

    def log(msg: str) -> None:
        console.print(msg, highlight=False, markup=False, soft_wrap=True)

    ctx = AtlasContext(run=run, out=out, quick=quick,
                       with_run=Path(with_run) if with_run is not None else None,
                       sweep=Path(sweep) if sweep is not None else None, log=log,
                       progress=progress)
    ctx.recipe  # noqa: B018  (a run without a recorded recipe fails here, in one sentence)
    todo = sections()
    chosen = set(only) if only is not None else None
    if chosen is not None:
        sections(list(chosen))  # unknown names fail in one sentence
    unknown = set(options or {}) - {s.name for s in todo}
    if unknown:
        raise LossAtlasError(f"options for unknown section {sorted(unknown)[0]!r}; use one of "
                             f"{', '.join(s.name for s in todo)}")
    docs: list[dict] = []
    ok = True
    active = _run_order([s for s in todo if s.when is None or s.when(ctx)])
    resolved = {s.name: s.resolved(quick, (options or {}).get(s.name)) for s in todo}
    for i, sec in enumerate(active, 1):
        t1, c1 = time.perf_counter(), time.process_time()
        folder = ctx.folder(sec.name)
        entry: dict[str, Any] = {"name": sec.name, "title": sec.title, "paper": sec.paper}
        try:
            opts = resolved[sec.name]
            if chosen is not None and sec.name not in chosen:
                old = folder / cache.FILE  # not asked for: keep its last result, if any
                doc = json.loads(old.read_text()) if old.is_file() else None
                status = "kept" if doc is not None else "skipped"
            else:
                key = cache.section_key(sec.name, sec.version, opts,
                                        {n: ctx.input_hash(n) for n in sec.inputs})
                doc = None if force else cache.read(folder, out, key)
                status = "reused"
            if doc is None and status != "skipped":
                cache.clear_stale(folder, key)
                output = sec.fn(ctx, opts)
                doc = cache.write(folder, out, key, opts, output, time.perf_counter() - t1)
                status = "computed"
            if doc is not None:
                entry.update(doc, status=status)
                ctx.outputs[sec.name] = doc
            else:
                entry.update(status="skipped")
        except Exception as exc:  # one failing section must not stop the atlas
            ok = False
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc())
        seconds, cpu = time.perf_counter() - t1, time.process_time() - c1
        entry["wall_seconds"], entry["cpu_seconds"] = round(seconds, 3), round(cpu, 3)
        docs.append(entry)
        note = entry["status"] if entry["status"] != "failed" else f"FAILED: {entry['error']}"
        log(f"[{i}/{len(active)}] {sec.title:<42} {seconds:6.1f} s (CPU {cpu:5.1f} s)  {note}")

    page_order = [s.name for s in todo]
    docs.sort(key=lambda d: page_order.index(d["name"]))
    summary = {k: None for k in SUMMARY_KEYS}
    for d in docs:
        summary.update(d.get("summary") or {})
    doc = {
        "format": "lossatlas.atlas", "format_version": 1, "lossatlas_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": str(run.path), "run_b": str(ctx.run_b.path) if "run_b" in ctx.__dict__ else None,
        "sweep": str(sweep) if sweep is not None else None, "quick": quick,
        "recipe": ctx.recipe.as_dict(), "summary": summary,
        "sections": [{k: v for k, v in d.items() if k != "traceback"} for d in docs],
    }
    doc = json_safe(doc)
    jpath = out / "atlas.json"
    atomic.write_text(jpath, json.dumps(doc, indent=1, allow_nan=False) + "\n")
    page = write_page(doc, docs, out)
    seconds = time.perf_counter() - t0
    log(f"atlas written in {seconds:.1f} s: open {page.resolve()}")
    return AtlasResult(out, page, jpath, doc, ok, seconds)
