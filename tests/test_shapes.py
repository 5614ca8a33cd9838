"""Shape analysis (Li, Li, Zhan 2024, App. A.3): exact stationary counts by hand, and each curve
type on synthetic curves, clean, noisy, flat and with chaotic segments above log C."""

import math

import numpy as np
import pytest

import lossatlas as la
from lossatlas.core.errors import LossAtlasError

X = np.linspace(-1, 1, 41)          # the paper's 41 points on [-1, 1]
XW = np.linspace(-1, 2, 61)         # w-basin span [-1, 2]


def _vvv(x):
    inside = (x >= 0) & (x <= 1)
    d = np.where(x < 0, -x, x - 1)
    return np.where(inside, 1 - np.cos(4 * np.pi * x), 8 * d**2)


# (x, y, depth of the shallowest feature) for every type
def curves():
    return {
        "v-basin": (X, X**2),
        "v-side": (X, (X - 0.6) ** 2),
        "v-side-monotone": (X, np.exp(-X)),
        "w-basin": (XW, ((XW - 0.5) ** 2 - 0.25) ** 2),
        "w-peak": (X, (X**2 - 0.25) ** 2),
        "vvv-basin": (XW, _vvv(XW)),
    }


def test_stationary_points_by_hand():
    s = la.shapes.stationary_points
    assert s([3, 1, 2, 0, 4]) == 3          # min, max, min
    assert s([0, 1, 2, 3]) == 0             # monotone
    assert s([1, 0]) == 0 and s([5]) == 0   # too short
    assert s([2, 0, 0, 2]) == 0             # a flat bottom is not strict: paper's rule
    assert s([0, 5, 0]) == 1                # endpoints never count
    assert s(X**2) == 1
    assert s((X**2 - 0.25) ** 2) == 3
    ext = la.shapes.extrema([3, 1, 2, 0, 4])
    assert [(e.index, e.kind) for e in ext] == [(1, "min"), (2, "max"), (3, "min")]


def test_stationary_points_matches_formula_on_random_curves():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 4, size=30).astype(float)
        want = sum((y[t] - y[t + 1]) * (y[t] - y[t - 1]) > 0 for t in range(1, 29))
        assert la.shapes.stationary_points(y) == want


def test_tolerant_count_ignores_noise():
    rng = np.random.default_rng(1)
    y = X**2 + 1e-2 * rng.standard_normal(41)
    assert la.shapes.stationary_points(y) > 1
    assert la.shapes.stationary_points(y, tol=0.06) == 1


@pytest.mark.parametrize("name", list(curves()))
def test_each_type_clean(name):
    x, y = curves()[name]
    want = name.replace("-monotone", "")
    shape = la.shapes.classify(x, y)
    assert shape.kind == want, shape
    assert shape.center_x == 0.0


def test_evidence_positions():
    s = la.shapes.classify(X, (X**2 - 0.25) ** 2)
    assert s.minima == [-0.5, 0.5] and s.maxima == [0.0] and s.center_at == "max"
    assert s.pattern == "min,max,min" and s.stationary == 3
    s = la.shapes.classify(XW, ((XW - 0.5) ** 2 - 0.25) ** 2)
    assert s.minima == [0.0, 1.0] and s.center_at == "min"
    s = la.shapes.classify(X, (X - 0.6) ** 2)
    assert s.minima == pytest.approx([0.6]) and s.center_at == "slope"
    s = la.shapes.classify(XW, _vvv(XW))
    assert s.minima == pytest.approx([0, 0.5, 1]) and s.maxima == pytest.approx([0.25, 0.75])


@pytest.mark.parametrize("name", list(curves()))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_type_noisy(name, seed):
    x, y = curves()[name]
    rng = np.random.default_rng(seed)
    depth = {"w-basin": 0.0625, "w-peak": 0.0625, "vvv-basin": 2.0}.get(name, 0.3)
    noisy = y + 0.03 * depth * rng.standard_normal(len(y))  # noise 3% of the shallowest feature
    assert la.shapes.classify(x, noisy).kind == name.replace("-monotone", "")


def test_flat_curves_are_other():
    s = la.shapes.classify(X, np.full(41, 2.3))
    assert s.kind == "other" and s.flat and s.stationary == 0
    rng = np.random.default_rng(0)
    s = la.shapes.classify(X, 2.3 + 1e-9 * rng.standard_normal(41))
    assert s.kind == "other" and s.flat and s.stationary > 5


def test_chaos_above_log_c_is_ignored_and_reported():
    c = 10
    y = 3 * X**2
    chaotic = np.where(y > math.log(c), math.log(c) + np.abs(np.sin(40 * X)), y)
    chaotic[0] = np.nan
    assert la.shapes.stationary_points(chaotic) > 3
    s = la.shapes.classify(X, chaotic, num_classes=c)
    assert s.kind == "v-basin" and s.log_c == pytest.approx(math.log(c))
    assert len(s.above_log_c) == 2
    assert s.above_log_c[0][0] == -1.0 and s.above_log_c[1][1] == 1.0
    assert la.shapes.classify(X, chaotic).kind != "v-basin"  # without log C it is chaos


def test_peak_without_turning_points_and_outside_center():
    s = la.shapes.classify(X, -(X**2))               # falls on both sides: a truncated w-peak
    assert s.kind == "w-peak" and "widen" in s.reason
    x = np.linspace(-1, 0.45, 30)                     # right minimum (0.5) beyond the end
    s = la.shapes.classify(x, (x**2 - 0.25) ** 2)
    assert s.kind == "w-peak" and s.pattern == "min,max" and s.center_at == "max"
    s = la.shapes.classify(np.linspace(1, 2, 11), np.linspace(1, 2, 11) ** 2)
    assert s.kind == "other" and s.center_at == "outside"


def test_bad_input():
    with pytest.raises(LossAtlasError, match="increasing"):
        la.shapes.classify(X[::-1], X)
    with pytest.raises(LossAtlasError, match="one y per x"):
        la.shapes.classify(X, X[:5])
    with pytest.raises(LossAtlasError, match="1-D"):
        la.shapes.stationary_points(np.zeros((3, 3)))
    with pytest.raises(LossAtlasError, match="tol"):
        la.shapes.extrema(X, tol=-1)


def test_center_in_a_flat_basin_counts_as_in_the_basin():
    # the independent-checkpoint curve of a trained MLP: a wide flat basin around the center,
    # its exact minimum elsewhere, a barrier at 0.5 and a second basin at 1
    y = (0.01 + 0.002 * (XW + 0.4) ** 2 + 0.1 * np.exp(-(((XW - 0.5) / 0.15) ** 2))
         + 0.05 * np.maximum(XW - 1, 0) ** 2)
    s = la.shapes.classify(XW, y)
    assert s.kind == "w-basin" and s.center_at == "min" and s.minima[0] != 0.0
