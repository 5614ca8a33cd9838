"""1D curves, 2D surfaces and linear interpolations of the loss (Li et al. 2018).

``curve``:        L(θ + a·d)            for a on a grid                  (Li et al. 2018, Sec. 3)
``surface``:      L(θ + a·d₁ + b·d₂)    for (a, b) on a grid, loss[i, j] at (x[i], y[j])
``interpolate``:  L(θ_a + t·(θ_b − θ_a)) for t on a grid (t = 0 is a, t = 1 is b; Goodfellow
                  et al.'s 1D interpolation as used in Li et al. 2018, Sec. 3)

Every point is computed from the center, θ + Σ cᵢdᵢ, never by walking the grid. The BN policy is
the Objective's (``keep`` or ``recalibrate``) and is recorded. Loss and accuracy come from the
engine in ``engine.py`` (the exact affine first-layer trick where it applies).

Files (``path=``): one HDF5 file written as the points are computed, one chunk at a time, each
chunk flushed, in the layout of Li et al.'s code (tomgoldstein/loss-landscape), so that its own
``plot_1D.py``, ``plot_2D.py`` and ``h52vtp.py`` draw our files right:

- ``xcoordinates`` (nx,), ``ycoordinates`` (ny,);
- ``train_loss`` / ``train_acc`` (``test_loss`` / ``test_acc`` with ``split="test"``; the
  ``split`` attribute names it) of shape (nx,) for a curve and **(ny, nx)** for a surface, with
  ``Z[j, i] = L(x[i], y[j])`` (what ``meshgrid(x, y)`` expects); accuracy in **percent**;
- a ``done`` mask of the same shape, provenance attributes and ``format_version`` (2).

In memory a :class:`Surface` keeps ``loss[i, j]`` at ``(x[i], y[j])`` and accuracy as a
fraction. Files of format 1 (no ``format_version``: ``[i, j]`` arrays, accuracy a fraction,
always under ``train_*``) are read and resumed in their own layout. A rerun with the same
arguments resumes (finished points are never recomputed); a rerun with other arguments on the
same file is refused, and so is a second process writing the same file (a lock naming its pid).

>>> import torch, lossatlas as la
>>> X, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
>>> net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
>>> obj = la.Objective(net, (X, y))
>>> d1, d2 = (la.directions.gaussian(net, seed=s) for s in (0, 1))
>>> s = la.surface(obj, d1, d2, resolution=5, orthogonalize=True, progress=False)
>>> s.loss.shape, bool(abs(s.loss[2, 2] - obj.loss()) < 1e-6)
((5, 5), True)
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from lossatlas import store
from lossatlas.core import params as P
from lossatlas.core import resources
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.objective import Objective
from lossatlas.core.progress import track
from lossatlas.measurements.landscape import engine
from lossatlas.store.locks import lock_path, writer_lock

__all__ = ["Curve", "Interpolation", "Surface", "curve", "interpolate", "surface"]

COSINE_WARNING = 0.1  # |cos(d1, d2)| above which a surface's axes are called far from orthogonal
FORMAT_VERSION = 2  # 2: Goldstein layout ((ny, nx) arrays, percent); 1 (no attribute): [i, j]
SPLITS = ("train", "test")


@dataclass(frozen=True)
class FileLayout:
    """How a landscape file stores the in-memory arrays (``loss[i, j]``, accuracy a fraction).

    Format 2 (Li et al.'s readers): arrays transposed, shape (ny, nx), accuracy in percent, keys
    ``{split}_loss`` / ``{split}_acc``. Format 1: as in memory, always ``train_*`` keys.
    """

    version: int = FORMAT_VERSION
    split: str = "train"

    @property
    def loss_key(self) -> str:
        return f"{self.split}_loss" if self.version >= 2 else "train_loss"

    @property
    def acc_key(self) -> str:
        return f"{self.split}_acc" if self.version >= 2 else "train_acc"

    @property
    def acc_scale(self) -> float:
        return 100.0 if self.version >= 2 else 1.0

    def to_file(self, a: np.ndarray) -> np.ndarray:
        """In-memory ``[i, j]`` array -> the file's layout (``.T``: a no-op on curves)."""
        return np.ascontiguousarray(a.T) if self.version >= 2 else a

    def to_memory(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.T) if self.version >= 2 else a

    def file_index(self, flat: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        """Flat in-memory indices (C order of ``shape``) -> index arrays into the file's array."""
        idx = np.unravel_index(flat, shape)
        return tuple(reversed(idx)) if self.version >= 2 else idx

    @classmethod
    def of(cls, f: h5py.File) -> FileLayout:
        version = int(f.attrs.get("format_version", 1))
        split = f.attrs.get("split", "train")
        split = split.decode() if isinstance(split, bytes) else str(split)
        return cls(version, split if version >= 2 else "train")


# -- results --------------------------------------------------------------------------------
@dataclass
class _Result:
    meta: dict = field(default_factory=dict)
    directions: list = field(default_factory=list)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result (classic keys + provenance) to ``path``; ``la.load`` reads it."""
        path = store.check_output(path, "path", resumable=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        lay = FileLayout(split=self.meta.get("split") or "train")
        with store.atomic.h5_file(path) as f:
            _layout(f, self.kind, self._coords(), self.meta, self.directions, lay)
            f[lay.loss_key][...] = lay.to_file(np.asarray(self.loss, dtype=float))
            f[lay.acc_key][...] = lay.to_file(np.asarray(self.accuracy, dtype=float)
                                              * lay.acc_scale)
            f["done"][...] = lay.to_file(np.asarray(self.done, dtype=bool))
        return path

    @property
    def complete(self) -> bool:
        return bool(np.all(self.done))


@store.result("curve")
@dataclass
class Curve(_Result):
    """Loss along one direction: ``x`` (n,), ``loss`` (n,), ``accuracy`` (n,), ``done`` (n,)."""

    x: np.ndarray = None  # type: ignore[assignment]
    loss: np.ndarray = None  # type: ignore[assignment]
    accuracy: np.ndarray = None  # type: ignore[assignment]
    done: np.ndarray = None  # type: ignore[assignment]

    def _coords(self):
        return [self.x]


@store.result("interpolation")
@dataclass
class Interpolation(Curve):
    """Loss on the line θ_a + t(θ_b − θ_a): ``x`` (n,) holds t (0 is a, 1 is b)."""


@store.result("surface")
@dataclass
class Surface(_Result):
    """Loss on a plane: ``x`` (nx,), ``y`` (ny,), ``loss[i, j]`` and ``accuracy[i, j]`` (a
    fraction) at θ + x[i]·d₁ + y[j]·d₂, ``done`` (nx, ny) marks computed points. The file holds
    the transposes, (ny, nx), accuracy in percent (Li et al.'s layout, see the module doc)."""

    x: np.ndarray = None  # type: ignore[assignment]
    y: np.ndarray = None  # type: ignore[assignment]
    loss: np.ndarray = None  # type: ignore[assignment]
    accuracy: np.ndarray = None  # type: ignore[assignment]
    done: np.ndarray = None  # type: ignore[assignment]

    def _coords(self):
        return [self.x, self.y]


_KINDS = {"curve": Curve, "interpolation": Interpolation, "surface": Surface}


# -- file layout ----------------------------------------------------------------------------
def _layout(f: h5py.File, kind: str, coords: Sequence[np.ndarray], meta: Mapping,
            directions: Sequence[Mapping], lay: FileLayout) -> None:
    """Create the file's datasets (NaN / not done) and attributes, in layout ``lay``."""
    store.stamp(f, kind)
    shape = tuple(len(c) for c in reversed(coords))  # (ny, nx): Li et al.'s meshgrid(x, y)
    f.create_dataset("xcoordinates", data=np.asarray(coords[0], dtype=np.float64))
    if len(coords) > 1:
        f.create_dataset("ycoordinates", data=np.asarray(coords[1], dtype=np.float64))
    # contiguous, allocated at creation: later writes touch raw data only (safe on SIGKILL)
    f.create_dataset(lay.loss_key, data=np.full(shape, np.nan))
    f.create_dataset(lay.acc_key, data=np.full(shape, np.nan))
    f.create_dataset("done", data=np.zeros(shape, dtype=bool))
    store.write_attrs(f, {k: v for k, v in meta.items() if k not in ("signature", "split")})
    f.attrs["format_version"] = lay.version
    f.attrs["split"] = lay.split
    f.attrs["signature"] = json.dumps(store.jsonable(meta.get("signature", {})), sort_keys=True)
    if directions:
        g = f.create_group("directions")
        for i, d in enumerate(directions):
            store.write_point(g.create_group(str(i)), P.Point(d, meta=getattr(d, "meta", {})))


def _read(f: h5py.File):
    kind = f.attrs["lossatlas_kind"]
    kind = kind.decode() if isinstance(kind, bytes) else kind
    lay = FileLayout.of(f)
    attrs = store.read_attrs(f)
    for k in ("lossatlas_kind", "torch_version", "created", "format_version"):
        attrs.pop(k, None)
    attrs["split"] = lay.split if lay.version >= 2 else None  # format 1 did not record it
    attrs["signature"] = json.loads(f.attrs["signature"]) if "signature" in f.attrs else {}
    dirs = []
    if "directions" in f:
        g = f["directions"]
        dirs = [store.read_point(g[str(i)]) for i in range(len(g))]
    cls = _KINDS[kind]
    common = dict(loss=lay.to_memory(f[lay.loss_key][()]),
                  accuracy=lay.to_memory(f[lay.acc_key][()]) / lay.acc_scale,
                  done=lay.to_memory(f["done"][()]), meta=attrs, directions=dirs)
    if cls is Surface:
        return Surface(x=f["xcoordinates"][()], y=f["ycoordinates"][()], **common)
    return cls(x=f["xcoordinates"][()], **common)


for _kind in _KINDS:
    store.register_loader(_kind, _read)


# -- provenance -----------------------------------------------------------------------------
def data_hash(obj: Objective, limit: int = 2**26) -> str:
    """A content hash of the objective's data (inputs and targets of every batch). Tensors
    larger than ``limit`` bytes are hashed on a strided sample plus their shape and sum."""
    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"{tuple(t.shape)}{t.dtype}".encode())
            flat = t.reshape(-1)
            if flat.numel() * flat.element_size() > limit:
                step = flat.numel() * flat.element_size() // limit + 1
                h.update(str(float(flat.double().sum())).encode())
                flat = flat[::step].contiguous()
            h.update(flat.numpy().tobytes() if flat.dtype != torch.bfloat16
                     else flat.float().numpy().tobytes())
        elif isinstance(x, Mapping):
            for k in sorted(x):
                h.update(str(k).encode())
                feed(x[k])
        elif isinstance(x, (tuple, list)):
            for v in x:
                feed(v)
        elif x is not None:
            h.update(repr(x).encode())

    for b in obj.batches:
        feed(b.inputs)
        feed(b.targets)
    if obj.dist is not None:  # data split across processes: the shards' hashes in rank order
        return hashlib.sha256("".join(obj.dist.gather(h.hexdigest())).encode()).hexdigest()[:16]
    return h.hexdigest()[:16]


def _direction_info(d: Mapping) -> dict:
    meta = dict(getattr(d, "meta", {}) or {})
    meta.pop("names", None)
    return {**meta, "hash": P.hash_point(d)}


#: What each signature entry means, in the words of the options that set it.
_SIGNATURE_WORDS = {
    "kind": ("the kind of result", ""),
    "coordinates": ("the grid", "span, points / resolution"),
    "center_hash": ("the center weights", "--checkpoint / --index, center="),
    "direction_hashes": ("the directions", "their specs, seeds or files"),
    "bn": ("the BN policy", "--bn / bn="),
    "loss": ("the loss", ""),
    "num_samples": ("the number of samples", "--data-arg train_size, --split"),
    "data_hash": ("the data", "--data, --data-arg, --split"),
}


def _difference(key: str, old: dict, new: dict, file_meta: dict, meta: dict) -> str:
    """One differing signature entry in words, with the file's and the new value where short;
    a data hash that differs only because the batches are cut differently names the batch
    size (the batches are hashed one by one, so the file's floats belong to its batching)."""
    words, options = _SIGNATURE_WORDS.get(key, (key, ""))
    if key == "data_hash":
        b_old, b_new = file_meta.get("batch_size"), meta.get("batch_size")
        if b_old is not None and b_old != b_new and old.get("num_samples") == new.get(
                "num_samples"):
            show = {-1: "all"}
            return (f"the batch size (--batch-size / batch_size=: file {show.get(b_old, b_old)}, "
                    f"now {show.get(b_new, b_new)}; data_hash)")
    values = (f"file {old.get(key)}, now {new.get(key)}; " if key in ("bn", "loss", "num_samples",
                                                                     "kind") else "")
    return f"{words} ({values}{options + '; ' if options else ''}{key})"


def _check_signature(path: Path, kind: str, signature: dict, split: str = "train",
                     meta: dict | None = None) -> None:
    with store.open_h5(path, "r", "path") as f:
        fkind = f.attrs.get("lossatlas_kind")
        fkind = fkind.decode() if isinstance(fkind, bytes) else fkind
        old = json.loads(f.attrs["signature"]) if "signature" in f.attrs else None
        lay = FileLayout.of(f)
        file_meta = store.read_attrs(f) if old is not None else {}
    if fkind != kind or old is None:
        raise LossAtlasError(
            f"path={str(path)!r} holds a {fkind or 'foreign'} file, not a resumable {kind}; "
            "pass another path or delete the file"
        )
    if lay.version >= 2 and lay.split != split:
        raise LossAtlasError(
            f"path={str(path)!r} holds a {kind} on the {lay.split} split, not the {split} "
            f"split; pass split={lay.split!r} (--split {lay.split}) to resume, or another path")
    new = json.loads(json.dumps(store.jsonable(signature), sort_keys=True))
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        words = [_difference(k, old, new, file_meta, meta or {}) for k in diff]
        raise LossAtlasError(
            f"path={str(path)!r} holds a {kind} computed with other arguments (differing: "
            f"{', '.join(words)}); pass the same arguments to resume, or another path / delete "
            "the file to start afresh"
        )


# -- executors ------------------------------------------------------------------------------
class InProcess:
    """The default executor: chunks run one after another in this process, lazily."""

    def map(self, fn: Callable, chunks: Iterable) -> Iterable:
        return map(fn, chunks)


# -- the driver -----------------------------------------------------------------------------
def _grid(span, n: int, name: str) -> np.ndarray:
    try:
        lo, hi = (float(v) for v in span)
    except (TypeError, ValueError):
        raise LossAtlasError(f"{name}={span!r} must be a (low, high) pair of numbers") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
        raise LossAtlasError(f"{name}={span!r} must be finite with low <= high")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise LossAtlasError(f"the number of points along {name} must be a positive int, got {n!r}")
    if lo == hi and n > 1:
        raise LossAtlasError(f"{name}={span!r} gives {n} copies of one point; pass low < high")
    return np.linspace(lo, hi, int(n))


def _check_size(counts: Sequence, what: str, path) -> None:
    """Refuse point counts that are not positive integers, or a grid this machine cannot hold
    (memory) or store (disk), before any array is made (see :mod:`lossatlas.core.resources`)."""
    for n in counts:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise LossAtlasError(f"{what} must be a positive integer number of points")
    resources.check_grid(tuple(int(n) for n in counts), what, path)


def _prepare_direction(obj: Objective, d: Mapping, name: str) -> P.Point:
    if not isinstance(obj, Objective):
        raise LossAtlasError(f"obj must be a lossatlas.Objective, got {type(obj).__name__}")
    if not isinstance(d, Mapping):
        raise LossAtlasError(f"{name} must be a direction (name -> tensor mapping)")
    missing = [k for k in obj.names if k not in d]
    extra = [k for k in d if k not in obj.center]
    if missing or extra:
        raise LossAtlasError(
            f"{name} does not cover the objective's parameters (missing {missing[:3]}, extra "
            f"{extra[:3]}); build it with la.directions.gaussian(model, names=obj.names)"
        )
    out = P.Point({k: d[k] for k in obj.names}, meta=getattr(d, "meta", {}))
    for k, v in out.items():
        if v.shape != obj.center[k].shape:
            raise LossAtlasError(f"{name}[{k!r}] has shape {tuple(v.shape)}, the parameter "
                                 f"{tuple(obj.center[k].shape)}")
    bad = next((k for k, v in out.items() if not bool(torch.isfinite(v).all())), None)
    if bad is not None:  # else every point would be NaN and marked done
        raise LossAtlasError(
            f"{name}[{bad!r}] holds NaN or inf entries; pass a finite {name} (check how it was "
            "built, e.g. a normalization by a zero norm or a diverged checkpoint)"
        )
    return out


def _prepare_center(obj: Objective, center) -> P.Point:
    if not isinstance(obj, Objective):
        raise LossAtlasError(f"obj must be a lossatlas.Objective, got {type(obj).__name__}")
    if center is None:
        return obj.center
    return _prepare_direction(obj, center, "center")


@dataclass
class GridJob:
    """One grid of the loss to compute: L(center + Σ_k c_k·directions[k]) at every point c of
    the product of ``coords`` (one axis per direction).

    Attributes:
        kind: ``"curve"``, ``"surface"`` or ``"interpolation"`` (the result class and the
            file's ``lossatlas_kind``).
        obj: the :class:`~lossatlas.core.objective.Objective` that evaluates each point.
        center: θ, a point over ``obj.names``.
        directions: one direction per axis, over ``obj.names``.
        coords: the grid's axes, ``coords[k]`` of shape (n_k,).
        extra_meta: provenance that the kind adds (a surface's cosine, an interpolation's ends).
        split: the data ``obj`` averages over, ``"train"`` or ``"test"`` (the file's keys).
    """

    kind: str
    obj: Objective
    center: P.Point
    directions: list[P.Point]
    coords: list[np.ndarray]
    extra_meta: dict = field(default_factory=dict)
    split: str = "train"

    @property
    def shape(self) -> tuple[int, ...]:
        """(n_0, n_1, ...): the in-memory arrays' shape, ``[i, j]`` at (coords[0][i], ...)."""
        return tuple(len(c) for c in self.coords)


@dataclass
class GridOptions:
    """How a :class:`GridJob` runs: ``path`` (the resumable HDF5 file, None: in memory),
    ``chunk_size`` (points per chunk; default a row of a surface, a quarter of a curve up to
    16), ``executor`` (``map(fn, chunks)``; None: in this process), ``fast`` (the engine:
    True chooses, ``"affine"`` / False force one), ``callback(done, total)`` after each chunk,
    ``progress`` (a bar) and ``store_directions`` (the directions written into the file)."""

    path: str | os.PathLike | None = None
    chunk_size: int | None = None
    executor: Any = None
    fast: bool | str = True
    callback: Callable[[int, int], Any] | None = None
    progress: bool = True
    store_directions: bool = True


@dataclass
class _GridFile:
    """The open result file of a run: ``f`` (HDF5, ``r+``), its ``layout`` and ``held``, its
    ``loss`` / ``accuracy`` / ``done`` arrays in the file's layout and units, rewritten whole
    after each chunk (a resume rewrites the finished points bit for bit)."""

    f: h5py.File
    layout: FileLayout
    held: dict[str, np.ndarray]


def _check_job(job: GridJob, opts: GridOptions) -> None:
    if not isinstance(job.obj, Objective):
        raise LossAtlasError(f"obj must be a lossatlas.Objective, got {type(job.obj).__name__}")
    if job.split not in SPLITS:
        raise LossAtlasError(f"split={job.split!r} is unknown; pass 'train' or 'test' (the data "
                             "the objective averages over, named in the file's keys)")
    if job.obj.dist is not None and opts.executor is not None:
        raise LossAtlasError("executor= cannot run the chunks of an Objective whose data is "
                             "split across processes; leave executor=None")


def _signature(job: GridJob) -> dict:
    """What a resumed file must have been computed with (else the rerun is refused)."""
    obj = job.obj
    return {
        "kind": job.kind,
        "coordinates": [c.tolist() for c in job.coords],
        "center_hash": P.hash_point(job.center),
        "direction_hashes": [P.hash_point(d) for d in job.directions],
        "bn": obj.bn,
        "loss": obj.loss_name,
        "num_samples": obj.num_samples,
        "data_hash": data_hash(obj),
    }


def _provenance(job: GridJob, signature: dict) -> dict:
    """The result's ``meta``: the kind's extras, the objective's description, the grid and
    the ``signature``."""
    obj, desc = job.obj, job.obj.describe()
    return {
        **job.extra_meta,
        "center_hash": signature["center_hash"],
        "directions_info": [_direction_info(d) for d in job.directions],
        "bn": obj.bn,
        "loss": obj.loss_name,
        "num_samples": obj.num_samples,
        "batch_size": desc["batch_size"],
        "num_params": desc["num_params"],
        "model_class": desc["model_class"],
        "data_hash": signature["data_hash"],
        "num_classes": obj.num_classes,
        "resolution": list(job.shape),
        "span": [[float(c[0]), float(c[-1])] for c in job.coords],
        "split": job.split,
        "signature": signature,
    }


def _open_file(job: GridJob, path: Path, signature: dict, meta: dict,
               stored: list) -> _GridFile:
    """The result file at ``path``, opened for writing: an existing one after its signature
    is checked (resume), else a new one laid out with NaN / not done (written to a temporary
    name and renamed, so a crash leaves no half-made file)."""
    if path.exists():
        _check_signature(path, job.kind, signature, job.split, meta)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        with store.atomic.h5_file(path) as g:
            _layout(g, job.kind, job.coords, meta, stored, FileLayout(split=meta["split"]))
    f = store.open_h5(path, "r+", "path")
    lay = FileLayout.of(f)
    held = {"loss": f[lay.loss_key][()], "accuracy": f[lay.acc_key][()], "done": f["done"][()]}
    return _GridFile(f, lay, held)


def _run(job: GridJob, opts: GridOptions):
    """Compute ``job`` as ``opts`` says and return its result (a :class:`Curve`,
    :class:`Interpolation` or :class:`Surface`).

    Args:
        job: the grid (kind, objective, center, directions, axes, split).
        opts: the file, chunking, executor, engine, callback and progress bar.

    Returns:
        The result with every point computed (read back from the file when there is one, so
        resumed points are those of the file). On data split across processes every rank
        computes, rank 0 alone writes, and every rank returns rank 0's arrays.
    """
    _check_job(job, opts)
    group = job.obj.dist  # data split across processes: every rank computes, rank 0 writes
    if group is not None and group.rank != 0:
        opts = replace(opts, path=None, progress=False)
    signature = _signature(job)
    meta = _provenance(job, signature)
    if group is not None:
        group.same([signature["center_hash"], *signature["direction_hashes"]],
                   "the center or a direction", "build them the same way on every process "
                   "(same seeds; a per-batch gradient is local to its process)")
    stored = list(job.directions) if opts.store_directions else []
    arrays = {"loss": np.full(job.shape, np.nan), "accuracy": np.full(job.shape, np.nan),
              "done": np.zeros(job.shape, dtype=bool)}
    path, out, lock, fast = opts.path, None, None, opts.fast
    if path is not None:
        path = store.check_output(path, "path", resumable=False)
        lock = writer_lock(lock_path(path), f"path={str(path)!r}")
    try:
        if path is not None:
            out = _open_file(job, path, signature, meta, stored)
            fast = _recorded_engine(out.f, fast)
            arrays["done"] = out.layout.to_memory(out.held["done"])
        if group is not None:  # rank 0's resume state, so every rank computes the same points
            arrays["done"] = group.broadcast(arrays["done"])
        _evaluate(job, opts, fast, meta, arrays, out)
    finally:
        if out is not None:
            out.f.close()
        if lock is not None:
            lock.release()
    return _result(job, path, meta, stored, arrays)


def _result(job: GridJob, path: Path | None, meta: dict, stored: list, arrays: dict):
    """The result object: read back from ``path`` when written, else from ``arrays``; on data
    split across processes, rank 0's arrays on every rank."""
    if path is not None:
        with h5py.File(path, "r") as g:
            out = _read(g)
    else:
        out = _KINDS[job.kind](meta=meta, directions=stored,
                               **dict(zip(("x", "y"), job.coords)), **arrays)
    group = job.obj.dist
    if group is not None:  # rank 0's arrays (resumed points included) on every rank
        for k, v in group.broadcast({k: getattr(out, k) for k in arrays}).items():
            setattr(out, k, v)
    return out


def _recorded_engine(f: h5py.File, fast: bool | str) -> bool | str:
    """On resume with ``fast=True``, the engine the file's run chose (``engine_choice``), so
    the remaining points are computed exactly as the first ones were."""
    if fast is not True:
        return fast
    choice = store.read_attrs(f).get("engine_choice")
    return {"affine": "affine", "plain": False}.get(choice, True)


def _chunk_size(shape: tuple[int, ...], chunk_size: int | None) -> int:
    """Points per chunk: ``chunk_size``, else a row of a surface (the last axis), else a
    quarter of a curve (1 to 16 points)."""
    return chunk_size or (shape[-1] if len(shape) > 1 else max(1, min(16, shape[0] // 4)))


def _choose_engine(job: GridJob, token: str, first: np.ndarray, meta: dict,
                   out: _GridFile | None) -> bool | str:
    """One engine for the whole run, chosen here on the ``first`` points to compute (not per
    worker), recorded in ``meta`` and, first of all, in the file."""
    fast = engine.decide_engine(token, job.obj, job.center, job.directions, first)
    meta["engine_choice"] = fast or "plain"
    if out is not None:
        store.write_attrs(out.f, {"engine_choice": meta["engine_choice"]})
        out.f.flush()
    return fast


def _keep(job: GridJob, arrays: dict, out: _GridFile | None, idx: np.ndarray,
          loss: np.ndarray, acc: np.ndarray) -> None:
    """Put one chunk's values into memory and, with a file, into the file.

    Args:
        job: the grid (its shape maps flat indices to the file's).
        arrays: ``loss`` / ``accuracy`` / ``done`` in memory, ``[i, j]``, accuracy a fraction.
        out: the open file (None: in memory only); its held arrays (file layout and units)
            are updated and written whole, then flushed.
        idx: the chunk's flat indices, C order of ``job.shape``.
        loss, acc: the values at those points, shape (len(idx),).
    """
    for name, vals in (("loss", loss), ("accuracy", acc)):
        arrays[name].reshape(-1)[idx] = vals
    arrays["done"].reshape(-1)[idx] = True
    if out is None:
        return
    lay, fa, f = out.layout, out.held, out.f
    at = lay.file_index(idx, job.shape)
    fa["loss"][at] = loss
    fa["accuracy"][at] = np.asarray(acc, dtype=float) * lay.acc_scale
    fa["done"][at] = True
    f[lay.loss_key][...] = fa["loss"]
    f[lay.acc_key][...] = fa["accuracy"]
    f["done"][...] = fa["done"]
    f.flush()


def _record_engines(token: str, engines: set, meta: dict, out: _GridFile | None) -> None:
    """The engine(s) that computed the chunks, why, and its setup time, in ``meta`` and the
    file."""
    meta["engine"] = sorted(engines)[0] if len(engines) == 1 else sorted(engines)
    # in this process: why that engine, and its setup (copies, probes, race) apart
    info = engine.engine_info(token)
    extra = {k: info[k] for k in ("engine_reason", "setup_seconds") if k in info}
    meta.update(extra)
    if out is not None:
        store.write_attrs(out.f, {"engine": meta["engine"], **extra})


def _evaluate(job: GridJob, opts: GridOptions, fast: bool | str, meta: dict, arrays: dict,
              out: _GridFile | None) -> None:
    """Compute the points not yet done, chunk by chunk, into ``arrays`` and the file.

    Args:
        job, opts: the grid and how it runs (``opts.fast`` is superseded by ``fast``, the
            engine a resumed file recorded).
        fast: the engine: True chooses one here, ``"affine"`` / False as given.
        meta: the result's provenance; receives ``engine_choice``, ``engine`` and its reason.
        arrays: ``loss`` / ``accuracy`` / ``done`` in memory (``[i, j]``), filled in place.
        out: the open file (None: in memory only).
    """
    token = uuid.uuid4().hex
    try:
        todo = np.flatnonzero(~arrays["done"].reshape(-1))
        size = _chunk_size(job.shape, opts.chunk_size)
        grids = np.meshgrid(*job.coords, indexing="ij")
        flat = np.stack([g.reshape(-1) for g in grids], axis=1)  # (N, k)
        if fast is True and len(todo):
            fast = _choose_engine(job, token, flat[todo[:4]], meta, out)
        executor = opts.executor or InProcess()
        if not isinstance(executor, InProcess):
            engine.release(token)  # the driver's engine served the choice; workers build theirs
        chunks = (
            engine.Chunk(token, job.obj, job.center, job.directions, idx, flat[idx], fast)
            for idx in (todo[i:i + size] for i in range(0, len(todo), size))
        )
        n_chunks = (len(todo) + size - 1) // size
        results = executor.map(engine.evaluate_chunk, chunks)
        engines = set()
        shown = track(results, f"{job.kind} ({len(todo)} points)", total=n_chunks,
                      disable=None if opts.progress else True)
        for finished, (idx, loss, acc, mode) in enumerate(shown, start=1):
            engines.add(mode)
            _keep(job, arrays, out, idx, loss, acc)
            if opts.callback is not None:
                opts.callback(finished, n_chunks)
        if engines:
            _record_engines(token, engines, meta, out)
    finally:
        engine.release(token)


def _check_orthogonal(d1: P.Point, d2: P.Point, orthogonalize: bool):
    cos = P.cosine(d1, d2)
    if orthogonalize:
        d2o = P.gram_schmidt([d1, d2])[1]
        d2o.meta = {**dict(getattr(d2, "meta", {}) or {}), "orthogonalized_against_d1": True}
        return d2o, cos
    if abs(cos) > COSINE_WARNING:
        warnings.warn(
            f"the two directions are far from orthogonal (cos = {cos:.3f}); the plot's axes are "
            "skewed. Pass orthogonalize=True to use the part of d2 orthogonal to d1",
            stacklevel=3,
        )
    return d2, cos


def curve(
    obj: Objective,
    d: Mapping[str, torch.Tensor],
    span: tuple[float, float] = (-1.0, 1.0),
    points: int = 41,
    center: Mapping[str, torch.Tensor] | None = None,
    path: str | os.PathLike | None = None,
    *,
    chunk_size: int | None = None,
    executor=None,
    fast: bool | str = True,
    callback: Callable[[int, int], Any] | None = None,
    progress: bool = True,
    store_directions: bool = True,
    split: str = "train",
) -> Curve:
    """Loss and accuracy at θ + a·d for ``points`` values of a evenly spaced over ``span``
    (Li et al. 2018, Sec. 3).

    Args:
        obj: the objective (model, data, loss, BN policy).
        d: the direction, over ``obj.names``.
        span, points: the grid ``a = linspace(*span, points)``.
        center: θ (default: the objective's parameters).
        path: an HDF5 file written as the points are computed; a rerun resumes.
        chunk_size: points per chunk (default a quarter of the curve, 1 to 16).
        executor: any object with ``map(fn, chunks)`` (default: in this process).
        fast: the evaluation engine: True chooses, ``"affine"`` / False force one.
        callback: ``callback(done, total)`` after each chunk.
        progress: show a progress bar.
        store_directions: write the direction into the file.
        split: the data the objective averages over (``"train"`` or ``"test"``): the file's
            keys are ``{split}_loss`` / ``{split}_acc``.

    Returns:
        A :class:`Curve`: ``x`` (points,), ``loss``, ``accuracy`` (a fraction), ``done``.
    """
    center = _prepare_center(obj, center)
    d = _prepare_direction(obj, d, "d")
    _check_size([points], f"points={points!r}", path)
    x = _grid(span, points, "span")
    return _run(GridJob("curve", obj, center, [d], [x], split=split),
                GridOptions(path, chunk_size, executor, fast, callback, progress,
                            store_directions))


def surface(
    obj: Objective,
    d1: Mapping[str, torch.Tensor],
    d2: Mapping[str, torch.Tensor],
    span: tuple[float, float] = (-1.0, 1.0),
    resolution: int = 51,
    *,
    xspan: tuple[float, float] | None = None,
    yspan: tuple[float, float] | None = None,
    xres: int | None = None,
    yres: int | None = None,
    center: Mapping[str, torch.Tensor] | None = None,
    path: str | os.PathLike | None = None,
    orthogonalize: bool = False,
    chunk_size: int | None = None,
    executor=None,
    fast: bool | str = True,
    callback: Callable[[int, int], Any] | None = None,
    progress: bool = True,
    store_directions: bool = True,
    split: str = "train",
) -> Surface:
    """Loss and accuracy at θ + a·d₁ + b·d₂ on a grid (Li et al. 2018, Sec. 3 and 4).

    Warns when |cos(d₁, d₂)| > 0.1.

    Args:
        obj: the objective (model, data, loss, BN policy).
        d1, d2: the directions of the x and y axes, over ``obj.names``.
        span, resolution: both axes' range and number of points, unless given apart:
        xspan, yspan, xres, yres: ``x = linspace(*xspan, xres)``, ``y = linspace(*yspan,
            yres)``.
        center: θ (default: the objective's parameters).
        path: an HDF5 file written row chunk by row chunk as it is computed; a rerun resumes.
        orthogonalize: replace d₂ by its part orthogonal to d₁ (same norm).
        chunk_size: points per chunk (default a row, ``len(y)`` points).
        executor, fast, callback, progress, store_directions, split: as in :func:`curve`.

    Returns:
        A :class:`Surface`: ``x`` (nx,), ``y`` (ny,), ``loss[i, j]`` and ``accuracy[i, j]``
        at ``(x[i], y[j])``, ``done``; ``meta`` holds the cosine of d₁ and d₂.
    """
    center = _prepare_center(obj, center)
    d1 = _prepare_direction(obj, d1, "d1")
    d2 = _prepare_direction(obj, d2, "d2")
    d2, cos = _check_orthogonal(d1, d2, orthogonalize)
    _check_size([xres or resolution, yres or resolution], f"resolution={resolution!r}" if
                xres is None and yres is None else f"xres={xres!r}, yres={yres!r}", path)
    x = _grid(xspan if xspan is not None else span, xres or resolution, "xspan")
    y = _grid(yspan if yspan is not None else span, yres or resolution, "yspan")
    extra = {"cosine": cos, "orthogonalized": bool(orthogonalize)}
    return _run(GridJob("surface", obj, center, [d1, d2], [x, y], extra, split),
                GridOptions(path, chunk_size, executor, fast, callback, progress,
                            store_directions))


def interpolate(
    obj: Objective,
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    span: tuple[float, float] = (-0.5, 1.5),
    points: int = 41,
    path: str | os.PathLike | None = None,
    *,
    chunk_size: int | None = None,
    executor=None,
    fast: bool | str = True,
    callback: Callable[[int, int], Any] | None = None,
    progress: bool = True,
    store_directions: bool = True,
    split: str = "train",
) -> Interpolation:
    """Loss and accuracy at θ_a + t·(θ_b − θ_a) for t evenly spaced over ``span`` (t = 0 is
    ``a``, t = 1 is ``b``; spans beyond [0, 1] extrapolate). BN statistics follow the
    objective's policy (``keep``: the objective model's buffers at every t).

    Args:
        obj: the objective (model, data, loss, BN policy).
        a, b: the two points, over ``obj.names``.
        span, points: the grid ``t = linspace(*span, points)``.
        path, chunk_size, executor, fast, callback, progress, store_directions, split: as in
            :func:`curve`.

    Returns:
        An :class:`Interpolation`: ``x`` (points,) holds t; ``loss``, ``accuracy``, ``done``.
    """
    from lossatlas.directions import between

    a = _prepare_direction(obj, a, "a")
    b = _prepare_direction(obj, b, "b")
    d = between(a, b)
    _check_size([points], f"points={points!r}", path)
    t = _grid(span, points, "span")
    ends = {"a_hash": P.hash_point(a), "b_hash": P.hash_point(b)}
    return _run(GridJob("interpolation", obj, a, [d], [t], ends, split),
                GridOptions(path, chunk_size, executor, fast, callback, progress,
                            store_directions))
