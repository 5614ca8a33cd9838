"""Result files: one self-describing HDF5 file per result, with provenance, and `la.load`.

A result is a dataclass registered with :func:`result`. :func:`save` writes its fields:

* numpy arrays and tensors -> datasets,
* ``Mapping[str, Tensor]`` (points, directions) -> a group with one dataset per name
  (names are stored in an attribute, so dots and slashes survive),
* lists of such mappings -> a group of groups,
* str / numbers / bools / None / JSON-able lists and dicts -> attributes (JSON-encoded).

Every file carries ``lossatlas_kind``, ``lossatlas_version``, ``torch_version`` and
``created`` attributes. :func:`load` reads the kind and rebuilds the registered class.

>>> import dataclasses, tempfile, numpy as np
>>> @result("example")
... @dataclasses.dataclass
... class Example:
...     x: np.ndarray
...     note: str = ""
>>> path = tempfile.mktemp(suffix=".h5")
>>> save(Example(np.arange(3.0), note="hi"), path)  # doctest: +ELLIPSIS
PosixPath(...)
>>> load(path).note
'hi'
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from lossatlas.core.errors import LossAtlasError
from lossatlas.store import atomic
from lossatlas.store.encoding import (
    is_tensor_map,
    jsonable,
    read_attrs,
    read_point,
    stamp,
    write_attrs,
    write_point,
)

__all__ = ["check_folder", "check_output", "load", "open_h5", "open_regular", "read_attrs",
           "read_state_dict", "register_loader", "result", "save", "write_attrs"]

_REGISTRY: dict[str, type] = {}
_LOADERS: dict[str, Any] = {}


def result(kind: str):
    """Class decorator: register a dataclass as a result kind and give it ``save(path)``."""

    def deco(cls):
        _REGISTRY[kind] = cls
        cls.kind = kind
        if not hasattr(cls, "save"):
            cls.save = lambda self, path, **attrs: save(self, path, **attrs)
        return cls

    return deco


def register_loader(kind: str, fn) -> None:
    """Register a custom loader ``fn(h5py.File) -> object`` for files of ``kind`` (for results
    written incrementally, e.g. resumable surfaces)."""
    _LOADERS[kind] = fn


def open_regular(path: str | os.PathLike, what: str):
    """``path`` opened for binary reading, refused unless it is a regular file.

    Opened with ``O_NONBLOCK`` and checked with ``fstat`` on the open descriptor, so a FIFO,
    a device or a socket is refused at once (instead of hanging on ``open``) and nothing can
    swap the file between the check and the read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise LossAtlasError(f"{what} {str(path)!r} cannot be opened ({exc.strerror}); check "
                             "the path") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
                "a device or socket")
        raise LossAtlasError(f"{what} {str(path)!r} is {kind}, not a regular file; pass a "
                             "checkpoint file")
    if hasattr(os, "O_NONBLOCK"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _pickle_reason(exc: BaseException) -> str:
    """The one reason in torch's multi-paragraph ``weights_only`` refusal."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (f"it asks for {found.group(1)}, which loading with weights_only=True refuses "
                "as it could run code")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return first.split(". ")[0].rstrip(".")  # torch's first line holds several sentences


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def read_state_dict(path: str | os.PathLike, what: str = "checkpoint"
                    ) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pt`` file holding a state dict, or a dict with a ``"state_dict"`` /
    ``"model"`` entry (the common training-script layouts); read with ``weights_only=True``
    from a regular file only (:func:`open_regular`).

    ``what`` names the argument in the one-sentence error (``"--checkpoint"``, ``"checkpoint"``);
    every file that is not a plain state dict (a pickle asking for code, a truncated file) gets
    the same sentence whether it comes as a ``.pt`` file or from a run folder.
    """
    path = Path(path)
    if not path.exists() or path.is_dir():
        raise LossAtlasError(f"{what} {str(path)!r} is not a file; check the path")
    with open_regular(path, what) as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise LossAtlasError(f"{what} {str(path)!r} is empty (0 bytes, an interrupted "
                                 "copy?); pass the checkpoint file itself")
        if f.read(8) == _HDF5_MAGIC:
            raise LossAtlasError(f"{what} {str(path)!r} is an HDF5 result file, not a "
                                 "checkpoint; pass a .pt state dict or a run folder")
        f.seek(0)
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise LossAtlasError(
                f"{what} {str(path)!r} cannot be read as a torch state dict "
                f"({_pickle_reason(exc)}); save it with torch.save(model.state_dict(), path)"
            ) from None
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor)
                                                 for v in state.values()):
        raise LossAtlasError(f"{what} {str(path)!r} holds no state dict of tensors; save one "
                             "with torch.save(model.state_dict(), path)")
    return dict(state)


def save(obj, path: str | os.PathLike, **extra_attrs) -> Path:
    """Write a registered result dataclass to ``path`` atomically (``store.atomic``)."""
    kind = getattr(obj, "kind", None)
    if kind not in _REGISTRY or not dataclasses.is_dataclass(obj):
        raise LossAtlasError(
            f"objects of type {type(obj).__name__} cannot be saved; only lossatlas results can"
        )
    path = check_output(path, "path", resumable=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.h5_file(path) as f:
        stamp(f, kind)
        scalars = {}
        for field in dataclasses.fields(obj):
            v = getattr(obj, field.name)
            if isinstance(v, torch.Tensor):
                v = v.detach().cpu().numpy()
            if isinstance(v, np.ndarray):
                f.create_dataset(field.name, data=v)
            elif is_tensor_map(v):
                write_point(f.create_group(field.name), v)
            elif isinstance(v, (list, tuple)) and v and all(is_tensor_map(x) for x in v):
                g = f.create_group(field.name)
                g.attrs["type"] = "points"
                g.attrs["count"] = len(v)
                for i, x in enumerate(v):
                    write_point(g.create_group(str(i)), x)
            else:
                scalars[field.name] = v
        f.attrs["fields"] = json.dumps(jsonable(scalars))
        write_attrs(f, extra_attrs)
    return path


_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save: a zip archive, or a legacy pickle


def _not_result(path: Path, what: str) -> str | None:
    """Why ``path`` cannot be an HDF5 result file (None when it may be one)."""
    if not path.exists():
        return f"{what} {str(path)!r} does not exist; check the file name"
    if path.is_dir():
        return (f"{what} {str(path)!r} is a folder, not a result file; pass one of the .h5 "
                "files written by lossatlas (e.g. surface.h5)")
    if not path.is_file():
        return f"{what} {str(path)!r} is not a regular file; pass an .h5 result file"
    size = path.stat().st_size
    if size == 0:
        return (f"{what} {str(path)!r} is empty (0 bytes, an interrupted copy?); delete it and "
                "rerun the command that writes it")
    if not h5py.is_hdf5(path):
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head.startswith(_PICKLE_MAGIC):
            return (f"{what} {str(path)!r} is a torch checkpoint, not a result file; pass it as "
                    "--checkpoint (or la.load_run / torch.load) and give an .h5 result here")
        return (f"{what} {str(path)!r} is not an HDF5 file ({size} bytes of something else, "
                "or a truncated copy); pass an .h5 result written by lossatlas")
    return None


def open_h5(path: str | os.PathLike, mode: str = "r", what: str = "path") -> h5py.File:
    """``h5py.File(path, mode)`` for a result file, or one sentence naming ``what`` and the
    fix: a folder, an empty or foreign file, a truncated HDF5 file, a file another process is
    writing (HDF5's file lock)."""
    path = Path(path)
    reason = _not_result(path, what)
    if reason:
        raise LossAtlasError(reason)
    try:
        return h5py.File(path, mode)
    except BlockingIOError:
        raise LossAtlasError(
            f"{what} {str(path)!r} is being written by {_writer(path)} (HDF5 holds its lock); "
            "wait until that command finishes, then run this one again"
        ) from None
    except OSError as exc:
        raise LossAtlasError(
            f"{what} {str(path)!r} is a damaged or truncated HDF5 file "
            f"({str(exc).splitlines()[0]}); delete it and rerun the command that writes it"
        ) from None


def _writer(path: Path) -> str:
    """``"process 1234"`` from the writer's lock file (see :mod:`lossatlas.store.locks`), else
    ``"another process"``."""
    from lossatlas.store.locks import lock_path

    try:
        pid = lock_path(path).read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


def check_output(path: str | os.PathLike, what: str = "path", resumable: bool = True) -> Path:
    """Refuse an output ``path`` that cannot be written: a folder, a path under a file, or
    (``resumable``) an existing file that is not a readable HDF5 result to resume."""
    path = Path(path)
    if path.is_dir():
        raise LossAtlasError(f"{what} {str(path)!r} is a folder; pass a file name in it, e.g. "
                             f"{str(path / 'result.h5')!r}")
    _check_parents(path, what)
    if resumable and path.exists():
        open_h5(path, "r", what).close()
    return path


def check_folder(path: str | os.PathLike, what: str = "out") -> Path:
    """Refuse an output folder ``path`` that is a file or lies under a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LossAtlasError(f"{what} {str(path)!r} is a file; pass a folder path (it is "
                             "created if missing)")
    _check_parents(path, what)
    return path


def _check_parents(path: Path, what: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LossAtlasError(
                    f"{what} {str(path)!r} lies under {str(parent)!r}, which is a file, not a "
                    "folder; choose a path inside a folder"
                )
            return


def load(path: str | os.PathLike, *, what: str = "path"):
    """Read any lossatlas result file back into its result object (``what`` names the
    argument in the one-sentence errors, e.g. ``"FILE"`` for the command line)."""
    path = Path(path)
    with open_h5(path, "r", what) as f:
        try:
            return _load_open(f, path, what)
        except (OSError, KeyError) as exc:
            raise LossAtlasError(
                f"{what} {str(path)!r} is incomplete or damaged ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'missing data'}); delete it and "
                "rerun the command that writes it"
            ) from None


def _load_open(f: h5py.File, path: Path, what: str):
    kind = f.attrs.get("lossatlas_kind")
    if isinstance(kind, bytes):
        kind = kind.decode()
    if kind is None:
        raise LossAtlasError(f"{what} {str(path)!r} is an HDF5 file but not a lossatlas result "
                             "(no lossatlas_kind attribute); pass a file written by lossatlas")
    _import_kinds()
    if kind in _LOADERS:
        return _LOADERS[kind](f)
    if kind not in _REGISTRY:
        raise LossAtlasError(f"{what} {str(path)!r} holds a result of unknown kind {kind!r}; "
                             "read it with the lossatlas version that wrote it")
    cls = _REGISTRY[kind]
    fields = json.loads(f.attrs.get("fields", "{}"))
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        name = field.name
        if name in f:
            node = f[name]
            if isinstance(node, h5py.Dataset):
                values[name] = node[()]
            elif node.attrs.get("type") == "points":
                values[name] = [read_point(node[str(i)]) for i in
                                range(int(node.attrs["count"]))]
            else:
                values[name] = read_point(node)
        elif name in fields:
            values[name] = fields[name]
    return cls(**values)


#: The modules that define result kinds (``@result`` or :func:`register_loader`), imported by
#: :func:`load` so that every kind is registered; a test checks the list against the sources.
KIND_MODULES = (
    "lossatlas.directions.files",
    "lossatlas.measurements.connect",
    "lossatlas.measurements.hessian.blocks",
    "lossatlas.measurements.hessian.eigenpairs",
    "lossatlas.measurements.hessian.hutchinson",
    "lossatlas.measurements.hessian.second_order",
    "lossatlas.measurements.hessian.slq",
    "lossatlas.measurements.hessian.summary",
    "lossatlas.measurements.landscape.grids",
    "lossatlas.measurements.mining",
    "lossatlas.measurements.sharpness",
    "lossatlas.measurements.trajectory.planes",
    "lossatlas.measurements.trajectory.projection",
)


def _import_kinds() -> None:
    """Import :data:`KIND_MODULES` so their classes are registered; a module that fails to
    import raises its own error (it is not reported as an unknown kind)."""
    import importlib

    for mod in KIND_MODULES:
        importlib.import_module(mod)
