"""The Objective: model + data + loss (+ BN policy) as a function of the parameters.

This is the one place that runs a model forward. Everything else (landscapes, Hessians,
trajectories, mining, connectivity) asks an :class:`Objective` for losses, gradients and
Hessian-vector products at points ``θ`` given as name -> tensor mappings.

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
import weakref
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from lossatlas.core import distributed as _dist
from lossatlas.core import params as P
from lossatlas.core import resources
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

__all__ = ["Batch", "Objective", "as_batches"]


# -- BN handling ----------------------------------------------------------------------------
_BN = nn.modules.batchnorm._BatchNorm


def _bn_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BN)]


@contextlib.contextmanager
def _eval_mode(model: nn.Module, bn_train: bool = False) -> Iterator[None]:
    """All modules in eval mode (BN in train mode with cumulative averaging when
    ``bn_train``); every flag restored on exit."""
    saved = [(m, m.training) for m in model.modules()]
    bn_saved = [(m, m.momentum) for _, m in _bn_modules(model)]
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


# -- attention with second derivatives --------------------------------------------------------
_FUSED_ATTENTION = ("sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
_said_math = False
_FUSED_SEEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fused_attention(model: nn.Module) -> bool:
    """True when the model runs attention through PyTorch's fused kernels (a transformers
    ``attn_implementation`` of sdpa / flash, or ``nn.MultiheadAttention``)."""
    if model not in _FUSED_SEEN:
        cfg = getattr(model, "config", None)
        _FUSED_SEEN[model] = getattr(cfg, "_attn_implementation", None) in _FUSED_ATTENTION \
            or any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    return _FUSED_SEEN[model]


@contextlib.contextmanager
def _math_attention(model: nn.Module) -> Iterator[None]:
    """Within a differentiable forward of an attention model, SDPA on its math kernel."""
    if not torch.is_grad_enabled() or not _fused_attention(model):
        yield
        return
    global _said_math
    if not _said_math:
        _said_math = True
        import sys

        from lossatlas.core.progress import quiet

        if not quiet():
            print("lossatlas: derivatives run scaled_dot_product_attention on its math kernel "
                  "(the fused kernels have no second derivative)", file=sys.stderr)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


# -- the objective --------------------------------------------------------------------------
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
        self.names = list(params) if params is not None else P.select(
            model, include=include, exclude=exclude, trainable_only=trainable_only
        )
        all_params = dict(model.named_parameters())
        missing = [n for n in self.names if n not in all_params]
        if missing:
            raise LossAtlasError(f"params={missing[:3]} are not parameters of the model")
        self._fixed = {
            k: v.detach().to(self.device) for k, v in all_params.items() if k not in self.names
        }
        self.center = P.Point({k: all_params[k].detach().to(self.device).clone()
                               for k in self.names})
        self.buffers = {k: v.detach().to(self.device).clone()
                        for k, v in model.named_buffers()}
        self._has_bn = bool(_bn_modules(model))
        self.distributed = distributed
        self.dist = _dist.resolve(distributed, self.device)
        self._partial = False
        if self.dist is not None and bn == "recalibrate" and self._has_bn:
            raise LossAtlasError(
                'bn="recalibrate" is not supported on data split across processes; use '
                'bn="keep" or distributed=False'
            )
        part = (self.dist.rank, self.dist.world) if self.dist and \
            self.dist.mode == "shard" else None
        seen: dict = {}
        self.batches = as_batches(data, batch_size, target_key, self.device, part=part,
                                  info=seen)
        self.n = self._sum(sum(b.weight for b in self.batches))
        if self.n <= 0:
            raise LossAtlasError("data: no target to average over (all ignored?)")
        self.weights = [b.weight / self.n for b in self.batches]
        self.num_samples = int(self._sum(sum(length_of(b.inputs) for b in self.batches)))
        if self.dist is not None:
            self.dist.same(P.hash_point(self.center), "the model (its parameters)",
                           "build or load the same model on every process")
        if part is not None:
            self.dist.same((seen["total"], seen["first"]), "the data (size, first sample)",
                           'pass the same data on every process, or distributed="local" when '
                           "each process holds its own part")
        self._keyed = isinstance(self.batches[0].inputs, Mapping)
        self._work_model: nn.Module | None = None
        self._work_failed = False
        self.check_data()
        if check:
            self.check_determinism()

    # -- low level (differentiable) ------------------------------------------------------
    def full_params(self, point: Mapping[str, torch.Tensor] | None = None) -> dict:
        """All of the model's parameters, the perturbed ones taken from ``point``."""
        point = self.center if point is None else point
        if point.keys() != self.center.keys():
            raise LossAtlasError(
                "point covers other parameters than the objective; build it with "
                "la.params.of(model) using the same selection (obj.names)"
            )
        return {**self._fixed, **point}

    def forward(self, point, batch: Batch, buffers: Mapping | None = None):
        """Model output on one batch at ``point`` (eval mode; differentiable).

        With gradients on, ``scaled_dot_product_attention`` runs on its math kernel: the fused
        kernels (flash / memory-efficient) have no second derivative, so Hessian-vector
        products through them would fail (said once, on stderr, for models that use it)."""
        buffers = self.buffers if buffers is None else buffers
        tensors = {**self.full_params(point), **buffers}
        with _eval_mode(self.model), _math_attention(self.model):
            return self._call(tensors, batch)

    def _call(self, tensors: dict, batch: Batch):
        if self._keyed:
            kwargs = dict(batch.inputs)
            if self.loss_name == "model" and batch.targets is not None and self.target_key:
                kwargs[self.target_key] = batch.targets
            return functional_call(self.model, tensors, args=(), kwargs=kwargs, strict=False)
        args = batch.inputs if isinstance(batch.inputs, tuple) else (batch.inputs,)
        return functional_call(self.model, tensors, args=args, strict=False)

    def batch_loss(self, point, batch: Batch, buffers: Mapping | None = None) -> torch.Tensor:
        """Mean loss on one batch at ``point`` (differentiable scalar)."""
        return self.loss_fn(self.forward(point, batch, buffers), batch.targets)

    def mean_loss(self, point, buffers: Mapping | None = None) -> torch.Tensor:
        """Full-data mean loss Σ_b w_b L_b as one differentiable scalar (one graph over all
        batches: use for small data; :meth:`grad` and :meth:`hvp` stream batch by batch).
        On data split across processes it is this rank's share (sum it over the ranks)."""
        buffers = self.buffers_at(point) if buffers is None else buffers
        total = 0.0
        for w, b in zip(self.weights, self.batches):
            total = total + w * self.batch_loss(point, b, buffers)
        return total

    # -- BN ------------------------------------------------------------------------------
    def buffers_at(self, point=None) -> dict:
        """Buffers to use at ``point``: the center's (``bn="keep"``), or BN running statistics
        recomputed at ``point`` by a cumulative-average pass over the data (``"recalibrate"``)."""
        if self.bn == "keep" or not self._has_bn or point is None:
            return self.buffers
        return self.recalibrate(point)

    @torch.no_grad()
    def recalibrate(self, point) -> dict:
        """Running statistics of every BatchNorm layer recomputed at ``point``.

        Equivalent to ``reset_running_stats()``, ``momentum=None`` and a train-mode forward
        over every batch, done on a private copy: the model's own buffers are untouched.
        """
        work = self._work()
        if work is None:
            return self._recalibrate_functional(point)
        self._load(work, point, self.buffers)
        bns = _bn_modules(work)
        for _, m in bns:
            m.reset_running_stats()
        with _eval_mode(work, bn_train=True):
            for b in self.batches:
                self._run(work, b)
        return {k: v.clone() for k, v in work.named_buffers()}

    def _recalibrate_functional(self, point) -> dict:
        bufs = {k: v.clone() for k, v in self.buffers.items()}
        for name, m in _bn_modules(self.model):
            prefix = f"{name}." if name else ""
            if m.track_running_stats:
                bufs[prefix + "running_mean"].zero_()
                bufs[prefix + "running_var"].fill_(1.0)
                bufs[prefix + "num_batches_tracked"].zero_()
        tensors = {**self.full_params(point), **bufs}
        with _eval_mode(self.model, bn_train=True):
            for b in self.batches:
                self._call(tensors, b)
        return bufs

    # -- fast no-grad evaluation on a private copy ---------------------------------------
    def _work(self) -> nn.Module | None:
        """A private deep copy of the model for no-grad evaluation (None when the model cannot
        be copied; the functional path is used then). Writing a point into the copy's
        parameters costs one ``copy_`` per tensor, cheaper than ``functional_call``."""
        if self._work_model is None and not self._work_failed:
            try:
                work = copy.deepcopy(self.model).to(self.device)
            except Exception:  # un-copyable models fall back to functional calls
                self._work_failed = True
                return None
            work.eval()
            for p in work.parameters():
                p.requires_grad_(False)
            self._work_params = dict(work.named_parameters())
            self._work_buffers = dict(work.named_buffers())
            for k, v in self._fixed.items():
                self._work_params[k].copy_(v)
            self._work_model = work
        return self._work_model

    def _load(self, work: nn.Module, point: Mapping, buffers: Mapping | None) -> None:
        if point.keys() != self.center.keys():
            self.full_params(point)  # raises the clear message
        for k, v in point.items():
            self._work_params[k].copy_(v)
        if buffers is not None:
            for k, v in buffers.items():
                self._work_buffers[k].copy_(v)

    def _run(self, module: nn.Module, batch: Batch):
        if self._keyed:
            kwargs = dict(batch.inputs)
            if self.loss_name == "model" and batch.targets is not None and self.target_key:
                kwargs[self.target_key] = batch.targets
            return module(**kwargs)
        args = batch.inputs if isinstance(batch.inputs, tuple) else (batch.inputs,)
        return module(*args)

    # -- values --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, point=None, buffers: Mapping | None = None) -> dict[str, float]:
        """Full-data mean loss and accuracy (fraction correct; nan when not a classifier)."""
        point = self.center if point is None else point
        buffers = self.buffers_at(point) if buffers is None else buffers
        work = self._work()
        loss_sum, correct = 0.0, 0.0
        if work is None:
            with _eval_mode(self.model):
                tensors = {**self.full_params(point), **buffers}
                for b in self.batches:
                    out = self._call(tensors, b)
                    loss_sum += float(self.loss_fn(out, b.targets)) * b.weight
                    correct += accuracy_count(out, b.targets)
        else:
            self._load(work, point, buffers)
            for b in self.batches:
                out = self._run(work, b)
                loss_sum += float(self.loss_fn(out, b.targets)) * b.weight
                correct += accuracy_count(out, b.targets)
        loss_sum, correct = (float(v) for v in self._sum(np.array([loss_sum, correct])))
        return {"loss": loss_sum / self.n, "accuracy": correct / self.n}

    def loss(self, point=None, buffers: Mapping | None = None) -> float:
        """Full-data mean loss at ``point`` (the center when None)."""
        return self.evaluate(point, buffers)["loss"]

    def evaluate_batch(self, points: Sequence[Mapping]) -> dict[str, np.ndarray]:
        """Loss and accuracy at each of ``points``: arrays of shape (len(points),)."""
        out = [self.evaluate(p) for p in points]
        return {
            "loss": np.array([o["loss"] for o in out]),
            "accuracy": np.array([o["accuracy"] for o in out]),
        }

    def loss_batch(self, points: Sequence[Mapping]) -> np.ndarray:
        """Full-data mean loss at each of ``points``: shape (len(points),)."""
        return self.evaluate_batch(points)["loss"]

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

    def hvp(self, vectors: Sequence[Mapping] | Mapping, point=None) -> list[P.Point]:
        """H v for each vector, H the Hessian of the full-data mean loss at ``point``.

        One double-backward graph per batch is reused for every vector; per-batch products are
        weighted by n_b/N (the exact mean, not a sum of batch means).
        """
        single = isinstance(vectors, Mapping)
        vecs = [vectors] if single else list(vectors)
        point = self.center if point is None else point
        buffers = self.buffers_at(point)
        leaves = {k: v.detach().requires_grad_(True) for k, v in point.items()}
        keys = list(leaves)
        out = [{k: torch.zeros_like(v) for k, v in leaves.items()} for _ in vecs]
        for w, b in zip(self.weights, self.batches):
            lb = self.batch_loss(leaves, b, buffers)
            gs = torch.autograd.grad(lb, [leaves[k] for k in keys], create_graph=True)
            for i, v in enumerate(vecs):
                gv = sum(torch.sum(g * v[k]) for g, k in zip(gs, keys))
                hv = torch.autograd.grad(
                    gv, [leaves[k] for k in keys], retain_graph=i < len(vecs) - 1,
                    allow_unused=True,
                )
                for k, h in zip(keys, hv):
                    if h is not None:
                        out[i][k].add_(h, alpha=w)
        res = [P.Point(self._sum_point(o)) for o in out]
        return res[0] if single else res

    # -- data-parallel reduction (lossatlas.core.distributed) ---------------------------------
    def _sum(self, x):
        """Σ over the ranks of a weighted sum (a float, array or tensor); ``x`` itself in one
        process or inside :meth:`partial_sums`."""
        return x if self.dist is None or self._partial else self.dist.all_sum(x)

    def _sum_point(self, point: dict) -> dict:
        """A name -> tensor mapping summed over the ranks with one all-reduce."""
        if self.dist is None or self._partial:
            return point
        keys = list(point)
        flat = self.dist.all_sum(torch.cat([point[k].reshape(-1) for k in keys]))
        parts = torch.split(flat, [point[k].numel() for k in keys])
        return {k: p.reshape(point[k].shape) for k, p in zip(keys, parts)}

    def all_sum(self, x):
        """Public form of the reduction for engines that accumulate their own weighted sums
        (n_b/N-weighted over this process's batches): the full-data value."""
        return self._sum(x)

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
