"""Hessian figures: SLQ density (log scale, λ_min marked), extreme eigenvalues, the δL
histograms of Li, Li, Zhan 2024 Fig. 13 and the local quadratic pieces of their Fig. 14.

All functions build a ``matplotlib.figure.Figure`` directly (no pyplot state) and save it when
``path`` is given.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["plot_delta", "plot_density", "plot_eigenvalues", "plot_quadratics",
           "summary_figures"]


def _save(fig: Figure, path) -> Figure:
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_density(dens, path: str | os.PathLike | None = None, spec=None,
                 title: str | None = None) -> Figure:
    """The eigenvalue density on a log y-axis (floored at 1e-8 of its peak) with λ_min marked:
    the smallest eigenvalue of ``spec`` (a Spectrum, whose values are also drawn as ticks on the
    axis) when given, else the smallest Ritz value."""
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    floor = dens.density.max() * 1e-8
    ax.semilogy(dens.grid, np.maximum(dens.density, floor), color="C0", lw=1.2)
    if spec is not None and len(spec.values):
        lmin, how = float(np.min(spec.values)), "eigs"
    else:
        lmin, how = dens.lambda_min, "smallest Ritz value"
    ax.axvline(lmin, color="C3", ls="--", lw=1, label=f"λ_min ({how}) = {lmin:.3g}")
    ax.axvline(0, color="0.6", lw=0.6)
    if spec is not None:
        ax.plot(spec.values, np.full(len(spec.values), floor * 3), "|", color="C2", ms=14,
                mew=2, label="eigs (ARPACK/Lanczos)")
    ax.set(xlabel="eigenvalue λ", ylabel="density", ylim=(floor, None),
           title=title or f"Hessian eigenvalue density (SLQ, σ = {dens.sigma:.2g})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_eigenvalues(spec, path: str | os.PathLike | None = None,
                     title: str | None = None) -> Figure:
    """Top and bottom eigenvalues by rank (P.E.i / N.E.i), with their residuals as error bars."""
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    names = [v.meta.get("name", "") for v in spec.vectors]
    groups = (("P.E.", axes[0], "C0", "largest"), ("N.E.", axes[1], "C3", "smallest"))
    for prefix, ax, color, label in groups:
        idx = [i for i, n in enumerate(names) if n.startswith(prefix)]
        if not idx:
            ax.set_axis_off()
            continue
        idx.sort(key=lambda i: int(names[i][len(prefix):]))
        ax.errorbar(range(1, len(idx) + 1), spec.values[idx], yerr=spec.residuals[idx],
                    fmt="o", color=color, capsize=3)
        ax.set_xticks(range(1, len(idx) + 1), [names[i] for i in idx], fontsize=7)
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set(title=f"{label} eigenvalues", ylabel="λ")
        ax.grid(alpha=0.3)
    fig.suptitle(title or f"Hessian eigenvalues ({spec.matvecs} products)", fontsize=10)
    return _save(fig, path)


def plot_delta(dist, path: str | os.PathLike | None = None, bins: int = 30) -> Figure:
    """One panel per λ: histograms of the predicted δL = λb + ½λ²a and of the true loss
    change over the Gaussian ε (Li, Li, Zhan 2024, Fig. 13 second row)."""
    L = len(dist.lambdas)
    fig = Figure(figsize=(3.4 * L, 3.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, L))
    for ax, lam, pred, true in zip(axes, dist.lambdas, dist.predicted, dist.true):
        data = [pred] + ([true] if np.isfinite(true).all() else [])
        edges = np.histogram_bin_edges(np.concatenate(data), bins=bins)
        ax.hist(pred, bins=edges, alpha=0.6, color="C0", label="λb + ½λ²a")
        if len(data) > 1:
            ax.hist(true, bins=edges, histtype="step", color="C3", lw=1.5, label="true δL")
        ax.axvline(0, color="0.4", lw=0.8)
        ax.set(title=f"λ = {lam:g}", xlabel="δL", ylabel="count")
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
        ax.legend(fontsize=7)
    fig.suptitle(f"loss change along {dist.a.size} Gaussian ε (σ = {dist.sigma:g})", fontsize=10)
    return _save(fig, path)


def plot_quadratics(paths, path: str | os.PathLike | None = None) -> Figure:
    """One panel per :class:`QuadraticPath` (GMI, MLI): the true loss along θ + λε and the local
    second-order pieces at each anchor (Li, Li, Zhan 2024, Fig. 14)."""
    paths = [paths] if not isinstance(paths, (list, tuple)) else list(paths)
    fig = Figure(figsize=(4.2 * len(paths), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(paths)))
    for ax, qp in zip(axes, paths):
        ax.plot(qp.x, qp.curve, color="0.7", lw=5, alpha=0.6, label="L(θ + λε)")
        for k in range(len(qp.lambdas)):
            x, q = qp.piece(k)
            ax.plot(x, q, color="C3" if k % 2 else "C0", lw=1.5,
                    label="second-order pieces" if k == 0 else None)
        ax.plot(qp.lambdas, qp.loss, "o", color="C3", ms=3)
        ax.set(title=qp.kind, xlabel="λ", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def summary_figures(summary, base: str | os.PathLike) -> list[Path]:
    """The figures of a ``HessianSummary`` next to ``base``: ``BASE-eigenvalues.png`` (when it
    holds eigenvalues) and ``BASE-density.png`` (when it holds a density, λ_min and λ_max
    marked); returns their paths (``lossatlas hessian``, ``lossatlas plot`` and the atlas)."""
    base = Path(base)
    written = []
    spec = summary.spectrum()
    if len(summary.values):
        written.append(base.with_name(f"{base.stem}-eigenvalues.png"))
        plot_eigenvalues(spec, written[-1])
    dens = summary.as_density()
    if dens is not None:
        written.append(base.with_name(f"{base.stem}-density.png"))
        plot_density(dens, written[-1], spec=spec if len(summary.values) else None)
    return written
