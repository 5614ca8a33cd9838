"""Figures of curves and surfaces (Li et al. 2018, Figs. 1-5): matplotlib, Agg backend.

* :func:`plot_curve`: loss (left axis) and accuracy (right axis) along a 1D curve or an
  interpolation, optional log scale, the random-guess loss log C (Li, Li, Zhan 2024), the center
  (or the two end points of an interpolation) marked.
* :func:`plot_surface`: ``kind="contour"`` (Li et al.'s levels), ``"contourf"``, ``"heatmap"``
  or ``"surface3d"``, the center marked.
* :func:`plot_result`: picks by the result's kind.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from lossatlas.errors import LossAtlasError

__all__ = ["SURFACE_KINDS", "plot_curve", "plot_result", "plot_surface"]

SURFACE_KINDS = ("contour", "contourf", "heatmap", "surface3d")


def _finish(fig, path):
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return fig


def _num_classes(result) -> int | None:
    c = (result.meta or {}).get("num_classes")
    return int(c) if isinstance(c, (int, float)) and c and c > 1 else None


def plot_curve(result, path: str | os.PathLike | None = None, *, log: bool = False,
               accuracy: bool = True, random_guess: bool = True, title: str | None = None):
    """Loss (and accuracy on a twin axis) against the coefficient of a 1D curve.

    ``random_guess`` draws the loss of a uniform guess, log C for C classes. The center
    (x = 0) is marked; for an interpolation both end points (t = 0 and t = 1) are.
    Returns the figure; written to ``path`` when given (PNG, PDF, ... by suffix).
    """
    x, loss = np.asarray(result.x), np.asarray(result.loss, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, loss, color="tab:blue", lw=2, label="loss")
    ax.set_xlabel("t (0: a, 1: b)" if result.kind == "interpolation" else "a  (θ + a·d)")
    ax.set_ylabel("loss", color="tab:blue")
    ax.tick_params(axis="y", colors="tab:blue")
    if log:
        ax.set_yscale("log")
    c = _num_classes(result)
    if random_guess and c:
        ax.axhline(math.log(c), color="gray", ls="--", lw=1, label=f"random guess log {c}")
    marks = [0.0, 1.0] if result.kind == "interpolation" else [0.0]
    for m in marks:
        if x.min() <= m <= x.max():
            v = np.interp(m, x, loss)
            ax.plot([m], [v], marker="o", color="black", ms=6, zorder=5)
    ax.plot([], [], marker="o", color="black", ls="", label="a, b" if len(marks) > 1 else
            "center θ")
    handles, labels = ax.get_legend_handles_labels()
    acc = np.asarray(result.accuracy, dtype=float)
    if accuracy and np.isfinite(acc).any():
        ax2 = ax.twinx()
        ax2.plot(x, 100 * acc, color="tab:red", lw=1.5, ls="-.", label="accuracy")
        ax2.set_ylabel("accuracy (%)", color="tab:red")
        ax2.tick_params(axis="y", colors="tab:red")
        ax2.set_ylim(0, 100)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="best", fontsize=8, framealpha=0.8)
    ax.set_title(title or _title(result), fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)


def _title(result) -> str:
    meta = result.meta or {}
    info = meta.get("directions_info") or []
    norms = {i.get("norm") for i in info if isinstance(i, dict) and i.get("norm")}
    bits = [result.kind]
    if norms:
        bits.append(f"{'/'.join(sorted(norms))}-normalized")
    if meta.get("bn"):
        bits.append(f"bn={meta['bn']}")
    done = getattr(result, "done", None)
    partial = ""
    if done is not None and not np.all(done):
        partial = f"\npartial: {int(np.sum(done))} of {np.size(done)} points computed"
    return ", ".join(bits) + partial


def _levels(z: np.ndarray, n: int = 30) -> np.ndarray:
    finite = z[np.isfinite(z)]
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        hi = lo + 1e-12
    if lo > 0 and hi / lo > 20:  # a deep basin: geometric levels keep its floor visible
        return np.geomspace(lo, hi, n)
    return np.linspace(lo, hi, n)


def plot_surface(result, kind: str = "contour", path: str | os.PathLike | None = None, *,
                 log: bool = False, vmax: float | None = None, levels: int = 30,
                 metric: str = "loss", title: str | None = None):
    """A 2D surface as contour lines, filled contours, a heat map or a 3D surface.

    ``loss[i, j]`` is at ``(x[i], y[j])``: x runs along the horizontal axis. ``log`` plots
    log10 of the values; ``vmax`` clips them from above (Li et al. clip at 10 for 3D plots);
    ``metric="accuracy"`` plots the accuracy instead. Points not computed yet are blank.
    """
    if kind not in SURFACE_KINDS:
        raise LossAtlasError(f"kind={kind!r} is unknown; use one of {list(SURFACE_KINDS)}")
    if metric not in ("loss", "accuracy"):
        raise LossAtlasError(f'metric={metric!r} must be "loss" or "accuracy"')
    z = np.array(getattr(result, metric), dtype=float)
    done = np.asarray(result.done, dtype=bool) if result.done is not None else np.isfinite(z)
    z[~done] = np.nan
    if vmax is not None:
        z = np.minimum(z, vmax)
    label = metric
    if log:
        z = np.log10(np.clip(z, 1e-12, None))
        label = f"log10 {metric}"
    X, Y = np.meshgrid(result.x, result.y, indexing="ij")
    if kind == "surface3d":
        fig = plt.figure(figsize=(6.5, 5))
        ax = fig.add_subplot(projection="3d")
        surf = ax.plot_surface(X, Y, np.ma.masked_invalid(z), cmap="viridis", linewidth=0,
                               antialiased=True, rcount=len(result.x), ccount=len(result.y))
        fig.colorbar(surf, ax=ax, shrink=0.6, label=label)
    else:
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        if kind == "contour":
            cs = ax.contour(X, Y, z, levels=_levels(z, levels), cmap="viridis", linewidths=1)
            ax.clabel(cs, cs.levels[::5], inline=True, fontsize=7, fmt="%.3g")
            fig.colorbar(cs, ax=ax, label=label)
        elif kind == "contourf":
            cs = ax.contourf(X, Y, z, levels=_levels(z, levels), cmap="viridis")
            fig.colorbar(cs, ax=ax, label=label)
        else:
            im = ax.pcolormesh(X, Y, z, cmap="viridis", shading="nearest")
            fig.colorbar(im, ax=ax, label=label)
        ax.set_aspect("equal" if _square(result) else "auto")
        if result.x.min() <= 0 <= result.x.max() and result.y.min() <= 0 <= result.y.max():
            ax.plot([0], [0], marker="*", color="red", ms=10, ls="", label="center θ")
            ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("a  (d₁)")
    ax.set_ylabel("b  (d₂)")
    ax.set_title(title or _title(result), fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)


def _square(result) -> bool:
    xr = float(result.x.max() - result.x.min())
    yr = float(result.y.max() - result.y.min())
    return xr > 0 and yr > 0 and 0.5 <= xr / yr <= 2


def plot_result(result, path: str | os.PathLike | None = None, kind: str | None = None, **kw):
    """Plot any landscape result: curves and interpolations with :func:`plot_curve`, surfaces
    with :func:`plot_surface` (``kind`` defaults to ``"contour"``)."""
    rk = getattr(result, "kind", None)
    if rk in ("curve", "interpolation"):
        return plot_curve(result, path, **kw)
    if rk == "surface":
        return plot_surface(result, kind or "contour", path, **kw)
    raise LossAtlasError(f"cannot plot a result of kind {rk!r} here; pass a curve or surface")
