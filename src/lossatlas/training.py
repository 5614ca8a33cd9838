"""Training with recorded checkpoints: :func:`train`, :class:`Recorder`, :class:`Run`.

:func:`train` runs SGD with momentum, weight decay and a learning-rate schedule on the user's
model (in place) and records checkpoints: the initialization (index 0, before any step), then
every epoch or every ``k`` steps. A *run* is a folder::

    out/
      manifest.json              run-level info + one entry per checkpoint (rewritten atomically)
      checkpoints/ckpt_00000.pt  full state_dict (buffers included), CPU tensors

or, with ``out=None``, the same kept in memory. :class:`Run` reads either back lazily:
``run.checkpoints[i]`` is a :class:`~lossatlas.params.Point` over the trainable parameters.

``manifest.json`` (format ``"lossatlas.run"``, ``format_version`` 1) holds ``status``
(running / finished / stopped / interrupted), ``stopped_reason``, ``record``,
``hyperparameters``, ``seed``, ``data`` (train/test: class, len, name, num_classes,
input_shape, info), ``model`` (class, repr, num_parameters), ``parameter_names`` and
``parameter_shapes`` (the trainable parameters a point covers), ``buffer_names``,
``steps_per_epoch``, ``device``, ``init_hash`` (:func:`~lossatlas.params.hash_point` of the
initialization), ``lossatlas_version``, ``torch_version``, ``created``, ``config`` (what
identifies the run when a folder is reused) and ``checkpoints``: a list of entries ``index,
epoch, step, lr, train_loss, train_acc, test_loss, test_acc, time, file`` (``lr`` is the rate
of the latest step, the initial one at index 0; ``epoch`` is fractional for step records;
NaN is written as ``null``; ``time`` is seconds since the start).

Reproducibility: ``seed`` controls everything *after* the initialization (shuffling, dropout);
the initialization is the user's (build the model after :func:`seed_everything`, or pass a
seed to ``la.zoo.build``). With ``deterministic=True`` the same seed and the same initial
weights give bit-identical checkpoints on the same machine.

>>> import torch, lossatlas.training as T
>>> X, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
>>> model = torch.nn.Linear(4, 3)
>>> run = T.train(model, (X, y), epochs=2, batch_size=16, progress=False)
>>> len(run.checkpoints), run.epochs.tolist()
(3, [0.0, 1.0, 2.0])
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lossatlas import __version__, _progress
from lossatlas.errors import LossAtlasError
from lossatlas.losses import accuracy_count, resolve_loss
from lossatlas.params import Point, hash_point, select

__all__ = [
    "Recorder",
    "Run",
    "as_tensors",
    "evaluate",
    "load_run",
    "seed_everything",
    "train",
]

FORMAT = "lossatlas.run"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CKPT_DIR = "checkpoints"
SCHEDULES = ("constant", "step", "cosine")
_X_KEYS = ("x", "input", "inputs", "data", "image", "images", "features")
_Y_KEYS = ("y", "label", "labels", "target", "targets")
_ARRAYS = {
    "epochs": "epoch",
    "steps": "step",
    "lrs": "lr",
    "train_loss": "train_loss",
    "train_acc": "train_acc",
    "test_loss": "test_loss",
    "test_acc": "test_acc",
}

Record = str | int | None
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
    return {"loss": total / n, "accuracy": correct / y.numel()}


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
    dev = torch.device(device) if device is not None else _model_device(model)
    return _evaluate_tensors(model, X.to(dev), y.to(dev), _loss_fn(loss), batch_size)


# -- JSON helpers ---------------------------------------------------------------------------
def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null, tuples lists, numpy/torch scalars Python."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)) and np.ndim(value) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _flat(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b": value} (to name what differs between two configs)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=1, allow_nan=False)
    _write_atomic(path, lambda p: p.write_text(text + "\n"))


# -- Run ------------------------------------------------------------------------------------
class _Lazy(Sequence):
    """A lazy view of a run's checkpoints: ``kind="point"`` or ``"state"``."""

    def __init__(self, run: Run, kind: str, indices: range | None = None):
        self._run, self._kind, self._indices = run, kind, indices

    def _range(self) -> range:
        return self._indices if self._indices is not None else range(len(self._run))

    def __len__(self) -> int:
        return len(self._range())

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return _Lazy(self._run, self._kind, self._range()[i])
        try:
            j = self._range()[i]
        except IndexError:
            raise IndexError(f"index {i} out of range for {len(self)} checkpoints") from None
        state = self._run._state(j)
        if self._kind == "state":
            return state
        entry = self._run.manifest[j]
        meta = {k: entry.get(k) for k in ("index", "epoch", "step")}
        return Point({n: state[n] for n in self._run.parameter_names}, meta=meta)

    def __repr__(self) -> str:
        return f"<{len(self)} {self._kind}s of {self._run!r}>"


class Run:
    """A recorded training run, read lazily from its folder (or from memory).

    ``manifest`` is the list of checkpoint entries (``index, epoch, step, lr, train_loss,
    train_acc, test_loss, test_acc, file, time`` plus any metrics given to
    :meth:`Recorder.record`); ``info`` the run-level record (model, hyperparameters, seed, data,
    versions, parameter names). ``checkpoints[i]`` is a :class:`Point` over the trainable
    parameters, ``states[i]`` the full state dict; both load on access.
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        info: dict,
        manifest: list[dict],
        memory: list[dict[str, torch.Tensor]] | None = None,
    ):
        self.path = Path(path) if path is not None else None
        self.info = info
        self.manifest = manifest
        self._memory = memory

    # -- checkpoints ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.manifest)

    def _state(self, j: int) -> dict[str, torch.Tensor]:
        if self._memory is not None:
            return {k: v.clone() for k, v in self._memory[j].items()}
        assert self.path is not None
        file = self.path / self.manifest[j]["file"]
        return torch.load(file, map_location="cpu", weights_only=True)

    @property
    def checkpoints(self) -> Sequence[Point]:
        """Lazy sequence of points (trainable parameters), index 0 = the initialization."""
        return _Lazy(self, "point")

    @property
    def states(self) -> Sequence[dict[str, torch.Tensor]]:
        """Lazy sequence of full state dicts (buffers included)."""
        return _Lazy(self, "state")

    @property
    def final(self) -> Point:
        """The last recorded point."""
        if not len(self):
            raise LossAtlasError("the run has no checkpoints yet; record one before asking for it")
        return self.checkpoints[-1]

    @property
    def parameter_names(self) -> list[str]:
        return list(self.info.get("parameter_names", []))

    @property
    def stopped_reason(self) -> str | None:
        """Why training stopped early (e.g. a non-finite loss), or None."""
        return self.info.get("stopped_reason")

    @property
    def status(self) -> str:
        """``running``, ``finished``, ``stopped`` (early, see :attr:`stopped_reason`) or
        ``interrupted``."""
        return self.info.get("status", "running")

    def load_into(self, model: nn.Module, index: int = -1) -> nn.Module:
        """Load checkpoint ``index`` (default the last) into ``model`` (full state dict)."""
        n = len(self)
        if not -n <= index < n:
            raise LossAtlasError(
                f"index={index} is out of range for a run with {n} checkpoints; "
                f"use 0..{n - 1} or a negative index"
            )
        try:
            model.load_state_dict(self.states[index])
        except RuntimeError as exc:
            raise LossAtlasError(
                f"checkpoint {index} does not fit the model ({str(exc).splitlines()[0]}); build "
                f"the model the run was trained with ({self.info.get('model', {}).get('class')})"
            ) from None
        return model

    # -- per-checkpoint arrays --------------------------------------------------------------
    def metric(self, key: str) -> np.ndarray:
        """Float array of manifest field ``key`` over checkpoints (NaN where missing)."""
        vals = [e.get(key) for e in self.manifest]
        return np.array([math.nan if v is None else float(v) for v in vals], dtype=float)

    def __getattr__(self, name: str) -> np.ndarray:
        if name in _ARRAYS:
            return self.metric(_ARRAYS[name])
        raise AttributeError(name)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(_ARRAYS))

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "memory"
        return f"Run({where!r}, {len(self)} checkpoints, {self.status})"


def load_run(path: str | os.PathLike) -> Run:
    """Read a run folder written by :func:`train` or :class:`Recorder`."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise LossAtlasError(
            f"path={str(path)!r} holds no {MANIFEST}; pass a run folder written by lossatlas train"
        )
    doc = json.loads(mpath.read_text())
    if doc.get("format") != FORMAT:
        raise LossAtlasError(f"{mpath} is not a lossatlas run manifest; pass a run folder")
    entries = doc.pop("checkpoints", [])
    return Run(path, doc, entries)


# -- Recorder -------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_every(every: Record, name: str = "record") -> Record:
    if every is None or every == "epoch":
        return every
    if _is_int(every) and every >= 1:
        return int(every)
    raise LossAtlasError(
        f"{name}={every!r} is not valid; use 'epoch', a positive number of steps, or None"
    )


def _model_info(model: nn.Module) -> dict:
    names = select(model) if any(p.requires_grad for p in model.parameters()) else []
    params = dict(model.named_parameters())
    return {
        "model": {
            "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "repr": repr(model),
            "num_parameters": sum(params[n].numel() for n in names),
        },
        "parameter_names": names,
        "parameter_shapes": {n: list(params[n].shape) for n in names},
        "buffer_names": [n for n, _ in model.named_buffers()],
    }


class Recorder:
    """Record checkpoints from any training loop into a run folder (or memory if ``out=None``).

    >>> import torch
    >>> model = torch.nn.Linear(2, 2)
    >>> rec = Recorder(None, model)
    >>> for epoch in range(3):
    ...     _ = rec.record(model, epoch=epoch, step=10 * epoch, train_loss=1 / (epoch + 1))
    >>> rec.run.train_loss.tolist()
    [1.0, 0.5, 0.3333333333333333]

    ``every`` ("epoch", k steps or None) is stored in the run info and answers :meth:`due`.
    ``info`` adds run-level fields (hyperparameters, data, ...); ``config`` is what identifies
    the run: a folder that already holds a run with another config raises unless
    ``overwrite=True``; one with the same config is replaced.
    """

    def __init__(
        self,
        out: str | os.PathLike | None = None,
        model: nn.Module | None = None,
        every: Record = "epoch",
        *,
        info: Mapping | None = None,
        config: Mapping | None = None,
        overwrite: bool = False,
    ):
        self.every = _check_every(every, "every")
        self.path = Path(out) if out is not None else None
        self._memory: list[dict[str, torch.Tensor]] | None = [] if out is None else None
        self._t0 = time.perf_counter()
        self.info: dict = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "lossatlas_version": __version__,
            "torch_version": torch.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "status": "running",
            "stopped_reason": None,
            "record": self.every,
            **_clean(dict(info or {})),
            "config": _clean(dict(config or {})),
        }
        self.entries: list[dict] = []
        if model is not None:
            self.info.update(_model_info(model))
            self.info["config"].setdefault("model_class", self.info["model"]["class"])
            self.info["config"].setdefault("parameter_shapes", self.info["parameter_shapes"])
        if self.path is not None:
            self._prepare(overwrite)
            self._write_manifest()
        self.run = Run(self.path, self.info, self.entries, self._memory)

    def _prepare(self, overwrite: bool) -> None:
        assert self.path is not None
        if self.path.exists() and not self.path.is_dir():
            raise LossAtlasError(f"out={str(self.path)!r} is a file; pass a folder path")
        mpath = self.path / MANIFEST
        if mpath.is_file() and not overwrite:
            try:
                old = json.loads(mpath.read_text()).get("config")
            except (OSError, ValueError):
                old = None
            new = self.info["config"]
            if old != new:
                o, n = _flat(old or {}), _flat(new)
                keys = sorted(k for k in set(o) | set(n) if o.get(k) != n.get(k))
                raise LossAtlasError(
                    f"out={str(self.path)!r} already holds a different run (differs in "
                    f"{', '.join(keys[:6]) or 'format'}); choose another folder or pass "
                    "overwrite=True (--overwrite)"
                )
        ckdir = self.path / CKPT_DIR
        ckdir.mkdir(parents=True, exist_ok=True)
        for old_file in [*ckdir.glob("ckpt_*.pt"), *ckdir.glob("ckpt_*.pt.tmp")]:
            old_file.unlink()  # only our own files: a same-config rerun or overwrite=True

    def _write_manifest(self) -> None:
        if self.path is not None:
            _write_json(self.path / MANIFEST, {**self.info, "checkpoints": self.entries})

    def due(self, step: int, end_of_epoch: bool) -> bool:
        """Whether ``every`` asks for a checkpoint after global step ``step``."""
        if self.every == "epoch":
            return end_of_epoch
        if isinstance(self.every, int):
            return step % self.every == 0
        return False

    def record(
        self,
        model: nn.Module,
        *,
        epoch: float | None = None,
        step: int | None = None,
        lr: float | None = None,
        **metrics: Any,
    ) -> dict:
        """Append a checkpoint of ``model`` (full state dict, on CPU) and its manifest entry."""
        if "parameter_names" not in self.info:
            self.info.update(_model_info(model))
        names = set(self.info["parameter_names"])
        missing = names - set(model.state_dict())
        if missing:
            raise LossAtlasError(
                f"model lacks parameters {sorted(missing)[:3]} recorded earlier in this run; "
                "record the same model every time"
            )
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        index = len(self.entries)
        entry: dict[str, Any] = {"index": index, "epoch": epoch, "step": step, "lr": lr}
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            entry[key] = metrics.pop(key, None)
        entry.update(metrics)
        entry["time"] = round(time.perf_counter() - self._t0, 4)
        if self.path is None:
            assert self._memory is not None
            self._memory.append(state)
            entry["file"] = None
        else:
            rel = f"{CKPT_DIR}/ckpt_{index:05d}.pt"
            _write_atomic(self.path / rel, lambda p: torch.save(state, p))
            entry["file"] = rel
        entry = _clean(entry)
        self.entries.append(entry)
        self._write_manifest()
        return entry

    def update_info(self, **fields: Any) -> None:
        """Add run-level fields and rewrite the manifest."""
        self.info.update(_clean(fields))
        self._write_manifest()

    def stop(self, reason: str) -> None:
        """Mark the run as stopped early with ``reason`` (kept in the manifest)."""
        self.update_info(status="stopped", stopped_reason=reason)

    def finish(self) -> Run:
        """Mark the run finished (unless stopped) and return it."""
        if self.info["status"] == "running":
            self.update_info(status="finished")
        return self.run


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
    - A non-finite minibatch loss (or parameter) stops training with a ``RuntimeWarning``;
      ``run.stopped_reason`` says why and every earlier checkpoint is kept.
    - ``data``: a dataset with ``.tensors``, a pair ``(X, y)``, or any map-style dataset of
      ``(x, y)`` / dict items (read once into tensors); held on ``device`` (default: the
      model's) and batched by index slicing.
    """
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
    dev = torch.device(device) if device is not None else _model_device(model)
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
        "loss": _loss_name(loss), "optimizer": "SGD",
    }
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
        overwrite=overwrite,
    )

    def checkpoint(epoch: float, step: int, lr_now: float) -> None:
        metrics = _evaluate_tensors(model, X, y, loss_fn, eval_batch_size)
        extra = {"train_loss": metrics["loss"], "train_acc": metrics["accuracy"]}
        if test is not None:
            tm = _evaluate_tensors(model, *test, loss_fn, eval_batch_size)
            extra.update(test_loss=tm["loss"], test_acc=tm["accuracy"])
        rec.record(model, epoch=epoch, step=step, lr=lr_now, **extra)

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    fork_devices = [dev.index or 0] if dev.type == "cuda" else []
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
            try:
                checkpoint(0, 0, lr_at(0))
            except (RuntimeError, ValueError, IndexError) as exc:
                if isinstance(exc, LossAtlasError):
                    raise
                raise LossAtlasError(
                    f"the model cannot be evaluated on train_data with loss={_loss_name(loss)!r} "
                    f"(inputs {tuple(X.shape)}, targets {tuple(y.shape)}: "
                    f"{str(exc).splitlines()[0]}); build the model for this dataset's shapes"
                ) from exc
            step, lr_now, running = 0, lr_at(0), math.nan
            for epoch in range(epochs):
                model.train()
                perm = torch.randperm(n, generator=gen).to(dev)
                for i in range(0, n, batch_size):
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
                        checkpoint(ep, step, lr_now)
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
    return rec.finish()
