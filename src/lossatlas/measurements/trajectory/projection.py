"""A trajectory on a plane and its Fitting Error (Ding, Li, Huang 2023, Sec. 3.2, Eq. 3).

Each checkpoint w_i gets plane coordinates (α_i, β_i), its true loss L(w_i) and the loss at
its projection w̃_i = w_c + α_i d₁ + β_i d₂. The coordinates are least-squares,
(α_i, β_i) = argmin ‖w_i − w_c − α d₁ − β d₂‖, so w̃_i is the **orthogonal projection** of w_i
onto the plane through w_c for any two independent directions. For a PCA plane
(d_i = s·p_i, p_i orthonormal) this is α_i = p_iᵀ(w_i − w_c)/s and
w̃_i = w_c + PPᵀ(w_i − w_c): coordinates in units of d_i. Ding et al.'s Eq. 4 prints
w̃_i = w_c + ‖w_c‖·PPᵀ(w_i − w_c); that extra factor ‖w_c‖ would move w̃_i off the
projection (and off the point the plot shows), so it is not used here. For a random
filter-normalized plane, whose directions are not orthogonal, the same least squares applies.

Fitting Error: Err = (1/n)·Σ_i [ln(L(w_i) / L(w̃_i))]² over the n projected checkpoints.

BatchNorm: with ``bn="keep"``, L(w_i) uses checkpoint i's own buffers when the checkpoints
carry them (``run.states``, state dicts, files) and the projected points use the center
checkpoint's buffers (the buffers of the landscape drawn around w_c); with
``bn="recalibrate"`` every point gets statistics recomputed at it.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lossatlas.core import params as P
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.objective import Objective
from lossatlas.core.progress import track
from lossatlas.measurements.trajectory.planes import Plane, resolve_slice
from lossatlas.measurements.trajectory.source import as_source
from lossatlas.store import results as store

__all__ = [
    "Comparison", "Trajectory", "compare", "coordinates", "fitting_error", "plane_objective",
    "project", "random_plane", "surface",
]


@store.result("trajectory_path")
@dataclass
class Trajectory:
    """A trajectory projected on a plane: ``x``, ``y`` (n,) coordinates in units of d₁, d₂;
    ``loss`` (n,) the true L(w_i); ``projected_loss`` (n,) L(w̃_i); ``accuracy``,
    ``projected_accuracy`` (n,); ``residual`` (n,) ‖w_i − w̃_i‖ / ‖w_i − w_c‖ (0 on the plane,
    NaN at the center); ``indices``, ``epochs``, ``lrs`` (n,) of the checkpoints;
    ``fitting_error`` Ding et al.'s Err; ``meta``: provenance."""

    x: np.ndarray
    y: np.ndarray
    loss: np.ndarray
    projected_loss: np.ndarray
    fitting_error: float
    accuracy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    projected_accuracy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    residual: np.ndarray = field(default_factory=lambda: np.zeros(0))
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    epochs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lrs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    meta: dict = field(default_factory=dict)


def fitting_error(loss: Sequence[float], projected_loss: Sequence[float]) -> float:
    """Err = mean_i [ln(L(w_i) / L(w̃_i))]² (Ding et al. 2023, Eq. 3); both losses > 0."""
    a, b = np.asarray(loss, dtype=float), np.asarray(projected_loss, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise LossAtlasError("loss and projected_loss must be non-empty and of equal length")
    if np.any(a <= 0) or np.any(b <= 0):
        raise LossAtlasError("the fitting error takes logs of losses; every loss must be > 0")
    return float(np.mean(np.log(a / b) ** 2))


def coordinates(point: Mapping, plane: Plane) -> tuple[float, float]:
    """Least-squares plane coordinates (α, β) of ``point``: the solution of the 2×2 normal
    equations DᵀD c = Dᵀ(w − w_c), D = [d₁ d₂] (float64); for orthogonal directions
    α = d₁ᵀ(w − w_c)/‖d₁‖²."""
    r = P.Point({k: point[k].detach().to(v.device, torch.float64) - v.double()
                 for k, v in plane.center.items()})
    return _solve(_normal(plane), [float(P.dot(r, d)) for d in plane.directions])


def _normal(plane: Plane) -> np.ndarray:
    d1, d2 = plane.d1, plane.d2
    A = np.array([[float(P.dot(d1, d1)), float(P.dot(d1, d2))],
                  [float(P.dot(d1, d2)), float(P.dot(d2, d2))]])
    if abs(np.linalg.det(A)) <= 1e-12 * A[0, 0] * A[1, 1]:
        raise LossAtlasError("the plane's directions are parallel; pass two independent ones")
    return A


def _solve(A: np.ndarray, b: Sequence[float]) -> tuple[float, float]:
    c = np.linalg.solve(A, np.asarray(b, dtype=float))
    return float(c[0]), float(c[1])


def _check_names(obj: Objective, plane: Plane) -> None:
    if list(obj.names) != plane.names:
        raise LossAtlasError(
            "the plane covers other parameters than the objective; build it with "
            "la.trajectory.pca(..., names=obj.names)"
        )


def _buffers(obj: Objective, state: Mapping | None) -> dict | None:
    """The objective's buffers taken from a state dict (None when it lacks any of them)."""
    if state is None or not obj.buffers:
        return None
    if not all(k in state for k in obj.buffers):
        return None
    return {k: state[k].to(obj.device, obj.buffers[k].dtype) for k in obj.buffers}


def plane_objective(obj: Objective, plane: Plane, checkpoints: Any = None) -> Objective:
    """``obj`` with the center checkpoint's buffers (bn="keep", BN models, when the
    checkpoints carry buffers): the objective the plane's landscape is drawn with."""
    if obj.bn != "keep" or not obj.buffers or checkpoints is None:
        return obj
    src = as_source(checkpoints, plane.names)
    bufs = _buffers(obj, src.state(plane.center_index))
    if bufs is None:
        return obj
    out = copy.copy(obj)
    out.buffers = bufs
    return out


def project(
    obj: Objective,
    plane: Plane,
    checkpoints: Any,
    *,
    indices: Sequence[int] | None = None,
    slice: Any = None,
    progress: bool = True,
) -> Trajectory:
    """Project checkpoints on ``plane`` and compare true and projected losses (formulas in the
    module docstring).

    When the plane covers a subset of the parameters (``names``), the others keep the
    objective's values (its model's) at every checkpoint, for the true loss too: the path is
    the trajectory of that subset.

    Args:
        obj: the :class:`~lossatlas.core.objective.Objective` the losses are evaluated with.
        plane: a :class:`Plane` from :func:`la.trajectory.pca` (or :func:`random_plane`).
        checkpoints: as for :func:`la.trajectory.pca`: the same sequence the plane's indices
            refer to (a Run, a run folder, points, state dicts or ``.pt`` files).
        indices: which checkpoints to project; None: all (or ``slice``).
        slice: ``(m, n)``: checkpoints m..n−1, when ``indices`` is None.
        progress: show a progress bar.

    Returns:
        A :class:`Trajectory`: plane coordinates ``x``, ``y`` (n,), true ``loss`` and
        ``projected_loss`` (n,), accuracies, ``residual`` (n,) and the ``fitting_error``.

    Raises:
        LossAtlasError: ``obj`` is not an Objective, ``plane`` not a Plane, or the plane's
            parameters are not the objective's.
    """
    if not isinstance(obj, Objective):
        raise LossAtlasError(f"obj must be a lossatlas.Objective, got {type(obj).__name__}")
    if not isinstance(plane, Plane):
        raise LossAtlasError(f"plane must be a Plane from la.trajectory.pca, got "
                             f"{type(plane).__name__}")
    _check_names(obj, plane)
    src = as_source(checkpoints, plane.names)
    idx = list(indices) if indices is not None else list(resolve_slice(slice, len(src))
                                                          if slice is not None
                                                          else range(len(src)))
    A = _normal(plane)
    center = plane.center.to(obj.device)
    dirs = [d.to(obj.device) for d in plane.directions]
    center_bufs = None
    if obj.bn == "keep" and plane.center_index >= 0 and plane.center_index < len(src):
        center_bufs = _buffers(obj, src.state(plane.center_index))
    n = len(idx)
    out = {k: np.full(n, np.nan) for k in ("x", "y", "loss", "acc", "ploss", "pacc", "res")}
    own_buffers = 0
    for j, i in enumerate(track(idx, "projecting checkpoints", disable=not progress or None)):
        w = src.point(i).to(obj.device)
        r = P.Point({k: w[k].double() - center[k].double() for k in center})
        a, b = _solve(A, [float(P.dot(r, d)) for d in plane.directions])
        wt = P.axpy(center, [a, b], dirs)
        bufs = _buffers(obj, src.state(i)) if obj.bn == "keep" else None
        own_buffers += bufs is not None
        true = obj.evaluate(w, buffers=bufs)
        proj = obj.evaluate(wt, buffers=center_bufs if obj.bn == "keep" else None)
        rn = float(P.norm(r))
        resid = float(P.norm(P.Point({k: w[k].double() - wt[k].double() for k in w})))
        out["x"][j], out["y"][j] = a, b
        out["loss"][j], out["acc"][j] = true["loss"], true["accuracy"]
        out["ploss"][j], out["pacc"][j] = proj["loss"], proj["accuracy"]
        out["res"][j] = resid / rn if rn > 0 else math.nan
    infos = [src.info(i) for i in idx]
    err = fitting_error(out["loss"], out["ploss"])
    meta = {
        "method": plane.method, "plane_meta": {k: v for k, v in plane.meta.items()
                                               if k not in ("epochs", "lrs", "names")},
        "center_index": int(plane.center_index), "bn": obj.bn, "loss": obj.loss_name,
        "num_samples": obj.num_samples, "coordinates": "least squares (orthogonal projection)",
        "own_buffers": int(own_buffers), "center_buffers": center_bufs is not None,
        "explained_variance_ratio": [float(v) for v in plane.explained_variance_ratio],
    }
    return Trajectory(
        x=out["x"], y=out["y"], loss=out["loss"], projected_loss=out["ploss"],
        fitting_error=err, accuracy=out["acc"], projected_accuracy=out["pacc"],
        residual=out["res"], indices=np.asarray(idx, dtype=np.int64),
        epochs=np.array([np.nan if e.get("epoch") is None else e["epoch"] for e in infos],
                        dtype=float),
        lrs=np.array([np.nan if e.get("lr") is None else e["lr"] for e in infos], dtype=float),
        meta=meta,
    )


def random_plane(plane: Plane, seed: int = 0, norm: str = "filter",
                 ignore: str | None = "biasbn") -> Plane:
    """Two Gaussian directions normalized to the plane's center (Li et al. 2018's filter
    normalization by default, ``la.directions.gaussian`` with seeds ``seed``, ``seed + 1``),
    through the same center: the baseline of Ding et al.'s Table 1."""
    from lossatlas.directions import gaussian

    d1 = gaussian(plane.center, norm=norm, seed=seed, ignore=ignore)
    d2 = gaussian(plane.center, norm=norm, seed=seed + 1, ignore=ignore)
    return Plane(center=plane.center, d1=d1, d2=d2,
                 explained_variance_ratio=np.full(2, np.nan), method="random",
                 center_index=plane.center_index, indices=plane.indices, scale=math.nan,
                 meta={**plane.meta, "method": "random", "seed": seed, "norm": norm,
                       "ignore": ignore, "base_method": plane.method})


@store.result("trajectory_comparison")
@dataclass
class Comparison:
    """Fitting Errors of a trajectory on ``plane`` and on random normalized planes through
    the same center: ``fitting_error`` (float), ``random_fitting_errors`` (s,) one per seed,
    ``ratio`` = median(random) / fitting_error (> 1: the plane fits better)."""

    fitting_error: float
    random_fitting_errors: np.ndarray
    ratio: float
    seeds: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def compare(obj: Objective, plane: Plane, checkpoints: Any, *, seeds: Sequence[int] = (0,),
            norm: str = "filter", indices: Sequence[int] | None = None,
            progress: bool = True) -> tuple[Comparison, Trajectory, list[Trajectory]]:
    """Project the same checkpoints on ``plane`` and on :func:`random_plane` (one per seed) and
    compare the Fitting Errors (Ding et al. 2023, Table 1).

    Args:
        obj: the :class:`~lossatlas.core.objective.Objective`.
        plane: the PCA :class:`Plane`.
        checkpoints: as for :func:`project`.
        seeds: one random plane per seed ``s``, with direction seeds ``2s`` and ``2s + 1``.
        norm: the random directions' normalization (``"filter"``: Li et al. 2018).
        indices: which checkpoints; None: all.
        progress: show progress bars.

    Returns:
        ``(comparison, trajectory_on_plane, trajectories_on_random_planes)``: a
        :class:`Comparison` (``ratio`` = median random Fitting Error / the plane's; > 1: the
        plane fits better), a :class:`Trajectory` and a list of them, one per seed.
    """
    traj = project(obj, plane, checkpoints, indices=indices, progress=progress)
    rand = [project(obj, random_plane(plane, seed=2 * s, norm=norm), checkpoints,
                    indices=indices, progress=progress) for s in seeds]
    errs = np.array([t.fitting_error for t in rand])
    ratio = float(np.median(errs) / traj.fitting_error) if traj.fitting_error > 0 else math.inf
    cmp = Comparison(fitting_error=traj.fitting_error, random_fitting_errors=errs, ratio=ratio,
                     seeds=[2 * s for s in seeds],
                     meta={"method": plane.method, "norm": norm,
                           "center_index": int(plane.center_index)})
    return cmp, traj, rand


def _span(values: np.ndarray, margin: float) -> tuple[float, float]:
    v = np.concatenate([values[np.isfinite(values)], [0.0]])
    lo, hi = float(v.min()), float(v.max())
    width = hi - lo if hi > lo else 1.0
    return lo - margin * width, hi + margin * width


def surface(obj: Objective, plane: Plane, trajectory: Trajectory | None = None, *,
            checkpoints: Any = None, resolution: int = 31, xspan=None, yspan=None,
            margin: float = 0.2, path=None, progress: bool = True, **kwargs):
    """``la.surface`` on the plane: L(w_c + a·d₁ + b·d₂) on a grid through the plane's center.

    Args:
        obj: the :class:`~lossatlas.core.objective.Objective`.
        plane: the :class:`Plane` (its center and d₁, d₂).
        trajectory: a projected :class:`Trajectory`; the spans then hold all of it and the
            center, with ``margin`` of its extent on each side.
        checkpoints: gives the center's BN buffers (see :func:`plane_objective`).
        resolution: grid points per axis.
        xspan: the a range; None: from ``trajectory``, else (−1, 1).
        yspan: the b range; None: from ``trajectory``, else (−1, 1).
        margin: the fraction of the trajectory's extent added on each side.
        path: an HDF5 file to write (and resume) the surface in.
        progress: show a progress bar.
        **kwargs: go to ``la.surface``.

    Returns:
        The surface result of ``la.surface``, ``loss[i, j]`` at ``(x[i], y[j])``.
    """
    from lossatlas.measurements.landscape.grids import surface as _surface

    _check_names(obj, plane)
    if xspan is None:
        xspan = _span(trajectory.x, margin) if trajectory is not None else (-1.0, 1.0)
    if yspan is None:
        yspan = _span(trajectory.y, margin) if trajectory is not None else (-1.0, 1.0)
    with warnings.catch_warnings():
        if plane.method == "random":
            warnings.simplefilter("ignore")  # random directions are nearly, not exactly, orthogonal
        return _surface(plane_objective(obj, plane, checkpoints), plane.d1, plane.d2,
                        center=plane.center, xspan=xspan, yspan=yspan, resolution=resolution,
                        path=path, progress=progress, **kwargs)


