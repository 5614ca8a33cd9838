"""The driver of a sweep: it runs the jobs of every cell (the models first, then the pairs of
seeds) on an executor, and alone writes the sweep folder (:mod:`lossatlas.sweeps.results`):
each finished job's row, appended at once, and each trained model's weights. A rerun skips the
jobs whose rows are there and runs the failed ones again; ``lossatlas sweep`` then exits
non-zero while any job fails. One writer per folder (``OUT.lock``).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from lossatlas import __version__
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.progress import track
from lossatlas.store import atomic
from lossatlas.store.locks import lock_path, writer_lock
from lossatlas.store.results import read_state_dict
from lossatlas.sweeps.jobs import guarded, model_job, pair_job
from lossatlas.sweeps.results import (
    CELLS,
    MODELS,
    RESULTS,
    SPEC,
    SweepResult,
    append_row,
    describe_failure,
    failed,
    load_results,
    read_rows,
    repair_tail,
)
from lossatlas.sweeps.spec import Cell, SweepSpec, cells, load_spec

__all__ = ["run"]


def _save_state(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path) as tmp:
        torch.save(dict(state), tmp)


def _echo(fn, item):
    return item, fn(item)


def _as_completed(executor, fn, items: Iterable, threads: int | None = 1
                  ) -> Iterable[tuple[Any, Any]]:
    """``(item, result)`` pairs from an executor with ``as_completed`` or with only ``map``.

    A map-only executor knows no thread count: each job is wrapped to run with ``threads`` torch
    threads, as our executors do, so that its results are bit-identical to theirs."""
    from lossatlas.sweeps.executors import run_job

    if hasattr(executor, "as_completed"):
        return executor.as_completed(fn, items)
    if hasattr(executor, "map"):
        job = functools.partial(run_job, fn, n_threads=threads)
        return executor.map(functools.partial(_echo, job), items)
    raise LossAtlasError(
        f"executor={executor!r} has neither as_completed(fn, items) nor map(fn, items); pass "
        "one of lossatlas.sweeps.executors (LocalExecutor, ProcessExecutor, RayExecutor)."
    )


def _cell_fields(spec: SweepSpec, cell: Cell) -> dict:
    return {"cell": cell.key, "load_param": spec.load.param, "load": cell.load,
            "temperature_param": spec.temperature.param, "temperature": cell.temperature,
            "i": cell.i, "j": cell.j}


def run(
    spec: SweepSpec | str | os.PathLike | Mapping,
    out: str | os.PathLike | None = None,
    *,
    executor=None,
    progress: bool = True,
) -> SweepResult:
    """Run (or resume) a sweep; returns its :class:`SweepResult`.

    ``out`` defaults to the spec's ``out`` or ``sweeps/<name>``. ``executor``: any object with
    ``as_completed(fn, items)`` or ``map(fn, items)`` (see :mod:`la.executors`); default
    in-process with the spec's ``threads``. Jobs whose
    hash is already in ``OUT/results.jsonl`` are skipped. First the models (one job per cell and
    seed), then the pairs of seeds of every cell. One writer per folder: a second run on
    ``out`` while this one holds ``OUT.lock`` is refused, naming this process.
    """
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    out = Path(out or spec.out or Path("sweeps") / spec.name)
    with writer_lock(lock_path(out), f"the sweep folder {str(out)!r}"):
        return _run(spec, out, executor, progress)


def _run(spec: SweepSpec, out: Path, executor, progress: bool) -> SweepResult:
    """:func:`run` once ``out`` is locked for this process."""
    from lossatlas.sweeps.executors import LocalExecutor

    out.mkdir(parents=True, exist_ok=True)
    (out / SPEC).write_text(json.dumps(spec.to_dict(), indent=2, default=str))
    results = out / RESULTS
    repair_tail(results)
    rows = read_rows(results)
    done = {r.get("key") for r in rows if not failed(r)}
    stopped = {(r.get("cell"), r.get("seed")): r.get("stopped_reason") for r in rows
               if r.get("kind") == "model" and not failed(r)}
    n_threads = spec.measure.get("threads", 1)
    executor = executor or LocalExecutor(threads=n_threads)
    grid = cells(spec)
    disable = None if progress else True

    # 1. models: one job per (cell, seed)
    todo = []
    for cell in grid:
        for s in spec.seeds:
            key = cell.model_key(s)
            if key in done and (out / MODELS / f"{cell.train_key(s)}.pt").is_file():
                continue
            todo.append({"key": key, "cell": cell, "seed": s})
    items = ({"config": t["cell"].config, "measure": t["cell"].measure, "seed": t["seed"],
              "_task": t} for t in todo)
    job = functools.partial(guarded, model_job)
    for item, res in track(_as_completed(executor, job, items, n_threads),
                           f"sweep {spec.name}: models", total=len(todo), disable=disable):
        t = item["_task"]
        cell, s = t["cell"], t["seed"]
        if "failed" in res:  # no weights: the pairs of this seed wait for a rerun
            append_row(results, {"kind": "model", "key": t["key"], **_cell_fields(spec, cell),
                                 "seed": s, "status": "failed", "errors": {"job": res["failed"]},
                                 "metrics": {}, "version": __version__})
            continue
        file = out / MODELS / f"{cell.train_key(s)}.pt"
        _save_state(file, res["state"])  # the weights first: a row implies its model file
        row = {
            "kind": "model", "key": t["key"], **_cell_fields(spec, cell), "seed": s,
            "metrics": res["metrics"], "errors": res["errors"],
            "stopped_reason": res["stopped_reason"], "model_file": str(file.relative_to(out)),
            "seconds": res["seconds"], "version": __version__,
        }
        row["status"] = "failed" if failed(row) else "done"
        append_row(results, row)
        if row["status"] == "done":
            stopped[(cell.key, s)] = res["stopped_reason"]

    # 2. pairs of seeds in every cell
    pairs = []
    if any(spec.measure.get(k) for k in ("mc", "mc_aligned", "cka", "l2")):
        for cell in grid:
            for a, b in itertools.combinations(spec.seeds, 2):
                key = cell.pair_key(a, b)
                trained = all((out / MODELS / f"{cell.train_key(x)}.pt").is_file()
                              for x in (a, b))
                if key not in done and trained:
                    pairs.append({"key": key, "cell": cell, "seeds": (a, b)})

    def pair_items() -> Iterable[dict]:
        for t in pairs:
            cell = t["cell"]
            states = [read_state_dict(out / MODELS / f"{cell.train_key(s)}.pt", "model file")
                      for s in t["seeds"]]
            yield {"config": cell.config, "measure": cell.measure, "seeds": t["seeds"],
                   "states": states, "_task": t}

    job = functools.partial(guarded, pair_job)
    for item, res in track(_as_completed(executor, job, pair_items(), n_threads),
                           f"sweep {spec.name}: pairs", total=len(pairs), disable=disable):
        t = item["_task"]
        diverged = [stopped.get((t["cell"].key, x)) for x in t["seeds"]]
        row = {"kind": "pair", "key": t["key"], **_cell_fields(spec, t["cell"]),
               "seeds": list(t["seeds"]), "metrics": res.get("metrics", {}),
               "curve": res.get("curve", {}), "errors": res.get("errors", {}),
               "seconds": res.get("seconds"), "version": __version__}
        if "failed" in res:
            row["errors"] = {"job": res["failed"]}
        row["stopped_reason"] = next((r for r in diverged if r), None)
        row["status"] = "failed" if "failed" in res or failed(row) else "done"
        append_row(results, row)
    result = load_results(out, spec)
    result.to_csv(out / CELLS)
    if result.failures:
        warnings.warn(f"{len(result.failures)} sweep job(s) failed and will be retried by a "
                      f"rerun; the first: {describe_failure(result.failures[0])}",
                      stacklevel=3)
    return result

