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
>>> abs(obj.loss() - float(torch.nn.functional.cross_entropy(model(X), y))) < 1e-6
True
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lossatlas import params as P
from lossatlas.errors import LossAtlasError

__all__ = ["Batch", "Objective", "as_batches"]

IGNORE_INDEX = -100
LossFn = Callable[[Any, Any], torch.Tensor]


# -- batches --------------------------------------------------------------------------------
@dataclass
class Batch:
    """One slice of the data: ``inputs`` (a tensor, a tuple of tensors or a dict of keyword
    tensors), ``targets`` (or None when the model computes its own loss), and ``weight``: the
    number of targets the loss averages over in this batch."""

    inputs: Any
    targets: Any
    weight: float

    def to(self, device) -> Batch:
        return Batch(_to(self.inputs, device), _to(self.targets, device), self.weight)


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


def _length(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.shape[0]
    if isinstance(x, Mapping):
        return _length(next(iter(x.values())))
    if isinstance(x, (tuple, list)):
        return _length(x[0])
    raise LossAtlasError(f"data of type {type(x).__name__} has no length; pass tensors")


def _slice(x, i: int, j: int):
    if isinstance(x, torch.Tensor):
        return x[i:j]
    if isinstance(x, Mapping):
        return {k: _slice(v, i, j) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_slice(v, i, j) for v in x)
    return x


def _as_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if isinstance(x, Mapping):
        return {k: _as_tensor(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_as_tensor(v) for v in x)
    return torch.as_tensor(x)


def _stack(items: list):
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(items)
    if isinstance(first, (int, float, np.integer, np.floating)):
        return torch.as_tensor(np.asarray(items))
    if isinstance(first, np.ndarray):
        return torch.from_numpy(np.stack(items))
    if isinstance(first, Mapping):
        return {k: _stack([it[k] for it in items]) for k in first}
    if isinstance(first, (tuple, list)):
        return tuple(_stack([it[i] for it in items]) for i in range(len(first)))
    raise LossAtlasError(f"cannot batch data items of type {type(first).__name__}")


def _cat(items: list):
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(items)
    if isinstance(first, Mapping):
        return {k: _cat([it[k] for it in items]) for k in first}
    if isinstance(first, (tuple, list)):
        return tuple(_cat([it[i] for it in items]) for i in range(len(first)))
    raise LossAtlasError(f"cannot concatenate data of type {type(first).__name__}")


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, Mapping):
        return all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _materialize(data) -> Any:
    """Turn the user's data into one in-memory structure: (inputs, targets) or a dict."""
    if isinstance(data, Mapping):
        return _as_tensor(dict(data))
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(
        data[0], (tuple, list)
    ):
        try:
            n0, n1 = _length(_as_tensor(data[0])), _length(_as_tensor(data[1]))
        except (LossAtlasError, IndexError, TypeError):
            n0 = n1 = -1
        if n0 == n1 and n0 > 0:
            return (_as_tensor(data[0]), _as_tensor(data[1]))
    tensors = getattr(data, "tensors", None)
    if isinstance(tensors, (tuple, list)) and len(tensors) == 2:
        return (tensors[0], tensors[1])
    if isinstance(data, torch.utils.data.DataLoader) or (
        not hasattr(data, "__getitem__") and isinstance(data, Iterable)
    ):
        batches = [_as_tensor(b) for b in data]
        if not batches:
            raise LossAtlasError("data: the loader yielded no batch; pass a non-empty dataset")
        return _cat(batches)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        if len(data) == 0:
            raise LossAtlasError("data: the dataset is empty; pass at least one sample")
        whole = _stack([_as_tensor(data[i]) for i in range(len(data))])
        again = _stack([_as_tensor(data[0])])
        if not _equal(_slice(whole, 0, 1), again):
            raise LossAtlasError(
                "data: the dataset returns a different item 0 on a second read (random "
                "augmentation?); pass a dataset without random transforms for evaluation"
            )
        return whole
    raise LossAtlasError(
        f"data of type {type(data).__name__} is not understood; pass a Dataset, a DataLoader, "
        "an (inputs, targets) tuple of tensors or a dict of tensors"
    )


def as_batches(
    data, batch_size: int | None, target_key: str | None = "labels", device=None
) -> list[Batch]:
    """Split ``data`` into in-memory :class:`Batch` objects of ``batch_size`` (all at once when
    None). Dict data: ``target_key`` names the targets (None: the model computes its loss)."""
    whole = _materialize(data)
    if isinstance(whole, Mapping):
        inputs = {k: v for k, v in whole.items() if k != target_key}
        targets = whole.get(target_key) if target_key else None
    elif isinstance(whole, (tuple, list)) and len(whole) == 2:
        inputs, targets = whole
    else:
        raise LossAtlasError(
            "data items must be (input, target) pairs or dicts; wrap other layouts in a Dataset"
        )
    n = _length(inputs)
    if batch_size is None:
        batch_size = n
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LossAtlasError(f"batch_size={batch_size!r} must be a positive integer or None")
    batches = []
    for i in range(0, n, batch_size):
        j = min(i + batch_size, n)
        tgt = _slice(targets, i, j) if targets is not None else None
        inp = _slice(inputs, i, j)
        batches.append(Batch(inp, tgt, _target_count(tgt, j - i)))
    if device is not None:
        batches = [b.to(device) for b in batches]
    return batches


def _target_count(targets, n: int) -> float:
    """How many targets the loss averages over: non-ignored class labels, else samples."""
    if isinstance(targets, torch.Tensor) and not targets.is_floating_point():
        return float((targets != IGNORE_INDEX).sum())
    return float(n)


# -- losses ---------------------------------------------------------------------------------
def _logits_of(output):
    """The logits of a model output: a tensor, ``.logits``, ``["logits"]`` or the first item."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is not None:
        return logits
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if isinstance(output, (tuple, list)):
        return output[0]
    raise LossAtlasError(
        f"cannot find logits in a model output of type {type(output).__name__}; return a tensor "
        "or pass a custom loss callable"
    )


def _cross_entropy(output, target):
    logits = _logits_of(output)
    if logits.dim() > 2 and target.dim() == logits.dim() - 1:  # (B, T, C) token logits
        logits = logits.reshape(-1, logits.shape[-1])
        target = target.reshape(-1)
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)


def _mse(output, target):
    out = _logits_of(output)
    if out.shape != target.shape:
        target = target.reshape(out.shape)
    return F.mse_loss(out, target.to(out.dtype))


def _nll(output, target):
    return F.nll_loss(_logits_of(output), target)


def _model_loss(output, target):
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if loss is None:
        raise LossAtlasError(
            'loss="model" needs a model output with a .loss (Hugging Face style); pass '
            "labels in the batch or choose loss='cross_entropy'"
        )
    return loss


LOSSES: dict[str, LossFn] = {
    "cross_entropy": _cross_entropy,
    "mse": _mse,
    "nll": _nll,
    "model": _model_loss,
}


def _resolve_loss(loss) -> tuple[str, LossFn]:
    if callable(loss) and not isinstance(loss, str):
        return getattr(loss, "__name__", type(loss).__name__), loss
    if isinstance(loss, str) and loss in LOSSES:
        return loss, LOSSES[loss]
    raise LossAtlasError(
        f"loss={loss!r} is unknown; use one of {sorted(LOSSES)} or a callable "
        "loss(output, target) returning the batch mean"
    )


def _accuracy_count(output, target) -> float:
    """Number of correct argmax predictions (nan when the targets are not class labels)."""
    if target is None or not isinstance(target, torch.Tensor) or target.is_floating_point():
        return math.nan
    try:
        logits = _logits_of(output)
    except LossAtlasError:
        return math.nan
    if logits.dim() < 2 or logits.shape[:-1] != target.shape:
        return math.nan
    hits = logits.argmax(-1) == target  # an ignored target (-100) never equals a class index
    return float(hits.sum())


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


# -- the objective --------------------------------------------------------------------------
class Objective:
    """L(θ) = Σ_b (n_b/N) · loss(model(x_b; θ), y_b): the full-data mean loss of ``model``.

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
    params : names of the perturbed parameters, or None for :func:`lossatlas.params.select`
        with ``include`` / ``exclude`` / ``trainable_only``.
    check : run the determinism check (two passes over the first batch agree).
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
    ):
        if not isinstance(model, nn.Module):
            raise LossAtlasError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if bn not in ("keep", "recalibrate"):
            raise LossAtlasError(f'bn={bn!r} is unknown; use "keep" or "recalibrate"')
        self.model = model
        self.loss_name, self.loss_fn = _resolve_loss(loss)
        self.bn = bn
        self.batch_size = batch_size
        self.target_key = target_key
        first = next(iter(model.parameters()), None)
        self.device = torch.device(device) if device is not None else (
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
        self.batches = as_batches(data, batch_size, target_key, self.device)
        self.n = sum(b.weight for b in self.batches)
        if self.n <= 0:
            raise LossAtlasError("data: no target to average over (all ignored?)")
        self.weights = [b.weight / self.n for b in self.batches]
        self.num_samples = sum(_length(b.inputs) for b in self.batches)
        self._keyed = isinstance(self.batches[0].inputs, Mapping)
        self._work_model: nn.Module | None = None
        self._work_failed = False
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
        """Model output on one batch at ``point`` (eval mode; differentiable)."""
        buffers = self.buffers if buffers is None else buffers
        tensors = {**self.full_params(point), **buffers}
        with _eval_mode(self.model):
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
        batches: use for small data; :meth:`grad` and :meth:`hvp` stream batch by batch)."""
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
                    correct += _accuracy_count(out, b.targets)
        else:
            self._load(work, point, buffers)
            for b in self.batches:
                out = self._run(work, b)
                loss_sum += float(self.loss_fn(out, b.targets)) * b.weight
                correct += _accuracy_count(out, b.targets)
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
        return P.Point(total)

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
        res = [P.Point(o) for o in out]
        return res[0] if single else res

    # -- safety --------------------------------------------------------------------------
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
            target_key=self.target_key, check=False,
        )

    @property
    def num_classes(self) -> int | None:
        """Classes of the output (last dim of the logits), None when not a classifier."""
        with torch.no_grad():
            b = self.batches[0]
            try:
                logits = _logits_of(self.forward(self.center, b))
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
        }

    def __repr__(self) -> str:
        return (
            f"Objective({type(self.model).__name__}, {self.num_samples} samples in "
            f"{len(self.batches)} batches, loss={self.loss_name}, bn={self.bn}, "
            f"{self.center.numel()} parameters)"
        )
