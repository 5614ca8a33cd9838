"""Result files: round trips of arrays, points and attributes, provenance stamps, clear errors."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
import torch

import lossatlas as la
from lossatlas.core.params import Point
from lossatlas.store import results as store


@store.result("test-roundtrip")
@dataclasses.dataclass
class _Thing:
    x: np.ndarray
    direction: Point
    history: list
    label: str = ""
    count: int = 0
    info: dict = dataclasses.field(default_factory=dict)


def test_roundtrip_with_points_and_provenance(tmp_path):
    d = Point({"layer.0.weight": torch.randn(3, 2), "bias": torch.zeros(3)},
              meta={"seed": 3, "norm": "filter"})
    thing = _Thing(np.linspace(0, 1, 5), d, [Point(a=torch.ones(2)), Point(a=torch.zeros(2))],
                   label="demo", count=7, info={"span": [-1, 1]})
    path = thing.save(tmp_path / "t.h5", center_hash="abc")
    back = la.load(path)
    assert isinstance(back, _Thing)
    assert np.array_equal(back.x, thing.x)
    assert list(back.direction) == ["layer.0.weight", "bias"]
    assert torch.equal(back.direction["layer.0.weight"], d["layer.0.weight"])
    assert back.direction.meta == {"seed": 3, "norm": "filter"}
    assert torch.equal(back.history[0]["a"], torch.ones(2))
    assert (back.label, back.count, back.info) == ("demo", 7, {"span": [-1, 1]})
    with h5py.File(path) as f:
        assert f.attrs["lossatlas_kind"] == "test-roundtrip"
        assert f.attrs["lossatlas_version"] == la.__version__
        assert f.attrs["center_hash"] == "abc"
    assert not (tmp_path / "t.h5.tmp").exists()


def test_load_refuses_foreign_or_missing_files(tmp_path):
    with pytest.raises(la.LossAtlasError, match="does not exist"):
        la.load(tmp_path / "nope.h5")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(la.LossAtlasError, match="not a lossatlas result"):
        la.load(tmp_path / "plain.h5")
    with pytest.raises(la.LossAtlasError, match="cannot be saved"):
        store.save(object(), tmp_path / "x.h5")
