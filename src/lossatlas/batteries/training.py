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
from typing import Any

import numpy as np
import torch
from torch import nn

from lossatlas.batteries.runs import Record, Recorder, Run, _check_every, _is_int, load_run
from lossatlas.core import progress as _progress
from lossatlas.core import resources
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.losses import IGNORE_INDEX, accuracy_count, check_targets, resolve_loss
from lossatlas.core.params import hash_point, select

__all__ = [
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


def _evaluate_tensors(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable,
    batch_size: int,
) -> dict[str, float]:
    """Exact full-data mean loss and accuracy in eval mode (each batch weighted by its size)."""
    was_training = model.training
    model.eval()
    total, correct, n = 0.0, 0.0, len(X)
    try:
        with torch.no_grad():
            for i in range(0, n, batch_size):
                xb, yb = X[i : i + batch_size], y[i : i + batch_size]
                out = model(xb)
                total += float(loss_fn(out, yb)) * len(xb)
                correct += accuracy_count(out, yb)  # nan unless class labels
    finally:
        model.train(was_training)
    counted = float((y != IGNORE_INDEX).sum()) if not y.is_floating_point() else y.numel()
    return {"loss": total / n, "accuracy": correct / max(counted, 1.0)}


def _explain_targets(model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss: LossArg) -> None:
    """Raise the targets' own one-sentence error (float labels, labels out of range) when the
    model runs on the inputs, so a failed first evaluation names the real cause."""
    was_training = model.training
    try:
        model.eval()  # BN running statistics stay untouched
        with torch.no_grad():
            out = model(X[:64])
    except Exception:
        return
    finally:
        model.train(was_training)
    check_targets(out, y, _loss_name(loss), type(model).__name__)


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
    targets are class indices and the output is ``(N, C)``). The model's mode is restored."""
    X, y = as_tensors(data, progress=False)
    dev = resources.device(device) if device is not None else _model_device(model)
    return _evaluate_tensors(model, X.to(dev), y.to(dev), _loss_fn(loss), batch_size)


# -- train ----------------------------------------------------------------------------------
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


def _check_args(
    epochs: int, lr: float, momentum: float, weight_decay: float, batch_size: int, schedule: str,
    milestones: Sequence[int] | None, gamma: float, record: Record,
) -> list[int]:
    if not _is_int(epochs) or epochs < 1:
        raise LossAtlasError(f"epochs={epochs!r} must be a positive integer; pass e.g. epochs=30")
    if not lr > 0:
        raise LossAtlasError(f"lr={lr!r} must be positive; pass e.g. lr=0.1")
    if not momentum >= 0:
        raise LossAtlasError(f"momentum={momentum!r} must be >= 0; pass e.g. momentum=0.9")
    if not weight_decay >= 0:
        raise LossAtlasError(f"weight_decay={weight_decay!r} must be >= 0; pass e.g. 5e-4 or 0")
    if not _is_int(batch_size) or batch_size < 1:
        raise LossAtlasError(f"batch_size={batch_size!r} must be a positive integer; e.g. 128")
    if schedule not in SCHEDULES:
        raise LossAtlasError(f"schedule={schedule!r} is unknown; use one of {list(SCHEDULES)}")
    if not gamma > 0:
        raise LossAtlasError(f"gamma={gamma!r} must be positive; pass e.g. gamma=0.1")
    _check_every(record)
    if milestones is None:
        default = [epochs // 2, (3 * epochs) // 4] if schedule == "step" else []
        return sorted({m for m in default if 0 < m < epochs})
    ms = list(milestones)
    if any(not _is_int(m) or not 0 < m < epochs for m in ms) or ms != sorted(ms):
        raise LossAtlasError(
            f"milestones={milestones!r} must be increasing epoch numbers between 1 and "
            f"{epochs - 1}; pass e.g. milestones=[{epochs // 2}]"
        )
    return ms


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
      checkpoint are exact full-dataset means in eval mode.
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
    """
    if optimizer not in _OPTIMIZERS:
        raise LossAtlasError(f"optimizer={optimizer!r} is unknown; use one of {list(_OPTIMIZERS)}")
    milestones = _check_args(
        epochs, lr, momentum, weight_decay, batch_size, schedule, milestones, gamma, record
    )
    epochs, batch_size, record = int(epochs), int(batch_size), _check_every(record)
    milestones = [int(m) for m in milestones]
    lr, momentum, gamma = float(lr), float(momentum), float(gamma)
    weight_decay = float(weight_decay)
    if not any(p.requires_grad for p in model.parameters()):
        raise LossAtlasError("model has no trainable parameters; set requires_grad=True on some")
    loss_fn = _loss_fn(loss)
    dev = resources.device(device) if device is not None else _model_device(model)
    model.to(dev)
    X, y = (t.to(dev) for t in as_tensors(train_data, progress))
    test = None
    if test_data is not None:
        test = tuple(t.to(dev) for t in as_tensors(test_data, progress))
    n = len(X)
    steps_per_epoch = math.ceil(n / batch_size)
    lr_at = _lr_schedule(schedule, lr, epochs, steps_per_epoch, milestones, gamma)
    hyper = {
        "epochs": epochs, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
        "batch_size": batch_size, "schedule": schedule, "milestones": milestones,
        "gamma": gamma, "seed": seed, "deterministic": deterministic, "record": record,
        "loss": _loss_name(loss), "optimizer": _OPTIMIZERS[optimizer],
    }
    if optimizer != "sgd":
        hyper["betas"] = [float(b) for b in betas]
    data_info = {"train": _data_info(train_data, n)}
    if test is not None:
        data_info["test"] = _data_info(test_data, len(test[0]))
    names = select(model)
    init_hash = hash_point({k: v for k, v in model.named_parameters() if k in names})
    rec = Recorder(
        out, model, record,
        info={
            "hyperparameters": hyper, "seed": seed, "data": data_info,
            "steps_per_epoch": steps_per_epoch, "device": str(dev), "init_hash": init_hash,
        },
        config={"hyperparameters": hyper, "data": data_info, "init_hash": init_hash},
        overwrite=overwrite, resume=True, callbacks=callbacks,
    )
    if rec.already_done:  # the same run, finished: nothing to train
        rec.run.load_into(model)
        run = rec.finish()
        run.already_done = True
        return run
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                              weight_decay=weight_decay)
    else:
        opt = getattr(torch.optim, _OPTIMIZERS[optimizer])(
            model.parameters(), lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    hook = {"data": (X, y), "loss": loss}  # what callbacks measure on
    gen = torch.Generator().manual_seed(seed)
    fork_devices = [dev.index or 0] if dev.type == "cuda" else []
    where = {"epoch": 0, "pos": 0, "generator": gen.get_state()}  # data order of this epoch

    def checkpoint(epoch: float, step: int, lr_now: float, running: float) -> None:
        metrics = _evaluate_tensors(model, X, y, loss_fn, eval_batch_size)
        extra = {"train_loss": metrics["loss"], "train_acc": metrics["accuracy"]}
        if test is not None:
            tm = _evaluate_tensors(model, *test, loss_fn, eval_batch_size)
            extra.update(test_loss=tm["loss"], test_acc=tm["accuracy"])
        resume = {**where, "index": len(rec.entries), "step": step, "lr": lr_now,
                  "running": running,
                  "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state()}
        if fork_devices:
            resume["cuda_rng"] = torch.cuda.get_rng_state(fork_devices[0])
        rec.record(model, epoch=epoch, step=step, lr=lr_now, resume=resume, **extra)
    total = epochs * steps_per_epoch
    show = progress and not _progress.quiet()
    was_training = model.training
    finished = False
    try:
        with (
            deterministic_algorithms(deterministic),
            torch.random.fork_rng(devices=fork_devices),
            _progress.make_progress() if show else contextlib.nullcontext() as bar,
        ):
            torch.manual_seed(seed)
            task = bar.add_task("training", total=total) if bar is not None else None
            step, lr_now, running = 0, lr_at(0), math.nan
            if rec.resume_state is None:
                try:
                    checkpoint(0, 0, lr_at(0), running)
                except (RuntimeError, ValueError, IndexError) as exc:
                    if isinstance(exc, LossAtlasError):
                        raise
                    _explain_targets(model, X, y, loss)
                    raise LossAtlasError(
                        f"the model cannot be evaluated on train_data with loss="
                        f"{_loss_name(loss)!r} (inputs {tuple(X.shape)}, targets "
                        f"{tuple(y.shape)}: {str(exc).splitlines()[0]}); build the model for "
                        "this dataset's shapes"
                    ) from exc
                rec.step(model, opt, step=0, lr=lr_at(0), **hook)
            else:  # continue after the last checkpoint, exactly where it was
                st = rec.resume_state
                rec.run.load_into(model)
                opt.load_state_dict(st["optimizer"])
                gen.set_state(st["generator"])
                torch.set_rng_state(st["torch_rng"])
                if fork_devices and "cuda_rng" in st:
                    torch.cuda.set_rng_state(st["cuda_rng"], fork_devices[0])
                where.update(epoch=int(st["epoch"]), pos=int(st["pos"]))
                step, lr_now, running = int(st["step"]), float(st["lr"]), float(st["running"])
                if bar is not None:
                    bar.update(task, advance=step)
            for epoch in range(where["epoch"], epochs):
                model.train()
                start = where["pos"] if epoch == where["epoch"] else 0
                where.update(epoch=epoch, generator=gen.get_state())
                perm = torch.randperm(n, generator=gen).to(dev)
                for i in range(start, n, batch_size):
                    where["pos"] = i + batch_size
                    idx = perm[i : i + batch_size]
                    lr_now = lr_at(step)
                    for group in opt.param_groups:
                        group["lr"] = lr_now
                    opt.zero_grad(set_to_none=True)
                    batch_loss = loss_fn(model(X[idx]), y[idx])
                    value = float(batch_loss.detach())
                    if not math.isfinite(value):
                        reason = (
                            f"non-finite training loss ({value}) at epoch {epoch + 1}, step "
                            f"{step + 1}; lower lr (now {lr_now:g}) or check the data and loss"
                        )
                        break
                    batch_loss.backward()
                    opt.step()
                    step += 1
                    if rec.callbacks:
                        rec.step(model, opt, step=step, lr=lr_now, **hook)
                    running = value if math.isnan(running) else 0.9 * running + 0.1 * value
                    if bar is not None:
                        bar.update(
                            task, advance=1,
                            description=f"training epoch {epoch + 1}/{epochs} loss {running:.4f}",
                        )
                    end = i + batch_size >= n
                    if rec.due(step, end) or (end and epoch == epochs - 1):
                        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                            reason = (
                                f"non-finite parameters after epoch {epoch + 1}, step {step}; "
                                f"lower lr (now {lr_now:g})"
                            )
                            break
                        whole = record == "epoch" or step % steps_per_epoch == 0
                        ep = step // steps_per_epoch if whole else round(step / steps_per_epoch, 6)
                        checkpoint(ep, step, lr_now, running)
                else:
                    continue
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
