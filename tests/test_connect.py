"""la.connect: Bezier points by hand, the untrained curve is the line, mc and t* on synthetic
curves, curve training lowers the midpoint loss and never moves the ends, BN recalibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lossatlas as la
from lossatlas.core.errors import LossAtlasError

C = la.connect


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is faster than two on shared cores (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _pts(seed: int, n: int = 3):
    g = torch.Generator().manual_seed(seed)
    return [la.params.Point(w=torch.randn(3, 2, generator=g), b=torch.randn(2, generator=g))
            for _ in range(n)]


def test_bezier_hand_formula_quadratic_and_cubic():
    a, m, b = _pts(0)
    t = 0.3
    got = C.bezier([a, m, b], t)
    for k in a:
        want = (1 - t) ** 2 * a[k] + 2 * (1 - t) * t * m[k] + t ** 2 * b[k]
        assert torch.allclose(got[k], want, atol=1e-6)
    p = _pts(1, 4)
    got = C.bezier(p, 0.8)
    want = 0.2 ** 3 * p[0]["w"] + 3 * 0.2 ** 2 * 0.8 * p[1]["w"] + 3 * 0.2 * 0.64 * p[2]["w"] \
        + 0.8 ** 3 * p[3]["w"]
    assert torch.allclose(got["w"], want, atol=1e-6)
    # tensors and arrays of t
    xs = [torch.tensor([0.0]), torch.tensor([4.0]), torch.tensor([2.0])]
    out = C.bezier(xs, np.array([0.0, 0.5, 1.0]))
    assert [float(x) for x in out] == [0.0, 2.5, 2.0]
    assert C.bezier([a, m, b], 0.0)["w"].equal(a["w"]) and C.bezier([a, m, b], 1.0)["w"].equal(
        b["w"])
    assert np.isclose(C.bernstein(5, 0.37).sum(), 1.0)


def test_untrained_bends_make_the_straight_line():
    a, _, b = _pts(2)
    for bends in (1, 2, 3):
        ctrl = [a, *C.initial_bends(a, b, bends), b]
        if bends == 1:
            assert torch.allclose(ctrl[1]["w"], 0.5 * (a["w"] + b["w"]))
        for t in np.linspace(0, 1, 9):
            got = C.bezier(ctrl, t)
            for k in a:
                assert torch.allclose(got[k], a[k] + t * (b[k] - a[k]), atol=1e-6)


def test_bad_input():
    with pytest.raises(LossAtlasError, match="2\\+ control points"):
        C.bezier(_pts(0, 1), 0.5)
    with pytest.raises(LossAtlasError, match="bends"):
        C.initial_bends(*_pts(0, 2), bends=0)
    with pytest.raises(LossAtlasError, match="both ends"):
        C.mode_connectivity([0.0, 0.5], [1.0, 2.0])
    with pytest.raises(LossAtlasError, match="same length"):
        C.mode_connectivity([0.0, 1.0], [1.0])


@pytest.mark.parametrize("values,mc,t_star", [
    ([0, 10, 30, 10, 0], -30.0, 0.5),     # a barrier: poorly connected
    ([50, 30, 20, 30, 50], 30.0, 0.5),    # convex: the ends are not minima
    ([0, 0, 0, 0, 0], 0.0, 0.25),         # flat: well connected (first of equal maxima)
    ([0, 40, 10, 0, 0], -40.0, 0.25),     # off-centre barrier
    ([2, 1, 9, 1, 4], -6.0, 0.5),         # unequal ends: ref = 3
    ([10, 2, 3, -1, 6], 9.0, 0.75),       # the largest |deviation| is a dip
])
def test_mode_connectivity_sign_and_t_star(values, mc, t_star):
    t = np.linspace(0, 1, len(values))
    got = C.mode_connectivity(t, values)
    assert got.mc == pytest.approx(mc) and got.t_star == pytest.approx(t_star)
    # order of t does not matter
    got2 = C.mode_connectivity(t[::-1], values[::-1])
    assert got2 == got


def test_garipov_schedule():
    assert C.garipov_lr(0.01, 0.0) == 0.01 and C.garipov_lr(0.01, 0.5) == 0.01
    assert C.garipov_lr(0.01, 0.7) == pytest.approx(0.01 * (1 - 0.5 * 0.99))
    assert C.garipov_lr(0.01, 0.9) == pytest.approx(1e-4) and C.garipov_lr(0.01, 1.0) == 1e-4


# -- a tiny problem with two minima -----------------------------------------------------------
def _toy():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 2, generator=g)
    y = ((X[:, 0] * X[:, 1] > 0).long() + 2 * (X.norm(dim=1) > 1.2).long())  # 4 classes
    return X, y


def _net(seed: int, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(2, 32)] + ([nn.BatchNorm1d(32)] if bn else []) + [
        nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)]
    return nn.Sequential(*layers)


def _fit(model: nn.Module, X, y, steps: int = 300) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def minima():
    X, y = _toy()
    return X, y, _fit(_net(1), X, y), _fit(_net(2), X, y)


def test_train_curve_lowers_the_midpoint_and_keeps_the_ends(minima):
    X, y, ma, mb = minima
    obj = la.Objective(ma, (X, y))
    a, b = la.params.of(ma), la.params.of(mb)
    a0, b0 = a.clone(), b.clone()
    r = C.train_curve(obj, a, b, epochs=40, batch_size=64, lr=0.05, points=5, metric="loss",
                      seed=0, progress=False)
    # the ends are untouched, in the inputs, the models and the stored control points
    for k in a:
        assert torch.equal(a[k], a0[k]) and torch.equal(b[k], b0[k])
        assert torch.equal(r.control[0][k], a0[k]) and torch.equal(r.control[-1][k], b0[k])
        assert torch.equal(dict(ma.named_parameters())[k].detach(), a0[k])
    assert r.loss[0] == pytest.approx(obj.loss(a), rel=1e-6)
    assert r.loss[-1] == pytest.approx(obj.loss(b), rel=1e-6)
    # the linear path has a barrier; the trained curve is lower in the middle
    assert r.linear_loss[2] > max(r.loss[0], r.loss[-1]) + 0.1
    assert r.loss[2] < 0.5 * r.linear_loss[2]
    assert r.mc > r.linear_mc and r.linear_mc < 0
    assert r.mc == pytest.approx(C.mode_connectivity(r.t, r.loss).mc)
    assert r.history[-1] < r.history[0]
    # error in percent is stored too
    assert r.error[0] == pytest.approx(100 * (1 - obj.evaluate(a)["accuracy"]))


def test_zero_epochs_is_the_line_and_results_save(minima, tmp_path):
    X, y, ma, mb = minima
    r = C.train_curve(ma, ma, mb, (X, y), epochs=0, points=[0.0, 0.3, 0.5, 1.0])
    np.testing.assert_allclose(r.loss, r.linear_loss, rtol=1e-5)
    np.testing.assert_array_equal(r.error, r.linear_error)
    assert r.mc == pytest.approx(r.linear_mc, abs=1e-9)
    r.save(tmp_path / "c.h5")
    back = la.load(tmp_path / "c.h5")
    np.testing.assert_array_equal(back.loss, r.loss)
    assert back.mc == r.mc and len(back.control) == 3 and back.settings["bends"] == 1
    cubic = C.train_curve(ma, ma, mb, (X, y), bends=2, epochs=1, points=3, linear=False)
    assert len(cubic.control) == 4 and len(cubic.bends) == 2
    d = C.mode_connectivity_between(ma, mb, (X, y), points=3, epochs=0)
    assert set(d) >= {"t", "values", "linear", "mc", "t_star", "mc_linear"}
    assert d["t"] == [0.0, 0.5, 1.0]


def test_curve_training_is_deterministic(minima):
    X, y, ma, mb = minima
    r1 = C.train_curve(ma, ma, mb, (X, y), epochs=2, seed=3, points=3, linear=False)
    r2 = C.train_curve(ma, ma, mb, (X, y), epochs=2, seed=3, points=3, linear=False)
    for k in r1.control[1]:
        assert torch.equal(r1.control[1][k], r2.control[1][k])
    assert r1.linear is None


def test_batchnorm_recalibrated_at_every_t_and_model_untouched():
    X, y = _toy()
    ma, mb = _fit(_net(1, bn=True), X, y, 100), _fit(_net(2, bn=True), X, y, 100)
    ma.eval()
    bufs = {k: v.clone() for k, v in ma.named_buffers()}
    obj = la.Objective(ma, (X, y), batch_size=100)
    r = C.train_curve(obj, ma, mb, epochs=3, batch_size=64, points=3, seed=0)
    for k, v in ma.named_buffers():
        assert torch.equal(v, bufs[k])
    assert not ma.training
    # each t is evaluated with statistics recomputed at gamma(t)
    for i, t in enumerate(r.t):
        p = r.point(float(t))
        ev = obj.evaluate(p, obj.recalibrate(p))
        assert r.loss[i] == pytest.approx(ev["loss"], rel=1e-6)
    # at t = 1 recalibrated statistics differ from mb's running ones, so keep != recalibrate
    assert r.loss[-1] != pytest.approx(obj.evaluate(la.params.of(mb))["loss"], rel=1e-6)


def test_figures_are_written(minima, tmp_path):
    import matplotlib.image

    from lossatlas.plot import connect as plot

    X, y, ma, mb = minima
    obj = la.Objective(ma, (X, y))
    r = C.train_curve(obj, ma, mb, epochs=1, points=5, progress=False)
    prof = C.dense_profile(obj, r, points=9)
    assert prof["t"].shape == (9,) and prof["curve_loss"][0] == pytest.approx(r.loss[0])
    np.testing.assert_allclose(prof["line_loss"][[0, 4, 8]], r.linear_loss[[0, 2, 4]], rtol=1e-5)
    fig = plot.error_and_loss(r, dense=prof, path=tmp_path / "c.png")
    assert len(fig.axes) == 2  # error and loss, side by side, one shared legend below
    for ax, metric in zip(fig.axes, ("error", "loss")):
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        np.testing.assert_allclose(lines["Bezier curve"].get_ydata(), prof[f"curve_{metric}"])
        np.testing.assert_allclose(lines["straight line"].get_ydata(), prof[f"line_{metric}"])
        dots = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
        np.testing.assert_allclose(dots[0].get_xdata(), r.t)  # the evaluated t values
        assert ax.get_xlabel().startswith("t") and ax.get_ylabel() and ax.get_title()
    assert [t.get_text() for t in fig.legends[0].get_texts()][:2] == ["Bezier curve",
                                                                    "straight line"]
    fig = plot.grid([[r, None], [r, r]], ["a", "b"], ["x", "y"], path=tmp_path / "g.png")
    drawn = [ax for ax in fig.axes if ax.get_lines()]
    assert len(fig.axes) == 4 and len(drawn) == 3  # None leaves its panel empty
    assert [ax.get_ylabel() for ax in fig.axes[::2]] == ["a", "b"]
    assert [ax.get_xlabel() for ax in fig.axes[2:]] == ["x", "y"]
    fig = plot.cka_layers({"0": 0.5, "2": 0.99}, path=tmp_path / "k.png")
    (ax,) = fig.axes
    assert [b.get_width() for b in ax.patches] == [0.5, 0.99] and ax.get_xlabel() == "linear CKA"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "2"]
    assert all(matplotlib.image.imread(tmp_path / f).ndim == 3 for f in ("c.png", "g.png",
                                                                          "k.png"))


def test_cli_connect_and_cka(tmp_path, monkeypatch, saved_figures):
    from typer.testing import CliRunner

    from lossatlas.cli import app

    monkeypatch.setenv("LOSSATLAS_QUIET", "1")
    train, _ = la.datasets.load("digits")
    paths = []
    for s in (0, 1):
        m = la.zoo.build("mlp", dataset=train, width=16, seed=s)
        paths.append(str(tmp_path / f"m{s}.pt"))
        torch.save(m.state_dict(), paths[-1])
    out = tmp_path / "mc.h5"
    res = CliRunner().invoke(app, ["connect", *paths, "--width", "16", "--epochs", "1",
                                   "--dense", "3", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "mc = " in res.output and out.is_file()
    back = la.load(out)
    assert back.settings["epochs"] == 1
    for ax in saved_figures["mc.png"].axes:  # the evaluated t values as dots in every panel
        dots = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
        np.testing.assert_allclose(dots[0].get_xdata(), back.t)
    res = CliRunner().invoke(app, ["cka", *paths, "--width", "16", "--samples", "64",
                                   "--layers", "1", "-o", str(tmp_path / "k.png")])
    assert res.exit_code == 0, res.output
    assert "CKA" in res.output and "l2 distance" in res.output
    (ax,) = saved_figures["k.png"].axes
    bars = [b.get_width() for b in ax.patches]
    assert bars and all(0 <= w <= 1 for w in bars) and ax.get_xlabel() == "linear CKA"


def _baseline():
    """benchmarks/connect.py: Garipov-style curve layers (the architecture rewritten)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "connect.py"
    spec = importlib.util.spec_from_file_location("bench_connect", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_agrees_with_garipov_curve_layers(minima):
    """The functional curve and a curve-layer rewrite, trained with the same batches, t's,
    schedule and l2 term, give the same bend (bit for bit on CPU)."""
    bench = _baseline()
    X, y, ma, mb = minima
    r = C.train_curve(ma, ma, mb, (X, y), epochs=4, batch_size=64, lr=0.05, points=2,
                      linear=False, seed=5, progress=False)
    curve = bench.train_curve_layers(bench.CurveMLP(ma, mb), X, y, epochs=4, lr=0.05,
                                     batch_size=64, seed=5)
    for ours, base in zip(r.control[1].values(), curve.bend(1)):
        torch.testing.assert_close(ours, base, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        want = float(nn.functional.cross_entropy(curve(X, 0.5)[0], y))
    assert la.Objective(ma, (X, y)).loss(r.point(0.5)) == pytest.approx(want, rel=1e-6)
