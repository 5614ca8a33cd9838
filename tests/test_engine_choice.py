"""The surface engine is chosen by a race on the model at hand; the race's points are real."""

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import lossatlas as la
from lossatlas.measurements.landscape import engine, first_layer


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))
    X, y = torch.randn(80, 32), torch.randint(0, 3, (80,))
    obj = la.Objective(net, (X, y))
    d1, d2 = (la.directions.gaussian(net, seed=s) for s in (0, 1))
    coeffs = np.array([[a, b] for a in (-0.5, 0.0, 0.5) for b in (-1.0, 1.0)])
    exact = np.array([obj.loss(obj.center + a * d1 + b * d2) for a, b in coeffs])
    return obj, d1, d2, coeffs, exact


def test_race_keeps_the_faster_and_its_points(setup, monkeypatch):
    obj, d1, d2, coeffs, exact = setup
    eng = engine.Engine.build(obj, obj.center, [d1, d2], fast=True)
    assert eng.mode == "affine"
    slow = first_layer.Feeder.__call__

    def sluggish(self, *a, **k):  # make the affine engine lose, deterministically
        import time

        time.sleep(0.02)
        return slow(self, *a, **k)

    monkeypatch.setattr(first_layer.Feeder, "__call__", sluggish)
    loss, _ = engine.race_engines(eng, coeffs)
    assert eng.mode == "inplace" and eng.first is None and eng.affine is None
    assert "measured" in eng.reason
    np.testing.assert_allclose(loss, exact[:4], rtol=1e-5)
    rest, _ = eng.evaluate(coeffs[4:])  # the in-place engine goes on, all parameters written
    np.testing.assert_allclose(rest, exact[4:], rtol=1e-5)


def test_surface_with_the_race_equals_in_place(setup):
    obj, d1, d2, _, _ = setup
    raced = la.surface(obj, d1, d2, span=(-1, 1), resolution=5, progress=False)
    plain = la.surface(obj, d1, d2, span=(-1, 1), resolution=5, fast=False, progress=False)
    assert raced.meta["engine"] in ("affine", "inplace")
    np.testing.assert_allclose(raced.loss, plain.loss, rtol=1e-5)
    np.testing.assert_allclose(raced.accuracy, plain.accuracy)


def test_one_engine_per_run_recorded_and_reused_on_resume(setup, tmp_path, monkeypatch):
    """The race runs once, in the driver: every point of a run comes from the engine it kept
    (no mix of the two engines' rounding), the choice is in the file, and a resume reuses it
    even when a new race would pick the other engine."""
    obj, d1, d2, _, _ = setup
    path = tmp_path / "s.h5"
    chosen = {}

    def force(choice):
        def decide(token, *args):
            chosen["calls"] = chosen.get("calls", 0) + 1
            return choice
        return decide

    monkeypatch.setattr(engine, "decide_engine", force("affine"))
    stop = {"n": 0}

    def interrupt(done, total):
        stop["n"] += 1
        if stop["n"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        la.surface(obj, d1, d2, span=(-1, 1), resolution=5, path=path, callback=interrupt,
                   progress=False)
    with h5py.File(path) as f:
        assert la.store.read_attrs(f)["engine_choice"] == "affine"
    monkeypatch.setattr(engine, "decide_engine", force(False))  # a new race would differ
    resumed = la.surface(obj, d1, d2, span=(-1, 1), resolution=5, path=path, progress=False)
    assert chosen["calls"] == 1 and resumed.meta["engine"] == "affine"
    whole = la.surface(obj, d1, d2, span=(-1, 1), resolution=5, fast="affine", progress=False)
    np.testing.assert_array_equal(resumed.loss, whole.loss)


def test_surface_reports_its_engine_and_setup_apart(setup):
    obj, d1, d2, _, _ = setup
    s = la.surface(obj, d1, d2, span=(-1, 1), resolution=5, progress=False)
    assert s.meta["engine"] in ("affine", "inplace")
    assert s.meta["setup_seconds"] > 0 and s.meta["engine_reason"]
