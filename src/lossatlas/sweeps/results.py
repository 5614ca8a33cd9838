"""A sweep's results: the files of its folder, the job rows, the per-cell table and its CSV.

Results go to ``OUT/results.jsonl``, one JSON line per finished job (a model, or a pair of
seeds), appended (one write with its newline, then fsync) as each job finishes; every line
carries the hash of the job's configuration, so a rerun skips what is done and resumes where it
stopped (a last line torn by a crash is cut on open, and its job runs again). A job that raised
(or whose measurement raised on a model that trained normally) is written with ``"status":
"failed"`` and its errors, counts for no cell, is listed by :attr:`SweepResult.failures` and
run again by the next rerun.

The trained weights go to ``OUT/models/<hash>.pt`` (so connectivity and similarity can be
recomputed later), the resolved sweep to ``OUT/sweep.json`` and the per-cell table to
``OUT/cells.csv``.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lossatlas.core.errors import LossAtlasError
from lossatlas.store import atomic
from lossatlas.sweeps.spec import SweepSpec, cells, load_spec

__all__ = ["CELLS", "METRICS", "MODELS", "RESULTS", "SPEC", "SweepResult", "aggregate",
           "append_row", "describe_failure", "failed", "load_results", "read_rows",
           "repair_tail"]

#: Per-model and per-pair metrics of the cell table (means over seeds / pairs; ``*_std`` too).
MODEL_METRICS = ("test_acc", "test_loss", "train_acc", "train_loss", "train_error",
                 "hessian_max", "hessian_trace", "sharpness")
PAIR_METRICS = ("mc", "mc_linear", "mc_aligned", "mc_linear_aligned", "cka", "l2")
METRICS = MODEL_METRICS + PAIR_METRICS

RESULTS = "results.jsonl"
MODELS = "models"
SPEC = "sweep.json"
CELLS = "cells.csv"

# -- job rows ------------------------------------------------------------------------------
def failed(row: Mapping) -> bool:
    """True for the row of a job that did not complete: it raised, or one of its measurements
    raised on a model that trained normally (a diverged model's measurements may fail: that
    is its result, recorded, not retried)."""
    if row.get("status") is not None:
        return row["status"] == "failed"
    return bool(row.get("errors")) and not row.get("stopped_reason")


def read_rows(path: Path) -> list[dict]:
    """The job rows of ``path`` (``results.jsonl``), in order; a line cut short by a crash is
    skipped, so its job runs again."""
    rows = []
    if not path.is_file():
        return rows
    with path.open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash: that job is redone
                continue
    return rows


def append_row(path: Path, row: Mapping) -> None:
    """Append one row and its newline in a single write, then fsync: a crash leaves at most a
    torn last line, which :func:`repair_tail` cuts on the next open."""
    data = (json.dumps(row, allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_tail(path: Path) -> None:
    """Cut a torn last line (no trailing newline: a crash during its write) so that its job
    runs again, instead of the next row being glued onto it."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    with path.open("r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())


def describe_failure(row: Mapping) -> str:
    """One line: which job (cell, seed or seeds) and its errors."""
    who = f"seed {row['seed']}" if row.get("kind") == "model" else f"seeds {row.get('seeds')}"
    errs = "; ".join(f"{k}: {v}" for k, v in (row.get("errors") or {}).items())
    return (f"{row.get('kind')} job at {row.get('load_param')}={row.get('load')}, "
            f"{row.get('temperature_param')}={row.get('temperature')}, {who}: {errs}")


# -- the per-cell table ---------------------------------------------------------------------
def _nan(v: Any) -> float:
    return math.nan if v is None else float(v)


def _summary(values: Sequence[float]) -> tuple[float, float]:
    arr = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if not len(arr):
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


@dataclass
class SweepResult:
    """A sweep's results: the raw ``rows`` (one per job) and the per-cell table ``cells``.

    ``cells`` is a list of dicts, one per (load, temperature) cell in grid order, with
    ``load``, ``temperature``, ``i``, ``j``, every metric of :data:`METRICS` (means over
    seeds or pairs; NaN where missing) with its ``*_std``, ``n_models``, ``n_pairs`` and
    ``phase`` (when :mod:`lossatlas.analyses.taxonomy` could label it).
    """

    spec: SweepSpec
    rows: list[dict]
    cells: list[dict]
    out: Path | None = None
    phases: list[Any] = field(default_factory=list)

    @property
    def load_values(self) -> list:
        return list(self.spec.load.values)

    @property
    def temperature_values(self) -> list:
        return list(self.spec.temperature.values)

    def grid(self, metric: str) -> np.ndarray:
        """``metric`` as an array (n_temperature, n_load): ``[j, i]`` is temperature j, load i."""
        arr = np.full((len(self.temperature_values), len(self.load_values)), np.nan, dtype=object
                      if metric == "phase" else float)
        if metric == "phase":
            arr[:] = None
        for c in self.cells:
            arr[c["j"], c["i"]] = c.get(metric, np.nan if metric != "phase" else None)
        return arr

    @property
    def failures(self) -> list[dict]:
        """Rows of this spec's jobs that failed and have not succeeded since (a rerun
        retries them)."""
        ok = {r.get("key") for r in self.rows if not failed(r)}
        mine = set()
        for cell in cells(self.spec):
            mine |= {cell.model_key(s) for s in self.spec.seeds}
            mine |= {cell.pair_key(a, b) for a, b in itertools.combinations(self.spec.seeds, 2)}
        last: dict[Any, dict] = {}
        for r in self.rows:
            if failed(r) and r.get("key") not in ok and r.get("key") in mine:
                last[r.get("key")] = r
        return list(last.values())

    def curves(self) -> list[dict]:
        """The pair rows that carry an mc curve: ``i``, ``j``, ``seeds``, ``t``, ``values``."""
        out = []
        for r in self.rows:
            if r.get("kind") == "pair" and r.get("curve", {}).get("t") and not failed(r):
                out.append({"i": r["i"], "j": r["j"], "seeds": r["seeds"], **r["curve"],
                            "mc": r["metrics"].get("mc")})
        return out

    def to_csv(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        keys: list[str] = []
        for c in self.cells:
            keys += [k for k in c if k not in keys]
        with atomic.replacing(path) as tmp, tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for c in self.cells:
                w.writerow({k: (str(v) if k == "phase_evidence" else v) for k, v in c.items()})
        return path


def _phase_labels(cells_: list[dict], thresholds: Mapping) -> list[Any]:
    """Phases from :func:`lossatlas.analyses.taxonomy.classify_table`; ``thresholds`` (the sweep's
    ``[phases]`` table) override its defaults."""
    from lossatlas.analyses import taxonomy

    return list(taxonomy.classify_table(cells_, **dict(thresholds)))


def aggregate(spec: SweepSpec, rows: Sequence[Mapping]) -> list[dict]:
    """The per-cell table from job rows (rows of other configurations are ignored)."""
    table = []
    by_key = {}
    for r in rows:
        if not failed(r):  # a failed job measured nothing (its rerun appends the row)
            by_key[r.get("key")] = r
    for cell in cells(spec):
        models = [by_key[k] for k in (cell.model_key(s) for s in spec.seeds) if k in by_key]
        pairs = [by_key[k] for k in (cell.pair_key(a, b) for a, b in
                                     itertools.combinations(spec.seeds, 2)) if k in by_key]
        row: dict[str, Any] = {"load_param": spec.load.param, "load": cell.load,
                               "temperature_param": spec.temperature.param,
                               "temperature": cell.temperature, "i": cell.i, "j": cell.j,
                               "n_models": len(models), "n_pairs": len(pairs)}
        for names, source in ((MODEL_METRICS, models), (PAIR_METRICS, pairs)):
            for m in names:
                mean, std = _summary([_nan(r["metrics"].get(m)) for r in source])
                row[m], row[f"{m}_std"] = mean, std
        table.append(row)
    return table


def load_results(out: str | os.PathLike, spec: SweepSpec | None = None) -> SweepResult:
    """Read a sweep folder (``OUT/results.jsonl`` + ``OUT/sweep.json``) into a SweepResult,
    with the phase of every cell when :mod:`lossatlas.analyses.taxonomy` can label it."""
    out = Path(out)
    if out.is_file():
        out = out.parent
    if spec is None:
        if not (out / SPEC).is_file():
            raise LossAtlasError(
                f"RESULTS={str(out)!r} holds no {SPEC}; pass the folder a sweep wrote."
            )
        spec = load_spec({k: v for k, v in json.loads((out / SPEC).read_text()).items()})
    rows = read_rows(out / RESULTS)
    table = aggregate(spec, rows)
    phases = (_phase_labels(table, spec.phases) if any(c["n_models"] for c in table) else [])
    for c, p in zip(table, phases):
        c["phase"] = getattr(p, "label", p)
        if hasattr(p, "evidence"):
            c["phase_evidence"] = p.evidence
    return SweepResult(spec=spec, rows=rows, cells=table, out=out, phases=phases)
