"""Sweep speed: two worker processes against one process, on the same small sweep.

The sweep (digits, MLP, widths 32 and 128 x batch sizes 16 and 64 x 2 seeds, 20 epochs, Hessian
λ_max and trace, and the seed-pair metrics unless --no-pairs) is run from scratch in a fresh
folder by

* ``1 process``   ``LocalExecutor`` (jobs one after another here, 1 torch thread each),
* ``1 proc, 2 threads``  ``LocalExecutor(threads=2)`` (one job at a time, two intra-op threads;
                  only with ``--threads-row``: on a busy machine it is very slow),
* ``2 workers``   ``ProcessExecutor(2)`` (two worker processes, 1 thread each; pool start-up
                  included in the time).

With ``--cold``, each is also timed in a fresh process (``... (cold)`` rows): a driver that
has imported lossatlas and torch and nothing else, as ``lossatlas sweep`` does, so the first
job of ``1 process`` pays the imports a job needs (the optimizers' torch._dynamo,
scikit-learn) and ``2 workers`` pays its pool start (the driver imports the same modules, then
forks the workers); ``2 workers, fork server (cold)`` is the start used before (a fork server
that imports torch and the same modules, then forks the workers). The in-process rows reuse
one process: its first ``2 workers`` run starts the pool, later runs reuse it (warm).

Repetitions are interleaved and medians reported; a busy-loop probe says how many cores two
processes actually get at the moment (on a machine shared with other work, that bounds the
speed-up); ``speed-up`` is the 1-process median over
each method's median. ``disagree`` is the largest absolute difference of any per-cell metric
from the 1-process run (0 means bit-identical tables).

Usage: ``python benchmarks/sweep.py [--reps 3] [--epochs 20] [--no-pairs] [--threads-row]
[--cold]``; the issue's "8 jobs of about 1 s" is ``--no-pairs --epochs 10 --cold``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("LOSSATLAS_QUIET", "1")

from lossatlas import sweeps as S
from lossatlas.sweeps.executors import LocalExecutor, ProcessExecutor


def spec(epochs: int, pairs: bool) -> dict:
    return {
        "name": "bench", "seeds": [0, 1],
        "data": {"name": "digits"},
        "model": {"name": "mlp"},
        "train": {"epochs": epochs, "lr": 0.05},
        "load": {"param": "width", "values": [32, 128]},
        "temperature": {"param": "batch_size", "values": [16, 64]},
        "measure": {"mc": pairs, "cka": pairs, "l2": pairs, "connect": {"epochs": 2}},
    }


def _burn(n: int) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i * i
    return time.perf_counter() - t0


def free_cores(n: int = 5_000_000) -> float:
    """How many cores two processes really get now: 2 x (time of one busy loop alone) / (time of
    each of two run side by side); 2.0 on an idle two-core machine, 1.0 when one core is free."""
    import multiprocessing as mp

    alone = _burn(n)
    with mp.get_context("spawn").Pool(2) as pool:
        both = pool.map(_burn, [n, n])
    return 2 * alone / max(both)


def disagreement(a: S.SweepResult, b: S.SweepResult) -> float:
    worst = 0.0
    for ca, cb in zip(a.cells, b.cells):
        for m in S.METRICS:
            x, y = ca.get(m, math.nan), cb.get(m, math.nan)
            if math.isnan(x) and math.isnan(y):
                continue
            worst = max(worst, abs(x - y) if not (math.isnan(x) or math.isnan(y)) else math.inf)
    return worst


METHODS = {"1 process": lambda: LocalExecutor(), "2 workers": lambda: ProcessExecutor(2)}
#: timed in fresh processes only: the start method used before workers were forked from the
#: driver (a fork server that imports torch and PRELOAD, then forks them)
COLD = {**METHODS, "2 workers, fork server": lambda: ProcessExecutor(2, context="forkserver")}


def cold(name: str, args: argparse.Namespace) -> float:
    """Seconds of one sweep with ``name``'s executor in a fresh process (executor included)."""
    argv = [sys.executable, __file__, "--child", name, "--epochs", str(args.epochs)]
    if args.no_pairs:
        argv.append("--no-pairs")
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


def child(name: str, sp: dict) -> None:
    out = tempfile.mkdtemp(prefix="la-bench-")
    t0 = time.perf_counter()
    with COLD[name]() as ex:
        S.run(sp, out, executor=ex, progress=False)
    print(f"{time.perf_counter() - t0:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--no-pairs", action="store_true", help="models only (no mc / CKA / l2)")
    ap.add_argument("--threads-row", action="store_true",
                    help="also time one process with two torch threads")
    ap.add_argument("--cold", action="store_true",
                    help="also time each method in a fresh process")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sp = spec(args.epochs, not args.no_pairs)
    if args.child:
        child(args.child, sp)
        return
    methods = dict(METHODS)
    if args.threads_row:
        methods["1 proc, 2 threads"] = lambda: LocalExecutor(threads=2)
    times: dict[str, list[float]] = {k: [] for k in methods}
    if args.cold:
        times.update({f"{k} (cold)": [] for k in COLD})
        for _ in range(args.reps):
            for name in COLD:
                times[f"{name} (cold)"].append(cold(name, args))
    results: dict[str, S.SweepResult] = {}
    S.run(sp, tempfile.mkdtemp(prefix="la-bench-"), progress=False)  # warm caches (data)
    for _ in range(args.reps):
        for name, make in methods.items():
            out = tempfile.mkdtemp(prefix="la-bench-")
            t0 = time.perf_counter()
            with make() as ex:
                results[name] = S.run(sp, out, executor=ex, progress=False)
            times[name].append(time.perf_counter() - t0)
    cores = free_cores()
    base = statistics.median(times["1 process"])
    jobs = len(S.cells(S.load_spec(sp))) * (2 if args.no_pairs else 3)  # models (+ pairs)
    print(f"sweep: 2 widths x 2 batch sizes x 2 seeds, {args.epochs} epochs, {jobs} jobs, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, cores free to two "
          f"processes now: {cores:.2f} (the most two workers can gain)")
    best = min(times["1 process"])
    print(f"{'method':<24}{'median s':>10}{'best s':>8}{'runs s':>34}{'speed-up':>10}"
          f"{'best-run':>10}{'disagree':>10}")
    for name, ts in times.items():
        b, bb = base, best
        if name.endswith("(cold)"):  # against the 1-process run in a fresh process too
            b = statistics.median(times["1 process (cold)"])
            bb = min(times["1 process (cold)"])
        med = statistics.median(ts)
        runs = ", ".join(f"{t:.1f}" for t in ts)
        dis = (f"{disagreement(results['1 process'], results[name]):>10.2g}"
               if name in results else f"{'':>10}")
        print(f"{name:<24}{med:>10.2f}{min(ts):>8.2f}{runs:>34}{b / med:>10.2f}"
              f"{bb / min(ts):>10.2f}{dis}")
    print("speed-up: 1-process median / median (cold rows: against 1 process (cold)); "
          "best-run: fastest 1-process run / fastest run (the least disturbed by other load "
          "on the machine)")
    with ProcessExecutor(2) as ex:
        print(f"2 workers start method: {ex.start_method}")


if __name__ == "__main__":
    main()
