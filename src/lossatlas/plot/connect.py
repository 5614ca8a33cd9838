"""Figures for mode connectivity and similarity (Yang et al. 2021, Fig. 12 and App. A).

* :func:`curve` — the train error (or loss) along a trained Bezier curve and along the straight
  line, the reference ½(v(0) + v(1)), t* and mc in the title (one panel of their Fig. 12).
* :func:`error_and_loss` — :func:`curve` for the error and the loss side by side.
* :func:`grid` — many curves as small multiples on shared axes (their Fig. 12 layout).
* :func:`cka_layers` — layer-wise CKA as bars.

Every function returns the matplotlib Figure and writes it when ``path`` is given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from lossatlas.plot.files import save_figure

__all__ = ["cka_layers", "curve", "error_and_loss", "grid"]

_YLABEL = {"error": "train error (%)", "loss": "train loss"}


def _finish(fig, path: str | os.PathLike | None, rect=(0, 0, 1, 1)):
    return save_figure(fig, path, dpi=130, layout_rect=rect, bbox_tight=False, close=True)


def _draw(ax, res, dense: Mapping | None, metric: str, small: bool) -> None:
    v = res.error if metric == "error" else res.loss
    lin = res.linear_error if metric == "error" else res.linear_loss
    if dense is not None:
        ax.plot(dense["t"], dense[f"curve_{metric}"], "-", color="tab:blue", lw=1.5,
                label="Bezier curve")
        if f"line_{metric}" in dense:
            ax.plot(dense["t"], dense[f"line_{metric}"], "--", color="0.45", lw=1.0,
                    label="straight line")
        ax.plot(res.t, v, "o", color="tab:blue", ms=3 if small else 5)
    else:
        ax.plot(res.t, v, "o-", color="tab:blue", ms=3 if small else 5, lw=1.5,
                label="Bezier curve")
        if lin is not None:
            ax.plot(res.t, lin, "s--", color="0.45", ms=2 if small else 4, lw=1.0,
                    label="straight line")
    before = getattr(res, f"unaligned_linear_{metric}", None)
    if getattr(res, "align", "") and before is not None:
        ax.plot(res.t, before, "^:", color="tab:orange", ms=2 if small else 4, lw=1.0,
                label="straight line, before alignment")
    ref = 0.5 * (v[0] + v[-1])
    ax.axhline(ref, color="tab:red", lw=0.7, ls=":", label="½(v(0)+v(1))")
    if metric == res.metric:
        i = int(np.argmin(np.abs(res.t - res.t_star)))
        ax.plot([res.t_star, res.t_star], [ref, v[i]], color="tab:red", lw=1.2)
    ax.set_xlim(-0.03, 1.03)


def curve(res, dense: Mapping | None = None, metric: str | None = None, title: str | None = None,
          path: str | os.PathLike | None = None, ax=None):
    """One trained curve: the metric at its evaluated t values (dots), along the straight line
    (dashed), the reference ½(v(0)+v(1)) (dotted) and the deviation at t* (red bar).

    Args:
        res: a :class:`la.connect.ConnectResult`.
        dense: from :func:`lossatlas.measurements.connect.dense_profile`: adds the full curves
            between the dots.
        metric: ``"error"`` or ``"loss"``; None: the result's own metric.
        title: the title; None: mc and t* (and the straight line's mc).
        path: where to write the figure; None: not written (ignored with ``ax``).
        ax: the axes to draw in; None: a new figure.

    Returns:
        The matplotlib Figure.
    """
    metric = metric or res.metric
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
    _draw(ax, res, dense, metric, small=False)
    ax.set_xlabel("t  (0: model A, 1: model B)")
    ax.set_ylabel(_YLABEL[metric])
    lin = f", line {res.linear_mc:+.2f}" if np.isfinite(res.linear_mc) else ""
    if metric != res.metric and title is None:
        title = f"{_YLABEL[metric]} along the same curves"
    ax.set_title(title or f"mode connectivity mc = {res.mc:+.2f} at t* = {res.t_star:.2f}{lin}",
                 fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    return _finish(fig, path) if fig is not None else ax.figure


def error_and_loss(res, dense: Mapping | None = None, title: str | None = None,
                   path: str | os.PathLike | None = None):
    """:func:`curve` twice, side by side: the train error (%) and the train loss (the error is
    0 along most of a well-connected curve; the loss still shows its shape)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.9))
    for ax, metric in zip(axes, ("error", "loss")):
        curve(res, dense=dense, metric=metric, ax=ax,
              title=None if metric == res.metric else "train loss along the same curves")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes:  # one legend for both panels, below them: it cannot hide a curve
        ax.get_legend().remove()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, path, rect=(0, 0.07, 1, 1))


def grid(results: Sequence[Sequence], row_labels: Sequence[str] | None = None,
         col_labels: Sequence[str] | None = None, metric: str | None = None,
         title: str | None = None, path: str | os.PathLike | None = None):
    """Small multiples of curves on shared axes, mc written in each panel: the layout of Yang et
    al.'s Fig. 12.

    Args:
        results: ``results[r][c]`` in row r, column c; None leaves a panel empty.
        row_labels: the y labels of the rows.
        col_labels: the x labels of the columns.
        metric: ``"error"`` or ``"loss"``; None: each result's own metric.
        title: the title; None: a generic one.
        path: where to write the figure; None: not written.

    Returns:
        The matplotlib Figure.
    """
    nr = len(results)
    nc = max(len(r) for r in results) if nr else 0
    fig, axes = plt.subplots(nr, nc, figsize=(1.9 * nc + 1, 1.5 * nr + 1), squeeze=False,
                             sharex=True, sharey=True)
    for r, row in enumerate(results):
        for c in range(nc):
            ax = axes[r, c]
            res = row[c] if c < len(row) else None
            if res is None:  # keep the axes for the column label, hide the rest
                ax.set_frame_on(False)
                ax.tick_params(left=False, bottom=False, labelleft=False, labelbottom=False)
                continue
            _draw(ax, res, None, metric or res.metric, small=True)
            ax.text(0.97, 0.95, f"mc={res.mc:+.1f}", transform=ax.transAxes, ha="right",
                    va="top", fontsize=7, bbox=dict(fc="white", ec="none", alpha=0.8, pad=1))
            ax.tick_params(labelsize=6)
    for r, lab in enumerate(row_labels or []):
        axes[r, 0].set_ylabel(str(lab), fontsize=8)
    for c, lab in enumerate(col_labels or []):
        axes[-1, c].set_xlabel(str(lab), fontsize=8)
    first = next((x for row in results for x in row if x is not None), None)
    m = metric or (first.metric if first is not None else "error")
    fig.supylabel(_YLABEL[m], fontsize=9)
    fig.suptitle(title or "mode-connectivity curves (x: t along each curve)", fontsize=10)
    return _finish(fig, path)


def cka_layers(values: Mapping[str, float], title: str | None = None,
               path: str | os.PathLike | None = None):
    """Layer-wise CKA (name -> value in [0, 1]) as horizontal bars, in the given order."""
    names = list(values)
    fig, ax = plt.subplots(figsize=(5.0, 0.35 * len(names) + 1.2))
    y = np.arange(len(names))
    ax.barh(y, [values[n] for n in names], color="tab:purple")
    ax.set_yticks(y, [n or "(model)" for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("linear CKA")
    for i, n in enumerate(names):
        inside = values[n] > 0.2
        ax.text(values[n] - 0.01 if inside else values[n] + 0.01, i, f"{values[n]:.3f}",
                va="center", ha="right" if inside else "left", fontsize=7,
                color="white" if inside else "black")
    ax.set_title(title or "layer-wise CKA", fontsize=10)
    return _finish(fig, path)
