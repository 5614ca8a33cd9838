"""Shapes of 1D loss curves: stationary points and the curve types of Li, Li, Zhan 2024.

A 1D curve is y_t = L(θ + λ_t ε) on a grid λ_0 < ... < λ_{n-1}; the perturbed model θ (the
*center*) sits at λ = 0. Li, Li, Zhan 2024 (arXiv 2405.12493, Fig. 1, Sec. 2 and App. A.3/A.4)
name five types:

* **v-basin**: one minimum, at the center; the loss rises monotonically on both sides
  (Gaussian and P.E. directions). One stationary point.
* **v-side**: one minimum, away from the center, which lies on a monotone slope ("the perturbed
  model lying on the valley side"; the negative gradient, the direction to a later checkpoint).
  A curve that is monotone over the whole span (the minimum at or beyond an end, no interior
  stationary point) with the center inside counts as v-side too.
* **w-basin**: minimum, maximum, minimum (three stationary points) with the center at one of the
  two minima (the direction to an independent checkpoint, λ ∈ [−1, 2]: the barrier of linear
  mode connectivity between two basins).
* **w-peak**: the center at the only maximum: the loss falls on both sides of the center, then
  rises again (minimum, maximum, minimum; N.E. directions, Algorithm 1). A minimum may lie at
  an end of the span (the paper's N.E. curves "only show a short loss decreasing trend on both
  sides"); ``reason`` says so.
* **vvv-basin**: three minima with two maxima between them (five stationary points) and the
  center at one of the minima (Algorithm 2: θ, the midpoint and φ are three basins).
* **other**: anything else (flat curves, chaotic ones, ...).

Stationary points follow App. A.3 exactly: interior t with (y_t − y_{t+1})(y_t − y_{t−1}) > 0;
the endpoints are never counted. "Perfect v-basin curves have 1 stationary point, and perfect
w-basin/w-peak curves have 3."

Robustness (our choice; the paper counts on clean 41-point curves):

* Above the random-guess loss log C the paper disregards the curve ("chaotic segments ... above
  the random prediction loss ... are of little significance"): :func:`classify` clips y at
  log C when it is given, so fluctuations there create no extrema, and reports those segments.
* Noise: extrema are simplified by *persistence*: the adjacent minimum/maximum pair with the
  smallest height difference is removed while that difference is below the tolerance
  tol = max(``prominence`` · (max y − min y), ``noise`` · σ̂), with σ̂ the noise level estimated
  from third differences (:func:`noise_level`; ≈ 0 on smooth curves). Defaults: 0.01% of the
  clipped curve's range (float round-off) and 6 σ̂. An extremum shallower than tol cannot
  split a basin. Plateaus (runs of equal values) count as one point.
* The center "sits at" an extremum when it lies between that extremum's neighbours and its
  loss is within max(tol, 5% of the wall on its side) of the extremum's value: a trained model
  in a wide flat basin is in the basin even when the line's exact minimum is elsewhere.
* Flat curves (range ≤ ``flat_tol`` · max(1, |mean y|)) are "other" with ``flat=True``.

>>> import numpy as np, lossatlas as la
>>> x = np.linspace(-1, 1, 41)
>>> la.shapes.stationary_points(x ** 2)
1
>>> la.shapes.classify(x, x ** 2).kind
'v-basin'
>>> la.shapes.classify(x, (x ** 2 - 0.25) ** 2).kind
'w-peak'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lossatlas.core.errors import LossAtlasError

__all__ = [
    "KINDS",
    "Extremum",
    "Shape",
    "above_segments",
    "classify",
    "extrema",
    "noise_level",
    "stationary_points",
]

KINDS = ("v-basin", "v-side", "w-basin", "w-peak", "vvv-basin", "other")


@dataclass(frozen=True)
class Extremum:
    """An interior extremum: grid ``index`` (the middle of a plateau), ``kind`` "min"/"max",
    and ``lo``..``hi`` the indices of the points within the tolerance of its value."""

    index: int
    kind: str
    lo: int
    hi: int


def _as_curve(y, name: str = "y") -> np.ndarray:
    arr = np.asarray(y, dtype=float)
    if arr.ndim != 1:
        raise LossAtlasError(f"{name} must be one curve (a 1-D array), got shape {arr.shape}")
    return arr


def stationary_points(y: Sequence[float] | np.ndarray, tol: float = 0.0) -> int:
    """Number of stationary points of a sampled curve (Li, Li, Zhan 2024, App. A.3).

    With ``tol=0`` (the paper): interior t with (y_t − y_{t+1})(y_t − y_{t−1}) > 0, endpoints
    excluded, equal neighbours not counted. With ``tol > 0``: the interior extrema left after
    removing minimum/maximum pairs shallower than ``tol`` (absolute loss units; see
    :func:`extrema`), a tolerant count for noisy curves.

    >>> stationary_points([3, 1, 2, 0, 4])
    3
    """
    return len(extrema(y, tol=tol))


def extrema(y: Sequence[float] | np.ndarray, tol: float = 0.0) -> list[Extremum]:
    """Interior extrema of a curve, left to right.

    ``tol=0``: exactly the paper's stationary points (strict, see :func:`stationary_points`);
    kind "min" where y_t < y_{t+1}. ``tol > 0``: plateaus are merged, then the adjacent
    minimum/maximum pair with the smallest height difference is removed while that difference
    is ≤ ``tol`` (persistence simplification, which keeps minima and maxima alternating); an
    interior extremum next to an endpoint is also dropped when the endpoint is within ``tol``
    of it (a shallow dip at an edge is not a basin).
    """
    y = _as_curve(y)
    if tol < 0 or not math.isfinite(tol):
        raise LossAtlasError(f"tol={tol!r} must be a finite number >= 0")
    n = len(y)
    if n < 3:
        return []
    if tol == 0:
        out = []
        for t in range(1, n - 1):
            if (y[t] - y[t + 1]) * (y[t] - y[t - 1]) > 0:
                kind = "min" if y[t] < y[t + 1] else "max"
                out.append(Extremum(t, kind, t, t))
        return out
    return _persistent_extrema(y, tol)


def _persistent_extrema(y: np.ndarray, tol: float) -> list[Extremum]:
    # runs of equal values -> one node each (start, end, value)
    runs: list[list] = []
    for t, v in enumerate(y):
        if runs and v == runs[-1][2]:
            runs[-1][1] = t
        else:
            runs.append([t, t, v])
    vals = [r[2] for r in runs]
    # turning runs, endpoints kept as anchors
    keep = [0]
    for i in range(1, len(runs) - 1):
        if (vals[i] - vals[i - 1]) * (vals[i] - vals[i + 1]) > 0:
            keep.append(i)
    if len(runs) > 1:
        keep.append(len(runs) - 1)
    # interior nodes: extrema; iteratively drop the shallowest adjacent pair
    nodes = keep
    while len(nodes) > 2:
        diffs = [abs(vals[nodes[j + 1]] - vals[nodes[j]]) for j in range(len(nodes) - 1)]
        j = int(np.argmin(diffs))
        if diffs[j] > tol:
            break
        if j == 0:  # shallow extremum next to the left end: drop it (the end stays)
            nodes = [nodes[0], *nodes[2:]]
        elif j == len(nodes) - 2:
            nodes = [*nodes[:-2], nodes[-1]]
        else:  # drop both members of an interior min/max pair
            nodes = nodes[:j] + nodes[j + 2:]
        # merge ends into monotone runs: an interior node that is no longer a turning point
        nodes = _turning(nodes, vals)
    out = []
    for i in nodes[1:-1]:
        pos = nodes.index(i)
        left, right = vals[nodes[pos - 1]], vals[nodes[pos + 1]]
        kind = "min" if vals[i] < left and vals[i] < right else "max"
        start, end = runs[i][0], runs[i][1]
        lo, hi = start, end
        while lo > 0 and abs(y[lo - 1] - vals[i]) <= tol:
            lo -= 1
        while hi < len(y) - 1 and abs(y[hi + 1] - vals[i]) <= tol:
            hi += 1
        out.append(Extremum((start + end) // 2, kind, lo, hi))
    return out


def _turning(nodes: list[int], vals: list[float]) -> list[int]:
    """Keep the endpoints and the nodes that are still strict turning points among ``nodes``."""
    changed = True
    while changed and len(nodes) > 2:
        changed = False
        for p in range(1, len(nodes) - 1):
            a, b, c = vals[nodes[p - 1]], vals[nodes[p]], vals[nodes[p + 1]]
            if not (b - a) * (b - c) > 0:
                nodes = nodes[:p] + nodes[p + 1:]
                changed = True
                break
    return nodes


def noise_level(y: Sequence[float] | np.ndarray) -> float:
    """Robust noise estimate σ̂ of a sampled curve: 1.4826 · median|Δ³y| / √20 (the third
    difference of white noise of std σ has std √20 σ; a smooth curve's third differences are
    about h³ times its third derivative, negligible on a fine grid)."""
    y = _as_curve(y)
    if len(y) < 4:
        return 0.0
    d3 = np.diff(y, n=3)
    return float(1.4826 * np.median(np.abs(d3)) / math.sqrt(20.0))


def above_segments(x, y, log_c: float) -> list[tuple[float, float]]:
    """Maximal runs of the grid where y > log C (the random-guess loss), as (x_start, x_end)."""
    x, y = _as_curve(x, "x"), _as_curve(y)
    mask = ~(y <= log_c)  # NaN counts as above
    segs, start = [], None
    for t, m in enumerate(mask):
        if m and start is None:
            start = t
        if not m and start is not None:
            segs.append((float(x[start]), float(x[t - 1])))
            start = None
    if start is not None:
        segs.append((float(x[start]), float(x[-1])))
    return segs


@dataclass
class Shape:
    """The type of a 1D curve and the evidence for it.

    ``kind``: one of :data:`KINDS`. ``stationary``: the paper's exact count on the raw curve.
    ``minima`` / ``maxima``: x positions of the extrema kept after clipping at log C and the
    persistence threshold ``tol`` (loss units). ``center_x``: the grid point nearest λ = 0 and
    ``center_at``: "min", "max", "slope" or "outside" (0 not in the span). ``above_log_c``:
    (x_start, x_end) segments above the random-guess loss. ``reason``: one sentence.
    """

    kind: str
    stationary: int
    minima: list = field(default_factory=list)
    maxima: list = field(default_factory=list)
    center_x: float | None = None
    center_at: str = "outside"
    above_log_c: list = field(default_factory=list)
    log_c: float | None = None
    tol: float = 0.0
    flat: bool = False
    reason: str = ""

    @property
    def pattern(self) -> str:
        """The extrema left to right, e.g. "min,max,min"."""
        return ",".join(self.sequence)

    @property
    def sequence(self) -> list[str]:
        pts = sorted([(x, "min") for x in self.minima] + [(x, "max") for x in self.maxima])
        return [k for _, k in pts]


def classify(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    num_classes: int | None = None,
    log_c: float | None = None,
    prominence: float = 1e-4,
    noise: float = 6.0,
    flat_tol: float = 1e-6,
    center: float = 0.0,
) -> Shape:
    """Name a 1D curve v-basin, v-side, w-basin, w-peak, vvv-basin or other (module docstring).

    Args:
        x: (n,) strictly increasing coefficients, at least 3.
        y: (n,) losses at θ + x_t ε.
        num_classes: C, for the random-guess loss log C above which the curve is clipped
            (non-finite values count as above; without log C they count as the curve's
            maximum).
        log_c: the random-guess loss directly, instead of ``num_classes``.
        prominence: the persistence threshold as a fraction of the clipped curve's range, in
            [0, 1).
        noise: the multiple of the estimated noise level added as a floor (0 switches it off).
        flat_tol: a curve whose range is at most ``flat_tol · max(1, |mean y|)`` is flat.
        center: λ of the perturbed model (where the center sits on the curve).

    Returns:
        A :class:`Shape`: ``kind``, the paper's ``stationary`` count, the kept ``minima`` /
        ``maxima``, where the center sits (``center_at``), the segments above log C and a
        one-sentence ``reason``.

    Raises:
        LossAtlasError: ``x`` and ``y`` of different lengths, fewer than 3 points, ``x`` not
            increasing, ``prominence`` outside [0, 1), or ``num_classes`` below 2.
    """
    x, y = _as_curve(x, "x"), _as_curve(y)
    if len(x) != len(y):
        raise LossAtlasError(f"x has {len(x)} points but y has {len(y)}; pass one y per x")
    if len(x) < 3:
        raise LossAtlasError("a curve needs at least 3 points to have a shape; pass more points")
    if np.any(np.diff(x) <= 0):
        raise LossAtlasError("x must be strictly increasing; sort the curve by x first")
    if not 0 <= prominence < 1:
        raise LossAtlasError(f"prominence={prominence!r} must be in [0, 1)")
    if num_classes is not None and log_c is None:
        if num_classes < 2:
            raise LossAtlasError(f"num_classes={num_classes!r} must be >= 2")
        log_c = math.log(num_classes)
    stationary = stationary_points(np.nan_to_num(y, nan=np.inf))
    finite = np.isfinite(y)
    if not finite.any():
        return Shape("other", stationary, log_c=log_c, reason="no finite loss on the curve")
    cap = log_c if log_c is not None else float(np.max(y[finite]))
    yc = np.where(finite, y, cap)
    segs = above_segments(x, y, log_c) if log_c is not None else []
    if log_c is not None:
        yc = np.minimum(yc, log_c)
    span = float(yc.max() - yc.min())
    scale = max(1.0, float(np.abs(yc).mean()))
    inside = x[0] <= center <= x[-1]
    ci = int(np.argmin(np.abs(x - center)))
    common = dict(stationary=stationary, above_log_c=segs, log_c=log_c,
                  center_x=float(x[ci]) if inside else None)
    if span <= flat_tol * scale:
        return Shape("other", flat=True, center_at="slope" if inside else "outside",
                     reason=f"flat curve (range {span:.3g})", **common)
    tol = max(prominence * span, noise * noise_level(yc))
    ext = extrema(yc, tol=tol) if tol > 0 else extrema(yc)
    minima = [float(x[e.index]) for e in ext if e.kind == "min"]
    maxima = [float(x[e.index]) for e in ext if e.kind == "max"]
    seq = [e.kind for e in ext]
    at = _center_at(ext, yc, ci, tol) if inside else "outside"
    kind, reason = _name(seq, at, yc, ci, inside, tol)
    return Shape(kind, minima=minima, maxima=maxima, center_at=at, tol=tol, reason=reason,
                 **common)


def _center_at(ext: list[Extremum], y: np.ndarray, ci: int, tol: float) -> str:
    """Which extremum the center sits at: the one whose stretch between its neighbouring
    extrema (or the ends) holds the center, when the center's loss is within max(tol, 5% of
    the wall on the center's side) of the extremum's value (the wall: |y_e − y_neighbour|);
    else "slope"."""
    if not ext:
        return "slope"
    bounds = [0] + [e.index for e in ext] + [len(y) - 1]
    for j, e in enumerate(ext):
        left, right = bounds[j], bounds[j + 2]
        if e.lo <= ci <= e.hi:
            return e.kind
        if not left <= ci <= right:
            continue
        wall = abs(y[e.index] - y[left if ci < e.index else right])
        if abs(y[ci] - y[e.index]) <= max(tol, 0.05 * wall):
            return e.kind
    return "slope"


def _name(seq: list[str], at: str, y: np.ndarray, ci: int, inside: bool,
          tol: float) -> tuple[str, str]:
    pattern = ",".join(seq) or "monotone"
    if not inside:
        return "other", "the center λ=0 lies outside the span; include 0 in the span"
    if seq == ["min"]:
        if at == "min":
            return "v-basin", "one minimum, at the center"
        return "v-side", "one minimum, the center on its slope"
    if not seq:
        if abs(y[-1] - y[0]) > tol and ci not in (0, len(y) - 1):
            return "v-side", "monotone over the span: the minimum lies at or beyond an end"
        return "other", "no extremum and no monotone trend beyond the tolerance"
    if seq.count("max") == 1 and at == "max" and len(seq) <= 3 and "max,max" not in pattern:
        if seq == ["min", "max", "min"]:
            return "w-peak", "minimum, maximum, minimum with the center at the peak"
        return "w-peak", (f"extrema {pattern}: the loss falls on both sides of the center, a "
                          "minimum lies at an end of the span (widen it to see the rise)")
    if seq == ["min", "max", "min"]:
        if at == "min":
            return "w-basin", "minimum, maximum, minimum with the center in a basin"
        return "other", "a w shape but the center is on a slope"
    if seq == ["min", "max", "min", "max", "min"] and at == "min":
        return "vvv-basin", "three minima with the center in one of them"
    return "other", f"extrema {pattern} with the center at the {at}"
