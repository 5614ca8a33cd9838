"""Transformer surface benchmark: a 51×51 loss surface of the tiny GPT-2 (hf:gpt2-tiny) against
the plain forward-pass floor.

Floor: the time of one forward of the model over the data plus the cross-entropy, under
``torch.no_grad``, with nothing else (no parameter writes, no bookkeeping), times the 2,601 grid
points: no engine that evaluates every point on all the data can be faster. The cores are
shared and their speed drifts by tens of percent within minutes, so the floor is measured
*during* the surface: an executor runs the surface's chunks (rows) one after another, as the
default one does, and times ``--probe`` plain forwards after each row; the surface's time is
the time spent in its chunks, and the floor the median forward times 2,601. Times are the CPU
time of this process (one thread: the work done, whatever else runs on the cores); the wall
clock is printed beside them. The surface is
``la.surface`` with its default engine (filter-normalized Gaussian directions over every
parameter, the tied ``wte`` / ``lm_head`` included, written to an HDF5 file as it goes).

Workload: ``tokens`` with ``task="lm"`` (Markov-chain sequences of length 12 over 16 tokens),
``--n`` sequences (256 by default, one batch), the model trained 2 epochs by ``la.train``.
The engine's fixed cost per grid point (writing the 101,888 parameters, the accuracy count:
about 1 ms of CPU) is what separates it from the floor, so the ratio depends on the data: it is
~1.04x at 256 sequences and ~1.2x at 64 (``--n 64``), where one forward takes ~7 ms.

    .venv/bin/python benchmarks/hf_surface.py [--n 256] [--resolution 51] [--reps 30]

(Not named transformers.py: a script of that name would shadow the package it benchmarks.)

Budget (issue 15): the surface at most 1.1× the floor. The floor is a median over ``--reps``
forwards measured before and after the surface (the cores are shared; both are printed).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import lossatlas as la


def _forward_seconds(model, X, Y, reps: int, clock=time.process_time) -> float:
    times = []
    with torch.no_grad():
        for _ in range(reps):
            t0 = clock()
            logits = model(X).logits
            F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1),
                            ignore_index=-100).item()
            times.append(clock() - t0)
    return statistics.median(times)


class Interleaved:
    """Runs the chunks here, in order (as la.landscape.InProcess does), timing each, and
    times ``probe`` plain forwards after each chunk (not counted in the chunks' time)."""

    def __init__(self, model, X, Y, probe: int):
        self.args, self.probe = (model, X, Y), probe
        self.chunk_seconds = self.chunk_wall = self.forward_wall = 0.0
        self.forwards: list[float] = []

    def map(self, fn, chunks):
        for c in chunks:
            t0, w0 = time.process_time(), time.perf_counter()
            out = fn(c)
            self.chunk_seconds += time.process_time() - t0
            self.chunk_wall += time.perf_counter() - w0
            w0 = time.perf_counter()
            self.forwards += [_forward_seconds(*self.args, 1) for _ in range(self.probe)]
            self.forward_wall += time.perf_counter() - w0
            yield out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--resolution", type=int, default=51)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--probe", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    train, _ = la.datasets.load("tokens", task="lm", n_train=max(args.n, 64), n_test=64)
    if len(train) > args.n:
        train = la.datasets.take(train, args.n)
    model = la.zoo.build("hf:gpt2-tiny", dataset=train, seed=0)
    la.train(model, train, epochs=2, lr=0.1, batch_size=32, seed=0, progress=False,
             record=None)
    model.eval()
    X, Y = train.tensors
    obj = la.Objective(model, train, batch_size=None)
    d1 = la.directions.gaussian(model, seed=0)
    d2 = la.directions.gaussian(model, seed=1)
    points = args.resolution ** 2

    before = _forward_seconds(model, X, Y, args.reps)
    ex = Interleaved(model, X, Y, args.probe)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = la.surface(obj, d1, d2, resolution=args.resolution, path=Path(tmp) / "s.h5",
                       executor=ex)
        wall = time.perf_counter() - t0
    one = statistics.median(ex.forwards)
    floor = one * points
    took = ex.chunk_seconds
    ratio = took / floor
    print(f"tiny GPT-2 ({sum(p.numel() for p in model.parameters()):,} parameters, tied "
          f"wte/lm_head), {len(train)} sequences x 12 tokens, {args.threads} thread(s)")
    print(f"plain forward + loss: {one * 1e3:.2f} ms CPU (median of {len(ex.forwards)} taken "
          f"between the surface's rows; {before * 1e3:.2f} ms before it); floor = "
          f"{one * 1e3:.2f} ms x {points} points = {floor:.2f} s")
    print(f"la.surface {args.resolution}x{args.resolution} (engine {s.meta.get('engine')}): "
          f"{took:.2f} s CPU in its rows = {ratio:.3f}x the floor  [budget 1.1x: "
          f"{'met' if ratio <= 1.1 else 'MISSED'}]; wall clock {ex.chunk_wall:.2f} s in the "
          f"rows vs {ex.forward_wall / len(ex.forwards) * points:.2f} s for the floor's forwards "
          f"(file writes and set-up: {wall - ex.chunk_wall - ex.forward_wall:.2f} s more)")
    print(f"loss at the center {s.loss[args.resolution // 2, args.resolution // 2]:.4f} "
          f"(Objective: {obj.loss():.4f}); range {s.loss.min():.3f} .. {s.loss.max():.3f}")


if __name__ == "__main__":
    main()
