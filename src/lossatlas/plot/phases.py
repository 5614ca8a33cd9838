"""Phase-diagram figures of a sweep (Yang et al. 2021, Figs. 2-4 and 12).

* :func:`heatmap` — one metric on load (x) x temperature (y) axes, the hottest row at the top
  (small batch size / large learning rate), as in the paper's figures; mc on a diverging map
  centred at 0 (blue: a barrier, red: unconverged ends), loss and Hessian on log colour scales.
* :func:`phase_map` — the phase label of every cell (I, II, III, IV-A, IV-B).
* :func:`phase_diagram` — every metric of the sweep and the phase map in one figure.
* :func:`mc_curves` — the train error along every cell's trained curve (their Fig. 12).

``result`` is a :class:`lossatlas.sweeps.results.SweepResult` (or anything with ``grid(metric)``,
``load_values``, ``temperature_values``, ``spec`` and ``curves()``). Every function returns the
Figure and writes it when ``path`` is given.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors

from lossatlas.core.errors import LossAtlasError
from lossatlas.plot.files import save_figure

__all__ = ["PHASE_COLORS", "PHASE_WORDS", "TITLES", "heatmap", "mc_curves", "phase_diagram",
           "phase_key", "phase_map"]

#: Panel titles, in the paper's order (Fig. 2 a-g).
TITLES = {
    "test_acc": "test accuracy (%)",
    "train_loss": "train loss",
    "hessian_max": "Hessian λ_max",
    "sharpness": "sharpness (Andriushchenko et al.)",
    "hessian_trace": "Hessian trace",
    "mc": "mc (train error %)",
    "cka": "CKA similarity",
    "l2": "ℓ2 distance",
    "train_error": "train error (%)",
    "mc_linear": "linear-path mc (train error %)",
    "mc_aligned": "mc after alignment (train error %)",
    "mc_linear_aligned": "linear-path mc after alignment (train error %)",
}
LOG_METRICS = {"train_loss", "hessian_max", "hessian_trace"}
PHASE_COLORS = {"I": "#d62728", "II": "#ff9896", "III": "#1f77b4", "IV-A": "#98df8a",
                "IV-B": "#2ca02c"}


def _finish(fig, path: str | os.PathLike | None):
    return save_figure(fig, path, dpi=130)


def _order(result) -> np.ndarray:
    """Row order (temperature indices) with the hottest at the top."""
    hot_first = getattr(result.spec, "hot_first", True)
    vals = np.asarray(result.temperature_values, dtype=float)
    order = np.argsort(vals)
    return order[::-1] if hot_first else order


def _axes_labels(ax, result, order) -> None:
    spec = result.spec
    ax.set_xticks(range(len(result.load_values)))
    ax.set_xticklabels([f"{v:g}" if isinstance(v, float) else str(v)
                        for v in result.load_values], fontsize=8)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([str(result.temperature_values[j]) for j in order], fontsize=8)
    ax.set_xlabel(f"load: {spec.load.label}")
    ax.set_ylabel(f"temperature:\n{spec.temperature.label} (hotter ↑)")


def heatmap(result, metric: str, ax=None, path: str | os.PathLike | None = None,
            annotate: bool = True):
    """``metric`` of every cell as a heat map on load x temperature axes."""
    grid = result.grid(metric)
    if grid.dtype == object:
        raise LossAtlasError(f"metric={metric!r} is not numeric; use phase_map for phases.")
    order = _order(result)
    data = np.asarray(grid, dtype=float)[order]
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(1.0 + 0.8 * data.shape[1], 1.0 + 0.6 * data.shape[0]))
    else:
        fig = ax.figure
    finite = data[np.isfinite(data)]
    norm = None
    cmap = "viridis"
    if metric in ("mc", "mc_linear", "mc_aligned", "mc_linear_aligned"):
        lim = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
        norm, cmap = colors.TwoSlopeNorm(0.0, -lim, lim), "RdBu_r"
    elif metric in LOG_METRICS and finite.size and (finite > 0).all():
        norm, cmap = colors.LogNorm(finite.min(), max(finite.max(), finite.min() * 1.0001)), \
            "magma_r"
    elif metric == "cka":
        norm = colors.Normalize(min(0.0, finite.min()) if finite.size else 0.0, 1.0)
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, norm=norm, aspect="auto")
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    if isinstance(norm, colors.LogNorm):  # few round ticks, written plainly (2, 5, 10)
        from matplotlib.ticker import LogLocator, NullFormatter

        from lossatlas.plot.landscape import nice_ticks

        cb.set_ticks(nice_ticks(norm.vmin, norm.vmax, geometric=True, n=4)
                     if norm.vmax / norm.vmin > 3 else
                     nice_ticks(norm.vmin, norm.vmax, n=3))
        cb.ax.yaxis.set_minor_locator(LogLocator(subs=()))
        cb.ax.yaxis.set_minor_formatter(NullFormatter())
        cb.ax.yaxis.set_major_formatter(plt.FormatStrFormatter("%g"))
    if annotate:
        for (r, c), v in np.ndenumerate(data):
            if np.isfinite(v):
                red, green, blue, _ = im.cmap(im.norm(v))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
                ax.text(c, r, f"{v:.3g}", ha="center", va="center", fontsize=6,
                        color="white" if dark else "black")
    _axes_labels(ax, result, order)
    ax.set_title(TITLES.get(metric, metric), fontsize=9)
    return _finish(fig, path) if own else fig


def phase_map(result, ax=None, path: str | os.PathLike | None = None):
    """The phase label of every cell, coloured per phase and written in the cell."""
    grid = result.grid("phase")
    order = _order(result)
    labels = grid[order]
    names = list(PHASE_COLORS)
    extra = sorted({str(v) for v in labels.ravel() if v is not None} - set(names))
    names += extra
    palette = [PHASE_COLORS.get(n, "0.7") for n in names]
    codes = np.full(labels.shape, np.nan)
    for idx, v in np.ndenumerate(labels):
        if v is not None:
            codes[idx] = names.index(str(v))
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(1.0 + 0.8 * labels.shape[1], 1.0 + 0.6 * labels.shape[0]))
    else:
        fig = ax.figure
    cmap = colors.ListedColormap(palette)
    ax.imshow(np.ma.masked_invalid(codes), cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5,
              aspect="auto")
    for (r, c), v in np.ndenumerate(labels):
        ax.text(c, r, "?" if v is None else str(v), ha="center", va="center", fontsize=8,
                weight="bold", color="black")
    _axes_labels(ax, result, order)
    ax.set_title("phase", fontsize=9)
    phase_key(ax)
    return _finish(fig, path) if own else fig


#: The words of Yang et al. Sect. 3.1 for each phase, as the key of a phase map says them.
PHASE_WORDS = {"I": "poorly connected, sharp", "II": "well connected, sharp",
               "III": "poorly connected, flat", "IV-A": "well connected, flat, dissimilar",
               "IV-B": "well connected, flat, similar"}


def phase_key(ax) -> None:
    """A key for the phase colours (I, II, III, IV-A, IV-B with their meaning) beside ``ax``."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=PHASE_COLORS[k], edgecolor="black", lw=0.5,
                     label=f"{k}: {PHASE_WORDS[k]}") for k in PHASE_COLORS]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7,
              frameon=False, title="phase (Yang et al. 2021)", title_fontsize=7)


def phase_diagram(result, path: str | os.PathLike | None = None,
                  metrics: tuple[str, ...] = ("test_acc", "train_loss", "hessian_max",
                                              "hessian_trace", "mc", "cka", "l2"),
                  title: str | None = None):
    """Every metric with data and the phase map, one panel each (the paper's Fig. 2 layout)."""
    shown = [m for m in metrics if np.isfinite(np.asarray(result.grid(m), float)).any()]
    has_phase = any(v is not None for v in result.grid("phase").ravel())
    n = len(shown) + int(has_phase)
    if n == 0:
        raise LossAtlasError("the sweep has no finished cells yet; run it before plotting.")
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    nl, nt = len(result.load_values), len(result.temperature_values)
    w, h = 1.6 + 0.55 * nl, 1.2 + 0.45 * nt
    fig, axes = plt.subplots(rows, cols, figsize=(cols * w, rows * h), squeeze=False)
    flat = list(axes.ravel())
    for ax, m in zip(flat, shown):
        heatmap(result, m, ax=ax, annotate=nl * nt <= 64)
    if has_phase:
        phase_map(result, ax=flat[len(shown)])
    for ax in flat[n:]:
        ax.axis("off")
    for k, ax in enumerate(flat[:n]):  # one y label per row: long labels never collide
        if k % cols:
            ax.set_ylabel("")
    fig.suptitle(title or f"sweep {result.spec.name}", fontsize=11)
    fig.tight_layout()
    return _finish(fig, path)


def mc_curves(result, path: str | os.PathLike | None = None, seeds_pair: int = 0):
    """Train error (%) along each cell's trained Bezier curve (and the straight line, dashed),
    one panel per cell on the same load x temperature layout (their Fig. 12)."""
    curves = result.curves()
    if not curves:
        raise LossAtlasError("the sweep has no mode-connectivity curves; run it with mc = true.")
    order = list(_order(result))
    nl, nt = len(result.load_values), len(result.temperature_values)
    fig, axes = plt.subplots(nt, nl, figsize=(2.2 * nl + 1.2, 1.7 * nt + 1.2), squeeze=False,
                             sharex=True, sharey=True)
    seen: dict[tuple[int, int], int] = {}
    for c in curves:
        k = seen.get((c["i"], c["j"]), 0)
        seen[(c["i"], c["j"])] = k + 1
        if k != seeds_pair:
            continue
        ax = axes[order.index(c["j"]), c["i"]]
        t = np.asarray(c["t"], float)
        ax.plot(t, np.asarray(c["values"], float), "o-", ms=2.5, lw=1.2, color="tab:blue")
        if c.get("linear"):
            ax.plot(t, np.asarray(c["linear"], float), "--", lw=0.8, color="0.5")
        mc = c.get("mc")
        if mc is not None:
            ax.text(0.5, 0.92, f"mc={mc:.1f}", transform=ax.transAxes, ha="center", va="top",
                    fontsize=8)
    for r, j in enumerate(order):
        axes[r, 0].set_ylabel(str(result.temperature_values[j]), fontsize=8)
    for i, v in enumerate(result.load_values):
        axes[-1, i].set_xlabel(str(v), fontsize=8)
    for ax in axes.ravel():
        ax.tick_params(labelsize=7)
    spec = result.spec
    fig.supxlabel(f"load: {spec.load.label}  (x in each panel: t along the curve)", fontsize=9)
    fig.supylabel(f"temperature: {spec.temperature.label}  /  train error (%)", fontsize=9)
    fig.suptitle(f"mode-connectivity curves, sweep {spec.name} (solid: trained Bezier curve, "
                 "dashed: straight line)", fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)
