"""The evaluation engine behind curves and surfaces: loss and accuracy at θ + Σ cᵢdᵢ, fast.

Three ways to evaluate one grid point, the fastest that applies is chosen per run:

* ``"affine"`` (exact first-layer trick): when the network's first parametrized layer is a
  ``Linear`` / ``Conv1d`` / ``Conv2d`` / ``Embedding`` applied once to the data, its output is
  affine in its parameters::

      layer(x; W + a·D₁ + b·D₂, c + a·e₁ + b·e₂) = Z₀ + a·Z₁ + b·Z₂,
      Z₀ = layer(x; W, c),  Z_k = layer(x; D_k, e_k)

  so Z₀, Z₁, Z₂ are computed once per data batch and each grid point replaces that layer's
  forward by the combination (restored in ``finally``). Exact up to float rounding, which is
  proved for the model in hand, not assumed: one forward under a ``TorchFunctionMode`` records
  every read of the layer's weight and bias outside its own call (tied weights such as
  ``F.linear(h, self.inp.weight)``); when there is one, those parameters are written at every
  point as well. Then the trick is checked against a plain forward at two off-center points
  (:data:`GUARD_POINTS`, relative loss gap at most :data:`GUARD_RTOL`) before it is used;
  a model that fails falls back to ``"inplace"`` and the reason is recorded.
* ``"inplace"``: a private copy of the model whose parameters are overwritten with
  ``θ + a·d₁ + b·d₂`` (computed from the center every time) before a plain forward.
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
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from lossatlas.core import memory as M
from lossatlas.core import params as P
from lossatlas.core.batching import Batch, slice_batch
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.losses import LOSSES, accuracy_count
from lossatlas.core.objective import Objective, _bn_modules

__all__ = ["Chunk", "Engine", "evaluate_chunk", "find_affine_first_layer"]

_AFFINE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
FASTPATH_MEMORY = 2 * 2**30  # bytes of precomputed first-layer outputs allowed
MIN_FAN_IN = 16
#: Off-center coefficient rows (cycled over the directions) where the affine trick is checked
#: against a plain forward before it is used, and the relative loss gap allowed there.
GUARD_POINTS = ((0.61, -0.37), (-0.83, 0.29))
GUARD_RTOL = 1e-5


# -- loss and accuracy in one pass ---------------------------------------------------------
def _plain_class_targets(obj: Objective) -> bool:
    """True when every batch has (N, C) logits-style targets: 1-D int64 labels, none ignored,
    and the loss is the built-in cross-entropy (then :func:`_ce_and_correct` applies)."""
    if obj.loss_fn is not LOSSES["cross_entropy"] or obj._keyed:
        return False
    for b in obj.batches:
        t = b.targets
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.is_floating_point():
            return False
        if b.weight != t.shape[0]:  # some targets carry the ignore index
            return False
    return True


def _ce_and_correct(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, number correct) of (N, C) logits with plain class targets, straight
    from ``F.cross_entropy`` and ``argmax`` (the Objective's own ops, so the values agree with
    :meth:`Objective.evaluate` bit for bit), not a hand-fused max/exp/gather pass, which was
    slower on the CPU (figure in benchmarks/README.md)."""
    return float(F.cross_entropy(logits, target)), float((logits.argmax(1) == target).sum())


# -- the private model --------------------------------------------------------------------
def _call_model(model: nn.Module, obj: Objective, batch: Batch):
    """model(batch) the way :meth:`Objective._call` does it, on a real module."""
    if obj._keyed:
        kwargs = dict(batch.inputs)
        if obj.loss_name == "model" and batch.targets is not None and obj.target_key:
            kwargs[obj.target_key] = batch.targets
        return model(**kwargs)
    args = batch.inputs if isinstance(batch.inputs, tuple) else (batch.inputs,)
    return model(*args)


def _private_copy(obj: Objective) -> nn.Module | None:
    """A deep copy of the objective's model on its device, in eval mode, loaded with the
    objective's fixed parameters and buffers; None when the model cannot be copied."""
    try:
        model = copy.deepcopy(obj.model).to(obj.device)
    except Exception:  # any copy failure means: use the functional path
        return None
    model.eval()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in params.items():
            v.requires_grad_(False)
            src = obj._fixed.get(k, obj.center.get(k))
            if src is not None:
                v.copy_(src)
        for k, b in model.named_buffers():
            if k in obj.buffers:
                b.copy_(obj.buffers[k])
    return model


# -- detection of the affine first layer ---------------------------------------------------
@dataclass
class FirstLayer:
    """The detected first parametrized layer: its name, module and parameter names."""

    name: str
    module: nn.Module
    weight: str
    bias: str | None
    tied: bool = False  # its parameters are also used under another name

    def apply(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        """The layer's function at other parameters (linear in (weight, bias))."""
        m = self.module
        if isinstance(m, nn.Linear):
            return F.linear(x, weight, bias)
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            return m._conv_forward(x, weight, bias)
        return F.embedding(x, weight, m.padding_idx)


def _trace_first(model: nn.Module, obj: Objective, batch: Batch, train_bn: bool):
    """Run one forward with hooks; return (first module with own parameters, its call count,
    its positional inputs and keyword inputs of the first call)."""
    seen: list[tuple[nn.Module, tuple, dict]] = []
    counts: dict[int, int] = {}
    handles = []

    def hook(m, args, kwargs):
        counts[id(m)] = counts.get(id(m), 0) + 1
        if not seen:
            seen.append((m, args, kwargs))

    for m in model.modules():
        if next(m.parameters(recurse=False), None) is not None:
            handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    bns = [m for _, m in _bn_modules(model)]
    try:
        if train_bn:
            for m in bns:
                m.train()
        with torch.no_grad():
            _call_model(model, obj, batch)
    finally:
        for h in handles:
            h.remove()
        for m in bns:
            m.eval()
    if not seen:
        return None, 0, (), {}
    m, args, kwargs = seen[0]
    return m, counts[id(m)], args, kwargs


def _probe(obj: Objective, size: int = 16) -> Batch:
    """The first ``size`` samples of the first batch: traces that only look at which modules
    run, and on what, need no more (keeps detection nearly free for large batches)."""
    b = obj.batches[0]
    return Batch(slice_batch(b.inputs, 0, size), slice_batch(b.targets, 0, size), b.weight)


def find_affine_first_layer(model: nn.Module, obj: Objective) -> tuple[FirstLayer | None, str]:
    """The first leaf module with parameters executed in a forward, if the trick applies.

    Conditions: a plain ``Linear`` / ``Conv1d`` / ``Conv2d`` / ``Embedding`` (``max_norm`` None)
    without hooks, called once per forward with one tensor argument that does not change when
    every parameter of the model changes (checked by a second traced forward at perturbed
    parameters) nor between eval and BN-train mode. Returns (layer or None, reason).
    """
    batch = _probe(obj)
    first, count, args, kwargs = _trace_first(model, obj, batch, train_bn=False)
    if first is None:
        return None, "the model has no parameter"
    if type(first) not in _AFFINE_TYPES:
        return None, f"the first layer is a {type(first).__name__}, not Linear/Conv/Embedding"
    if count != 1:
        return None, "the first layer is called more than once per forward"
    if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return None, "the first layer is not called with one tensor"
    if first._forward_hooks or first._forward_pre_hooks:
        return None, "the first layer carries hooks"
    if isinstance(first, nn.Embedding) and first.max_norm is not None:
        return None, "Embedding(max_norm=...) is not affine in its weight"
    x0 = args[0].clone()
    # does the input depend on the parameters? perturb all of them and look again
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    saved_buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    gen = torch.Generator(device="cpu").manual_seed(12345)
    try:
        with torch.no_grad():
            for _, p in model.named_parameters():
                noise = torch.randn(tuple(p.shape), generator=gen).to(p.device, p.dtype)
                p.mul_(1.5).add_(noise)
        second, _, args2, _ = _trace_first(model, obj, batch, train_bn=False)
        try:
            third, _, args3, _ = _trace_first(model, obj, batch, train_bn=True)
        except (RuntimeError, ValueError):  # e.g. BN train mode on a one-sample probe
            third, args3 = None, ()
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(saved[n])
            for n, b in model.named_buffers():
                b.copy_(saved_buffers[n])
    for other, a in ((second, args2), (third, args3)):
        if other is not first or not a or not torch.equal(a[0], x0):
            return None, "the first layer's input depends on parameters or on the BN mode"
    prefix = next(n for n, m in model.named_modules() if m is first)
    pre = f"{prefix}." if prefix else ""
    weight = pre + "weight"
    bias = pre + "bias" if getattr(first, "bias", None) is not None else None
    own = {id(first.weight)} | ({id(first.bias)} if bias else set())
    uses = sum(id(p) in own for _, p in model.named_parameters(remove_duplicate=False))
    try:
        reads = _reads_outside(model, obj, batch, first)
    except Exception as exc:  # a forward that cannot run under a TorchFunctionMode
        return None, f"reads of the first layer could not be traced ({type(exc).__name__})"
    tied = uses > len(own) or bool(reads)
    reason = "ok"
    if reads:
        reason = (f"ok; the first layer's parameters are also read elsewhere in the forward "
                  f"({', '.join(sorted(set(reads)))}), so they are written at every point too")
    return FirstLayer(prefix, first, weight, bias, tied), reason


#: Tensor attributes that read no values (reading them cannot make the trick inexact).
_METADATA = frozenset({
    "shape", "dtype", "device", "ndim", "layout", "requires_grad", "is_leaf", "grad_fn",
    "is_cuda", "is_sparse", "is_quantized", "is_meta", "names", "size", "dim", "numel",
    "stride", "is_contiguous", "is_floating_point", "is_complex", "element_size", "nelement",
    "data_ptr", "__len__", "_version",
})


def _func_name(func) -> str:
    name = getattr(func, "__name__", str(func))
    if name in ("__get__", "__set__"):  # a Tensor property: name it by its descriptor
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


class _ReadWatch(TorchFunctionMode):
    """Records every torch function that receives one of ``watched`` (by identity) while
    ``inside[0]`` is 0, i.e. outside the first layer's own call."""

    def __init__(self, watched: list[torch.Tensor], inside: list[int]):
        super().__init__()
        self.watched, self.inside, self.reads = watched, inside, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.inside[0]:
            name = _func_name(func)
            if name not in _METADATA:
                for t in tree_flatten((args, kwargs))[0]:
                    if any(t is w for w in self.watched):
                        self.reads.append(name)
                        break
        return func(*args, **kwargs)


def _reads_outside(model: nn.Module, obj: Objective, batch: Batch, first: nn.Module
                   ) -> list[str]:
    """Names of the torch functions that read the first layer's weight or bias anywhere in
    one forward except inside that layer's own call (tied weights such as
    ``F.linear(h, self.inp.weight)``, a penalty on the weights in ``forward``, ...)."""
    watched = [t for t in (first.weight, getattr(first, "bias", None)) if t is not None]
    inside = [0]

    def enter(m, args):
        inside[0] += 1

    def leave(m, args, out):
        inside[0] -= 1

    hs = [first.register_forward_pre_hook(enter), first.register_forward_hook(leave)]
    watch = _ReadWatch(watched, inside)
    try:
        with torch.no_grad(), watch:
            _call_model(model, obj, batch)
    finally:
        for h in hs:
            h.remove()
    return watch.reads


def _fan_in(m: nn.Module) -> int:
    """Multiply-adds per output element of the layer (0 for an Embedding lookup)."""
    if isinstance(m, nn.Linear):
        return m.in_features
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return m.in_channels // m.groups * math.prod(m.kernel_size)
    return 0


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
    _slots: list = field(default_factory=list)  # (param tensor, center, [d_k]) to write
    _Z: list = field(default_factory=list)  # per batch: [Z0, Z1, ...]
    _buf: list = field(default_factory=list)  # per batch: output buffer
    _bns: list = field(default_factory=list)
    _rows: list = field(default_factory=list)  # per batch: (c₀, Z₀ + c₀Z₁) of the last row
    _rows_buf: list = field(default_factory=list)
    _plain_ce: bool = False  # plain class targets and the built-in cross-entropy
    per_pass: int = 1  # grid points per forward (vmap), chosen by measure_per_pass
    _last_bn: tuple | None = None  # (last BN module of a forward, its calls per forward)

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
        eng.model = _private_copy(obj)
        if eng.model is None:
            eng.reason = "the model could not be deep-copied"
            return eng
        eng.mode, eng.reason = "inplace", "affine trick not tried (fast=False)"
        eng._bns = [m for _, m in _bn_modules(eng.model)]
        if _plain_class_targets(obj):
            eng._plain_ce = True
        if obj.bn == "recalibrate" and eng._bns:
            eng._find_last_bn()
        params = dict(eng.model.named_parameters())
        eng._slots = [(params[k], center[k], [d[k] for d in dirs]) for k in obj.names]
        if fast:
            first, reason = find_affine_first_layer(eng.model, obj)
            eng.reason = reason
            if first is not None and fast is True and _fan_in(first.module) < MIN_FAN_IN:
                eng.reason = f"the first layer's fan-in is below {MIN_FAN_IN}: its own " \
                    "forward is cheaper than the trick"
                first = None
            if first is not None and eng._precompute(first):
                all_slots = eng._slots
                eng.first, eng.mode = first, "affine"
                if not first.tied:
                    skip = {first.weight, first.bias}
                    eng._slots = [(params[k], center[k], [d[k] for d in dirs])
                                  for k in obj.names if k not in skip]
                gap = eng._gap_to_plain(all_slots)
                if not gap <= GUARD_RTOL:
                    eng.first, eng.mode, eng._slots = None, "inplace", all_slots
                    eng._Z, eng._buf, eng._rows, eng._rows_buf = [], [], [], []
                    eng.reason = (f"the affine trick differed from a plain forward by "
                                  f"{gap:.2g} (relative) at an off-center point")
        return eng

    def _gap_to_plain(self, all_slots: list) -> float:
        """The guard run before committing to the affine trick: the largest relative
        difference |L_fast − L_plain| / max(|L_plain|, 1e-3), over :data:`GUARD_POINTS`, of the
        first batch's loss with the trick and with a plain forward of the private model at the
        same point (every parameter written, the first layer's own forward). BN statistics
        are the center's for both (the check is about the forward, not the BN policy)."""
        obj, first = self.obj, self.first
        assert first is not None
        b = obj.batches[0]
        k = len(self.directions)
        worst = 0.0
        feeder = _Feeder(self)
        with torch.no_grad():
            try:
                for base in GUARD_POINTS:
                    c = [base[i % len(base)] for i in range(k)]
                    self._write(c)
                    feeder.start(c)
                    first.module.forward = feeder
                    try:
                        fast = float(obj.loss_fn(_call_model(self.model, obj, b), b.targets))
                    finally:
                        del first.module.forward
                    _write_slots(all_slots, c)
                    plain = float(obj.loss_fn(_call_model(self.model, obj, b), b.targets))
                    gap = abs(fast - plain) / max(abs(plain), 1e-3)
                    worst = max(worst, gap if math.isfinite(gap) else math.inf)
            finally:
                _write_slots(all_slots, [0.0] * k)
                self._rows = [(None, None)] * len(self._rows)
        return worst

    def _precompute(self, first: FirstLayer) -> bool:
        """Z₀ (center), Z_k (direction k, its bias component included) for every batch."""
        obj = self.obj
        m = first.module
        inputs = []

        def grab(mod, args):
            inputs.append(args[0])

        h = m.register_forward_pre_hook(grab)
        total = 0
        try:
            with torch.no_grad():
                self._write([0.0] * len(self.directions))
                for b in obj.batches:
                    inputs.clear()
                    _call_model(self.model, obj, b)
                    x = inputs[0]
                    zs = [first.apply(x, m.weight, getattr(m, "bias", None))]
                    for d in self.directions:
                        dw = d.get(first.weight)
                        if dw is None:
                            dw = torch.zeros_like(m.weight)
                        db = None
                        if first.bias is not None:
                            db = d.get(first.bias)
                            if db is None:
                                db = torch.zeros_like(m.bias)
                        zs.append(first.apply(x, dw, db))
                    total += sum(z.numel() * z.element_size() for z in zs) * 5 // 3
                    if total > min(FASTPATH_MEMORY, M.budget(device=obj.device) / 2):
                        self._Z, self._buf, self._rows, self._rows_buf = [], [], [], []
                        self.reason = "the first layer's outputs exceed the memory budget"
                        return False
                    self._Z.append(zs)
                    self._buf.append(torch.empty_like(zs[0]))
                    if len(zs) == 3:
                        self._rows_buf.append(torch.empty_like(zs[0]))
                        self._rows.append((None, None))
        finally:
            h.remove()
        return True

    # -- one point ------------------------------------------------------------------------
    def _write(self, coeffs: Sequence[float]) -> None:
        """Parameters of the private model := θ + Σ c_k d_k (from the center, every time)."""
        _write_slots(self._slots, coeffs)

    def _combine(self, i: int, coeffs: Sequence[float]) -> torch.Tensor:
        """Z₀ + c₀Z₁ + c₁Z₂ for batch i. Z₀ + c₀Z₁ is kept while c₀ stays the same (a row of
        a surface), so a grid point costs one fused add; the same float operations in the same
        order either way."""
        zs, out = self._Z[i], self._buf[i]
        if len(coeffs) == 2 and coeffs[1] != 0:
            key, base = self._rows[i]
            if key != coeffs[0]:
                base = self._rows_buf[i]
                if coeffs[0] != 0:
                    torch.add(zs[0], zs[1], alpha=coeffs[0], out=base)
                else:
                    base.copy_(zs[0])
                self._rows[i] = (coeffs[0], base)
            return torch.add(base, zs[2], alpha=coeffs[1], out=out)
        if coeffs and coeffs[0] != 0:
            torch.add(zs[0], zs[1], alpha=coeffs[0], out=out)
        else:
            out.copy_(zs[0])
        for a, z in zip(coeffs[1:], zs[2:]):
            if a != 0:
                out.add_(z, alpha=a)
        return out

    def _recalibrate(self) -> None:
        """BN running statistics recomputed at the current point: reset, then a train-mode
        pass over the data with a cumulative average (``momentum=None``), as in Objective.
        Each pass stops right after the last BatchNorm call (the layers after it cannot change
        any statistic), which is exact and saves the network's tail."""
        saved = [m.momentum for m in self._bns]
        for m in self._bns:
            if m.track_running_stats:
                m.reset_running_stats()
            m.train()
            m.momentum = None
        stop = self._tail_stop()
        try:
            for b in self.obj.batches:
                stop.calls = 0
                with contextlib.suppress(_StopPass):
                    _call_model(self.model, self.obj, b)
        finally:
            stop.remove()
            for m, mom in zip(self._bns, saved):
                m.eval()
                m.momentum = mom

    def _tail_stop(self) -> _TailStop:
        """A hook that ends a recalibration pass after the last BN call of a forward."""
        if self._last_bn is None:  # not found: run whole passes
            return _TailStop(None, 0)
        module, count = self._last_bn
        return _TailStop(module, count)

    def _find_last_bn(self) -> None:
        """Trace one BN-train-mode forward (at build time, the model's own layers in place)
        to find the last BN module called and how often it runs per forward."""
        order: list[nn.Module] = []
        hs = [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in self._bns]
        saved = {n: b.detach().clone() for n, b in self.model.named_buffers()}
        try:
            for m in self._bns:
                m.train()
            with torch.no_grad():
                _call_model(self.model, self.obj, _probe(self.obj))
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

    @torch.no_grad()
    def evaluate(self, coeffs: np.ndarray, batches: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(loss, accuracy), each of shape (n,), at θ + Σ_k coeffs[i, k] d_k for each row i.
        ``batches`` limits the data to the first batches (for timing only)."""
        coeffs = np.asarray(coeffs, dtype=np.float64).reshape(len(coeffs), -1)
        n = len(coeffs)
        loss, acc = np.zeros(n), np.zeros(n)
        obj = self.obj
        if self.mode == "functional":
            for i, c in enumerate(coeffs):
                r = obj.evaluate(P.axpy(self.center, [float(a) for a in c], self.directions))
                loss[i], acc[i] = r["loss"], r["accuracy"]
            return loss, acc
        recal = obj.bn == "recalibrate" and bool(self._bns)
        if self.per_pass > 1 and not recal and self.first is None:
            return self._evaluate_vmap(coeffs, batches)
        model, first = self.model, self.first
        feeder = _Feeder(self) if first is not None else None
        if first is not None:
            first.module.forward = feeder
        try:
            for i, row in enumerate(coeffs):
                c = [float(a) for a in row]
                self._write(c)
                if recal:
                    if feeder is not None:
                        feeder.start(c)
                    self._recalibrate()
                if feeder is not None:
                    feeder.start(c)
                total, correct = 0.0, 0.0
                for b in obj.batches[:batches]:
                    out = _call_model(model, obj, b)
                    if self._plain_ce and isinstance(out, torch.Tensor) and out.dim() == 2:
                        lb, cb = _ce_and_correct(out, b.targets)
                    else:
                        lb, cb = float(obj.loss_fn(out, b.targets)), accuracy_count(
                            out, b.targets)
                    total += lb * b.weight
                    correct += cb
                loss[i], acc[i] = total / obj.n, correct / obj.n
        finally:
            if first is not None:
                del first.module.forward
        return loss, acc

    # -- several grid points per pass (accelerators) ----------------------------------------
    def _evaluate_vmap(self, coeffs: np.ndarray, batches: int | None = None):
        """``per_pass`` grid points per forward with ``torch.vmap`` over stacked parameters
        θ + c₀d₁ + c₁d₂ (each built from the center), BN statistics kept."""
        from torch.func import functional_call, vmap

        obj, k = self.obj, self.per_pass
        n = len(coeffs)
        loss, acc = np.zeros(n), np.zeros(n)
        fixed = {**obj._fixed, **obj.buffers}
        names = list(obj.names)

        def one(params, inputs):
            return functional_call(self.model, {**fixed, **params}, inputs)

        for s0 in range(0, n, k):
            rows = torch.as_tensor(coeffs[s0:s0 + k], dtype=torch.float64)
            stacked = {}
            for name in names:
                c = self.center[name]
                shape = (len(rows),) + (1,) * c.dim()
                acc_t = c.unsqueeze(0).expand(len(rows), *c.shape).clone()
                for col, d in enumerate(self.directions):
                    alpha = rows[:, col].to(c.device, c.dtype).reshape(shape)
                    acc_t.add_(alpha * d[name].unsqueeze(0))
                stacked[name] = acc_t
            total = np.zeros(len(rows))
            correct = np.zeros(len(rows))
            for b in obj.batches[:batches]:
                args = b.inputs if isinstance(b.inputs, tuple) else (b.inputs,)
                outs = vmap(one, in_dims=(0, None))(stacked, args)
                for i in range(len(rows)):
                    out = outs[i]
                    total[i] += float(obj.loss_fn(out, b.targets)) * b.weight
                    correct[i] += accuracy_count(out, b.targets)
            loss[s0:s0 + k], acc[s0:s0 + k] = total / obj.n, correct / obj.n
        return loss, acc

    def measure_per_pass(self, candidates=(1, 2, 4, 8, 16, 32), points: int = 32) -> int:
        """On an accelerator, time ``points`` grid points on the first batch with each number
        of points per pass and keep the fastest (small models are launch-bound there). The CPU
        keeps 1 without measuring: batching points with vmap is slower there."""
        obj = self.obj
        if obj.device.type == "cpu" or self.mode != "inplace" or obj.bn != "keep" or \
                obj._keyed:
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


class _StopPass(Exception):  # noqa: N818 - control flow, not an error
    """Raised by :class:`_TailStop` to end a recalibration pass early."""


class _TailStop:
    """Forward hook on the last BN module: raises :class:`_StopPass` after its ``count``-th
    call of a pass (``calls`` is reset by the caller before each batch)."""

    def __init__(self, module: nn.Module | None, count: int):
        self.count, self.calls = count, 0
        self.handle = module.register_forward_hook(self) if module is not None else None

    def __call__(self, module, args, output):
        self.calls += 1
        if self.calls >= self.count:
            raise _StopPass

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()


class _Feeder:
    """Stands in for the first layer's forward: on its j-th call of a pass it returns
    Z₀ + Σ c_k Z_k for data batch j (the pass over the batches is in order)."""

    def __init__(self, eng: Engine):
        self.eng, self.coeffs, self.j = eng, [], 0

    def start(self, coeffs) -> None:
        self.coeffs, self.j = coeffs, 0

    def __call__(self, *args, **kwargs):
        out = self.eng._combine(self.j, self.coeffs)
        self.j += 1
        return out


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
    params = dict(eng.model.named_parameters())
    slots = {"affine": (eng._slots, eng.first),
             "inplace": ([(params[k], eng.center[k], [d[k] for d in eng.directions])
                          for k in eng.obj.names], None)}
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
        eng.mode = "inplace"
        eng._Z, eng._buf, eng._rows, eng._rows_buf = [], [], [], []
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
