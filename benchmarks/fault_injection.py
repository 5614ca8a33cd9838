"""Fault injection: SIGKILL surfaces, sweeps and training runs at random moments, resume them,
and compare with an uninterrupted run.

For each kind of work (a resumable surface file, a sweep folder, a training run folder) a child
process does the work and the parent kills it with SIGKILL after a random delay (seeded; drawn
uniformly up to the time the uninterrupted run took, so kills land anywhere, including
mid-write). The next child resumes the same file or folder, and is killed again, until one
finishes; then a fresh round starts, until ``kills`` kills have hit a running process. After
every kill the state on disk is checked against the uninterrupted reference:

* surface: every point marked done equals the reference bit for bit, and the count of done
  points never falls;
* train: every checkpoint the manifest names loads and equals the reference file byte for
  byte, and their count never falls;
* sweep: every complete row of ``results.jsonl`` equals the reference row (timings aside), and
  their count never falls (a torn last line is allowed: the next run cuts it).

At the end of each round the finished result must equal the reference exactly (surface
datasets; checkpoint bytes and manifest entries except ``time``; sweep rows, model files and
the cell table). Children fork from a fork server that has torch and lossatlas imported, so a
kill costs milliseconds, not an interpreter start-up.

Usage: ``python benchmarks/fault_injection.py [--kills 10] [--seed 0] [--kinds surface,train]``
prints one line per kind: kills, rounds, rounds identical, checks after kills (and how many
found the work half done), seconds. The delays are seeded; what a delay hits depends on the
machine's load, so the figures vary from run to run (never the verdict).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("LOSSATLAS_QUIET", "1")

import h5py
import numpy as np
import torch

# -- the work, as run in a child ------------------------------------------------------------


def _tiny_problem():
    torch.manual_seed(0)
    X = torch.randn(800, 20)
    y = (X[:, :3].sum(1) > 0).long() + (X[:, 3] > 0.5).long()
    net = torch.nn.Sequential(torch.nn.Linear(20, 48), torch.nn.ReLU(), torch.nn.Linear(48, 3))
    return net, X, y


def surface_work(path: str) -> None:
    """A 12 x 9 surface of a small MLP, 3 points a chunk, written to ``path`` (resumable)."""
    import lossatlas as la

    os.environ["LOSSATLAS_QUIET"] = "1"
    torch.set_num_threads(1)
    net, X, y = _tiny_problem()
    obj = la.Objective(net, (X, y), batch_size=500)
    d1, d2 = (la.directions.gaussian(net, seed=s) for s in (0, 1))
    la.surface(obj, d1, d2, xres=12, yres=9, chunk_size=3, path=path, orthogonalize=True,
               fast=False, progress=False)


def train_work(out: str) -> None:
    """Six epochs of a small MLP with dropout, a checkpoint every 7 steps, into ``out``."""
    import lossatlas as la

    os.environ["LOSSATLAS_QUIET"] = "1"
    torch.set_num_threads(1)
    _, X, y = _tiny_problem()
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                              torch.nn.Linear(32, 3))
    la.train(net, (X, y), epochs=6, batch_size=32, lr=0.05, record=7, out=out,
             progress=False)


SWEEP = {
    "name": "faults", "seeds": [0, 1],
    "data": {"name": "digits", "train_size": 150},
    "model": {"name": "mlp"},
    "train": {"epochs": 2, "lr": 0.05},
    "load": {"param": "width", "values": [4, 8]},
    "temperature": {"param": "batch_size", "values": [32, 64]},
    "measure": {"hessian": False, "mc": False, "cka": False, "l2": True},
}


def sweep_work(out: str) -> None:
    """A 2 x 2 sweep with two seeds (8 models, 4 pairs) into ``out``."""
    from lossatlas import sweeps as S

    os.environ["LOSSATLAS_QUIET"] = "1"
    torch.set_num_threads(1)
    S.run(S.load_spec(SWEEP), out, progress=False)


# -- reading the state on disk -------------------------------------------------------------
def surface_state(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            return {k: f[k][()] for k in ("train_loss", "train_acc", "done")}
    except OSError:  # killed before the file was renamed into place: nothing there yet
        return None


def train_state(out: Path) -> list[dict]:
    try:
        doc = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return []
    return doc["checkpoints"]


def sweep_rows(out: Path) -> list[dict]:
    try:
        text = (out / "results.jsonl").read_text()
    except OSError:
        return []
    lines = text.split("\n")[:-1]  # a torn last line (no newline) is not a row yet
    return [json.loads(x) for x in lines if x.strip()]


def _row(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "seconds"}


# -- the checks ----------------------------------------------------------------------------
class Check:
    """Compares a partial / finished state with the reference; counts what it checked."""

    def __init__(self, kind: str, ref: Path):
        self.kind, self.ref, self.progress, self.checks = kind, ref, 0, 0
        self.mid = 0  # kills that found some, but not all, of the work on disk

    def partial(self, where: Path) -> None:
        getattr(self, f"_partial_{self.kind}")(where)
        self.checks += 1
        self.mid += 0 < self.progress < self.total()

    def total(self) -> int:
        return {"surface": lambda: int(surface_state(self.ref)["done"].size),
                "train": lambda: len(train_state(self.ref)),
                "sweep": lambda: len(sweep_rows(self.ref))}[self.kind]()

    def final(self, where: Path) -> bool:
        return getattr(self, f"_final_{self.kind}")(where)

    # surface
    def _partial_surface(self, where: Path) -> None:
        st, ref = surface_state(where), surface_state(self.ref)
        if st is None:
            assert self.progress == 0, "a surface file with finished points vanished"
            return
        done = st["done"]
        assert done.sum() >= self.progress, "finished surface points were lost"
        self.progress = int(done.sum())
        for k in ("train_loss", "train_acc"):
            assert np.array_equal(st[k][done], ref[k][done]), f"{k} differs at a done point"

    def _final_surface(self, where: Path) -> bool:
        st, ref = surface_state(where), surface_state(self.ref)
        return all(np.array_equal(st[k], ref[k]) for k in ref)

    # train
    def _partial_train(self, where: Path) -> None:
        entries = train_state(where)
        assert len(entries) >= self.progress, "recorded checkpoints were lost"
        self.progress = len(entries)
        ref = train_state(self.ref)
        for e in entries:
            assert (where / e["file"]).read_bytes() == (self.ref / e["file"]).read_bytes()
            torch.load(where / e["file"], weights_only=True)
            want = ref[e["index"]]
            assert {k: v for k, v in e.items() if k != "time"} == \
                   {k: v for k, v in want.items() if k != "time"}

    def _final_train(self, where: Path) -> bool:
        a, b = train_state(where), train_state(self.ref)
        same = len(a) == len(b) and all(
            {k: v for k, v in x.items() if k != "time"} == {k: v for k, v in y.items()
                                                           if k != "time"}
            and (where / x["file"]).read_bytes() == (self.ref / y["file"]).read_bytes()
            for x, y in zip(a, b))
        status = json.loads((where / "manifest.json").read_text())["status"]
        return same and status == "finished"

    # sweep
    def _partial_sweep(self, where: Path) -> None:
        rows = sweep_rows(where)
        ref = {r["key"]: _row(r) for r in sweep_rows(self.ref)}
        assert len(rows) >= self.progress, "finished sweep rows were lost"
        self.progress = len(rows)
        keys = [r["key"] for r in rows]
        assert len(keys) == len(set(keys)), "a sweep row was written twice"
        for r in rows:
            assert _row(r) == ref[r["key"]], "a sweep row differs from the reference"
            if r["kind"] == "model":
                assert (where / r["model_file"]).read_bytes() == \
                       (self.ref / r["model_file"]).read_bytes()

    def _final_sweep(self, where: Path) -> bool:
        a = sorted((_row(r) for r in sweep_rows(where)), key=lambda r: r["key"])
        b = sorted((_row(r) for r in sweep_rows(self.ref)), key=lambda r: r["key"])
        return a == b and (where / "cells.csv").read_text() == (self.ref / "cells.csv").read_text()


# -- the kill loop -------------------------------------------------------------------------
WORK: dict[str, tuple[Callable[[str], None], str]] = {
    "surface": (surface_work, "s.h5"),
    "train": (train_work, "run"),
    "sweep": (sweep_work, "sweep"),
}


def _context():
    from lossatlas.sweeps.executors import PRELOAD

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([*PRELOAD, "h5py", "lossatlas.measurements.landscape.grids"])
    return ctx


def _nothing(_: str) -> None:
    pass


def _child(ctx, fn, target: Path):
    p = ctx.Process(target=fn, args=(str(target),), daemon=True)
    p.start()
    return p


def inject(kind: str, kills: int = 10, seed: int = 0, root: Path | None = None) -> dict:
    """Kill ``kind`` work ``kills`` times at random moments; returns the figures (see the
    module docstring). Raises AssertionError at the first lost or differing result."""
    fn, name = WORK[kind]
    ctx = _context()
    rng = random.Random(f"{kind}-{seed}")
    root = Path(root or tempfile.mkdtemp(prefix=f"faults-{kind}-"))
    t_start = time.perf_counter()
    ref = root / "reference" / name
    ref.parent.mkdir(parents=True)
    warm = _child(ctx, _nothing, root)  # starts the fork server, outside the timing
    warm.join()
    t0 = time.perf_counter()
    p = _child(ctx, fn, ref)
    p.join()
    assert p.exitcode == 0, f"the reference {kind} run failed"
    span = time.perf_counter() - t0
    check = Check(kind, ref)
    done_kills, rounds, identical, children = 0, 0, 0, 1
    while done_kills < kills:
        rounds += 1
        where = root / f"round{rounds}" / name
        where.parent.mkdir(parents=True)
        check.progress = 0
        while True:
            p = _child(ctx, fn, where)
            children += 1
            p.join(rng.uniform(0.0, span))
            if p.exitcode is None:  # still running: kill it now
                os.kill(p.pid, signal.SIGKILL)
                p.join()
                if p.exitcode == -signal.SIGKILL:  # (else it finished just before the kill)
                    done_kills += 1
                    check.partial(where)
                    continue
            p.join()
            assert p.exitcode == 0, f"a resumed {kind} run failed (exit code {p.exitcode})"
            break
        identical += bool(check.final(where))
        shutil.rmtree(where.parent)
    seconds = time.perf_counter() - t_start
    shutil.rmtree(root, ignore_errors=True)
    return {"kind": kind, "kills": done_kills, "rounds": rounds, "identical": identical,
            "checks": check.checks, "mid_work": check.mid, "children": children,
            "reference_s": round(span, 2), "seconds": round(seconds, 1)}


def describe(fig: dict) -> str:
    verdict = ("all identical to the uninterrupted run" if fig["identical"] == fig["rounds"]
               else "SOME DIFFER from the uninterrupted run")
    return (f"{fig['kind']:8s} {fig['kills']:3d} SIGKILLs over {fig['rounds']} rounds, "
            f"{fig['identical']}/{fig['rounds']} finished results {verdict}; "
            f"{fig['checks']} checks after kills ({fig['mid_work']} mid-work) found nothing lost "
            f"({fig['seconds']} s, uninterrupted run {fig['reference_s']} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default="surface,train,sweep")
    args = ap.parse_args()
    for kind in args.kinds.split(","):
        print(describe(inject(kind, args.kills, args.seed)), flush=True)


if __name__ == "__main__":
    main()
