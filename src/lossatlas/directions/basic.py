"""Directions between points, and saving / loading directions with their provenance.

>>> import torch, lossatlas as la
>>> a, b = la.params.Point(w=torch.zeros(2)), la.params.Point(w=torch.ones(2))
>>> la.directions.between(a, b)["w"].tolist()
[1.0, 1.0]
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import h5py
import torch

from lossatlas import params as P
from lossatlas import store
from lossatlas.errors import LossAtlasError

__all__ = ["between", "load", "save"]

KIND = "direction"


def between(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> P.Point:
    """The direction b − a from point ``a`` to point ``b`` (Li et al. 2018's 1D interpolation
    θ(α) = a + α(b − a)). ``.meta`` records both endpoints' hashes."""
    if a.keys() != b.keys():
        raise LossAtlasError(
            "between(a, b): the points cover different parameters; build both with "
            "la.params.of on the same model and selection"
        )
    d = P.Point({k: b[k].detach() - a[k].detach().to(b[k].device) for k in a})
    d.meta = {"kind": "between", "a_hash": P.hash_point(a), "b_hash": P.hash_point(b),
              "center_hash": P.hash_point(a)}
    return d


def save(direction: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write one direction (tensors and ``.meta`` provenance) to an HDF5 file; ``load`` or
    ``la.load`` reads it back as a :class:`Point`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        store._stamp(f, KIND)
        meta = dict(getattr(direction, "meta", {}) or {})
        meta.setdefault("hash", P.hash_point(direction))
        point = P.Point(direction, meta=meta)
        store._write_point(f.create_group("direction"), point)
    os.replace(tmp, path)
    return path


def _read(f: h5py.File) -> P.Point:
    return store._read_point(f["direction"])


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
