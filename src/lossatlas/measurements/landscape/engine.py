"""The evaluation engine behind curves and surfaces: loss and accuracy at θ + Σ cᵢdᵢ, fast.

Three ways to evaluate one grid point, the fastest that applies is chosen per run:

* ``"affine"`` (exact first-layer trick): when the network's first parametrized layer is a
  ``Linear`` / ``Conv1d`` / ``Conv2d`` / ``Embedding`` applied once to the data, its output is
  affine in its parameters::

      layer(x; W + a·D₁ + b·D₂, c + a·e₁ + b·e₂) = Z₀ + a·Z₁ + b·Z₂,
      Z₀ = layer(x; W, c),  Z_k = layer(x; D_k, e_k)

  so Z₀, Z₁, Z₂ are computed once per data batch and each grid point replaces that layer's
  forward by the combination (restored in ``finally``; detection and hoisting live in
  :mod:`.first_layer`). Exact up to float rounding, which is
  proved for the model in hand, not assumed: one forward under a ``TorchFunctionMode`` records
  every read of the layer's weight and bias outside its own call (tied weights such as
  ``F.linear(h, self.inp.weight)``); when there is one, those parameters are written at every
  point as well. Then the trick is checked against a plain forward at two off-center points
  (:data:`GUARD_POINTS`, relative loss gap at most :data:`GUARD_RTOL`) before it is used;
  a model that fails falls back to ``"inplace"`` and the reason is recorded.
* ``"inplace"``: a private copy of the model (:meth:`Objective.private_model`) whose
  parameters are overwritten with ``θ + a·d₁ + b·d₂`` (computed from the center every time)
  before a plain forward.
* ``"functional"``: :meth:`Objective.evaluate` at ``params.axpy(θ, c, d)`` (when the model
  cannot be copied).

The work of one chunk of grid points is the top-level, picklable :func:`evaluate_chunk`, so that
an executor (a process pool, Ray) can run chunks elsewhere; an engine is built once per process
and run token and reused for all chunks of that run.

Where the affine trick applies (``fast=True``), it is kept only where it is faster on the model
at hand: :func:`decide_engine` times it against the in-place engine on the first grid points of
the run (:func:`race_engines`), once, in the driver, and every chunk of the run then uses the
winner; the choice is written to the result file, so a resumed run uses it again. The two
engines agree only up to float rounding, which is why one run never mixes them. The affine
buffers (five first-layer outputs per data batch) must fit half the memory budget
(:mod:`lossatlas.core.memory`).

The engine runs the model only through the Objective's public surface
(:meth:`Objective.forward_module`, :meth:`Objective.forward_points`,
:meth:`Objective.recalibrate_bn`, :meth:`Objective.batch_values`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lossatlas.core import params as P
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.objective import Objective, bn_modules
from lossatlas.measurements.landscape.first_layer import (
    AffineOutputs,
    Feeder,
    FirstLayer,
    fan_in,
    find_affine_first_layer,
    hoist,
    probe,
)

__all__ = ["Chunk", "Engine", "decide_engine", "evaluate_chunk", "race_engines", "release"]

MIN_FAN_IN = 16
#: Off-center coefficient rows (cycled over the directions) where the affine trick is checked
#: against a plain forward before it is used, and the relative loss gap allowed there.
GUARD_POINTS = ((0.61, -0.37), (-0.83, 0.29))
GUARD_RTOL = 1e-5


def _write_slots(slots: list, coeffs: Sequence[float]) -> None:
    """Each (parameter, center, [d_k]) of ``slots``: parameter := center + Σ c_k d_k."""
    for p, c, ds in slots:
        if coeffs and coeffs[0] != 0:
            torch.add(c, ds[0], alpha=coeffs[0], out=p)
        else:
            p.copy_(c)
        for a, d in zip(coeffs[1:], ds[1:]):
            if a != 0:
                p.add_(d, alpha=a)


# -- the engine ---------------------------------------------------------------------------
@dataclass
class Engine:
    """Evaluates (loss, accuracy) at θ + Σ cᵢdᵢ for one objective, center and directions.

    Build with :meth:`build`; :meth:`evaluate` takes coefficient rows of shape (n, k).
    """

    obj: Objective
    center: P.Point
    directions: list[P.Point]
    model: nn.Module | None = None
    mode: str = "functional"
    reason: str = ""
    first: FirstLayer | None = None
    affine: AffineOutputs | None = None  # the hoisted first-layer outputs
    _slots: list = field(default_factory=list)  # (param tensor, center, [d_k]) to write
    _bns: list = field(default_factory=list)
    per_pass: int = 1  # grid points per forward (vmap), chosen by measure_per_pass
    _last_bn: tuple | None = None  # (last BN module of a forward, its calls per forward)

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def build(cls, obj: Objective, center: Mapping, directions: Sequence[Mapping],
              fast: bool | str = True) -> Engine:
        """Prepare the fastest applicable path.

        ``fast=True`` uses the affine trick where it applies and pays: a Linear / Conv layer
        whose fan-in (inputs per output) is at least :data:`MIN_FAN_IN` (below that its matmul
        costs less than combining the precomputed outputs; an Embedding lookup always does).
        ``fast="affine"`` uses it wherever it applies; ``fast=False`` never. The rule is
        deterministic, so a resumed file is computed exactly like an uninterrupted one."""
        if fast not in (True, False, "affine"):
            raise LossAtlasError(f'fast={fast!r} must be True, False or "affine"')
        center = P.Point({k: center[k].detach().to(obj.device) for k in obj.names})
        dirs = [P.Point({k: d[k].detach().to(obj.device, center[k].dtype) for k in obj.names})
                for d in directions]
        eng = cls(obj, center, dirs)
        eng.model = obj.private_model()
        if eng.model is None:
            eng.reason = "the model could not be deep-copied"
            return eng
        eng._prepare_inplace()
        if fast:
            eng._try_affine(fast)
        return eng

    def _prepare_inplace(self) -> None:
        """The in-place engine: every perturbed parameter written at each point."""
        self.mode, self.reason = "inplace", "affine trick not tried (fast=False)"
        self._bns = [m for _, m in bn_modules(self.model)]
        if self.obj.bn == "recalibrate" and self._bns:
            self._find_last_bn()
        self._slots = self._slots_for(self.obj.names)

    def _slots_for(self, names: Sequence[str]) -> list:
        params = dict(self.model.named_parameters())
        return [(params[k], self.center[k], [d[k] for d in self.directions]) for k in names]

    def _try_affine(self, fast: bool | str) -> None:
        """Detect the affine first layer, apply the fan-in rule, hoist its outputs and keep
        the trick only when it matches a plain forward (:meth:`_gap_to_plain`)."""
        first, self.reason = find_affine_first_layer(self.model, self.obj)
        if first is None:
            return
        if fast is True and fan_in(first.module) < MIN_FAN_IN:
            self.reason = f"the first layer's fan-in is below {MIN_FAN_IN}: its own " \
                "forward is cheaper than the trick"
            return
        with torch.no_grad():
            self._write([0.0] * len(self.directions))
        affine = hoist(first, self.model, self.obj, self.directions)
        if affine is None:
            self.reason = "the first layer's outputs exceed the memory budget"
            return
        all_slots = self._slots
        self.first, self.affine, self.mode = first, affine, "affine"
        if not first.tied:
            skip = {first.weight, first.bias}
            self._slots = self._slots_for([k for k in self.obj.names if k not in skip])
        gap = self._gap_to_plain(all_slots)
        if not gap <= GUARD_RTOL:
            self.first, self.affine, self.mode, self._slots = None, None, "inplace", all_slots
            self.reason = (f"the affine trick differed from a plain forward by "
                           f"{gap:.2g} (relative) at an off-center point")

    def _gap_to_plain(self, all_slots: list) -> float:
        """The guard run before committing to the affine trick: the largest relative
        difference |L_fast − L_plain| / max(|L_plain|, 1e-3), over :data:`GUARD_POINTS`, of the
        first batch's loss with the trick and with a plain forward of the private model at the
        same point (every parameter written, the first layer's own forward). BN statistics
        are the center's for both (the check is about the forward, not the BN policy)."""
        obj, first = self.obj, self.first
        assert first is not None and self.affine is not None
        b = obj.batches[0]
        k = len(self.directions)
        worst = 0.0
        feeder = Feeder(self.affine)
        with torch.no_grad():
            try:
                for base in GUARD_POINTS:
                    c = [base[i % len(base)] for i in range(k)]
                    self._write(c)
                    feeder.start(c)
                    first.module.forward = feeder
                    try:
                        fast = float(obj.loss_fn(obj.forward_module(self.model, b), b.targets))
                    finally:
                        del first.module.forward
                    _write_slots(all_slots, c)
                    plain = float(obj.loss_fn(obj.forward_module(self.model, b), b.targets))
                    gap = abs(fast - plain) / max(abs(plain), 1e-3)
                    worst = max(worst, gap if math.isfinite(gap) else math.inf)
            finally:
                _write_slots(all_slots, [0.0] * k)
                self.affine.forget_rows()
        return worst

    def _find_last_bn(self) -> None:
        """Trace one BN-train-mode forward (at build time, the model's own layers in place)
        to find the last BN module called and how often it runs per forward: recalibration
        passes stop right after it (:meth:`Objective.recalibrate_bn`)."""
        order: list[nn.Module] = []
        hs = [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in self._bns]
        saved = {n: b.detach().clone() for n, b in self.model.named_buffers()}
        try:
            for m in self._bns:
                m.train()
            with torch.no_grad():
                self.obj.forward_module(self.model, probe(self.obj))
        except (RuntimeError, ValueError):  # e.g. BN train mode on a one-sample probe
            order.clear()
        finally:
            for h in hs:
                h.remove()
            for m in self._bns:
                m.eval()
            with torch.no_grad():
                for n, b in self.model.named_buffers():
                    b.copy_(saved[n])
        if order:
            last = order[-1]
            self._last_bn = (last, sum(m is last for m in order))

    # -- one point ------------------------------------------------------------------------
    def _write(self, coeffs: Sequence[float]) -> None:
        """Parameters of the private model := θ + Σ c_k d_k (from the center, every time)."""
        _write_slots(self._slots, coeffs)

    def _point(self, coeffs: list[float], feeder: Feeder | None, recal: bool,
               batches: int | None) -> tuple[float, float]:
        """(loss, accuracy) at θ + Σ c_k d_k: write the point, recalibrate BN when asked,
        one pass over the (first ``batches``) data batches."""
        obj = self.obj
        self._write(coeffs)
        if recal:
            if feeder is not None:
                feeder.start(coeffs)
            obj.recalibrate_bn(self.model, last_bn=self._last_bn)
        if feeder is not None:
            feeder.start(coeffs)
        total, correct = 0.0, 0.0
        for b in obj.batches[:batches]:
            lb, cb = obj.batch_values(obj.forward_module(self.model, b), b)
            total += lb * b.weight
            correct += cb
        return total / obj.n, correct / obj.n

    @torch.no_grad()
    def evaluate(self, coeffs: np.ndarray, batches: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(loss, accuracy), each of shape (n,), at θ + Σ_k coeffs[i, k] d_k for each row i.
        ``batches`` limits the data to the first batches (for timing only)."""
        coeffs = np.asarray(coeffs, dtype=np.float64).reshape(len(coeffs), -1)
        if self.mode == "functional":
            return self._evaluate_functional(coeffs)
        recal = self.obj.bn == "recalibrate" and bool(self._bns)
        if self.per_pass > 1 and not recal and self.first is None:
            return self._evaluate_vmap(coeffs, batches)
        n = len(coeffs)
        loss, acc = np.zeros(n), np.zeros(n)
        first = self.first
        feeder = Feeder(self.affine) if first is not None else None
        if first is not None:
            first.module.forward = feeder
        try:
            for i, row in enumerate(coeffs):
                loss[i], acc[i] = self._point([float(a) for a in row], feeder, recal, batches)
        finally:
            if first is not None:
                del first.module.forward
        return loss, acc

    def _evaluate_functional(self, coeffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`Objective.evaluate` at each point (a model that cannot be copied)."""
        loss, acc = np.zeros(len(coeffs)), np.zeros(len(coeffs))
        for i, c in enumerate(coeffs):
            r = self.obj.evaluate(P.axpy(self.center, [float(a) for a in c], self.directions))
            loss[i], acc[i] = r["loss"], r["accuracy"]
        return loss, acc

    # -- several grid points per pass (accelerators) ----------------------------------------
    def _stacked(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """name -> (len(rows), *shape): θ + rows[i, 0]·d₁ + rows[i, 1]·d₂ + ... for each row,
        each built from the center."""
        stacked = {}
        for name in self.obj.names:
            c = self.center[name]
            shape = (len(rows),) + (1,) * c.dim()
            acc_t = c.unsqueeze(0).expand(len(rows), *c.shape).clone()
            for col, d in enumerate(self.directions):
                alpha = rows[:, col].to(c.device, c.dtype).reshape(shape)
                acc_t.add_(alpha * d[name].unsqueeze(0))
            stacked[name] = acc_t
        return stacked

    def _evaluate_vmap(self, coeffs: np.ndarray, batches: int | None = None):
        """``per_pass`` grid points per forward (:meth:`Objective.forward_points`, vmapped
        over stacked parameters), BN statistics kept."""
        obj, k = self.obj, self.per_pass
        n = len(coeffs)
        loss, acc = np.zeros(n), np.zeros(n)
        for s0 in range(0, n, k):
            rows = torch.as_tensor(coeffs[s0:s0 + k], dtype=torch.float64)
            stacked = self._stacked(rows)
            total = np.zeros(len(rows))
            correct = np.zeros(len(rows))
            for b in obj.batches[:batches]:
                outs = obj.forward_points(self.model, stacked, b)
                for i in range(len(rows)):
                    lb, cb = obj.batch_values(outs[i], b)
                    total[i] += lb * b.weight
                    correct[i] += cb
            loss[s0:s0 + k], acc[s0:s0 + k] = total / obj.n, correct / obj.n
        return loss, acc

    def measure_per_pass(self, candidates=(1, 2, 4, 8, 16, 32), points: int = 32) -> int:
        """On an accelerator, time ``points`` grid points on the first batch with each number
        of points per pass and keep the fastest (small models are launch-bound there). The CPU
        keeps 1 without measuring: batching points with vmap is slower there."""
        obj = self.obj
        if obj.device.type == "cpu" or self.mode != "inplace" or obj.bn != "keep" or \
                obj.keyed:
            return self.per_pass
        pts = np.full((points, len(self.directions)), 0.25)
        best, best_t = 1, math.inf
        sync = torch.cuda.synchronize if obj.device.type == "cuda" else (lambda: None)
        for k in candidates:
            self.per_pass = k
            try:
                self.evaluate(pts[:k], batches=1)  # warm-up
                sync()
                t = time.perf_counter()
                self.evaluate(pts, batches=1)
                sync()
                dt = time.perf_counter() - t
            except (RuntimeError, torch.cuda.OutOfMemoryError):
                break  # out of memory or not vmappable: keep the best so far
            if dt < best_t:
                best, best_t = k, dt
        self.per_pass = best
        return best


# -- chunks for executors ----------------------------------------------------------------
@dataclass
class Chunk:
    """One unit of work: the grid points ``index`` (flat indices into the result arrays) with
    coefficient rows ``coeffs`` (n, k), for ``objective`` at ``center`` + Σ c_k ``directions``."""

    token: str
    objective: Objective
    center: Mapping
    directions: list
    index: np.ndarray
    coeffs: np.ndarray
    fast: bool = True


#: In-place replaces the affine engine only when faster than this fraction of its time.
RACE_MARGIN = 0.8

_ENGINES: dict[str, Engine] = {}
_SETUP: dict[str, float] = {}  # token -> seconds spent building (and racing) the engine


def race_engines(eng: Engine, coeffs: np.ndarray, rounds: int = 2
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """Affine against in-place on the first ``2·rounds`` rows of ``coeffs`` (interleaved, each
    row evaluated once by one engine, so the values are the run's own); the slower engine is
    dropped (the affine buffers freed when in-place wins). Returns (loss, acc) of those rows,
    or None when there is nothing to race (not affine, or too few rows). :func:`decide_engine`
    runs it once per run and discards these values, so that every point of a run is computed
    by the one engine kept (bit-identical across processes and resumes)."""
    n = 2 * rounds
    if eng.mode != "affine" or len(coeffs) < n:
        return None
    slots = {"affine": (eng._slots, eng.first),
             "inplace": (eng._slots_for(eng.obj.names), None)}
    best: dict[str, float] = {}
    loss, acc = np.zeros(n), np.zeros(n)
    for i in range(n):
        mode = ("inplace", "affine")[i % 2]
        eng._slots, eng.first = slots[mode]
        t0 = time.perf_counter()
        loss[i:i + 1], acc[i:i + 1] = eng.evaluate(coeffs[i:i + 1])
        best[mode] = min(best.get(mode, math.inf), time.perf_counter() - t0)
    # the rule's choice (affine) stays unless in-place is clearly faster: near-ties would flip
    # with the load, and two runs of one command would then differ in their last bits
    keep = "inplace" if best["inplace"] < RACE_MARGIN * best["affine"] else "affine"
    eng._slots, eng.first = slots[keep]
    eng.reason = (f"measured {best['affine']:.3g} s (affine) vs {best['inplace']:.3g} s "
                  "(in-place) per point")
    if keep == "inplace":
        eng.mode, eng.affine = "inplace", None
    return loss, acc


def decide_engine(token: str, obj: Objective, center: Mapping, directions: Sequence[Mapping],
                  coeffs: np.ndarray) -> bool | str:
    """The engine of a whole run, decided once in the driver: ``"affine"`` when the affine
    trick applies, passes its guard and wins :func:`race_engines` on the first rows of
    ``coeffs``, else ``False`` (in-place, or functional when the model cannot be copied).
    Every chunk, in this process or a worker, then runs that engine (``Chunk.fast``), so the
    numbers of a run never depend on which process timed what. The engine built here is kept
    for this process's chunks of the run."""
    t0 = time.perf_counter()
    with obj.partial_sums():  # no collective in the race: ranks may time it differently
        eng = Engine.build(obj, center, directions, fast=True)
        eng.measure_per_pass()
        if eng.mode == "affine":
            race_engines(eng, coeffs)  # the raced values are not kept (one engine per run)
    if obj.dist is not None:  # data split over ranks: rank 0's choice for all of them
        choice = obj.dist.broadcast(eng.mode == "affine")
        if choice != (eng.mode == "affine"):
            with obj.partial_sums():
                eng = Engine.build(obj, center, directions, fast="affine" if choice else False)
                eng.measure_per_pass()
    _ENGINES.clear()
    _SETUP.clear()
    _ENGINES[token] = eng
    _SETUP[token] = time.perf_counter() - t0
    return "affine" if eng.mode == "affine" else False


def evaluate_chunk(chunk: Chunk) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Evaluate one chunk; returns (index, loss, accuracy, engine mode). Top-level and picklable:
    the engine is built on first use in each process and reused for the run's other chunks.
    Data split across processes: each rank's share, then one all-reduce for the chunk."""
    with chunk.objective.partial_sums():
        index, loss, acc, mode = _evaluate_here(chunk)
    loss, acc = chunk.objective.all_sum(np.stack([loss, acc]))
    return index, loss, acc, mode


def _evaluate_here(chunk: Chunk) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    eng = _ENGINES.get(chunk.token)
    if eng is None:
        _ENGINES.clear()
        _SETUP.clear()
        t0 = time.perf_counter()
        eng = Engine.build(chunk.objective, chunk.center, chunk.directions, fast=chunk.fast)
        eng.measure_per_pass()
        _SETUP[chunk.token] = time.perf_counter() - t0
        _ENGINES[chunk.token] = eng
    loss, acc = eng.evaluate(chunk.coeffs)
    return chunk.index, loss, acc, eng.mode


def release(token: str) -> None:
    """Forget the engine of a finished run (frees the private model and first-layer outputs)."""
    _ENGINES.pop(token, None)
    _SETUP.pop(token, None)


def engine_info(token: str) -> dict:
    """The engine of run ``token`` in this process: its mode, why, and the seconds spent
    building it (private copy, first-layer outputs, probes, race); empty when it ran elsewhere."""
    eng = _ENGINES.get(token)
    if eng is None:
        return {}
    return {"engine": eng.mode, "engine_reason": eng.reason,
            "setup_seconds": _SETUP.get(token, 0.0)}
