"""Checkpoint sources for trajectory analyses: one interface over runs, files and points.

A *source* is a list of checkpoints that are read one at a time, never all at once:

* a :class:`~lossatlas.batteries.runs.Run` (``la.train`` / ``la.load_run``) or a run folder,
* a lazy ``run.checkpoints`` sequence (or any ``Sequence`` of points / state dicts),
* a list of ``.pt`` files holding state dicts (or dicts with a ``"state_dict"`` / ``"model"``
  entry), read with ``torch.load(weights_only=True)`` on access.

The parameter selection is ``names``: by default the run's trainable parameters, the keys of a
:class:`~lossatlas.core.params.Point`, or every floating-point entry of a state dict that is not a
BatchNorm running statistic. Pass ``names=obj.names`` to match an Objective exactly.
"""

from __future__ import annotations

import os
import pickle
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lossatlas.core import params as P
from lossatlas.core.errors import LossAtlasError
from lossatlas.store.results import read_state_dict

__all__ = ["Source", "as_source"]

_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(path, "checkpoint file")


def _default_names(first: Mapping[str, torch.Tensor]) -> list[str]:
    if isinstance(first, P.Point):
        return list(first)
    return [k for k, v in first.items() if v.is_floating_point()
            and k.rsplit(".", 1)[-1] not in _BN_STATS]


class Source:
    """Checkpoints read on demand: ``len(src)``, ``src.point(i)`` (a Point over ``names``),
    ``src.vector(i)`` (the flattened float64 numpy vector, shape (D,)), ``src.state(i)`` (the
    full state dict, or None when only points are known) and ``src.info(i)`` (index, epoch,
    step, lr when known)."""

    def __init__(self, items: Sequence, names: Sequence[str] | None, manifest: list[dict] | None,
                 states: Sequence | None, files: Sequence[Path] | None = None):
        if len(items) == 0:
            raise LossAtlasError("checkpoints is empty; pass a run or at least two checkpoints")
        self._items, self._manifest, self._states = items, manifest, states
        if files is None and all(isinstance(x, (str, os.PathLike)) for x in items):
            files = [Path(x) for x in items]
        self.files = list(files) if files is not None else None
        first = self._raw(0)
        self.names = list(names) if names is not None else _default_names(first)
        missing = [n for n in self.names if n not in first]
        if not self.names or missing:
            raise LossAtlasError(
                f"names={list(names) if names else names!r} does not fit the checkpoints "
                f"(missing {missing[:3]}); pass names=obj.names or the model's parameter names"
            )
        self.shapes = {n: tuple(first[n].shape) for n in self.names}
        self.dim = int(sum(int(np.prod(s)) for s in self.shapes.values()))
        sizes = [int(np.prod(s)) for s in self.shapes.values()]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self._items)

    def _raw(self, i: int) -> Mapping[str, torch.Tensor]:
        item = self._items[i]
        if isinstance(item, (str, os.PathLike)):
            return _read_file(Path(item))
        if not isinstance(item, Mapping):
            raise LossAtlasError(
                f"checkpoint {i} is a {type(item).__name__}; pass points, state dicts or .pt files"
            )
        return item

    def point(self, i: int) -> P.Point:
        raw = self._raw(i)
        missing = [n for n in self.names if n not in raw]
        if missing:
            raise LossAtlasError(f"checkpoint {i} lacks parameters {missing[:3]}; pass "
                                 "checkpoints of one model")
        meta = {"index": i, **{k: v for k, v in self.info(i).items() if k != "index"}}
        return P.Point({n: raw[n].detach() for n in self.names}, meta=meta)

    def vector(self, i: int) -> np.ndarray:
        p = self.point(i)
        out = np.empty(self.dim, dtype=np.float64)
        j = 0
        for n in self.names:
            t = p[n].detach().reshape(-1)
            if tuple(p[n].shape) != self.shapes[n]:
                raise LossAtlasError(f"checkpoint {i}: {n!r} has shape {tuple(p[n].shape)}, "
                                     f"checkpoint 0 {self.shapes[n]}; pass one model's checkpoints")
            out[j:j + t.numel()] = t.to("cpu", torch.float64).numpy()
            j += t.numel()
        return out

    def mapped(self, i: int) -> list[torch.Tensor] | None:
        """Flat views of checkpoint i's selected tensors, memory-mapped from its file (nothing
        is read until sliced), in ``names`` order; None when the source has no files or the
        file cannot be mapped (an old serialization format)."""
        if self.files is None:
            return None
        try:
            if not stat.S_ISREG(os.stat(self.files[i]).st_mode):  # a FIFO would block open
                return None
            state = torch.load(self.files[i], map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, OSError, ValueError, pickle.UnpicklingError):
            return None  # not mappable (old format, odd file): the caller reads it the slow way
        if isinstance(state, dict):
            for key in ("state_dict", "model"):
                if isinstance(state.get(key), dict):
                    state = state[key]
                    break
        if not isinstance(state, Mapping) or any(n not in state for n in self.names):
            return None
        return [state[n].reshape(-1) for n in self.names]

    def read(self, flat: Sequence[torch.Tensor], lo: int, hi: int, out: np.ndarray) -> None:
        """Copy entries lo..hi−1 of the flattened checkpoint ``flat`` (from :meth:`mapped`)
        into ``out`` (float64, shape (hi − lo,))."""
        a = int(np.searchsorted(self.offsets, lo, side="right")) - 1
        while a < len(flat) and self.offsets[a] < hi:
            s, e = max(lo, self.offsets[a]), min(hi, self.offsets[a + 1])
            piece = flat[a][s - self.offsets[a]:e - self.offsets[a]]
            out[s - lo:e - lo] = piece.to(torch.float64).numpy()
            a += 1

    def state(self, i: int) -> Mapping[str, torch.Tensor] | None:
        if self._states is not None:
            return self._states[i]
        raw = self._raw(i)
        return None if isinstance(raw, P.Point) else raw

    def info(self, i: int) -> dict[str, Any]:
        if self._manifest is not None:
            e = self._manifest[i]
            return {k: e.get(k) for k in ("index", "epoch", "step", "lr")}
        item = self._items[i]
        meta = getattr(item, "meta", None) or {}
        return {"index": meta.get("index", i), "epoch": meta.get("epoch"),
                "step": meta.get("step"), "lr": meta.get("lr")}


def _run_files(run, rng: range) -> list[Path] | None:
    if run.path is None or getattr(run, "_memory", None) is not None:
        return None
    return [run.file(j) for j in rng]


def as_source(checkpoints: Any, names: Sequence[str] | None = None) -> Source:
    """A :class:`Source` over ``checkpoints`` (a Run, a run folder, a Sequence of points or
    state dicts, or a list of ``.pt`` files); a Source passes through (re-selected by
    ``names`` when given)."""
    from lossatlas.batteries.runs import MANIFEST, Run, load_run

    if isinstance(checkpoints, Source):
        if names is None or list(names) == checkpoints.names:
            return checkpoints
        return Source(checkpoints._items, names, checkpoints._manifest, checkpoints._states,
                      checkpoints.files)
    if isinstance(checkpoints, (str, os.PathLike)) and (Path(checkpoints) / MANIFEST).is_file():
        checkpoints = load_run(checkpoints)
    if isinstance(checkpoints, Run):
        run = checkpoints
        return Source(run.checkpoints, names if names is not None else run.parameter_names,
                      run.manifest, run.states, _run_files(run, range(len(run))))
    run = getattr(checkpoints, "run", None)  # a lazy run.checkpoints view (or a slice of one)
    if isinstance(run, Run) and hasattr(checkpoints, "indices"):
        rng = checkpoints.indices()
        return Source(checkpoints, names if names is not None else run.parameter_names,
                      [run.manifest[j] for j in rng], run.states[rng.start:rng.stop:rng.step],
                      _run_files(run, rng))
    if isinstance(checkpoints, (str, os.PathLike)):
        raise LossAtlasError(
            f"checkpoints={str(checkpoints)!r} is not a run folder (no {MANIFEST}); pass a run, "
            "a run folder or a list of checkpoint files"
        )
    if isinstance(checkpoints, Mapping) or not isinstance(checkpoints, Sequence):
        raise LossAtlasError(
            f"checkpoints must be a run or a sequence of checkpoints, got "
            f"{type(checkpoints).__name__}; wrap a single point in a list"
        )
    return Source(checkpoints, names, None, None)
