"""Our landscape files read by Li et al.'s own readers (tomgoldstein/loss-landscape).

The three readers ``plot_2D.py``, ``plot_1D.py`` and ``h52vtp.py`` are not imported: the numpy /
h5py calls they make on a file are re-typed here, one function per reader, and what they see
is compared with points computed by hand through ``Objective.evaluate`` at θ + a·d₁ + b·d₂ on
a non-square grid (3 x-values, 5 y-values), where a transposed layout cannot pass.
"""

import os
import warnings

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import lossatlas as la
from lossatlas.core.errors import LossAtlasError
from lossatlas.store import locks as _locks

os.environ.setdefault("LOSSATLAS_QUIET", "1")
NX, NY = 3, 5


def _problem():
    torch.manual_seed(0)
    X, y = torch.randn(90, 6), torch.randint(0, 3, (90,))
    Xt, yt = torch.randn(40, 6), torch.randint(0, 3, (40,))
    net = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3))
    d1, d2 = (la.directions.gaussian(net, seed=s) for s in (0, 1))
    return net, (X, y), (Xt, yt), d1, d2


def _hand(obj, d1, d2, a, b):
    """(loss, accuracy in percent) at θ + a·d₁ + b·d₂, straight from the Objective."""
    theta = obj.center
    point = {k: theta[k] + a * d1[k] + b * d2[k] for k in theta}
    ev = obj.evaluate(point)
    return ev["loss"], 100.0 * ev["accuracy"]


def _surface(path, split="train"):
    net, train, test, d1, d2 = _problem()
    obj = la.Objective(net, train if split == "train" else test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = la.surface(obj, d1, d2, xspan=(-1, 1), yspan=(-0.5, 1.5), xres=NX, yres=NY,
                       path=path, split=split, progress=False)
    return s, obj, d1, d2


# -- the readers, re-typed ----------------------------------------------------------------
def read_like_plot_2d(path, surf_name="train_loss"):
    """plot_2D.plot_2d_contour: X, Y = meshgrid(x, y); Z = f[surf_name][:] (err = 100 - acc)."""
    f = h5py.File(path, "r")
    x = np.array(f["xcoordinates"][:])
    y = np.array(f["ycoordinates"][:])
    X, Y = np.meshgrid(x, y)
    if surf_name in f.keys():  # noqa: SIM118 (the reader's own call)
        Z = np.array(f[surf_name][:])
    elif surf_name in ("train_err", "test_err"):
        Z = 100 - np.array(f[surf_name.replace("err", "acc")][:])
    f.close()
    return X, Y, Z


def read_like_h52vtp(path, surf_name="train_loss"):
    """h52vtp.h5_to_vtp: meshgrid of the coordinates, then x, y, z raveled side by side."""
    f = h5py.File(path, "r")
    [xcoordinates, ycoordinates] = np.meshgrid(f["xcoordinates"][:], f["ycoordinates"][:][:])
    vals = f[surf_name]
    x_array = xcoordinates[:].ravel()
    y_array = ycoordinates[:].ravel()
    z_array = vals[:].ravel()
    f.close()
    return x_array, y_array, z_array


def read_like_plot_1d(path):
    """plot_1D.plot_1d_loss_err: x, train_loss, train_acc (percent), test_* when present."""
    f = h5py.File(path, "r")
    x = f["xcoordinates"][:]
    assert "train_loss" in f.keys(), "'train_loss' does not exist"  # noqa: SIM118
    out = {"x": x, "train_loss": f["train_loss"][:], "train_acc": f["train_acc"][:]}
    if "test_loss" in f.keys():  # noqa: SIM118
        out["test_loss"], out["test_acc"] = f["test_loss"][:], f["test_acc"][:]
    f.close()
    return out


# -- the tests ----------------------------------------------------------------------------
def test_plot_2d_reader_sees_the_hand_computed_grid(tmp_path):
    s, obj, d1, d2 = _surface(tmp_path / "s.h5")
    X, Y, Z = read_like_plot_2d(tmp_path / "s.h5")
    _, _, A = read_like_plot_2d(tmp_path / "s.h5", "train_acc")
    _, _, E = read_like_plot_2d(tmp_path / "s.h5", "train_err")
    assert Z.shape == X.shape == (NY, NX)
    for j in range(NY):
        for i in range(NX):
            loss, acc = _hand(obj, d1, d2, X[j, i], Y[j, i])
            assert Z[j, i] == pytest.approx(loss, rel=1e-5, abs=1e-7)
            assert A[j, i] == pytest.approx(acc, abs=1e-9)
            assert E[j, i] == pytest.approx(100 - acc, abs=1e-9)
    # in memory: loss[i, j] at (x[i], y[j]), accuracy a fraction (the documented contract)
    assert s.loss.shape == (NX, NY)
    np.testing.assert_array_equal(s.loss, Z.T)
    np.testing.assert_allclose(s.accuracy, A.T / 100, rtol=0, atol=1e-15)
    np.testing.assert_allclose(A * 90 / 100, np.round(A * 90 / 100), atol=1e-9)  # correct/n


def test_h52vtp_reader_gets_points_on_the_surface(tmp_path):
    _, obj, d1, d2 = _surface(tmp_path / "s.h5")
    xs, ys, zs = read_like_h52vtp(tmp_path / "s.h5")
    assert len(xs) == len(ys) == len(zs) == NX * NY
    for a, b, z in zip(xs, ys, zs):
        assert z == pytest.approx(_hand(obj, d1, d2, a, b)[0], rel=1e-5, abs=1e-7)
    assert np.all(np.diff(xs[:NX]) > 0) and np.all(ys[:NX] == ys[0])  # x runs fastest


def test_plot_1d_reader_sees_the_curve_in_percent(tmp_path):
    net, train, _, d1, _ = _problem()
    obj = la.Objective(net, train)
    la.curve(obj, d1, span=(-2, 1), points=7, path=tmp_path / "c.h5", progress=False)
    got = read_like_plot_1d(tmp_path / "c.h5")
    assert got["train_loss"].shape == got["x"].shape == (7,)
    zero = {k: torch.zeros_like(v) for k, v in d1.items()}
    for a, loss, acc in zip(got["x"], got["train_loss"], got["train_acc"]):
        want = _hand(obj, d1, zero, a, 0.0)
        assert loss == pytest.approx(want[0], rel=1e-5) and acc == pytest.approx(want[1])
    assert "test_loss" not in got


def test_test_split_goes_under_test_keys(tmp_path):
    s, obj, d1, d2 = _surface(tmp_path / "t.h5", split="test")
    with h5py.File(tmp_path / "t.h5", "r") as f:
        assert f.attrs["split"] == "test" and int(f.attrs["format_version"]) == 2
        assert "train_loss" not in f and "train_acc" not in f
    X, Y, Z = read_like_plot_2d(tmp_path / "t.h5", "test_loss")
    _, _, A = read_like_plot_2d(tmp_path / "t.h5", "test_acc")
    loss, acc = _hand(obj, d1, d2, X[4, 2], Y[4, 2])
    assert Z[4, 2] == pytest.approx(loss, rel=1e-5) and A[4, 2] == pytest.approx(acc)
    back = la.load(tmp_path / "t.h5")
    assert back.meta["split"] == "test"
    np.testing.assert_array_equal(back.loss, s.loss)
    back.save(tmp_path / "copy.h5")  # a saved copy keeps the split and the layout
    np.testing.assert_array_equal(read_like_plot_2d(tmp_path / "copy.h5", "test_loss")[2], Z)
    before = (tmp_path / "t.h5").read_bytes()
    with pytest.raises(LossAtlasError, match="holds a surface on the test split, not the train"):
        _surface(tmp_path / "t.h5", split="train")  # other data: refused, file kept
    assert (tmp_path / "t.h5").read_bytes() == before
    net, train, _, d1, _ = _problem()
    with pytest.raises(LossAtlasError, match="split='valid'"):
        la.curve(la.Objective(net, train), d1, points=3, split="valid")


def test_in_memory_result_saves_in_the_goldstein_layout(tmp_path):
    net, train, _, d1, d2 = _problem()
    obj = la.Objective(net, train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = la.surface(obj, d1, d2, xres=NX, yres=NY, progress=False)
    s.save(tmp_path / "m.h5")
    Z = read_like_plot_2d(tmp_path / "m.h5")[2]
    np.testing.assert_array_equal(Z, s.loss.T)
    back = la.load(tmp_path / "m.h5")
    np.testing.assert_array_equal(back.loss, s.loss)
    np.testing.assert_array_equal(back.done, s.done)


def _to_format_1(path):
    """Rewrite a format-2 file as lossatlas wrote files before: [i, j] arrays, fractions."""
    with h5py.File(path, "r+") as f:
        split = f.attrs["split"]
        for key, scale in ((f"{split}_loss", 1.0), (f"{split}_acc", 100.0), ("done", 1)):
            data = f[key][()].T / scale if key != "done" else f[key][()].T
            del f[key]
            f.create_dataset(key.replace("test_", "train_"), data=data)
        del f.attrs["format_version"], f.attrs["split"]


def test_format_1_files_are_read_and_resumed_in_their_own_layout(tmp_path):
    full = _surface(tmp_path / "full.h5")[0]
    _to_format_1(tmp_path / "full.h5")
    old = la.load(tmp_path / "full.h5")
    np.testing.assert_array_equal(old.loss, full.loss)
    np.testing.assert_allclose(old.accuracy, full.accuracy, rtol=0, atol=1e-15)
    assert old.meta["split"] is None  # format 1 did not record it
    # a half-done format-1 file resumes in format 1, to the same numbers
    with h5py.File(tmp_path / "full.h5", "r") as f:
        part_done = f["done"][()].copy()
    part_done[1:] = False
    import shutil

    shutil.copy(tmp_path / "full.h5", tmp_path / "part.h5")
    with h5py.File(tmp_path / "part.h5", "r+") as f:
        f["done"][...] = part_done
        f["train_loss"][1:] = np.nan
    resumed, *_ = _surface(tmp_path / "part.h5")
    with h5py.File(tmp_path / "part.h5", "r") as f:
        assert "format_version" not in f.attrs and f["train_loss"].shape == (NX, NY)
        assert f["done"][()].all()
    np.testing.assert_array_equal(resumed.loss, full.loss)


def test_second_writer_is_refused_with_the_holder_pid(tmp_path):
    path = tmp_path / "s.h5"
    with (_locks.writer_lock(tmp_path / "s.h5.lock", "test"),
          pytest.raises(LossAtlasError, match=f"process {os.getpid()}")):
        _surface(path)
    assert not path.exists()
    _surface(path)  # the lock is gone with its holder
    assert not (tmp_path / "s.h5.lock").exists()


@pytest.mark.slow
def test_cli_test_split_writes_test_keys(tmp_path):
    from typer.testing import CliRunner

    from lossatlas.cli import app

    out = tmp_path / "c.h5"
    res = CliRunner().invoke(app, ["curve", "--data", "digits", "--data-arg", "train_size=100",
                                   "--width", "8", "--points", "5", "--split", "test",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    with h5py.File(out, "r") as f:
        assert f.attrs["split"] == "test" and f["test_loss"].shape == (5,)
        assert "train_loss" not in f and 0 <= f["test_acc"][()].min() <= 100


def test_our_vtp_export_reads_the_new_layout_right(tmp_path):
    import re

    from lossatlas import plot

    _, obj, d1, d2 = _surface(tmp_path / "s.h5")
    s = la.load(tmp_path / "s.h5")
    vtp = plot.to_vtp(s, tmp_path / "s.vtp").read_text()
    pts = np.array(re.search(r'NumberOfComponents="3" format="ascii">([^<]*)<', vtp).group(1)
                   .split(), dtype=float).reshape(-1, 3)
    assert len(pts) == NX * NY
    for a, b, z in pts[[0, 4, 7, 14]]:
        assert z == pytest.approx(_hand(obj, d1, d2, a, b)[0], rel=1e-5)
