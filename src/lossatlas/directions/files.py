"""Saving and loading directions with their provenance (one HDF5 file each; `la.load` reads
them too).

>>> import torch, tempfile, os, lossatlas as la
>>> d = la.params.Point(w=torch.ones(2))
>>> path = la.directions.save(d, os.path.join(tempfile.mkdtemp(), "d.h5"))
>>> la.directions.load(path)["w"].tolist()
[1.0, 1.0]
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import h5py
import torch

from lossatlas import store
from lossatlas.core import params as P
from lossatlas.core.errors import LossAtlasError

__all__ = ["load", "save"]

KIND = "direction"


def save(direction: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write one direction (tensors and ``.meta`` provenance) to an HDF5 file; ``load`` or
    ``la.load`` reads it back as a :class:`Point`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with store.atomic.h5_file(path) as f:
        store.stamp(f, KIND)
        meta = dict(getattr(direction, "meta", {}) or {})
        meta.setdefault("hash", P.hash_point(direction))
        point = P.Point(direction, meta=meta)
        store.write_point(f.create_group("direction"), point)
    return path


def _read(f: h5py.File) -> P.Point:
    return store.read_point(f["direction"])


def load(path: str | os.PathLike) -> P.Point:
    """Read a direction written by :func:`save` (with its ``.meta``)."""
    path = Path(path)
    if not path.exists():
        raise LossAtlasError(f"path {str(path)!r} does not exist; check the file name")
    with h5py.File(path, "r") as f:
        if "direction" not in f:
            raise LossAtlasError(f"{path} holds no direction; save one with directions.save")
        return _read(f)


store.register_loader(KIND, _read)
