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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from lossatlas.core.errors import LossAtlasError
from lossatlas.plot.files import save_figure

__all__ = [
    "SURFACE_KINDS", "axis_name", "axis_names", "draw_log_c", "level_colorbar", "nice_ticks",
    "plain_log_ticks", "plot_curve",
    "plot_result", "plot_surface",
]

SURFACE_KINDS = ("contour", "contourf", "heatmap", "surface3d")


def finish(fig, path: str | os.PathLike | None):
    """Save ``fig`` to ``path`` (when given) the way the landscape figures are saved: 150 dpi,
    cropped to its content."""
    return save_figure(fig, path, dpi=150)


_SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def axis_name(info: object, i: int) -> str:
    """The name of axis ``i`` (0 or 1) from its direction's metadata: ``P.E.1`` / ``N.E.1``
    for Hessian eigenvectors, ``PC1 (84.4 %)`` for a trajectory's principal axes, ``d₁
    (random, filter-norm.)`` for Gaussian directions, ``d₁`` when nothing is known."""
    d = f"d{i + 1}".translate(_SUB)
    if not isinstance(info, dict):
        return d
    name, kind = info.get("name") or info.get("label"), str(info.get("kind", ""))
    if name and str(name)[:4] in ("P.E.", "N.E."):
        lam = info.get("eigenvalue")
        return f"{name} (λ = {lam:.3g})" if isinstance(lam, (int, float)) else str(name)
    if kind.startswith("pca"):
        evr = info.get("explained_variance_ratio")
        pc = f"PC{info.get('component', i + 1)}"
        return f"{pc} ({100 * evr:.1f} %)" if isinstance(evr, (int, float)) else pc
    if kind == "gaussian":
        norm = info.get("norm")
        return f"{d} (random, {norm}-norm.)" if norm and norm != "none" else f"{d} (random)"
    if name:
        return str(name)
    return f"{d} ({kind})" if kind else d


def axis_names(result) -> tuple[str, str]:
    """``(x name, y name)`` of a surface from its ``directions_info``."""
    info = list((result.meta or {}).get("directions_info") or [])
    info += [None] * (2 - len(info))
    return axis_name(info[0], 0), axis_name(info[1], 1)


def nice_ticks(lo: float, hi: float, geometric: bool = False, n: int = 6) -> np.ndarray:
    """Round tick values inside [lo, hi]: 1-2-5 × 10^k for a geometric scale, else the
    round steps of ``MaxNLocator`` (so a colour bar reads 0.01, 0.02, 0.05 … not 0.0103)."""
    from matplotlib.ticker import MaxNLocator

    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return np.array([lo])
    if geometric and lo > 0:
        ticks = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)),
                                               math.ceil(math.log10(hi)) + 1)
                 for m in (1, 2, 5)]
        ticks = np.array([t for t in ticks if lo <= t <= hi])
        if len(ticks) > n + 2:  # a wide range: decades only
            ticks = np.array([t for t in ticks if math.isclose(math.log10(t) % 1, 0,
                                                               abs_tol=1e-9)])
        if len(ticks) >= 2:
            return ticks
    ticks = MaxNLocator(nbins=n, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
    return ticks[(ticks >= lo - 1e-12 * abs(hi)) & (ticks <= hi + 1e-12 * abs(hi))]


def level_colorbar(fig, ax, cs, label: str, **kw):
    """A colour bar for contour levels ``cs`` with round ticks over the whole range (1-2-5
    ticks when the levels are geometric) and plain ``%g`` labels."""
    lv = np.asarray(cs.levels, dtype=float)
    d = np.diff(lv)
    geometric = lv.size > 2 and lv[0] > 0 and not np.allclose(d, d[0], rtol=1e-6)
    cb = fig.colorbar(cs, ax=ax, label=label,
                      ticks=nice_ticks(float(lv.min()), float(lv.max()), geometric), **kw)
    cb.ax.yaxis.set_major_formatter(plt.FormatStrFormatter("%g"))
    return cb


def plain_log_ticks(ax, values) -> None:
    """On a log y axis spanning less than ~1.5 decades, 1-2-5 ticks written plainly (1.2, 2)
    instead of 1.2×10⁰."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size and v.max() / v.min() < 30:
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())


def _num_classes(result) -> int | None:
    c = (result.meta or {}).get("num_classes")
    return int(c) if isinstance(c, (int, float)) and c and c > 1 else None


def plot_curve(result, path: str | os.PathLike | None = None, *, log: bool = False,
               accuracy: bool = True, random_guess: bool = True, title: str | None = None):
    """Loss (and accuracy on a twin axis) against the coefficient of a 1D curve.

    The center (x = 0) is marked; for an interpolation both end points (t = 0 and t = 1) are.

    Args:
        result: a curve or interpolation result (``x``, ``loss``, ``accuracy``, ``kind``).
        path: where to write the figure (PNG, PDF, ... by suffix); None: not written.
        log: a log-scale loss axis.
        accuracy: draw the accuracy (%) on a twin axis when the result has it.
        random_guess: draw the loss of a uniform guess, log C for C classes.
        title: the title; None: one from the result's settings.

    Returns:
        The matplotlib Figure.
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
        draw_log_c(ax, math.log(c), loss, label=f"random guess log {c}")
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
        lo = np.nanmin(100 * acc)
        bottom = max(0.0, lo - 0.1 * (100 - lo) - 2)
        ax2.set_ylim(bottom, 103)  # 100 % stays inside the frame
        ax2.set_yticks(nice_ticks(bottom, 100.0, n=5))
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="best", fontsize=8, framealpha=0.8)
    ax.set_title(title or _title(result), fontsize=10)
    fig.tight_layout()
    return finish(fig, path)


def draw_log_c(ax, log_c: float, values, label: str = "log C", color: str = "gray") -> None:
    """The random-guess loss ``log C`` as a dashed line, without letting it squash the curves:
    when it lies far above them (over twice their highest value) the axis keeps the curves'
    range and a labelled arrow at the top points up to it instead."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    top = float(v.max()) if v.size else log_c
    bottom = float(v.min()) if v.size else 0.0
    if ax.get_yscale() == "log" or log_c <= 2 * top or top <= 0:
        ax.axhline(log_c, color=color, ls="--", lw=1, label=label)
        lo, hi = ax.get_ylim()
        if ax.get_yscale() != "log" and log_c >= hi - 0.03 * (hi - lo):  # not on the frame
            ax.set_ylim(lo, log_c + 0.06 * (log_c - lo))
        return
    ax.set_ylim(min(0.0, bottom), top + 0.12 * (top - min(0.0, bottom)))
    ax.annotate(f"{label} = {log_c:.2f} ↑", xy=(0.99, 0.99), xycoords="axes fraction",
                ha="right", va="top", fontsize=7, color=color)
    ax.plot([], [], color=color, ls="--", lw=1, label=f"{label} (above)")


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


def contour_levels(z: np.ndarray, n: int = 30) -> np.ndarray:
    """``n`` contour levels over the finite values of ``z`` (shape ``(ny, nx)``)."""
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

    ``loss[i, j]`` is at ``(x[i], y[j])``: x runs along the horizontal axis. Points not
    computed yet are blank.

    Args:
        result: a surface result (``x``, ``y``, ``loss``, ``accuracy``, ``done``).
        kind: one of :data:`SURFACE_KINDS`: ``"contour"``, ``"contourf"``, ``"heatmap"``,
            ``"surface3d"``.
        path: where to write the figure (by suffix); None: not written.
        log: plot log10 of the values.
        vmax: clip the values from above (Li et al. clip at 10 for 3D plots).
        levels: contour levels.
        metric: ``"loss"`` or ``"accuracy"``.
        title: the title; None: one from the result's settings.

    Returns:
        The matplotlib Figure (the plot and its colorbar).

    Raises:
        LossAtlasError: an unknown ``kind`` or ``metric``.
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
    finite = z[np.isfinite(z)]
    zlo, zhi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    lv = contour_levels(z, levels) if finite.size else None
    xname, yname = axis_names(result)
    if kind == "surface3d":
        from matplotlib.ticker import MaxNLocator

        fig = plt.figure(figsize=(6.5, 5))
        ax = fig.add_subplot(projection="3d")
        surf = ax.plot_surface(X, Y, np.ma.masked_invalid(z), cmap="viridis", linewidth=0,
                               antialiased=True, rcount=len(result.x), ccount=len(result.y),
                               vmin=zlo, vmax=zhi)
        fig.colorbar(surf, ax=ax, shrink=0.6, label=label, ticks=nice_ticks(zlo, zhi))
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):  # few ticks: no colliding labels
            axis.set_major_locator(MaxNLocator(nbins=4))
        ax.tick_params(labelsize=7, pad=1)
        ax.set_xlabel(xname, fontsize=8, labelpad=4)
        ax.set_ylabel(yname, fontsize=8, labelpad=4)
        ax.set_zlabel(label, fontsize=8, labelpad=2)
        ax.set_box_aspect(None, zoom=0.88)  # room for the z label
    else:
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        if kind == "contour":
            cs = ax.contour(X, Y, z, levels=lv, cmap="viridis", linewidths=1)
            ax.clabel(cs, cs.levels[::5], inline=True, fontsize=7, fmt="%.3g")
            level_colorbar(fig, ax, cs, label)
        elif kind == "contourf":
            cs = ax.contourf(X, Y, z, levels=lv, cmap="viridis")
            level_colorbar(fig, ax, cs, label)
        else:
            im = ax.pcolormesh(X, Y, z, cmap="viridis", shading="nearest", vmin=zlo, vmax=zhi)
            cb = fig.colorbar(im, ax=ax, label=label, ticks=nice_ticks(zlo, zhi))
            cb.ax.yaxis.set_major_formatter(plt.FormatStrFormatter("%g"))
        ax.set_aspect("equal" if _square(result) else "auto")
        if result.x.min() <= 0 <= result.x.max() and result.y.min() <= 0 <= result.y.max():
            ax.plot([0], [0], marker="*", color="red", ms=10, ls="", label="center θ")
            ax.legend(loc="upper right", fontsize=8)
        from matplotlib.ticker import MaxNLocator

        for axis in (ax.xaxis, ax.yaxis):  # at most 6 ticks: labels never collide
            axis.set_major_locator(MaxNLocator(nbins=5))
        ax.set_xlabel(xname)
        ax.set_ylabel(yname)
    ax.set_title(title or _title(result), fontsize=10)
    fig.tight_layout()
    return finish(fig, path)


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
