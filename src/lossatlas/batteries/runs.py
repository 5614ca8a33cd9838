"""Run folders: :class:`Recorder` writes one from any training loop, :class:`Run` and
:func:`load_run` read it back lazily (``run.checkpoints[i]`` is a
:class:`~lossatlas.core.params.Point` over the trainable parameters). A *run* is a folder::

    out/
      manifest.json              run-level info + one entry per checkpoint (rewritten atomically)
      checkpoints/ckpt_00000.pt  full state_dict (buffers included), CPU tensors

or, with ``out=None``, the same kept in memory.

``manifest.json`` (format ``"lossatlas.run"``, ``format_version`` 1) holds ``status``
(running / finished / stopped / interrupted), ``stopped_reason``, ``record``,
``hyperparameters`` (the training recipe), ``seed``, ``data`` (train/test: class, len, name,
num_classes, input_shape, info, and ``load``: the ``datasets.load`` name and options that give
the same data again), ``model`` (class, repr, num_parameters, and ``build``: the
``zoo.build`` name, options and seed, a ``file.py:factory`` path made absolute), so a run is
rebuilt from its folder alone (:func:`lossatlas.report.runspec.rebuild`), ``parameter_names`` and
``parameter_shapes`` (the trainable parameters a point covers), ``buffer_names``,
``steps_per_epoch``, ``device``, ``init_hash`` (:func:`~lossatlas.core.params.hash_point` of the
initialization), ``lossatlas_version``, ``torch_version``, ``created``, ``config`` (what
identifies the run when a folder is reused) and ``checkpoints``: a list of entries ``index,
epoch, step, lr, train_loss, train_acc, test_loss, test_acc, time, file`` (``lr`` is the rate
of the latest step, the initial one at index 0; ``epoch`` is fractional for step records;
NaN is written as ``null``; ``time`` is seconds since the start).

Nothing finished is lost:

- ``checkpoints/resume_NNNNN.pt`` holds what continuing after checkpoint NNNNN needs (optimizer
  and RNG state, position in the epoch; written by :func:`la.train`); only the
  latest is kept. Files are written in the order checkpoint, resume state, manifest, so the
  manifest never names a checkpoint that is not whole.
- A folder is replaced (``overwrite=True``, or a :class:`Recorder` without ``resume``) only once
  the new run has finished: it is recorded into the sibling folder ``OUT.partial`` and swapped
  in at :meth:`Recorder.finish` (files of the old folder that are not the run's stay). An
  interrupted replacement leaves the old run whole; running it again continues ``OUT.partial``.
- One writer per folder: ``OUT.lock`` (see :mod:`lossatlas.store.locks`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import torch
from torch import nn

from lossatlas import __version__
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.params import Point, select
from lossatlas.store import atomic
from lossatlas.store.encoding import json_safe
from lossatlas.store.locks import lock_path, writer_lock
from lossatlas.store.results import read_state_dict

__all__ = [
    "CKPT_DIR",
    "MANIFEST",
    "Recorder",
    "Run",
    "check_every",
    "is_int",
    "json_safe",
    "load_run",
    "mismatch",
    "model_flags",
]

FORMAT = "lossatlas.run"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CKPT_DIR = "checkpoints"
DONE = ("finished", "stopped")  # statuses of a run that a rerun leaves alone
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


# -- JSON helpers ---------------------------------------------------------------------------
def _flat(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b": value} (to name what differs between two configs)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _write_json(path: Path, obj: Any) -> None:
    atomic.write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


# -- Run ------------------------------------------------------------------------------------
class _Lazy(Sequence):
    """A lazy view of a run's checkpoints: ``kind="point"`` or ``"state"``."""

    def __init__(self, run: Run, kind: str, indices: range | None = None):
        self._run, self._kind, self._indices = run, kind, indices

    @property
    def run(self) -> Run:
        """The run these checkpoints belong to."""
        return self._run

    def indices(self) -> range:
        """The checkpoint indices of the run that this view holds (a slice keeps its own)."""
        return self._indices if self._indices is not None else range(len(self._run))

    def __len__(self) -> int:
        return len(self.indices())

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return _Lazy(self._run, self._kind, self.indices()[i])
        try:
            j = self.indices()[i]
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
        self.already_done = False  # set by train() when a rerun found the run finished
        self.resumed_after: int | None = None  # set by train() when it continued a run
        self._tables: dict[str, list[dict]] = {}  # tracked tables (lossatlas.measurements.track)

    # -- checkpoints ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.manifest)

    def _state(self, j: int) -> dict[str, torch.Tensor]:
        if self._memory is not None:
            return {k: v.clone() for k, v in self._memory[j].items()}
        return read_state_dict(self.file(j), self._what(j))

    def _what(self, j: int) -> str:
        return f"checkpoint {j} of the run {str(self.path)!r}:"

    def file(self, j: int) -> Path:
        """The file of checkpoint ``j``, confined to the run folder: a manifest entry that is
        absolute, climbs out with ``..`` or leads outside through a symlink is refused (the
        file itself is opened only when regular, see :func:`la.store.open_regular`)."""
        if self.path is None:
            raise LossAtlasError("the run is kept in memory and has no files; pass out= to "
                                 "la.train to write a run folder")
        return confined(self.path, self.manifest[j].get("file"), self._what(j))

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
        state = self.states[index]
        try:
            model.load_state_dict(state)
        except RuntimeError:
            where = f"{self.path}" if self.path is not None else "the run"
            raise LossAtlasError(
                f"checkpoint {index} of {where} does not fit the model ({mismatch(model, state)}); "
                f"build the model the run was trained with: {model_flags(self.info)}"
            ) from None
        return model

    # -- tracked tables (la.track) ----------------------------------------------------------------
    def track(self, name: str) -> dict[str, np.ndarray]:
        """The table a tracker wrote during training (e.g. ``"sharpness"``), as float columns
        (``step``, ``lambda_max``, ...); ``{name}.csv`` in the run folder."""
        from lossatlas.batteries.tables import read_table

        if self.path is None:
            rows = self._tables.get(name)
        else:
            file = confined(self.path, f"{name}.csv", f"the table {name!r}")
            rows = read_table(file) if file.is_file() else None
        if not rows:
            have = sorted(self._tables) if self.path is None else sorted(
                p.stem for p in self.path.glob("*.csv"))
            raise LossAtlasError(
                f"the run has no tracked table {name!r} (it has {have}); train with "
                f"callbacks=[la.track.Sharpness(every=10)] or --track sharpness:every=10"
            )
        from lossatlas.batteries.tables import columns

        return columns(rows)

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


def mismatch(model: nn.Module, state: Mapping[str, torch.Tensor], show: int = 4) -> str:
    """Why ``state`` does not fit ``model``: its missing, unexpected and mis-shaped keys (the
    first ``show`` of each, with the counts)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [f"{k} is {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} here"
              for k in own if k in state and hasattr(state[k], "shape")
              and tuple(state[k].shape) != tuple(own[k].shape)]

    def part(what: str, keys: list[str]) -> str:
        more = f" and {len(keys) - show} more" if len(keys) > show else ""
        return f"{len(keys)} {what}: {', '.join(keys[:show])}{more}"

    parts = [part(w, k) for w, k in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("mis-shaped keys", shaped)) if k]
    return "; ".join(parts) or "the keys match but loading failed"


def model_flags(info: Mapping) -> str:
    """The ``--model`` (and ``--model-arg``) options that rebuild a run's model, from its
    manifest's ``model.build``; the model class when the run did not record how it was built."""
    model = info.get("model", {}) if isinstance(info, Mapping) else {}
    build = model.get("build")
    if not isinstance(build, Mapping):
        return (f"the {model.get('class', 'model')} it was trained with "
                "(--model NAME --model-arg K=V)")
    opts = " ".join(f"--model-arg {k}={v!r}" if isinstance(v, str) else f"--model-arg {k}={v}"
                    for k, v in (build.get("options") or {}).items())
    return f"--model {build['name']}" + (f" {opts}" if opts else "")


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
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise LossAtlasError(f"{mpath} has no list of checkpoint entries; pass a run folder "
                             "written by lossatlas train")
    for j, e in enumerate(entries):
        confined(path, e.get("file"), f"checkpoint {j} of the run {str(path)!r}:")
    return Run(path, doc, entries)


def confined(root: Path, name: Any, what: str) -> Path:
    """``root / name`` for a manifest entry ``name`` that stays inside ``root``: a relative
    path without ``..`` whose resolved location (symlinks followed) is under ``root``."""
    fix = "the manifest may have been edited; restore the run folder lossatlas train wrote"
    if not isinstance(name, str) or not name:
        raise LossAtlasError(f"{what} its manifest entry file={name!r} names no file; {fix}")
    rel = PurePosixPath(name)
    if rel.is_absolute() or PureWindowsPath(name).is_absolute() or ".." in rel.parts \
            or "\\" in name:
        raise LossAtlasError(f"{what} its manifest entry file={name!r} leaves the run folder "
                             f"(absolute or with ..), which is refused; {fix}")
    full = root / rel
    if not full.resolve().is_relative_to(root.resolve()):
        raise LossAtlasError(f"{what} {name!r} is a link that leads outside the run folder, "
                             f"which is refused; {fix}")
    return full


# -- Recorder -------------------------------------------------------------------------------
def is_int(value: Any) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_every(every: Record, name: str = "record") -> Record:
    """``every`` as a recording cadence (``"epoch"``, a positive int, or None), or one sentence
    naming ``name`` and the values it takes."""
    if every is None or every == "epoch":
        return every
    if is_int(every) and every >= 1:
        return int(every)
    raise LossAtlasError(
        f"{name}={every!r} is not valid; use 'epoch', a positive number of steps, or None"
    )


def _model_info(model: nn.Module) -> dict:
    names = select(model) if any(p.requires_grad for p in model.parameters()) else []
    params = dict(model.named_parameters())
    build = getattr(model, "lossatlas_build", None)  # zoo.build's name, options and seed
    return {
        "model": {
            "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "repr": repr(model),
            "num_parameters": sum(params[n].numel() for n in names),
            **({"build": json_safe(build)} if isinstance(build, Mapping) else {}),
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
    ``overwrite=True``. With ``resume=True`` a run of the same config is continued
    (:attr:`resume_state` is what the last checkpoint left, ``None`` for a fresh run) or, when
    it has finished, left alone (:attr:`already_done`); otherwise it is replaced. A replaced
    run stays whole until the new one finishes (see the module docstring).
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
        resume: bool = False,
        callbacks: Sequence[Any] = (),
    ):
        self.every = check_every(every, "every")
        self.callbacks = list(callbacks)
        self.steps = 0  # optimizer updates reported through step()
        self.path = Path(out) if out is not None else None
        self.final = self.path  # where the run ends up (self.path is OUT.partial while replacing)
        self.already_done = False
        self.resume_state: dict | None = None
        self._lock = None
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
            **json_safe(dict(info or {})),
            "config": json_safe(dict(config or {})),
        }
        self.entries: list[dict] = []
        if model is not None:
            self.info.update(_model_info(model))
            self.info["config"].setdefault("model_class", self.info["model"]["class"])
            self.info["config"].setdefault("parameter_shapes", self.info["parameter_shapes"])
        if self.path is not None:
            self._lock = writer_lock(lock_path(self.path), f"out={str(self.path)!r}")
            try:
                self._prepare(overwrite, resume)
                if not self.already_done:
                    self._write_manifest()
            except BaseException:
                self.close()
                raise
        self.run = Run(self.path, self.info, self.entries, self._memory)

    def _prepare(self, overwrite: bool, resume: bool) -> None:
        assert self.path is not None
        final = self.path
        if final.exists() and not final.is_dir():
            raise LossAtlasError(f"out={str(final)!r} is a file; pass a folder path")
        _recover_swap(final)
        old = _read_manifest(final)
        if old is not None and not old.get("checkpoints"):
            old = None  # killed before its first checkpoint: nothing there to keep
        if old is not None and not overwrite and old.get("config") != self.info["config"]:
            o, n = _flat(old.get("config") or {}), _flat(self.info["config"])
            keys = sorted(k for k in set(o) | set(n) if o.get(k) != n.get(k))
            raise LossAtlasError(
                f"out={str(final)!r} already holds a different run (differs in "
                f"{', '.join(keys[:6]) or 'format'}); choose another folder or pass "
                "overwrite=True (--overwrite)"
            )
        if old is not None and resume and not overwrite:
            if old.get("status") in DONE:
                self.already_done = True
                self.info, self.entries = old, old.pop("checkpoints", [])
                return
            self._continue(final, old)
            return
        if old is not None and old.get("checkpoints"):  # replaced only once the new run ends
            self.path = _partial(final)
            staged = _read_manifest(self.path)
            if (staged is not None and resume and staged.get("config") == self.info["config"]
                    and staged.get("status") not in DONE and self._continue(self.path, staged,
                                                                            strict=False)):
                return
            shutil.rmtree(self.path, ignore_errors=True)
        ckdir = self.path / CKPT_DIR
        ckdir.mkdir(parents=True, exist_ok=True)
        for tmp in ckdir.glob(f"*{atomic.TMP_SUFFIX}"):
            tmp.unlink()

    def _continue(self, folder: Path, old: dict, strict: bool = True) -> bool:
        """Continue the interrupted run in ``folder`` after its last checkpoint."""
        entries = old.pop("checkpoints", [])
        state = _read_resume(folder, len(entries) - 1) if entries else None
        if state is None:
            if not strict:
                return False
            raise LossAtlasError(
                f"out={str(self.final)!r} holds an unfinished run ({len(entries)} checkpoints, "
                f"status {old.get('status')}) without the optimizer and RNG state that "
                "continuing it exactly needs; pass overwrite=True (--overwrite) to train it "
                "again from the start, or choose another folder"
            )
        resumes = [*old.get("resumes", []), {"after_index": len(entries) - 1, "at": _now()}]
        self.info = {**old, "status": "running", "resumes": resumes}
        self.entries = entries
        self.resume_state = state
        self._t0 = time.perf_counter() - float(entries[-1].get("time") or 0.0)
        ckdir = folder / CKPT_DIR
        for stale in [*ckdir.glob(f"*{atomic.TMP_SUFFIX}"), *ckdir.glob("resume_*.pt")]:
            if stale.name != _resume_name(len(entries) - 1):
                stale.unlink()
        return True

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
        resume: Mapping[str, Any] | None = None,
        **metrics: Any,
    ) -> dict:
        """Append a checkpoint of ``model`` (full state dict, on CPU) and its manifest entry;
        ``resume`` (tensors, numbers, dicts) is what continuing after it needs, written to
        ``checkpoints/resume_NNNNN.pt`` before the manifest names the checkpoint."""
        if self.already_done:
            raise LossAtlasError(f"out={str(self.final)!r} holds a finished run; pass "
                                 "overwrite=True to record a new one there")
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
            with atomic.replacing(self.path / rel) as tmp:
                torch.save(state, tmp)
            entry["file"] = rel
            if resume is not None:
                with atomic.replacing(self.path / CKPT_DIR / _resume_name(index)) as tmp:
                    torch.save(dict(resume), tmp)
        entry = json_safe(entry)
        self.entries.append(entry)
        self._write_manifest()
        if self.path is not None and index > 0:
            (self.path / CKPT_DIR / _resume_name(index - 1)).unlink(missing_ok=True)
        return entry

    # -- callbacks (la.track) ----------------------------------------------------------------------
    def step(self, model: nn.Module, optimizer: Any = None, *, step: int | None = None,
             lr: float | None = None, **state: Any) -> None:
        """Tell the callbacks that an optimizer update was applied: call after
        ``optimizer.step()`` (and once before the first, with ``step=0``, to measure the
        initialization). ``step`` defaults to one more than the last call's."""
        self.steps = self.steps + 1 if step is None else int(step)
        if lr is None and optimizer is not None:
            lr = float(optimizer.param_groups[0]["lr"])
        for cb in self.callbacks:
            cb.on_step(self, model, optimizer, step=self.steps, lr=lr, **state)

    def log(self, name: str, row: Mapping[str, Any]) -> None:
        """Append ``row`` to the run's table ``name`` (``{name}.csv`` in the run folder)."""
        from lossatlas.batteries.tables import append_row

        if name not in self.run._tables:  # a continued run keeps the rows before this step
            self.run._tables[name] = self._earlier_rows(name, row.get("step"))
        rows = self.run._tables[name]
        rows.append(dict(row))
        if self.path is not None:
            append_row(self.path / f"{name}.csv", rows)
        if name not in self.info.setdefault("tracks", []):
            self.update_info(tracks=[*self.info["tracks"], name])

    def _earlier_rows(self, name: str, step: Any) -> list[dict]:
        """Rows of table ``name`` before ``step`` when this recorder continues a run."""
        if self.path is None or self.resume_state is None or step is None:
            return []
        file = self.path / f"{name}.csv"
        if not file.is_file():
            return []
        from lossatlas.batteries.tables import read_table

        return [r for r in read_table(file) if r.get("step", math.inf) < step]

    def update_info(self, **fields: Any) -> None:
        """Add run-level fields and rewrite the manifest."""
        self.info.update(json_safe(fields))
        self._write_manifest()

    def stop(self, reason: str) -> None:
        """Mark the run as stopped early with ``reason`` (kept in the manifest)."""
        self.update_info(status="stopped", stopped_reason=reason)

    def finish(self) -> Run:
        """Mark the run finished (unless stopped), swap it in over the run it replaces (if
        any), release the folder and return the run."""
        if self.already_done:
            self.close()
            return self.run
        if self.info["status"] == "running":
            self.update_info(status="finished")
        if self.path is not None:  # a finished run is not continued: its resume state goes
            for stale in (self.path / CKPT_DIR).glob("resume_*.pt"):
                stale.unlink()
        if self.path is not None and self.final is not None and self.path != self.final:
            _swap_in(self.path, self.final)
            self.path = self.run.path = self.final
        self.close()
        return self.run

    def close(self) -> None:
        """Release the folder's writer lock (:meth:`finish` does it; also on interruption)."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            self._lock = None

    def __del__(self) -> None:
        self.close()


# -- resume and replace ---------------------------------------------------------------------
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _resume_name(index: int) -> str:
    return f"resume_{index:05d}.pt"


def _read_manifest(folder: Path) -> dict | None:
    """The manifest of ``folder`` as a dict, or None when there is none (or it is unreadable)."""
    try:
        doc = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _read_resume(folder: Path, index: int) -> dict | None:
    """The resume state saved with checkpoint ``index`` (``weights_only`` load), or None."""
    path = folder / CKPT_DIR / _resume_name(index)
    if not (path.is_file() and (folder / CKPT_DIR / f"ckpt_{index:05d}.pt").is_file()):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged file: refuse to continue rather than guess
        return None
    return state if isinstance(state, dict) else None


def _partial(final: Path) -> Path:
    final = final.absolute()  # "." has no name; its absolute path has
    return final.with_name(final.name + ".partial")


def _swap_in(staging: Path, final: Path) -> None:
    """Replace the run in ``final`` by the finished one in ``staging``; files of ``final`` that
    are not the run's (figures, notes) move over. Safe to redo after a crash at any step."""
    old = final.absolute().with_name(final.absolute().name + ".replaced")
    if final.exists() and staging.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
    if staging.exists() and not final.exists():
        os.rename(staging, final)
    if old.exists():
        for item in old.iterdir():
            if item.name not in (MANIFEST, CKPT_DIR) and not (final / item.name).exists():
                os.rename(item, final / item.name)
        shutil.rmtree(old)


def _recover_swap(final: Path) -> None:
    """Finish a swap that a crash cut short (see :func:`_swap_in`)."""
    old = final.absolute().with_name(final.absolute().name + ".replaced")
    if not old.exists():
        return
    staging = _partial(final)
    if not final.exists() and not staging.exists():
        os.rename(old, final)  # nothing to swap in: the old run comes back
        return
    _swap_in(staging, final)


