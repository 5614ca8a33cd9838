"""Trajectory figures (Li et al. 2018, Fig. 19; Ding, Li, Huang 2023, Figs. 2-3, 7-9).

* :func:`plot_trajectory`: loss contours on a trajectory plane with the projected path drawn
  over them: start (black square), center (red dot), final (green star), learning-rate
  changes (orange triangles), the explained variance on the axis labels and the Fitting
  Error in the title.
* :func:`plot_fit`: true loss L(w_i) against the loss at the projection L(w̃_i), per checkpoint.
* :func:`plot_comparison`: the same trajectory on several planes side by side (e.g. Ding vs a
  random filter-normalized plane).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from lossatlas.plot.landscape import contour_levels, finish, level_colorbar, plain_log_ticks

__all__ = ["axis_labels", "plot_comparison", "plot_fit", "plot_trajectory"]

_NAMES = {"li2018": "PCA (Li et al. 2018)", "ding2023": "trajectory PCA (Ding et al. 2023)",
          "random": "random"}


def axis_labels(plane) -> tuple[str, str]:
    """Axis labels: the explained variance of each PCA axis, or the random directions' norm."""
    if plane is None:
        return "α  (d₁)", "β  (d₂)"
    if plane.method == "random":
        norm = plane.meta.get("norm", "filter")
        return (f"α: d₁ (random, {norm}-norm.)", f"β: d₂ (random, {norm}-norm.)")
    r = np.asarray(plane.explained_variance_ratio, dtype=float)
    return f"α: PC1 ({100 * r[0]:.1f} %)", f"β: PC2 ({100 * r[1]:.1f} %)"


def _lr_changes(traj) -> np.ndarray:
    """Positions j where the learning rate differs from the previous checkpoint's."""
    lr = np.asarray(traj.lrs, dtype=float)
    if lr.size < 2:
        return np.zeros(0, dtype=int)
    same = np.isclose(lr[1:], lr[:-1], rtol=1e-9, atol=0) | ~np.isfinite(lr[1:])
    return np.flatnonzero(~same) + 1


def _draw(ax, surface, traj, plane, title, levels, log, legend=True):
    z = np.array(surface.loss, dtype=float)
    if log:
        z = np.log10(np.clip(z, 1e-12, None))
    X, Y = np.meshgrid(surface.x, surface.y, indexing="ij")
    cs = ax.contour(X, Y, z, levels=contour_levels(z, levels), cmap="viridis", linewidths=1)
    ax.clabel(cs, cs.levels[::6], inline=True, fontsize=6, fmt="%.3g")
    if traj is not None:
        x, y = np.asarray(traj.x), np.asarray(traj.y)
        ax.plot(x, y, "-", color="tab:blue", lw=1.2, alpha=0.9, zorder=3)
        ax.plot(x, y, "o", color="tab:blue", ms=3, zorder=4, label="checkpoints")
        ax.plot(x[0], y[0], "s", color="black", ms=5, zorder=8, label="start")
        ax.plot(x[-1], y[-1], "*", color="tab:green", ms=13, mec="black", mew=0.5, zorder=6,
                label="final")
        ch = _lr_changes(traj)
        if ch.size:
            ax.plot(x[ch], y[ch], "^", color="tab:orange", ms=8, mec="black", mew=0.5,
                    zorder=6, label="lr change")
    # a ring, so that a start (or final) point at the center stays visible inside it
    ax.plot([0], [0], "o", color="red", mfc="none", mec="red", ms=13, mew=2, zorder=7,
            label="center")
    xl, yl = axis_labels(plane)
    ax.set_xlabel(xl, fontsize=8)
    ax.set_ylabel(yl, fontsize=8)
    ax.set_title(title, fontsize=9)
    if legend:
        ax.legend(loc="best", fontsize=7, framealpha=0.8)
    return cs


def _title(plane, traj) -> str:
    bits = [_NAMES.get(getattr(plane, "method", None), "plane")]
    if plane is not None:
        ep = plane.meta.get("center_epoch")
        bits.append(f"center: checkpoint {plane.center_index}"
                    + (f" (epoch {ep:g})" if isinstance(ep, (int, float)) else ""))
    if traj is not None and math.isfinite(traj.fitting_error):
        bits.append(f"fitting error {traj.fitting_error:.3g}")
    return "\n".join([bits[0], ", ".join(bits[1:])]) if len(bits) > 1 else bits[0]


def _colorbar(fig, ax, cs, log: bool, **kw):
    """A colour bar over the contours' full range with round ticks."""
    return level_colorbar(fig, ax, cs, "log10 loss" if log else "loss", **kw)


def plot_trajectory(surface, trajectory=None, plane=None, path: str | os.PathLike | None = None,
                    *, log: bool = False, levels: int = 30, title: str | None = None):
    """Loss contours of ``surface`` with ``trajectory`` drawn over them: the path, its start,
    its end, the learning-rate changes and the plane's center.

    Args:
        surface: a surface on the plane, e.g. from ``la.trajectory.surface``.
        trajectory: the projected :class:`~lossatlas.measurements.trajectory.Trajectory`;
            None: contours only.
        plane: the :class:`~lossatlas.measurements.trajectory.Plane`, for the axis labels
            (explained variance) and the title.
        path: where to write the figure; None: not written.
        log: contour log10 of the loss.
        levels: contour levels.
        title: the title; None: the method, the center and the Fitting Error.

    Returns:
        The matplotlib Figure (contours and a colorbar).
    """
    fig, ax = plt.subplots(figsize=(6, 5))
    cs = _draw(ax, surface, trajectory, plane, title or _title(plane, trajectory), levels, log)
    _colorbar(fig, ax, cs, log)
    fig.tight_layout()
    return finish(fig, path)


def plot_comparison(panels: Sequence[tuple], path: str | os.PathLike | None = None, *,
                    log: bool = False, levels: int = 30, suptitle: str | None = None):
    """Several ``(surface, trajectory, plane)`` panels side by side (same figure)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    for k, (ax, (s, t, p)) in enumerate(zip(axes[0], panels)):
        cs = _draw(ax, s, t, p, _title(p, t), levels, log, legend=k == 0)
        _colorbar(fig, ax, cs, log, shrink=0.85)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return finish(fig, path)


def plot_fit(trajectories: Sequence, labels: Sequence[str] | None = None,
             path: str | os.PathLike | None = None, *, title: str | None = None):
    """True loss L(w_i) and the loss at the projection L(w̃_i) against the epoch (or index),
    one dashed line per plane, log scale; the legend gives each plane's Fitting Error."""
    trajectories = list(trajectories)
    labels = list(labels) if labels is not None else [
        t.meta.get("method", f"plane {i}") for i, t in enumerate(trajectories)]
    fig, ax = plt.subplots(figsize=(6, 4))
    t0 = trajectories[0]
    x = np.asarray(t0.epochs, dtype=float)
    xlabel = "epoch"
    if not np.isfinite(x).all():
        x, xlabel = np.asarray(t0.indices, dtype=float), "checkpoint"
    ax.plot(x, t0.loss, "-o", color="black", ms=3, lw=1.5, label="true loss L(w_i)")
    for t, lab in zip(trajectories, labels):
        ax.plot(x, t.projected_loss, "--", lw=1.3,
                label=f"L(w̃_i) on {lab} (fitting error {t.fitting_error:.3g})")
    ax.set_yscale("log")
    plain_log_ticks(ax, np.concatenate([np.asarray(t0.loss, float)] + [
        np.asarray(t.projected_loss, float) for t in trajectories]))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    ax.set_title(title or "trajectory loss vs loss at its projection", fontsize=10)
    fig.tight_layout()
    return finish(fig, path)
