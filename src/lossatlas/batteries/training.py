"""Training with recorded checkpoints: :func:`train` (:class:`Recorder`, :class:`Run` and
:func:`load_run` live in :mod:`lossatlas.batteries.runs` and are re-exported here).

:func:`train` runs SGD with momentum, weight decay and a learning-rate schedule on the user's
model (in place) and records checkpoints: the initialization (index 0, before any step), then
every epoch or every ``k`` steps into a run folder (or memory), described in
:mod:`lossatlas.batteries.runs`.

Reproducibility: ``seed`` controls everything *after* the initialization (shuffling, dropout);
the initialization is the user's (build the model after :func:`seed_everything`, or pass a
seed to ``la.zoo.build``). With ``deterministic=True`` the same seed and the same initial
weights give bit-identical checkpoints on the same machine.

>>> import torch, lossatlas.batteries.training as T
>>> X, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
>>> model = torch.nn.Linear(4, 3)
>>> run = T.train(model, (X, y), epochs=2, batch_size=16, progress=False)
>>> len(run.checkpoints), run.epochs.tolist()
(3, [0.0, 1.0, 2.0])
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lossatlas.batteries.runs import Record, Recorder, Run, check_every, is_int, load_run
from lossatlas.core import progress as _progress
from lossatlas.core import resources
from lossatlas.core.batching import Batch
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.losses import check_targets, resolve_loss
from lossatlas.core.objective import Objective, module_outputs
from lossatlas.core.params import hash_point, select

__all__ = [
    "Recipe",
    "Recorder",
    "Run",
    "as_tensors",
    "evaluate",
    "load_run",
    "seed_everything",
    "train",
]

SCHEDULES = ("constant", "step", "cosine")
_OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
_X_KEYS = ("x", "input", "inputs", "input_ids", "data", "image", "images", "features")
_Y_KEYS = ("y", "label", "labels", "target", "targets")
LossArg = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# -- seeds and determinism ------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and all GPUs).

    Call it before building a model to fix its initialization.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True) -> Iterator[None]:
    """Within the block, ``torch.use_deterministic_algorithms(True, warn_only=True)`` and
    deterministic cuDNN; the previous settings come back on exit."""
    if not enabled:
        yield
        return
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn


# -- data -----------------------------------------------------------------------------------
def _pick(d: Mapping, keys: Sequence[str], what: str) -> torch.Tensor:
    for k in keys:
        if k in d:
            return d[k]
    raise LossAtlasError(
        f"dataset items are dicts with keys {sorted(d)} but none names the {what}; "
        f"use one of {list(keys)} or return (x, y) tuples"
    )


def _split_item(item: Any) -> tuple[Any, Any]:
    if isinstance(item, Mapping):
        return _pick(item, _X_KEYS, "input"), _pick(item, _Y_KEYS, "target")
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    raise LossAtlasError(
        f"dataset items must be (x, y) pairs or dicts with 'x' and 'y', got {type(item).__name__}; "
        "wrap the dataset so that __getitem__ returns (input, target)"
    )


def as_tensors(data: Any, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)`` tensors from a pair of tensors, a dataset with ``.tensors`` (``TensorDataset``,
    lossatlas' ArrayDataset), a ``Subset`` of one, or any map-style dataset whose items are
    ``(x, y)`` or dicts (materialized once, with ``default_collate``)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
        isinstance(t, torch.Tensor) for t in data
    ):
        X, y = data
    elif isinstance(getattr(data, "tensors", None), (tuple, list)) and len(data.tensors) >= 2:
        X, y = data.tensors[0], data.tensors[1]
    elif isinstance(data, torch.utils.data.Subset) and isinstance(
        getattr(data.dataset, "tensors", None), (tuple, list)
    ):
        X, y = as_tensors(data.dataset)
        idx = torch.as_tensor(list(data.indices), dtype=torch.long)
        X, y = X[idx], y[idx]
    else:
        try:
            n = len(data)
        except TypeError:
            raise LossAtlasError(
                f"data of type {type(data).__name__} has no length; pass a map-style Dataset, "
                "a TensorDataset or a pair (X, y) of tensors"
            ) from None
        items = [
            _split_item(data[i])
            for i in _progress.track(range(n), "reading data", disable=not progress or n < 5000)
        ]
        if not items:
            raise LossAtlasError("data is empty; pass a dataset with at least one example")
        X = torch.utils.data.default_collate([x for x, _ in items])
        y = torch.utils.data.default_collate([t for _, t in items])
    X, y = torch.as_tensor(X), torch.as_tensor(y)
    if len(X) != len(y):
        raise LossAtlasError(
            f"data has {len(X)} inputs but {len(y)} targets; pass inputs and targets of equal "
            "length"
        )
    if len(X) == 0:
        raise LossAtlasError("data is empty; pass a dataset with at least one example")
    return X, y


def _data_info(data: Any, n: int) -> dict:
    if data is None:
        return {}
    info: dict[str, Any] = {"class": type(data).__name__, "len": n}
    for key in ("name", "num_classes", "input_shape", "split"):
        value = getattr(data, key, None)
        if value is not None:
            info[key] = list(value) if isinstance(value, (tuple, torch.Size)) else value
    extra = getattr(data, "info", None)  # e.g. ArrayDataset.info: seed, train_size, label_noise
    if isinstance(extra, Mapping):  # scalars only (index lists can be long)
        info["info"] = {
            str(k): v for k, v in extra.items() if isinstance(v, (str, int, float, bool))
        }
        if isinstance(extra.get("load"), Mapping):  # datasets.load's name and options
            info["load"] = dict(extra["load"])
    return info


def _loss_fn(loss: LossArg) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The Objective's loss of that name (logits found in Hugging Face-style outputs too)."""
    return resolve_loss(loss)[1]


def _loss_name(loss: LossArg) -> str:
    return resolve_loss(loss)[0]


def _data_objective(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss: LossArg, batch_size: int,
    device: torch.device,
) -> Objective:
    """The :class:`~lossatlas.core.objective.Objective` that evaluates ``model`` on ``(X, y)``.

    Args:
        model: the model; every parameter is in the objective's points (:func:`_metrics`
            passes the live ones).
        X, y: inputs and targets, already on ``device``.
        loss: a loss name or callable.
        batch_size: samples per forward pass; the result does not depend on it.
        device: where the objective evaluates.

    Returns:
        The objective: its ``evaluate`` is the exact full-data mean loss and accuracy in eval
        mode, each batch weighted by its number of targets. One process and no determinism
        probe: training evaluates its own data on this machine.
    """
    return Objective(
        model, (X, y), loss=loss, batch_size=batch_size, device=device,
        params=[name for name, _ in model.named_parameters()], check=False, distributed=False,
    )


def _metrics(obj: Objective, model: nn.Module) -> dict[str, float]:
    """``{"loss", "accuracy"}`` of ``model`` as it is now (parameters and BN buffers) on the
    objective's data, in eval mode; the model itself is not touched. Run functionally on the
    live tensors: no private copy of the model is made (it would hold one more copy of every
    parameter for the whole training)."""
    return obj.evaluate(dict(model.named_parameters()), dict(model.named_buffers()),
                        private_copy=False)


def _probe(model: nn.Module, X: torch.Tensor) -> Any:
    """The eval-mode output on the first 64 inputs, or the exception the forward raised; BN
    running statistics and the model's mode are left as they were."""
    try:
        return module_outputs(model, X[:64], 64)[0]
    except Exception as exc:  # returned: the caller names it in its one sentence
        return exc


def _explain(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss: LossArg, exc: Exception
) -> LossAtlasError:
    """The one sentence for a model that failed (``exc``) on the training data: the targets'
    own (float labels, labels out of range) when the model runs on the first inputs, else
    "cannot be evaluated on train_data" with the shapes and the first line of the error."""
    out = _probe(model, X)
    if not isinstance(out, Exception):
        check_targets(out, y, _loss_name(loss), type(model).__name__)  # raises when they are bad
        if isinstance(exc, LossAtlasError):
            return exc
    cause = out if isinstance(exc, LossAtlasError) else exc
    return LossAtlasError(
        f"the model cannot be evaluated on train_data with loss={_loss_name(loss)!r} (inputs "
        f"{tuple(X.shape)}, targets {tuple(y.shape)}: {str(cause).splitlines()[0]}); build the "
        "model for this dataset's shapes"
    )


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def evaluate(
    model: nn.Module,
    data: Any,
    loss: LossArg = "cross_entropy",
    batch_size: int = 1024,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """``{"loss", "accuracy"}``: full-dataset means in eval mode (accuracy is NaN unless the
    targets are class indices and the output is ``(N, C)``), through the Objective's
    evaluation. The model (its mode, parameters and buffers) is left as it is."""
    X, y = as_tensors(data, progress=False)
    dev = resources.device(device) if device is not None else _model_device(model)
    return _metrics(_data_objective(model, X.to(dev), y.to(dev), loss, batch_size, dev), model)


# -- the recipe -----------------------------------------------------------------------------
@dataclass
class Recipe:
    """The hyperparameters of one :func:`train` call (see there), checked and made plain Python
    numbers on construction, and what follows from them: the learning rate of each step and
    the record kept in the run folder."""

    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    schedule: str
    milestones: Sequence[int] | None
    gamma: float
    seed: int
    deterministic: bool
    record: Record
    loss: LossArg
    optimizer: str
    betas: tuple[float, float]
    eval_batch_size: int

    def __post_init__(self) -> None:
        """Check every hyperparameter (one sentence naming the first bad one and a valid
        value) and turn them into plain Python ints and floats, the milestones filled in."""
        r = self
        if r.optimizer not in _OPTIMIZERS:
            raise LossAtlasError(
                f"optimizer={r.optimizer!r} is unknown; use one of {list(_OPTIMIZERS)}")
        if not is_int(r.epochs) or r.epochs < 1:
            raise LossAtlasError(
                f"epochs={r.epochs!r} must be a positive integer; pass e.g. epochs=30")
        if not r.lr > 0:
            raise LossAtlasError(f"lr={r.lr!r} must be positive; pass e.g. lr=0.1")
        if not r.momentum >= 0:
            raise LossAtlasError(f"momentum={r.momentum!r} must be >= 0; pass e.g. momentum=0.9")
        if not r.weight_decay >= 0:
            raise LossAtlasError(
                f"weight_decay={r.weight_decay!r} must be >= 0; pass e.g. 5e-4 or 0")
        if not is_int(r.batch_size) or r.batch_size < 1:
            raise LossAtlasError(
                f"batch_size={r.batch_size!r} must be a positive integer; e.g. 128")
        if r.schedule not in SCHEDULES:
            raise LossAtlasError(
                f"schedule={r.schedule!r} is unknown; use one of {list(SCHEDULES)}")
        if not r.gamma > 0:
            raise LossAtlasError(f"gamma={r.gamma!r} must be positive; pass e.g. gamma=0.1")
        self.record = check_every(self.record)
        ms = _check_milestones(self.milestones, self.epochs, self.schedule)
        _loss_fn(self.loss)  # an unknown loss name is refused before any data is read
        self.epochs, self.batch_size = int(r.epochs), int(r.batch_size)
        self.milestones = [int(m) for m in ms]
        self.lr, self.momentum, self.gamma = float(r.lr), float(r.momentum), float(r.gamma)
        self.weight_decay = float(r.weight_decay)

    def hyperparameters(self) -> dict[str, Any]:
        """What the run folder records (and compares on a rerun) as ``hyperparameters``."""
        hyper = {
            "epochs": self.epochs, "lr": self.lr, "momentum": self.momentum,
            "weight_decay": self.weight_decay, "batch_size": self.batch_size,
            "schedule": self.schedule, "milestones": self.milestones, "gamma": self.gamma,
            "seed": self.seed, "deterministic": self.deterministic, "record": self.record,
            "loss": _loss_name(self.loss), "optimizer": _OPTIMIZERS[self.optimizer],
        }
        if self.optimizer != "sgd":
            hyper["betas"] = [float(b) for b in self.betas]
        return hyper

    def lr_at(self, steps_per_epoch: int) -> Callable[[int], float]:
        """The learning rate of step t (counted from 0), see :func:`train`."""
        return _lr_schedule(self.schedule, self.lr, self.epochs, steps_per_epoch,
                            self.milestones, self.gamma)


def _lr_schedule(
    schedule: str, lr: float, epochs: int, steps_per_epoch: int, milestones: Sequence[int],
    gamma: float,
) -> Callable[[int], float]:
    total = epochs * steps_per_epoch

    def constant(t: int) -> float:
        return lr

    def step(t: int) -> float:
        epoch = t // steps_per_epoch
        return lr * gamma ** sum(1 for m in milestones if epoch >= m)

    def cosine(t: int) -> float:
        return 0.5 * lr * (1.0 + math.cos(math.pi * t / total))

    return {"constant": constant, "step": step, "cosine": cosine}[schedule]


def _check_milestones(
    milestones: Sequence[int] | None, epochs: int, schedule: str
) -> list[int]:
    """The epochs at which ``schedule="step"`` multiplies the rate by ``gamma``: the given ones
    (increasing, inside the run) or half and three quarters of ``epochs``."""
    if milestones is None:
        default = [epochs // 2, (3 * epochs) // 4] if schedule == "step" else []
        return sorted({m for m in default if 0 < m < epochs})
    ms = list(milestones)
    if any(not is_int(m) or not 0 < m < epochs for m in ms) or ms != sorted(ms):
        raise LossAtlasError(
            f"milestones={milestones!r} must be increasing epoch numbers between 1 and "
            f"{epochs - 1}; pass e.g. milestones=[{epochs // 2}]"
        )
    return ms


def _optimizer(model: nn.Module, r: Recipe) -> torch.optim.Optimizer:
    """SGD (momentum, L2 weight decay added to the gradient), Adam or AdamW over every
    parameter of ``model``, at the recipe's base rate (the schedule sets each step's)."""
    if r.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum,
                               weight_decay=r.weight_decay)
    return getattr(torch.optim, _OPTIMIZERS[r.optimizer])(
        model.parameters(), lr=r.lr, betas=tuple(r.betas), weight_decay=r.weight_decay)


def _recorder(
    model: nn.Module,
    r: Recipe,
    out: str | os.PathLike | None,
    data_info: dict,
    steps_per_epoch: int,
    device: torch.device,
    overwrite: bool,
    callbacks: Sequence[Any],
) -> Recorder:
    """The run's :class:`Recorder`: a fresh run, the interrupted one to continue, or the finished
    one to leave alone.

    Args:
        model: the model to record (its initialization is hashed into the config).
        r: the recipe (its hyperparameters are recorded and compared).
        out, overwrite, callbacks: as in :func:`train`.
        data_info: ``{"train": ..., "test": ...}`` descriptions of the data.
        steps_per_epoch, device: recorded in the run's info.

    Returns:
        The recorder; its ``config`` (hyperparameters, data, the initialization's hash) is
        what a rerun on the same folder must match.
    """
    names = select(model)
    init_hash = hash_point({k: v for k, v in model.named_parameters() if k in names})
    hyper = r.hyperparameters()
    return Recorder(
        out, model, r.record,
        info={
            "hyperparameters": hyper, "seed": r.seed, "data": data_info,
            "steps_per_epoch": steps_per_epoch, "device": str(device), "init_hash": init_hash,
        },
        config={"hyperparameters": hyper, "data": data_info, "init_hash": init_hash},
        overwrite=overwrite, resume=True, callbacks=callbacks,
    )


# -- the loop -------------------------------------------------------------------------------
@dataclass
class _Loop:
    """One training run in progress: what it works with and where it stands.

    ``epoch``, ``pos`` (the next sample of this epoch's order) and ``generator`` (the order's
    generator state at the start of this epoch) locate the data order; with ``step``, ``lr``,
    ``running`` (the smoothed minibatch loss), the optimizer state and the RNG they are the
    resume state written with every checkpoint.
    """

    model: nn.Module
    recipe: Recipe
    X: torch.Tensor
    y: torch.Tensor
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    rec: Recorder
    opt: torch.optim.Optimizer
    gen: torch.Generator
    lr_at: Callable[[int], float]
    steps_per_epoch: int
    fork_devices: list[int]
    objectives: dict[str, Objective] = field(default_factory=dict)
    bar: Any = None
    task: Any = None
    epoch: int = 0
    pos: int = 0
    generator: torch.Tensor | None = None
    step: int = 0
    lr: float = math.nan
    running: float = math.nan

    @property
    def hook(self) -> dict[str, Any]:
        """What the callbacks measure on."""
        return {"data": (self.X, self.y), "loss": self.recipe.loss}


def _evaluators(loop: _Loop, test: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """Build the Objectives that evaluate every checkpoint on the train (and test) data; a
    model that cannot run on the training data gets training's own sentence."""
    r, dev = loop.recipe, loop.X.device
    try:
        loop.objectives["train"] = _data_objective(loop.model, loop.X, loop.y, r.loss,
                                                   r.eval_batch_size, dev)
    except LossAtlasError as exc:
        err = _explain(loop.model, loop.X, loop.y, r.loss, exc)
        if err is exc:
            raise
        raise err from exc
    if test is not None:
        loop.objectives["test"] = _data_objective(loop.model, *test, r.loss, r.eval_batch_size,
                                                  dev)


def _checkpoint(loop: _Loop, epoch: float) -> None:
    """Record the model as it is now: exact full-data metrics, then the checkpoint and the
    resume state (data order, step, rate, optimizer, RNG)."""
    extra = {}
    for split, obj in loop.objectives.items():
        m = _metrics(obj, loop.model)
        extra.update({f"{split}_loss": m["loss"], f"{split}_acc": m["accuracy"]})
    resume = {"epoch": loop.epoch, "pos": loop.pos, "generator": loop.generator,
              "index": len(loop.rec.entries), "step": loop.step, "lr": loop.lr,
              "running": loop.running,
              "optimizer": loop.opt.state_dict(), "torch_rng": torch.get_rng_state()}
    if loop.fork_devices:
        resume["cuda_rng"] = torch.cuda.get_rng_state(loop.fork_devices[0])
    loop.rec.record(loop.model, epoch=epoch, step=loop.step, lr=loop.lr, resume=resume, **extra)


def _start(loop: _Loop) -> None:
    """A fresh run: checkpoint 0 (the initialization) and the callbacks' step 0."""
    loop.step, loop.lr = 0, loop.lr_at(0)
    try:
        _checkpoint(loop, 0)
    except (RuntimeError, ValueError, IndexError) as exc:
        if isinstance(exc, LossAtlasError):
            raise
        raise _explain(loop.model, loop.X, loop.y, loop.recipe.loss, exc) from exc
    loop.rec.step(loop.model, loop.opt, step=0, lr=loop.lr, **loop.hook)


def _restore(loop: _Loop) -> None:
    """An interrupted run: weights, optimizer, data order and RNG as the last checkpoint left
    them, so the rest is bit-identical to an uninterrupted run."""
    st = loop.rec.resume_state
    loop.rec.run.load_into(loop.model)
    loop.opt.load_state_dict(st["optimizer"])
    loop.gen.set_state(st["generator"])
    torch.set_rng_state(st["torch_rng"])
    if loop.fork_devices and "cuda_rng" in st:
        torch.cuda.set_rng_state(st["cuda_rng"], loop.fork_devices[0])
    loop.epoch, loop.pos = int(st["epoch"]), int(st["pos"])
    loop.step, loop.lr, loop.running = int(st["step"]), float(st["lr"]), float(st["running"])
    if loop.bar is not None:
        loop.bar.update(loop.task, advance=loop.step)


def _sgd_step(loop: _Loop, idx: torch.Tensor, epoch: int) -> str | None:
    """One update on the minibatch ``idx`` at this step's rate; the reason to stop when its
    loss is not finite (nothing is updated then), else None."""
    model, opt = loop.model, loop.opt
    loop.lr = loop.lr_at(loop.step)
    for group in opt.param_groups:
        group["lr"] = loop.lr
    opt.zero_grad(set_to_none=True)
    batch = Batch(loop.X[idx], loop.y[idx], float(len(idx)))
    batch_loss = loop.loss_fn(loop.objectives["train"].forward_module(model, batch), batch.targets)
    value = float(batch_loss.detach())
    if not math.isfinite(value):
        return (f"non-finite training loss ({value}) at epoch {epoch + 1}, step "
                f"{loop.step + 1}; lower lr (now {loop.lr:g}) or check the data and loss")
    batch_loss.backward()
    opt.step()
    loop.step += 1
    if loop.rec.callbacks:
        loop.rec.step(model, opt, step=loop.step, lr=loop.lr, **loop.hook)
    loop.running = value if math.isnan(loop.running) else 0.9 * loop.running + 0.1 * value
    if loop.bar is not None:
        loop.bar.update(
            loop.task, advance=1, description=f"training epoch {epoch + 1}/"
            f"{loop.recipe.epochs} loss {loop.running:.4f}",
        )
    return None


def _epoch_of(loop: _Loop) -> float:
    """The epoch a checkpoint is recorded at: whole after a whole epoch, else a fraction."""
    whole = loop.recipe.record == "epoch" or loop.step % loop.steps_per_epoch == 0
    return loop.step // loop.steps_per_epoch if whole else round(
        loop.step / loop.steps_per_epoch, 6)


def _run_epoch(loop: _Loop, epoch: int) -> str | None:
    """Epoch ``epoch`` (from where a resumed run stopped), in an order drawn from the run's
    generator, with the checkpoints that fall in it; the reason to stop, or None."""
    r, n = loop.recipe, len(loop.X)
    loop.model.train()
    start = loop.pos if epoch == loop.epoch else 0
    loop.epoch, loop.generator = epoch, loop.gen.get_state()
    perm = torch.randperm(n, generator=loop.gen).to(loop.X.device)
    for i in range(start, n, r.batch_size):
        loop.pos = i + r.batch_size
        reason = _sgd_step(loop, perm[i : i + r.batch_size], epoch)
        if reason is not None:
            return reason
        end = i + r.batch_size >= n
        if loop.rec.due(loop.step, end) or (end and epoch == r.epochs - 1):
            if not all(bool(torch.isfinite(p).all()) for p in loop.model.parameters()):
                return (f"non-finite parameters after epoch {epoch + 1}, step {loop.step}; "
                        f"lower lr (now {loop.lr:g})")
            _checkpoint(loop, _epoch_of(loop))
    return None


# -- train ----------------------------------------------------------------------------------
def train(
    model: nn.Module,
    train_data: Any,
    *,
    epochs: int = 30,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    schedule: str = "constant",
    milestones: Sequence[int] | None = None,
    gamma: float = 0.1,
    seed: int = 0,
    deterministic: bool = True,
    record: Record = "epoch",
    out: str | os.PathLike | None = None,
    test_data: Any = None,
    loss: LossArg = "cross_entropy",
    device: str | torch.device | None = None,
    progress: bool = True,
    overwrite: bool = False,
    eval_batch_size: int = 1024,
    callbacks: Sequence[Any] = (),
    optimizer: str = "sgd",
    betas: tuple[float, float] = (0.9, 0.999),
) -> Run:
    """Train ``model`` in place with SGD and record checkpoints; return the :class:`Run`.

    - SGD with ``momentum`` and ``weight_decay`` (L2 added to the gradient, PyTorch's SGD);
      learning rate per step: ``constant``; ``step``: ``lr·gamma^k`` after the k-th of the
      ``milestones`` (epochs; default half and three quarters of ``epochs``); ``cosine``:
      ``lr·½(1 + cos(π t / T))`` over the T steps.
    - Each epoch visits every example once in an order drawn from ``torch.Generator`` seeded
      with ``seed`` (last batch may be smaller). Dropout etc. draw from torch's global RNG,
      forked and seeded with ``seed`` for the call, so the caller's RNG state is untouched.
      The initialization is the caller's: seed it with :func:`seed_everything` (or the zoo's
      ``seed=``) before building the model. ``deterministic=True`` turns on
      ``torch.use_deterministic_algorithms(True, warn_only=True)`` for the call (restored after);
      on CUDA also set ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` before starting Python.
    - ``record``: checkpoint 0 is the initialization; then ``"epoch"`` (after every epoch),
      ``k`` (every k steps, and after the last step) or ``None`` (the final weights only).
      ``train_loss/acc`` (and ``test_loss/acc`` when ``test_data`` is given) of every
      checkpoint are exact full-dataset means in eval mode (the Objective's evaluation, in
      batches of ``eval_batch_size``).
    - ``out``: run folder (see the module docstring); ``None`` keeps checkpoints in memory.
      Rerunning the same call on a finished run trains nothing: the run is returned as it is
      (``run.already_done``), its last weights loaded into ``model``. An interrupted run
      continues from its last checkpoint (``run.resumed_after``: its index; optimizer, RNG and
      data order restored: the result is bit-identical to an uninterrupted run).
      ``overwrite=True`` replaces the run in ``out``, but only once the new one has finished
      (it is recorded in ``OUT.partial``).
    - A non-finite minibatch loss (or parameter) stops training with a ``RuntimeWarning``;
      ``run.stopped_reason`` says why and every earlier checkpoint is kept.
    - ``data``: a dataset with ``.tensors``, a pair ``(X, y)``, or any map-style dataset of
      ``(x, y)`` / dict items (read once into tensors); held on ``device`` (default: the
      model's) and batched by index slicing.
    - ``callbacks``: objects with ``on_step(recorder, model, optimizer, *, step, lr, data,
      loss)`` called at step 0 and after every update (e.g. ``la.track.Sharpness(every=10)``);
      their tables go into the run (``run.track(name)``).
    - ``optimizer``: ``"sgd"`` (``batch_size >= len(data)`` and ``momentum=0`` is full-batch
      GD), ``"adam"`` or ``"adamw"`` (with ``betas``; ``momentum`` is then unused).

    The steps: :class:`Recipe` checks the hyperparameters, the data go to the device, a
    :class:`Recorder` opens (or finds finished) the run, then under the seeded RNG either a
    fresh start (checkpoint 0) or a restore, and one epoch after another.

    Args:
        model: trained in place (moved to ``device``).
        train_data, test_data: see ``data`` above (``test_data`` only evaluated).
        epochs, lr, momentum, weight_decay, batch_size, schedule, milestones, gamma: the
            recipe above.
        seed, deterministic: the data order and the RNG of the call; deterministic kernels.
        record, out, overwrite: which checkpoints, where, replacing what.
        loss: a loss name (``"cross_entropy"``, ``"mse"``, ...) or ``loss(output, y)``.
        device, progress, eval_batch_size, callbacks, optimizer, betas: as above.

    Returns:
        The :class:`Run` (checkpoints, metrics, status; ``already_done`` / ``resumed_after``).
    """
    r = Recipe(
        epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
        batch_size=batch_size, schedule=schedule, milestones=milestones, gamma=gamma, seed=seed,
        deterministic=deterministic, record=record, loss=loss, optimizer=optimizer, betas=betas,
        eval_batch_size=eval_batch_size,
    )
    if not any(p.requires_grad for p in model.parameters()):
        raise LossAtlasError("model has no trainable parameters; set requires_grad=True on some")
    loss_fn = _loss_fn(loss)
    dev = resources.device(device) if device is not None else _model_device(model)
    model.to(dev)
    X, y = (t.to(dev) for t in as_tensors(train_data, progress))
    test = None
    if test_data is not None:
        test = tuple(t.to(dev) for t in as_tensors(test_data, progress))
    steps_per_epoch = math.ceil(len(X) / r.batch_size)
    data_info = {"train": _data_info(train_data, len(X))}
    if test is not None:
        data_info["test"] = _data_info(test_data, len(test[0]))
    rec = _recorder(model, r, out, data_info, steps_per_epoch, dev, overwrite, callbacks)
    if rec.already_done:  # the same run, finished: nothing to train
        rec.run.load_into(model)
        run = rec.finish()
        run.already_done = True
        return run
    gen = torch.Generator().manual_seed(r.seed)
    loop = _Loop(
        model=model, recipe=r, X=X, y=y, loss_fn=loss_fn, rec=rec, opt=_optimizer(model, r),
        gen=gen, lr_at=r.lr_at(steps_per_epoch), steps_per_epoch=steps_per_epoch,
        fork_devices=[dev.index or 0] if dev.type == "cuda" else [],
        generator=gen.get_state(),
    )
    show = progress and not _progress.quiet()
    was_training = model.training
    finished = False
    try:
        with (
            deterministic_algorithms(r.deterministic),
            torch.random.fork_rng(devices=loop.fork_devices),
            _progress.make_progress() if show else contextlib.nullcontext() as bar,
        ):
            _evaluators(loop, test)  # before the seed: its probes draw nothing that counts
            torch.manual_seed(r.seed)
            loop.bar = bar
            if bar is not None:
                loop.task = bar.add_task("training", total=r.epochs * steps_per_epoch)
            if rec.resume_state is None:
                _start(loop)
            else:  # continue after the last checkpoint, exactly where it was
                _restore(loop)
            for epoch in range(loop.epoch, r.epochs):
                reason = _run_epoch(loop, epoch)
                if reason is not None:
                    warnings.warn(f"training stopped: {reason}", RuntimeWarning, stacklevel=2)
                    rec.stop(reason)
                    break
        finished = True
    finally:
        model.train(was_training)
        if not finished:
            rec.update_info(status="interrupted")
            rec.close()
    run = rec.finish()
    if rec.resume_state is not None:
        run.resumed_after = rec.resume_state["index"]
    return run
