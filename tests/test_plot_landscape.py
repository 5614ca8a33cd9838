"""Figures of curves and surfaces: every kind is drawn, files are valid, the CLI plots files."""

import math
import os
import re
import warnings
import xml.etree.ElementTree as ET

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import lossatlas as la
from lossatlas.cli import app
from lossatlas.core.errors import LossAtlasError

os.environ.setdefault("LOSSATLAS_QUIET", "1")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    torch.manual_seed(0)
    X, y = torch.randn(80, 6), torch.randint(0, 3, (80,))
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    obj = la.Objective(net, (X, y))
    d1, d2 = (la.directions.gaussian(net, seed=s) for s in (0, 1))
    tmp = tmp_path_factory.mktemp("plots")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = la.surface(obj, d1, d2, xres=7, yres=5, path=tmp / "s.h5")
    c = la.curve(obj, d1, points=9, path=tmp / "c.h5")
    i = la.interpolate(obj, obj.center, obj.center + d1, points=7, path=tmp / "i.h5")
    return tmp, s, c, i


def test_curve_figure_has_twin_axes_random_guess_and_center(results):
    tmp, _, c, i = results
    fig = la.plot.plot_curve(c, tmp / "c.png", log=True)
    ax, ax2 = fig.axes
    assert ax.get_yscale() == "log" and ax2.get_ylabel() == "accuracy (%)"
    guess = [ln for ln in ax.get_lines() if len(ln.get_ydata()) and
             ln.get_ydata()[0] == pytest.approx(math.log(3))]
    assert guess, "the random-guess line log C is drawn"
    assert (tmp / "c.png").stat().st_size > 1000
    fig = la.plot.plot_curve(i, tmp / "i.png")
    marks = [ln for ln in fig.axes[0].get_lines() if ln.get_marker() == "o" and
             len(ln.get_xdata()) == 1]
    assert sorted(float(m.get_xdata()[0]) for m in marks) == [0.0, 1.0]
    matplotlib.pyplot.close("all")


@pytest.mark.parametrize("kind", ["contour", "contourf", "heatmap", "surface3d"])
def test_surface_kinds(results, kind):
    tmp, s, _, _ = results
    fig = la.plot.plot_surface(s, kind, tmp / f"{kind}.png")
    assert (tmp / f"{kind}.png").stat().st_size > 1000
    matplotlib.pyplot.close(fig)
    with pytest.raises(LossAtlasError, match="kind="):
        la.plot.plot_surface(s, "wireframe")


def test_html_is_self_contained(results):
    tmp, s, _, _ = results
    text = la.plot.to_html(s, tmp / "s.html").read_text()
    assert re.search(r"<script[^>]*\bsrc=", text) is None  # nothing loaded from the network
    assert "Plotly.newPlot" in text and len(text) > 1_000_000  # plotly.js inlined


def test_vtp_is_valid_polydata(results):
    tmp, s, _, _ = results
    path = la.plot.to_vtp(s, tmp / "s.vtp")
    piece = ET.parse(path).getroot().find("PolyData/Piece")
    assert int(piece.get("NumberOfPoints")) == 35 and int(piece.get("NumberOfPolys")) == 24
    pts = np.array(piece.find("Points/DataArray").text.split(), dtype=float).reshape(-1, 3)
    np.testing.assert_allclose(pts[:, 2], s.loss.reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(pts[:5, 1], s.y, rtol=1e-6)  # y runs fastest


def test_cli_plot_chooses_by_kind(results):
    tmp, _, _, _ = results
    runner = CliRunner()
    r = runner.invoke(app, ["plot", str(tmp / "c.h5")])
    assert r.exit_code == 0, r.output
    assert (tmp / "c.png").exists()
    r = runner.invoke(app, ["plot", str(tmp / "s.h5"), "--kind", "heatmap", "--kind", "vtp"])
    assert r.exit_code == 0, r.output
    assert (tmp / "s-heatmap.png").exists() and (tmp / "s.vtp").exists()


def test_cli_curve_and_surface_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["curve", "--points", "5", "--width", "16", "-o", "c.h5"])
    assert r.exit_code == 0, r.output
    assert la.load("c.h5").loss.shape == (5,) and (tmp_path / "c.png").exists()
    # several directions: one file per curve, overlaid in one figure, each with its own span
    r = runner.invoke(app, ["curve", "--points", "5", "--width", "16", "-o", "m.h5",
                            "-D", "gaussian:filter:seed=0", "-D", "gaussian:layer:seed=1"])
    assert r.exit_code == 0, r.output
    a, b = la.load("m-0.h5"), la.load("m-1.h5")
    assert a.loss.shape == (5,) and (tmp_path / "m.png").exists() and "m-1.h5" in r.output
    assert a.x[0] == -1.0 and a.loss[2] == pytest.approx(b.loss[2])  # both through the center
    args = ["surface", "--resolution", "3", "--width", "16", "-o", "s.h5", "--plot", "contour"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert la.load("s.h5").complete and (tmp_path / "s-contour.png").exists()
    r = runner.invoke(app, [*args[:2], "4", *args[3:]])
    assert r.exit_code != 0  # a mismatched rerun on the same file is refused


def test_cli_surface_on_two_worker_processes(tmp_path, monkeypatch):
    """--workers 2 sends the chunks to processes; the driver writes the same numbers (the
    engine is the rule's in both runs: a timing race may choose differently in two runs)."""
    from lossatlas.measurements.landscape import engine as _fastpath

    monkeypatch.setattr(_fastpath, "race_engines", lambda eng, coeffs: None)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    base = ["surface", "--resolution", "4", "--width", "16", "--plot", "contour"]
    assert runner.invoke(app, [*base, "-o", "one.h5"]).exit_code == 0
    r = runner.invoke(app, [*base, "-o", "two.h5", "--workers", "2"])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(la.load("one.h5").loss, la.load("two.h5").loss)
    assert runner.invoke(app, [*base, "-o", "z.h5", "--workers", "0"]).exit_code != 0
