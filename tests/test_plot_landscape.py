"""Figures of curves and surfaces: every kind is drawn, files are valid, the CLI plots files."""

import base64
import json
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
    loss = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == len(c.x)]
    np.testing.assert_allclose(loss[0].get_ydata(), c.loss)  # the curve itself, on c.x
    np.testing.assert_allclose(loss[0].get_xdata(), c.x)
    assert ax.get_xlabel() and ax.get_ylabel() == "loss" and ax.get_title()
    assert len(ax2.get_lines()) == 1  # the accuracy on the twin axis
    np.testing.assert_allclose(ax2.get_lines()[0].get_ydata(), 100 * c.accuracy)  # percent
    assert matplotlib.image.imread(tmp / "c.png").ndim == 3  # a readable PNG was written
    fig = la.plot.plot_curve(i, tmp / "i.png")
    marks = [ln for ln in fig.axes[0].get_lines() if ln.get_marker() == "o" and
             len(ln.get_xdata()) == 1]
    assert sorted(float(m.get_xdata()[0]) for m in marks) == [0.0, 1.0]
    matplotlib.pyplot.close("all")


@pytest.mark.parametrize("kind", ["contour", "contourf", "heatmap", "surface3d"])
def test_surface_kinds(results, kind):
    tmp, s, _, _ = results
    from matplotlib.collections import QuadMesh
    from matplotlib.contour import ContourSet
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    fig = la.plot.plot_surface(s, kind, tmp / f"{kind}.png")
    ax, cbar = fig.axes  # the plot and its colorbar
    xname, yname = la.plot.landscape.axis_names(s)
    assert (ax.get_xlabel(), ax.get_ylabel()) == (xname, yname) and ax.get_title()
    assert cbar.get_ylabel() == "loss"
    if kind == "surface3d":
        (surf,) = [c for c in ax.collections if isinstance(c, Poly3DCollection)]
        assert len(surf.get_paths()) == (len(s.x) - 1) * (len(s.y) - 1)  # one face per cell
        assert ax.get_zlabel() == "loss"
    else:
        if kind == "heatmap":
            (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
            np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(s.loss.shape),
                                       s.loss)  # one cell per grid point, loss[i, j] at x[i]
        else:
            (cs,) = [c for c in ax.collections if isinstance(c, ContourSet)]
            assert len(cs.levels) > 5 and s.loss.min() <= cs.levels[-1]
            assert cs.levels[0] <= s.loss.max()  # the levels span the drawn values
        stars = [ln for ln in ax.get_lines() if ln.get_marker() == "*"]
        assert [tuple(ln.get_xydata()[0]) for ln in stars] == [(0.0, 0.0)]  # the center θ
    assert matplotlib.image.imread(tmp / f"{kind}.png").ndim == 3
    matplotlib.pyplot.close(fig)
    with pytest.raises(LossAtlasError, match="kind="):
        la.plot.plot_surface(s, "wireframe")


def _plotly_json(text: str) -> tuple[list, dict]:
    """The traces and the layout that a plotly HTML page passes to ``Plotly.newPlot``."""
    dec = json.JSONDecoder()
    start = text.index("Plotly.newPlot(")
    data, end = dec.raw_decode(text, text.index("[", start))
    layout, _ = dec.raw_decode(text, text.index("{", end))
    return data, layout


def _plotly_array(value) -> np.ndarray:
    """A plotly JSON array: a plain list, or plotly's typed form ``{"dtype", "bdata", "shape"}``."""
    if isinstance(value, dict):
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        return arr.reshape([int(n) for n in str(shape).split(",")]) if shape else arr
    return np.asarray(value, dtype=float)


def test_html_is_self_contained(results):
    tmp, s, _, _ = results
    text = la.plot.to_html(s, tmp / "s.html").read_text()
    assert re.search(r"<script[^>]*\bsrc=", text) is None  # nothing loaded from the network
    assert "Plotly.newPlot" in text and len(text) > 1_000_000  # plotly.js inlined
    (trace,), layout = _plotly_json(text)  # one 3D surface: z[row=y, col=x] = loss.T
    assert trace["type"] == "surface"
    np.testing.assert_allclose(_plotly_array(trace["z"]), s.loss.T)
    np.testing.assert_allclose(_plotly_array(trace["x"]), s.x)
    xname, yname = la.plot.landscape.axis_names(s)
    scene = layout["scene"]
    assert (scene["xaxis"]["title"]["text"], scene["yaxis"]["title"]["text"]) == (xname, yname)
    assert scene["zaxis"]["title"]["text"] == "loss"


def test_vtp_is_valid_polydata(results):
    tmp, s, _, _ = results
    path = la.plot.to_vtp(s, tmp / "s.vtp")
    piece = ET.parse(path).getroot().find("PolyData/Piece")
    assert int(piece.get("NumberOfPoints")) == 35 and int(piece.get("NumberOfPolys")) == 24
    pts = np.array(piece.find("Points/DataArray").text.split(), dtype=float).reshape(-1, 3)
    np.testing.assert_allclose(pts[:, 2], s.loss.reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(pts[:5, 1], s.y, rtol=1e-6)  # y runs fastest


def _curve_lines(fig, n):
    """The lines of ``fig``'s first axes that hold ``n`` points (the drawn curves)."""
    return [ln for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) == n]


def test_cli_plot_chooses_by_kind(results, saved_figures):
    from matplotlib.collections import QuadMesh

    tmp, s, c, _ = results
    runner = CliRunner()
    r = runner.invoke(app, ["plot", str(tmp / "c.h5")])
    assert r.exit_code == 0, r.output
    (line,) = _curve_lines(saved_figures["c.png"], len(c.x))  # the curve read from c.h5
    np.testing.assert_allclose(line.get_ydata(), c.loss)
    r = runner.invoke(app, ["plot", str(tmp / "s.h5"), "--kind", "heatmap", "--kind", "vtp"])
    assert r.exit_code == 0, r.output
    fig = saved_figures["s-heatmap.png"]
    (mesh,) = [m for m in fig.axes[0].collections if isinstance(m, QuadMesh)]
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(s.loss.shape), s.loss)
    piece = ET.parse(tmp / "s.vtp").getroot().find("PolyData/Piece")
    assert int(piece.get("NumberOfPoints")) == s.loss.size


def test_cli_curve_and_surface_commands(tmp_path, monkeypatch, saved_figures):
    from matplotlib.contour import ContourSet

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["curve", "--points", "5", "--width", "16", "-o", "c.h5"])
    assert r.exit_code == 0, r.output
    assert la.load("c.h5").loss.shape == (5,)
    (line,) = _curve_lines(saved_figures["c.png"], 5)
    np.testing.assert_allclose(line.get_ydata(), la.load("c.h5").loss)
    # several directions: one file per curve, overlaid in one figure, each with its own span
    r = runner.invoke(app, ["curve", "--points", "5", "--width", "16", "-o", "m.h5",
                            "-D", "gaussian:filter:seed=0", "-D", "gaussian:layer:seed=1"])
    assert r.exit_code == 0, r.output
    a, b = la.load("m-0.h5"), la.load("m-1.h5")
    assert a.loss.shape == (5,) and "m-1.h5" in r.output
    drawn = sorted(tuple(ln.get_ydata()) for ln in _curve_lines(saved_figures["m.png"], 5))
    assert drawn == sorted([tuple(a.loss), tuple(b.loss)])  # both curves, overlaid
    assert a.x[0] == -1.0 and a.loss[2] == pytest.approx(b.loss[2])  # both through the center
    args = ["surface", "--resolution", "3", "--width", "16", "-o", "s.h5", "--plot", "contour"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert la.load("s.h5").complete
    ax = saved_figures["s-contour.png"].axes[0]
    (cs,) = [c for c in ax.collections if isinstance(c, ContourSet)]  # the contour lines
    assert len(cs.levels) > 1 and cs.levels[0] <= la.load("s.h5").loss.max()
    r = runner.invoke(app, [*args[:2], "4", *args[3:]])
    assert r.exit_code != 0  # a mismatched rerun on the same file is refused


@pytest.mark.slow
def test_cli_surface_on_two_worker_processes(tmp_path, monkeypatch):
    """--workers 2 sends the chunks to processes; the driver writes the same numbers (the
    engine is the rule's in both runs: a timing race may choose differently in two runs)."""
    from lossatlas.measurements.landscape import engine

    monkeypatch.setattr(engine, "race_engines", lambda eng, coeffs: None)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    base = ["surface", "--resolution", "4", "--width", "16", "--plot", "contour"]
    assert runner.invoke(app, [*base, "-o", "one.h5"]).exit_code == 0
    r = runner.invoke(app, [*base, "-o", "two.h5", "--workers", "2"])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(la.load("one.h5").loss, la.load("two.h5").loss)
    assert runner.invoke(app, [*base, "-o", "z.h5", "--workers", "0"]).exit_code != 0
