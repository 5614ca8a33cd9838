"""The Objective: model + data + loss (+ BN policy) as a function of the parameters.

This is the one place that runs a model forward. Everything else (landscapes, Hessians,
trajectories, mining, connectivity, similarity) asks an :class:`Objective` (or, for a bare
module, :func:`module_outputs`) for outputs, losses, gradients and Hessian-vector products at
points ``θ`` given as name -> tensor mappings.

The surface the measurements use:

* running the model: :meth:`Objective.forward` (at a point, functional, eval or train mode),
  :meth:`Objective.forward_module` (a real module, e.g. a private copy, on one batch),
  :meth:`Objective.forward_points` (several stacked points in one vmapped pass),
  :func:`module_outputs` (a bare module on inputs, eval mode, no gradients);
* the private working copy: :meth:`Objective.private_model`;
* BatchNorm: :meth:`Objective.recalibrate` (statistics at a point), :meth:`Objective.recalibrate_bn`
  (the one recalibration pass, on a private copy or functionally), :func:`bn_modules`,
  :func:`eval_mode`, :func:`train_mode`;
* data and values: ``obj.batches`` / ``obj.weights`` / ``obj.n``, :meth:`Objective.batch_loss`,
  :meth:`Objective.batch_values` (loss and correct count of one output), :meth:`Objective.evaluate`,
  :meth:`Objective.grad`, :meth:`Objective.hvp` (the Hessian operator's product);
* sums across ranks: :meth:`Objective.all_sum`, :meth:`Objective.partial_sums`.

Guarantees:

* **Exact full-data means.** The loss is Σ_b (n_b / N) · L_b, where L_b is the batch mean and
  n_b the number of targets the loss counts in batch b, so the value does not depend on the
  batch size (the peers' "sum of per-batch means" bug does not occur).
* **Data held as tensors.** Batches are sliced once, on the device, at construction.
* **Eval mode.** Dropout is off and BatchNorm uses running statistics. ``bn="keep"`` uses the
  center model's running statistics everywhere; ``bn="recalibrate"`` recomputes them at every
  point with a forward pass over the data in train mode with a cumulative average
  (``momentum=None``), the "UpBN" of Li, Li, Zhan 2024 and the BN handling of Li et al. 2018.
* **The user's model is never mutated.** Parameters and buffers are passed functionally with
  ``torch.func.functional_call``; module flags (``training``, BN ``momentum``) are restored in
  ``finally``.

>>> import torch, lossatlas as la
>>> X, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
>>> model = torch.nn.Linear(3, 2)
>>> obj = la.Objective(model, (X, y), batch_size=4)
>>> abs(obj.loss() - float(torch.nn.functional.cross_entropy(model(X).detach(), y))) < 1e-6
True
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from lossatlas.core import distributed as _dist
from lossatlas.core import params as P
from lossatlas.core import resources
from lossatlas.core.attention import math_attention
from lossatlas.core.batching import Batch, as_batches, length_of, slice_batch
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.losses import (
    LOSSES,
    LossFn,
    accuracy_count,
    check_targets,
    logits_of,
    resolve_loss,
)

__all__ = ["Batch", "Objective", "as_batches", "bn_modules", "eval_mode", "module_outputs",
           "train_mode"]


# -- module modes ---------------------------------------------------------------------------
_BN = nn.modules.batchnorm._BatchNorm


def bn_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every BatchNorm layer of ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BN)]


@contextlib.contextmanager
def eval_mode(model: nn.Module, bn_train: bool = False) -> Iterator[None]:
    """All modules in eval mode (BN in train mode with cumulative averaging when
    ``bn_train``); every flag restored on exit."""
    saved = [(m, m.training) for m in model.modules()]
    bn_saved = [(m, m.momentum) for _, m in bn_modules(model)]
    try:
        model.eval()
        if bn_train:
            for m, _ in bn_saved:
                m.train()
                m.momentum = None
        yield
    finally:
        for m, flag in saved:
            m.training = flag
        for m, mom in bn_saved:
            m.momentum = mom


@contextlib.contextmanager
def train_mode(model: nn.Module) -> Iterator[None]:
    """All modules in train mode (batch statistics in BN); every flag restored on exit."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.train()
        yield
    finally:
        for m, flag in saved:
            m.training = flag


@torch.no_grad()
def module_outputs(model: nn.Module, inputs: torch.Tensor, batch_size: int) -> list[Any]:
    """``model(inputs[k:k + batch_size])`` for consecutive slices of the ``(m, ...)`` inputs,
    in eval mode without gradients (flags restored): a list of ``ceil(m / batch_size)``
    outputs. For measurements on bare modules (CKA of two models' outputs)."""
    with eval_mode(model):
        return [model(inputs[k:k + batch_size]) for k in range(0, inputs.shape[0], batch_size)]


# -- early stop of a recalibration pass ------------------------------------------------------
class _StopPass(Exception):  # noqa: N818 - control flow, not an error
    """Raised by :class:`_TailStop` to end a recalibration pass early."""


class _TailStop:
    """Forward hook on the last BN module: raises :class:`_StopPass` after its ``count``-th
    call of a pass (``calls`` is reset before each batch)."""

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


# -- messages ---------------------------------------------------------------------------------
def _shape(x) -> str:
    """``(20, 7)`` for a tensor, ``{'input_ids': (2, 9)}`` / ``((2, 3), (2,))`` for nests."""
    if isinstance(x, torch.Tensor):
        return str(tuple(x.shape))
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k!r}: {_shape(v)}" for k, v in x.items()) + "}"
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(_shape(v) for v in x) + ")"
    return type(x).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _plain_class_targets(loss_fn: LossFn, keyed: bool, batches: Sequence[Batch]) -> bool:
    """True when every batch has plain class targets for (N, C) logits (1-D int64 labels,
    none ignored) and the loss is the built-in cross-entropy: then
    :meth:`Objective.batch_values` takes ``F.cross_entropy`` and ``argmax`` directly."""
    if loss_fn is not LOSSES["cross_entropy"] or keyed:
        return False
    for b in batches:
        t = b.targets
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.is_floating_point():
            return False
        if b.weight != t.shape[0]:  # some targets carry the ignore index
            return False
    return True


class _WorkingCopy:
    """A private copy of the model with its tensors by name: a point is written into it with
    one ``copy_`` per tensor."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.params = dict(model.named_parameters())
        self.buffers = dict(model.named_buffers())

    def load(self, point: Mapping, buffers: Mapping | None) -> None:
        for k, v in point.items():
            self.params[k].copy_(v)
        if buffers is not None:
            for k, v in buffers.items():
                self.buffers[k].copy_(v)


# -- the objective --------------------------------------------------------------------------
class Objective:
    """L(θ) = Σ_b (n_b/N) · loss(model(x_b; θ), y_b): the full-data mean loss of ``model``.

    The weights are a snapshot: ``center`` and the buffers are copied at construction, so
    ``obj.loss()`` is the loss of the model *as it was then*; after changing the model, build
    a new Objective (the snapshot keeps resumed files and hashed provenance consistent).

    Parameters
    ----------
    model : any ``nn.Module``; read, never mutated.
    data : a Dataset, a DataLoader, an ``(inputs, targets)`` tuple or a dict of tensors.
        Dict data (Hugging Face style) is passed as keyword arguments; ``target_key`` names
        the targets (``loss="model"`` uses the model's own ``.loss`` and passes them along).
    loss : ``"cross_entropy"``, ``"mse"``, ``"nll"``, ``"model"`` or a callable
        ``loss(output, target) -> batch mean``.
    batch_size : samples per forward pass (None: all at once). The result does not depend on it.
    bn : ``"keep"`` (the center's running statistics) or ``"recalibrate"`` (recomputed at
        every point, cumulative average over the data).
    params : names of the perturbed parameters, or None for :func:`lossatlas.core.params.select`
        with ``include`` / ``exclude`` / ``trainable_only``.
    check : run the determinism check (two passes over the first batch agree).
    distributed : split the data over the ranks of a ``torch.distributed`` process group (see
        :mod:`la.distributed`): None shards when a group of several ranks is initialized,
        True / ``"shard"`` always (every rank passes the same data and keeps its contiguous
        shard), ``"local"`` when each rank passes its own part, False never. The weighted sums
        are all-reduced, so every value is the exact full-data one, the same on every rank.
    """

    def __init__(
        self,
        model: nn.Module,
        data,
        loss: str | LossFn = "cross_entropy",
        batch_size: int | None = None,
        bn: str = "keep",
        device: str | torch.device | None = None,
        params: Sequence[str] | None = None,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        trainable_only: bool = True,
        target_key: str | None = "labels",
        check: bool = True,
        distributed: bool | str | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise LossAtlasError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if bn not in ("keep", "recalibrate"):
            raise LossAtlasError(f'bn={bn!r} is unknown; use "keep" or "recalibrate"')
        self.model = model
        self.loss_name, self.loss_fn = resolve_loss(loss)
        self.bn = bn
        self.batch_size = batch_size
        self.target_key = target_key
        first = next(iter(model.parameters()), None)
        self.device = resources.device(device) if device is not None else (
            first.device if first is not None else torch.device("cpu")
        )
        self._snapshot(P.select(model, include=include, exclude=exclude,
                                trainable_only=trainable_only) if params is None else params)
        self.distributed = distributed
        self.dist = _dist.resolve(distributed, self.device)
        self._partial = False
        if self.dist is not None and bn == "recalibrate" and self.has_bn:
            raise LossAtlasError(
                'bn="recalibrate" is not supported on data split across processes; use '
                'bn="keep" or distributed=False'
            )
        self._bind_data(data)
        self._work: _WorkingCopy | None = None
        self._work_failed = False
        self._plain_ce: bool | None = None
        self.check_data()
        if check:
            self.check_determinism()

    # -- construction steps -----------------------------------------------------------------
    def _snapshot(self, names: Sequence[str]) -> None:
        """``names``, ``center`` (the perturbed parameters), the fixed rest and the buffers,
        copied onto the device."""
        self.names = list(names)
        all_params = dict(self.model.named_parameters())
        missing = [n for n in self.names if n not in all_params]
        if missing:
            raise LossAtlasError(f"params={missing[:3]} are not parameters of the model")
        self._fixed = {
            k: v.detach().to(self.device) for k, v in all_params.items() if k not in self.names
        }
        self.center = P.Point({k: all_params[k].detach().to(self.device).clone()
                               for k in self.names})
        self.buffers = {k: v.detach().to(self.device).clone()
                        for k, v in self.model.named_buffers()}
        self.has_bn = bool(bn_modules(self.model))

    def _bind_data(self, data) -> None:
        """``batches`` (this rank's shard when split), ``n`` (targets over all ranks),
        ``weights`` n_b/N, ``num_samples``; the ranks must agree on model and data."""
        dist = self.dist
        part = (dist.rank, dist.world) if dist and dist.mode == "shard" else None
        seen: dict = {}
        self.batches = as_batches(data, self.batch_size, self.target_key, self.device,
                                  part=part, info=seen)
        self.n = self._sum(sum(b.weight for b in self.batches))
        if self.n <= 0:
            raise LossAtlasError("data: no target to average over (all ignored?)")
        self.weights = [b.weight / self.n for b in self.batches]
        self.num_samples = int(self._sum(sum(length_of(b.inputs) for b in self.batches)))
        if dist is not None:
            dist.same(P.hash_point(self.center), "the model (its parameters)",
                      "build or load the same model on every process")
        if part is not None:
            dist.same((seen["total"], seen["first"]), "the data (size, first sample)",
                      'pass the same data on every process, or distributed="local" when '
                      "each process holds its own part")
        self.keyed = isinstance(self.batches[0].inputs, Mapping)

    # -- running the model --------------------------------------------------------------------
    def full_params(self, point: Mapping[str, torch.Tensor] | None = None) -> dict:
        """All of the model's parameters, the perturbed ones taken from ``point``."""
        point = self.center if point is None else point
        if point.keys() != self.center.keys():
            raise LossAtlasError(
                "point covers other parameters than the objective; build it with "
                "la.params.of(model) using the same selection (obj.names)"
            )
        return {**self._fixed, **point}

    def _arguments(self, batch: Batch) -> tuple[tuple, dict]:
        """The model's (args, kwargs) for one batch: keyword tensors for dict inputs (with the
        targets under ``target_key`` for ``loss="model"``), else the input tensor(s)."""
        if self.keyed:
            kwargs = dict(batch.inputs)
            if self.loss_name == "model" and batch.targets is not None and self.target_key:
                kwargs[self.target_key] = batch.targets
            return (), kwargs
        return (batch.inputs if isinstance(batch.inputs, tuple) else (batch.inputs,)), {}

    def _call(self, tensors: Mapping, batch: Batch):
        args, kwargs = self._arguments(batch)
        return functional_call(self.model, dict(tensors), args=args, kwargs=kwargs,
                               strict=False)

    def forward(self, point, batch: Batch, buffers: Mapping | None = None, *,
                train: bool = False):
        """Model output on one batch at ``point`` (differentiable; the user's model run
        functionally with all of its parameters and ``buffers``, default the center's).

        Eval mode; with gradients on, ``scaled_dot_product_attention`` runs on its math kernel:
        the fused kernels (flash / memory-efficient) have no second derivative, so
        Hessian-vector products through them would fail (said once, on stderr, for models that
        use it). ``train=True``: every module in train mode (batch statistics; BN running
        statistics are updated in ``buffers``), for training at a point (Bezier curves)."""
        buffers = self.buffers if buffers is None else buffers
        tensors = {**self.full_params(point), **buffers}
        if train:
            with train_mode(self.model):
                return self._call(tensors, batch)
        with eval_mode(self.model), math_attention(self.model):
            return self._call(tensors, batch)

    def forward_module(self, module: nn.Module, batch: Batch):
        """``module`` (a real module of this objective's architecture, such as
        :meth:`private_model`, in whatever mode it is) called on one batch as the objective
        calls its model. The output, e.g. logits of shape (b, C)."""
        args, kwargs = self._arguments(batch)
        return module(*args, **kwargs)

    def forward_points(self, module: nn.Module, stacked: Mapping[str, torch.Tensor],
                       batch: Batch, buffers: Mapping | None = None):
        """Outputs at k points in one pass: ``torch.vmap`` of a functional forward of
        ``module`` over ``stacked`` (name -> tensor of shape (k, *param_shape) for every
        perturbed parameter), the fixed parameters and ``buffers`` (default the center's)
        shared. Returns the outputs stacked on a leading axis, e.g. (k, b, C). Tensor inputs
        only (not keyword dicts)."""
        fixed = {**self._fixed, **(self.buffers if buffers is None else buffers)}
        args, _ = self._arguments(batch)

        def one(params, inputs):
            return functional_call(module, {**fixed, **params}, inputs)

        return vmap(one, in_dims=(0, None))(dict(stacked), args)

    # -- the private working copy -----------------------------------------------------------
    def private_model(self) -> nn.Module | None:
        """A new deep copy of the model on the objective's device for fast no-grad work: eval
        mode, no gradients, the parameters at the center (the fixed ones included) and the
        center's buffers. Writing a point into its parameters costs one ``copy_`` per tensor,
        cheaper than ``functional_call``. None when the model cannot be deep-copied (use
        :meth:`forward` then)."""
        try:
            model = copy.deepcopy(self.model).to(self.device)
        except Exception:  # un-copyable models fall back to functional calls
            return None
        model.eval()
        tensors = {**self._fixed, **self.center}
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.requires_grad_(False)
                if k in tensors:
                    p.copy_(tensors[k])
            for k, b in model.named_buffers():
                if k in self.buffers:
                    b.copy_(self.buffers[k])
        return model

    def _work_at(self, point: Mapping, buffers: Mapping) -> nn.Module | None:
        """The objective's own private copy (made on first use) holding ``point`` and
        ``buffers``; None when the model cannot be copied."""
        if self._work is None and not self._work_failed:
            model = self.private_model()
            self._work = _WorkingCopy(model) if model is not None else None
            self._work_failed = model is None
        if self._work is None:
            return None
        if point.keys() != self.center.keys():
            self.full_params(point)  # raises the clear message
        self._work.load(point, buffers)
        return self._work.model

    # -- BN ------------------------------------------------------------------------------
    def buffers_at(self, point=None) -> dict:
        """Buffers to use at ``point``: the center's (``bn="keep"``), or BN running statistics
        recomputed at ``point`` by a cumulative-average pass over the data (``"recalibrate"``)."""
        if self.bn == "keep" or not self.has_bn or point is None:
            return self.buffers
        return self.recalibrate(point)

    @torch.no_grad()
    def recalibrate(self, point) -> dict:
        """Running statistics of every BatchNorm layer recomputed at ``point`` (all buffers,
        name -> tensor), by :meth:`recalibrate_bn` on the private copy (functionally when the
        model cannot be copied): the model's own buffers are untouched."""
        work = self._work_at(point, self.buffers)
        if work is None:
            bufs = {k: v.clone() for k, v in self.buffers.items()}
            self.recalibrate_bn(self.model, {**self.full_params(point), **bufs})
            return bufs
        self.recalibrate_bn(work)
        return {k: v.clone() for k, v in work.named_buffers()}

    @torch.no_grad()
    def recalibrate_bn(self, module: nn.Module, tensors: dict | None = None, *,
                       last_bn: tuple[nn.Module, int] | None = None) -> None:
        """The one BN recalibration (UpBN): every BatchNorm layer's running statistics reset
        (``reset_running_stats()``), then one train-mode forward over every batch with a
        cumulative average (``momentum=None``); flags and momenta restored.

        ``module``: a private copy holding the point (its own buffers are rewritten), or, with
        ``tensors`` (every parameter and buffer by name), a module run functionally whose
        statistics land in those tensors. ``last_bn``: (the last BN module called in a forward,
        its calls per forward): each batch's forward stops right after its last call, which is
        exact (the layers after it change no statistic) and saves the network's tail."""
        for name, m in bn_modules(module):
            if tensors is None:
                m.reset_running_stats()
            elif m.track_running_stats:
                prefix = f"{name}." if name else ""
                tensors[prefix + "running_mean"].zero_()
                tensors[prefix + "running_var"].fill_(1.0)
                tensors[prefix + "num_batches_tracked"].zero_()
        stop = _TailStop(*last_bn) if last_bn is not None else None
        try:
            with eval_mode(module, bn_train=True):
                for b in self.batches:
                    if stop is not None:
                        stop.calls = 0
                    with contextlib.suppress(_StopPass):
                        if tensors is None:
                            self.forward_module(module, b)
                        else:
                            self._call(tensors, b)
        finally:
            if stop is not None:
                stop.remove()

    # -- values --------------------------------------------------------------------------
    def batch_loss(self, point, batch: Batch, buffers: Mapping | None = None) -> torch.Tensor:
        """Mean loss on one batch at ``point`` (differentiable scalar)."""
        return self.loss_fn(self.forward(point, batch, buffers), batch.targets)

    def batch_values(self, output, batch: Batch) -> tuple[float, float]:
        """(mean loss, number correct) of one batch's model ``output``; the correct count is
        nan when not a classifier. Plain class targets with the built-in cross-entropy take
        ``F.cross_entropy`` and ``argmax`` straight (the same numbers, bit for bit), not a
        hand-fused max/exp/gather pass, which was slower on the CPU (figure in
        benchmarks/README.md)."""
        if self._plain_ce is None:
            self._plain_ce = _plain_class_targets(self.loss_fn, self.keyed, self.batches)
        if self._plain_ce and isinstance(output, torch.Tensor) and output.dim() == 2:
            return (float(F.cross_entropy(output, batch.targets)),
                    float((output.argmax(1) == batch.targets).sum()))
        return float(self.loss_fn(output, batch.targets)), accuracy_count(output, batch.targets)

    @torch.no_grad()
    def evaluate(self, point=None, buffers: Mapping | None = None, *,
                 private_copy: bool = True) -> dict[str, float]:
        """Full-data mean loss and accuracy (fraction correct; nan when not a classifier).

        ``private_copy=False`` runs the model functionally instead of writing the point into
        the private copy (no copy is made: for one value of a model that changes, e.g. during
        training)."""
        point = self.center if point is None else point
        buffers = self.buffers_at(point) if buffers is None else buffers
        work = self._work_at(point, buffers) if private_copy else None
        if work is None:
            with eval_mode(self.model):
                tensors = {**self.full_params(point), **buffers}
                sums = self._data_pass(lambda b: self._call(tensors, b))
        else:
            sums = self._data_pass(lambda b: self.forward_module(work, b))
        loss_sum, correct = (float(v) for v in self._sum(np.array(sums)))
        return {"loss": loss_sum / self.n, "accuracy": correct / self.n}

    def _data_pass(self, run: Callable[[Batch], Any]) -> tuple[float, float]:
        """(Σ_b n_b · L_b, Σ_b correct_b) over this process's batches, ``run(batch)`` giving
        the model's output on each."""
        loss_sum, correct = 0.0, 0.0
        for b in self.batches:
            lb, cb = self.batch_values(run(b), b)
            loss_sum, correct = loss_sum + lb * b.weight, correct + cb
        return loss_sum, correct

    def loss(self, point=None, buffers: Mapping | None = None, *,
             private_copy: bool = True) -> float:
        """Full-data mean loss at ``point`` (the center when None)."""
        return self.evaluate(point, buffers, private_copy=private_copy)["loss"]

    @torch.no_grad()
    def evaluate_batch(self, points: Sequence[Mapping], per_pass: int = 1
                       ) -> dict[str, np.ndarray]:
        """Loss and accuracy at each of ``points``: arrays of shape (len(points),).

        ``per_pass > 1``: that many points share each pass over the data, the model vmapped
        over their stacked parameters (:meth:`forward_points`), for accelerators where one
        point leaves the device idle. It applies with BN statistics kept (``bn="keep"``; a
        recalibration is per point) and tensor inputs, else points go one by one. The default
        is one point per pass: on the CPU, vmapping points is slower (the landscape engine
        measures the best ``per_pass`` on accelerators)."""
        if isinstance(per_pass, bool) or not isinstance(per_pass, int) or per_pass < 1:
            raise LossAtlasError(f"per_pass={per_pass!r} must be a positive integer (points "
                                 "per pass over the data); use 1 on the CPU")
        points = list(points)
        if per_pass == 1 or self.keyed or self.bn != "keep":
            out = [self.evaluate(p) for p in points]
            return {"loss": np.array([o["loss"] for o in out]),
                    "accuracy": np.array([o["accuracy"] for o in out])}
        loss, acc = np.zeros(len(points)), np.zeros(len(points))
        with eval_mode(self.model):
            for s0 in range(0, len(points), per_pass):
                chunk = [P.Point(p) for p in points[s0:s0 + per_pass]]
                stacked = {k: torch.stack([q[k].detach().to(self.device) for q in chunk])
                           for k in self.names}
                sums = np.zeros((len(chunk), 2))
                for b in self.batches:
                    outs = self.forward_points(self.model, stacked, b)
                    for i in range(len(chunk)):
                        lb, cb = self.batch_values(outs[i], b)
                        sums[i] += (lb * b.weight, cb)
                sums = np.asarray(self._sum(sums), dtype=float)
                loss[s0:s0 + len(chunk)] = sums[:, 0] / self.n
                acc[s0:s0 + len(chunk)] = sums[:, 1] / self.n
        return {"loss": loss, "accuracy": acc}

    def loss_batch(self, points: Sequence[Mapping], per_pass: int = 1) -> np.ndarray:
        """Full-data mean loss at each of ``points``: shape (len(points),); ``per_pass`` as in
        :meth:`evaluate_batch`."""
        return self.evaluate_batch(points, per_pass)["loss"]

    def grad(self, point=None) -> P.Point:
        """∇L(θ) of the full-data mean loss (BN in eval mode), streamed over batches."""
        point = self.center if point is None else point
        buffers = self.buffers_at(point)
        leaves = {k: v.detach().requires_grad_(True) for k, v in point.items()}
        total = {k: torch.zeros_like(v) for k, v in leaves.items()}
        for w, b in zip(self.weights, self.batches):
            lb = self.batch_loss(leaves, b, buffers)
            gs = torch.autograd.grad(lb, list(leaves.values()), allow_unused=True)
            for (k, _), g in zip(leaves.items(), gs):
                if g is not None:
                    total[k].add_(g, alpha=w)
        return P.Point(self._sum_point(total))

    def hvp(self, vectors: Sequence[Mapping] | Mapping, point=None) -> P.Point | list[P.Point]:
        """H v for each vector (a Point, or a list: a list back), H the Hessian of the
        full-data mean loss at ``point``: the product of
        :class:`lossatlas.measurements.hessian.operator.HessianOperator`, which weights every
        batch by n_b/N, splits batches whose graph would be too large and picks its method by
        memory and timing. (Imported at call time: the operator belongs to the Hessian
        measurements, and the core imports no higher layer when it loads.)"""
        from lossatlas.measurements.hessian.operator import hvp

        return hvp(self, vectors, point)

    # -- data-parallel reduction (lossatlas.core.distributed) ---------------------------------
    def _sum(self, x):
        """Σ over the ranks of a weighted sum (a float, array or tensor); ``x`` itself in one
        process or inside :meth:`partial_sums`."""
        return x if self.dist is None or self._partial else self.dist.all_sum(x)

    def _sum_point(self, point: Mapping) -> dict:
        """A name -> tensor mapping summed over the ranks with one all-reduce."""
        if self.dist is None or self._partial:
            return dict(point)
        keys = list(point)
        flat = self.dist.all_sum(torch.cat([point[k].reshape(-1) for k in keys]))
        parts = torch.split(flat, [point[k].numel() for k in keys])
        return {k: p.reshape(point[k].shape) for k, p in zip(keys, parts)}

    def all_sum(self, x):
        """The full-data value of a weighted sum accumulated over this process's batches
        (n_b/N-weighted): Σ over the ranks of a float, array or tensor, or of a name -> tensor
        mapping (one all-reduce; a dict back); ``x`` itself in one process or inside
        :meth:`partial_sums`."""
        return self._sum_point(x) if isinstance(x, Mapping) else self._sum(x)

    @contextlib.contextmanager
    def partial_sums(self) -> Iterator[None]:
        """Within the block, values are this rank's share of the full-data value (summed
        weights n_b/N of its own batches) and no collective runs; sum them with
        :meth:`all_sum` afterwards."""
        saved, self._partial = self._partial, True
        try:
            yield
        finally:
            self._partial = saved

    # -- safety --------------------------------------------------------------------------
    @torch.no_grad()
    def check_data(self, probe: int = 64) -> None:
        """The model runs on the data and the targets suit the loss, or one sentence says what
        to change: a forward on the first ``probe`` samples (input shape), then for class-label
        losses (``cross_entropy``, ``nll``) integer labels in ``[0, C)`` for a model with C
        outputs (``-100`` is ignored) in every batch."""
        b = self.batches[0]
        n = length_of(b.inputs)
        small = Batch(slice_batch(b.inputs, 0, min(n, probe)),
                      slice_batch(b.targets, 0, min(n, probe)), b.weight)
        model = type(self.model).__name__
        try:
            out = self.forward(self.center, small)
        except LossAtlasError:
            raise
        except Exception as exc:
            raise LossAtlasError(
                f"the model ({model}) cannot run on the data (inputs {_shape(small.inputs)}: "
                f"{_first_line(exc)}); build the model for this data, e.g. "
                "la.zoo.build(name, dataset=data)"
            ) from None
        check_targets(out, [batch.targets for batch in self.batches], self.loss_name, model)

    @torch.no_grad()
    def check_determinism(self) -> None:
        """Two passes over the first batch at the center must agree exactly; otherwise the
        data or the model is random at evaluation time (augmentation in the dataset, dropout
        forced on, a shuffled iterator) and every landscape would be noise."""
        b = self.batches[0]
        l1 = self.loss_fn(self.forward(self.center, b), b.targets)
        l2 = self.loss_fn(self.forward(self.center, b), b.targets)
        if not torch.isfinite(l1):
            raise LossAtlasError(
                "the loss at the model's own parameters is not finite; check the model, the "
                "data and loss= before mapping the landscape"
            )
        if not torch.equal(l1, l2):
            raise LossAtlasError(
                "the model gives different losses on the same batch twice (dropout forced on, "
                "or random layers at eval time); make evaluation deterministic or pass check=False"
            )

    def with_data(self, data, batch_size: int | None = None) -> Objective:
        """The same model, loss, BN policy and parameter selection on other data."""
        return Objective(
            self.model, data, loss=self.loss_fn if self.loss_name not in LOSSES else
            self.loss_name, batch_size=batch_size if batch_size is not None else
            self.batch_size, bn=self.bn, device=self.device, params=self.names,
            target_key=self.target_key, check=False, distributed=self.distributed,
        )

    @property
    def num_classes(self) -> int | None:
        """Classes of the output (last dim of the logits), None when not a classifier."""
        with torch.no_grad():
            b = self.batches[0]
            try:
                logits = logits_of(self.forward(self.center, b))
            except LossAtlasError:
                return None
        return int(logits.shape[-1]) if logits.dim() >= 2 else None

    def describe(self) -> dict:
        """Provenance for result files."""
        return {
            "loss": self.loss_name,
            "bn": self.bn,
            "batch_size": self.batch_size if self.batch_size is not None else -1,
            "num_samples": self.num_samples,
            "num_params": self.center.numel(),
            "param_names": list(self.names),
            "center_hash": P.hash_point(self.center),
            "model_class": type(self.model).__name__,
            "processes": 1 if self.dist is None else self.dist.world,
        }

    def __repr__(self) -> str:
        return (
            f"Objective({type(self.model).__name__}, {self.num_samples} samples in "
            f"{len(self.batches)} batches, loss={self.loss_name}, bn={self.bn}, "
            f"{self.center.numel()} parameters, weights snapshot "
            f"{P.hash_point(self.center)[:8]} taken at construction)"
        )
