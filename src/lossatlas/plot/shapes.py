"""Figures for curve shapes and mining (Li, Li, Zhan 2024, Figs. 2-12).

* :func:`overlay` — several 1D curves in one axes, the stationary-point count of each in the
  legend and their mean in the title, like the paper's "[1.0]"; the random-guess line log C.
* :func:`types_panel` — one panel per curve type (v-basin ... vvv-basin) with the classifier's
  verdict.
* :func:`cosine_bars` — |cos| with N.E.1..k and P.E.k..1 (Fig. 9, second row).
* :func:`angle_histograms` — angles between Gaussian samples and descent directions (Fig. 5).
* :func:`descent_curves` — negative gradient vs the most overlapped Gaussian (Fig. 6).
* :func:`pair_surface` — a 2D combination of two directions with their cosine (Figs. 11-12).

Every function returns the matplotlib Figure and writes it when ``path`` is given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from lossatlas.analyses import shapes
from lossatlas.plot.files import save_figure

__all__ = ["angle_histograms", "cosine_bars", "descent_curves", "overlay", "pair_surface",
           "types_panel"]


def _xy(c) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(c, (tuple, list)) and len(c) == 2:
        return np.asarray(c[0], float), np.asarray(c[1], float)
    return np.asarray(c.x, float), np.asarray(c.loss, float)


def _finish(fig, path: str | os.PathLike | None):
    return save_figure(fig, path, dpi=120, layout_rect=(0, 0, 1, 1), bbox_tight=False, close=True)


def overlay(curves: Sequence, labels: Sequence[str] | None = None, log_c: float | None = None,
            title: str = "", markers: Sequence[float] = (), ax=None, logy: bool = False,
            path: str | os.PathLike | None = None):
    """Draw ``curves`` in one axes, with the paper's stationary-point counts.

    Legend: "label [n]" with n the paper's stationary-point count (an integer); title: ``title``
    and the count, the mean "[m.m]" over several curves.

    Args:
        curves: objects with ``.x`` / ``.loss``, or ``(x, y)`` pairs.
        labels: one legend label per curve; None: each curve's ``label`` attribute.
        log_c: the random-guess loss, drawn as a dotted black line.
        title: the title, before the count.
        markers: x positions of dotted vertical lines (the center at 0, a checkpoint at 1).
        ax: the axes to draw in; None: a new figure.
        logy: a log-scale loss axis.
        path: where to write the new figure; None: not written (ignored with ``ax``).

    Returns:
        The matplotlib Figure.
    """
    own = ax is None
    fig = ax.figure if ax is not None else plt.figure(figsize=(4.2, 3.4))
    ax = ax if ax is not None else fig.add_subplot(111)
    from lossatlas.plot.landscape import draw_log_c

    counts, ys = [], []
    for i, c in enumerate(curves):
        x, y = _xy(c)
        n = shapes.stationary_points(y)
        counts.append(n)
        ys.append(y)
        lab = labels[i] if labels is not None else getattr(c, "label", None) or "loss"
        ax.plot(x, y, lw=1.4, label=f"{lab} [{n}]")
    if logy:
        ax.set_yscale("log")
    if log_c is not None:
        draw_log_c(ax, log_c, np.concatenate(ys) if ys else [], label="log C", color="k")
    for m, col in zip(markers, ("k", "r", "r")):
        ax.axvline(m, color=col, ls=":", lw=1)
    # the paper's "[1.0]" is a mean over curves; one curve's count is an integer
    mean = (f"{counts[0]}" if len(counts) == 1 else f"{np.mean(counts):.1f}") if counts else "0"
    ax.set_title(f"{title} [{mean}]".strip(), fontsize=10)
    ax.set_xlabel("λ")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7, loc="best")
    return _finish(fig, path) if own else fig


def types_panel(panel: Mapping[str, Sequence], labels: Mapping[str, Sequence[str]] | None = None,
                log_c: float | None = None, markers: Mapping[str, Sequence[float]] | None = None,
                path: str | os.PathLike | None = None):
    """One axes per entry of ``panel`` (title → curves). Each title gets the classifier's verdict
    of the first curve ("→ w-peak") and the mean stationary-point count."""
    n = len(panel)
    rows = max(len(c) for c in panel.values()) + (log_c is not None)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 2.9 + 0.12 * rows), squeeze=False)
    for ax, (name, curves) in zip(axes[0], panel.items()):
        x, y = _xy(curves[0])
        kind = shapes.classify(x, y, log_c=log_c).kind
        overlay(curves, labels=(labels or {}).get(name), log_c=log_c,
                title=f"{name} → {kind}", markers=(markers or {}).get(name, (0.0,)), ax=ax)
        # below the axes: inside, a legend hides the log C line or a curve's flank
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.26), frameon=False)
    return _finish(fig, path)


def cosine_bars(profile, title: str = "", ax=None, path: str | os.PathLike | None = None):
    """Bars of ``profile.values`` (|cos| with N.E.1..k, P.E.k..1) labelled ``profile.labels``;
    N.E. bars blue, P.E. bars orange."""
    own = ax is None
    fig = ax.figure if ax is not None else plt.figure(figsize=(6, 2.8))
    ax = ax if ax is not None else fig.add_subplot(111)
    colors = ["tab:blue" if lab.startswith("N.E.") else "tab:orange" for lab in profile.labels]
    ax.bar(range(len(profile.values)), profile.values, color=colors)
    ax.set_xticks(range(len(profile.labels)), profile.labels, rotation=90, fontsize=7)
    ax.set_ylabel("|cos|")
    ax.set_title(title, fontsize=10)
    return _finish(fig, path) if own else fig


def angle_histograms(result, path: str | os.PathLike | None = None):
    """One histogram per target of ``result.angles`` (degrees), the 90° line dotted."""
    n = len(result.labels)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.8), squeeze=False)
    for ax, lab, a in zip(axes[0], result.labels, result.angles):
        ax.hist(a, bins=20, color="tab:blue", alpha=0.8)
        ax.axvline(90, color="k", ls=":", lw=1)
        ax.set_title(f"{lab}\n[{a.min():.2f}, {a.max():.2f}]°", fontsize=9)
        ax.set_xlabel("angle (degrees)")
    return _finish(fig, path)


def descent_curves(result, path: str | os.PathLike | None = None):
    """One axes per scale s: L(θ + x g̃) on [−s, s] and the best Gaussian's curve, whose x-axis
    is stretched ``result.zoom`` times (their Fig. 6)."""
    n = len(result.scales)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.0), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.plot(result.x[i], result.gradient[i], label="neg. gradient")
        ax.plot(result.x[i], result.gaussian[i], label=f"Gaussian ×{result.zoom:g} "
                f"(cos {result.cosine:.3f})")
        ax.set_title(f"s = {result.scales[i]:g}", fontsize=10)
        ax.set_xlabel("λ")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("loss")
    return _finish(fig, path)


def pair_surface(surface, labels: Sequence[str] = ("d1", "d2"), cos: float | None = None,
                 ax=None, path: str | os.PathLike | None = None):
    """Filled contour of ``surface.loss[i, j]`` at (x[i], y[j]), axes named after the two
    directions, their cosine in the title (Figs. 11-12)."""
    own = ax is None
    fig = ax.figure if ax is not None else plt.figure(figsize=(3.8, 3.3))
    ax = ax if ax is not None else fig.add_subplot(111)
    Z = np.asarray(surface.loss, float).T
    cs = ax.contourf(surface.x, surface.y, Z, levels=25, cmap="viridis")
    fig.colorbar(cs, ax=ax)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    cos = cos if cos is not None else (getattr(surface, "meta", {}) or {}).get("cosine")
    ax.set_title(f"{labels[0]} × {labels[1]}" + (f" (cos {cos:.3f})" if cos is not None else ""),
                 fontsize=9)
    return _finish(fig, path) if own else fig
