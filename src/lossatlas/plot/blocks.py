"""Block-wise Hessian spectra (Zhang et al. 2024): each block's SLQ density, coloured by block
type, and the Jensen–Shannon distances between blocks as a heat map."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

__all__ = ["block_densities"]


def block_densities(res, path: str | os.PathLike | None = None,
                    title: str | None = None) -> Figure:
    """Left: the density of every block on the common grid (log scale, floor 1e-6 of the
    peak), one colour per block type; right: the JS distance matrix (0 = same spectrum,
    1 = disjoint; colours scaled to the largest). ``res``: a
    :class:`lossatlas.measurements.hessian.BlockSpectra`."""
    n = len(res.names)
    fig = Figure(figsize=(11.5, max(4.4, 2.2 + 0.2 * n)), layout="constrained")
    ax, ax_js = fig.subplots(1, 2, width_ratios=[1.25, 1])
    kinds = list(dict.fromkeys(res.types))
    colors = {k: f"C{i}" for i, k in enumerate(kinds)}
    floor = 1e-6 * float(res.density.max())
    seen = set()
    for kind, dens in zip(res.types, res.density):
        label = kind if kind not in seen else None
        seen.add(kind)
        ax.plot(res.grid, np.maximum(dens, floor), color=colors[kind], lw=1.0, alpha=0.8,
                label=label)
    ax.set_yscale("log")
    ax.set(xlabel="eigenvalue of the Hessian block", ylabel="density (log)",
           title=f"SLQ density of each of {len(res.names)} blocks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="block type", title_fontsize=7)
    im = ax_js.imshow(res.js, vmin=0, vmax=max(float(res.js.max()), 1e-12), cmap="viridis")
    ticks = range(n) if n <= 30 else range(0, n, max(1, n // 30))
    labels = [f"{res.names[i]} ({res.types[i]})" for i in ticks]
    ax_js.set_xticks(list(ticks), labels, rotation=90, fontsize=6)
    ax_js.set_yticks(list(ticks), labels, fontsize=6)
    ax_js.set_title("distance between block spectra", fontsize=10)
    fig.colorbar(im, ax=ax_js, shrink=0.8, label="Jensen–Shannon distance (base 2; 1 = disjoint)")
    fig.suptitle(title or "block-wise Hessian spectra")
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
