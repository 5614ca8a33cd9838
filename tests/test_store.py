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


def _foreign_kind_file(path, kind):
    from lossatlas import store as S

    with h5py.File(path, "w") as f:
        S.stamp(f, kind)
    return path


def test_a_broken_kind_module_raises_its_own_error_not_unknown_kind(tmp_path, monkeypatch):
    path = _foreign_kind_file(tmp_path / "x.h5", "kind-nobody-defines")
    with pytest.raises(la.LossAtlasError, match="unknown kind 'kind-nobody-defines'"):
        la.load(path)
    (tmp_path / "lossatlas_broken_kind_mod.py").write_text(
        "raise RuntimeError('this kind module is broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(store, "KIND_MODULES", (*store.KIND_MODULES, "lossatlas_broken_kind_mod"))
    with pytest.raises(RuntimeError, match="broken on purpose"):
        la.load(path)


def test_kind_modules_list_every_module_that_defines_a_kind():
    """``KIND_MODULES`` names exactly the modules whose source registers a kind."""
    import pathlib
    import re

    root = pathlib.Path(la.__file__).parent
    found = set()
    for file in root.rglob("*.py"):
        if file.parent.name == "store":
            continue
        if re.search(r"^@(store\.)?result\(|register_loader\(", file.read_text(), re.M):
            found.add(".".join(("lossatlas", *file.relative_to(root).with_suffix("").parts)))
    assert found == set(store.KIND_MODULES)


def test_atomic_writes_replace_whole_or_leave_the_old_file(tmp_path):
    from lossatlas.store import atomic

    path = tmp_path / "a.h5"
    with atomic.h5_file(path) as f:
        f["x"] = np.arange(3)
        assert not path.exists() and atomic.tmp_path(path).exists()
    with h5py.File(path) as f:
        assert f["x"][()].tolist() == [0, 1, 2]
    with pytest.raises(ValueError), atomic.h5_file(path) as f:
        f["x"] = np.arange(5)
        raise ValueError("interrupted")
    with h5py.File(path) as f:  # the old file, and no temporary left behind
        assert f["x"][()].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]
    assert atomic.write_bytes(tmp_path / "b", b"\x00\x01").read_bytes() == b"\x00\x01"
