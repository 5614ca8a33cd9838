"""How values become HDF5 nodes and back: JSON attributes, points as groups, the provenance
stamp. The public pieces of a result file, for writers that build theirs incrementally (the
landscape's resumable surfaces, saved directions) as well as for :func:`lossatlas.store.save`.

- attributes: strings stay plain, anything else is JSON (:func:`jsonable` first: numpy and
  torch values become lists and numbers, paths strings, non-finite floats ``"nan"`` /
  ``"inf"``);
- a point (``Mapping[str, Tensor]``, e.g. a direction) is a group with one dataset per
  tensor, named ``"0"``, ``"1"``, ...; the names go to the ``names`` attribute (so dots and
  slashes survive) and the point's ``.meta`` to ``meta``;
- :func:`stamp` writes the kind and provenance every result file carries:
  ``lossatlas_kind``, ``lossatlas_version``, ``torch_version`` and ``created`` (UTC).

>>> import tempfile, os, h5py, torch
>>> from lossatlas.core.params import Point
>>> path = os.path.join(tempfile.mkdtemp(), "p.h5")
>>> with h5py.File(path, "w") as f:
...     stamp(f, "example")
...     write_point(f.create_group("d"), Point({"a.w": torch.ones(2)}, meta={"seed": 0}))
>>> with h5py.File(path, "r") as f:
...     d = read_point(f["d"])
...     kind = f.attrs["lossatlas_kind"]
>>> kind, list(d), d.meta
('example', ['a.w'], {'seed': 0})
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

__all__ = ["is_tensor_map", "json_safe", "jsonable", "read_attrs", "read_point", "stamp",
           "write_attrs", "write_point"]


def jsonable(v: Any) -> Any:
    """``v`` with numpy / torch values as Python lists and numbers, mappings with string keys,
    tuples as lists, paths as strings and non-finite floats as strings: what ``json.dumps``
    takes."""
    if isinstance(v, (np.generic,)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().tolist()
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)
    return v


def json_safe(value: Any) -> Any:
    """``value`` for a JSON document read by people and browsers (``allow_nan=False``):
    non-finite floats become null, tuples lists, numpy / torch scalars Python numbers, keys
    strings, anything else its ``str``."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)) and np.ndim(value) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_attrs(node: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    """JSON-encode ``attrs`` into an HDF5 node (strings stay plain strings)."""
    for k, v in attrs.items():
        if isinstance(v, str):
            node.attrs[k] = str(v)
        else:
            node.attrs[k] = json.dumps(jsonable(v))


def read_attrs(node: h5py.HLObject) -> dict[str, Any]:
    """Inverse of :func:`write_attrs`."""
    out = {}
    for k, v in node.attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, str):
            try:
                out[k] = json.loads(v)
            except (json.JSONDecodeError, ValueError):
                out[k] = v
        elif isinstance(v, np.ndarray):
            out[k] = v.tolist()
        elif isinstance(v, np.generic):
            out[k] = v.item()
        else:
            out[k] = v
    return out


def is_tensor_map(v: Any) -> bool:
    """True for a non-empty mapping of tensors (a point or a direction)."""
    return isinstance(v, Mapping) and bool(v) and all(
        isinstance(x, torch.Tensor) for x in v.values()
    )


def write_point(group: h5py.Group, point: Mapping[str, torch.Tensor]) -> None:
    """Write ``point`` (name -> tensor, with its ``.meta`` when it has one) into ``group``."""
    names = list(point)
    group.attrs["names"] = json.dumps(names)
    group.attrs["type"] = "point"
    meta = getattr(point, "meta", None)
    if meta:
        group.attrs["meta"] = json.dumps(jsonable(meta))
    for i, k in enumerate(names):
        group.create_dataset(str(i), data=point[k].detach().cpu().numpy())


def read_point(group: h5py.Group):
    """The :class:`lossatlas.core.params.Point` (with ``.meta``) that :func:`write_point`
    wrote into ``group``."""
    from lossatlas.core.params import Point

    names = json.loads(group.attrs["names"])
    meta = json.loads(group.attrs["meta"]) if "meta" in group.attrs else {}
    return Point({k: torch.from_numpy(group[str(i)][()]) for i, k in enumerate(names)}, meta=meta)


def stamp(f: h5py.File, kind: str) -> None:
    """Mark ``f`` as a result of ``kind`` with its provenance: ``lossatlas_kind``,
    ``lossatlas_version``, ``torch_version`` and ``created`` (UTC, ISO 8601)."""
    from lossatlas import __version__

    f.attrs["lossatlas_kind"] = kind
    f.attrs["lossatlas_version"] = __version__
    f.attrs["torch_version"] = str(torch.__version__)
    f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
