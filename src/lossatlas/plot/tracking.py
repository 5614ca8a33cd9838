"""Sharpness through training (the table of :class:`la.track.Sharpness`): λ_max against
step with the stability threshold, the training loss on a second axis; the Adam-preconditioned
sharpness with its threshold in a panel of its own when it was measured (Cohen et al. 2021,
Fig. 1; Cohen et al. 2022)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

__all__ = ["sharpness_curves"]


def _table(x) -> Mapping[str, np.ndarray]:
    return x.track("sharpness") if hasattr(x, "track") else x


def _threshold(t: Mapping[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """The optimizer's threshold and its name; all-NaN for Adam (no threshold on λ_max(H))."""
    thr = t.get("threshold")
    two = t.get("two_over_lr", np.full(len(t["step"]), np.nan))
    if thr is None:
        return two, "2/η"
    same = np.allclose(thr, two, equal_nan=True)
    return thr, "2/η" if same else "(2+2β)/η"


def _line(ax, step, values, top, color, label) -> float:
    """Draw a threshold line when it is within 3x of the curve's top; else name it in the
    legend as off scale. Returns the height the axis must show."""
    v = np.asarray(values, dtype=float)
    if not np.isfinite(v).any():
        return 0.0
    if np.nanmin(v) <= 3 * top:
        ax.plot(step, v, color=color, ls="--", lw=1.0, label=label)
        return float(np.nanmax(v))
    ax.plot([], [], color=color, ls="--", lw=1.0,
            label=f"{label} = {np.nanmin(v):.3g} (off scale)")
    return 0.0


def sharpness_curves(tracks, path: str | os.PathLike | None = None, title: str | None = None,
                     loss: bool = True) -> Figure:
    """Draw one run's sharpness table (a :class:`~lossatlas.batteries.runs.Run` or the columns of
    ``run.track("sharpness")``) or several (``{label: run or columns}``, one colour each).

    Solid: λ_max; dashed, same colour: the optimizer's stability threshold (2/η for GD,
    (2+2β)/η with momentum β; none for Adam; named in the legend when over 3x the curve);
    dotted, right axis (log scale): the full-data training loss of the measured weights. A
    second panel shows λ_max(P⁻¹H) and (2+2β₁)/((1−β₁)η) when any table has them. ``path``
    saves the figure (PNG, PDF, ...).
    """
    runs = dict(tracks) if isinstance(tracks, Mapping) and "step" not in tracks else {"": tracks}
    tables = {k: _table(v) for k, v in runs.items()}
    pre = any(np.isfinite(t.get("precond_lambda_max", [np.nan])).any() for t in tables.values())
    tall = 4.0 if len(tables) < 3 else 5.0
    fig = Figure(figsize=(10.5 if pre else 7.2, tall), layout="constrained")
    axes = fig.subplots(1, 2 if pre else 1, squeeze=False)[0]
    ax, ax_loss = axes[0], (axes[0].twinx() if loss else None)
    tops = [0.0, 0.0]
    for i, (label, t) in enumerate(tables.items()):
        color, step = f"C{i}", t["step"]
        name = f"{label}: " if label else ""
        lam = t["lambda_max"]
        ax.plot(step, lam, color=color, lw=1.6, label=f"{name}λ_max(H)")
        top = float(np.nanmax(lam))
        thr, what = _threshold(t)
        tops[0] = max(tops[0], 1.1 * top, 1.05 * _line(ax, step, thr, top, color, f"{name}{what}"))
        if ax_loss is not None and "train_loss" in t:
            ax_loss.plot(step, t["train_loss"], color=color, ls=":", lw=1.2, alpha=0.8)
        if pre and "precond_lambda_max" in t:
            p = t["precond_lambda_max"]
            axes[1].plot(step, p, color=color, lw=1.6, label=f"{name}λ_max(P⁻¹H)")
            ptop = float(np.nanmax(p)) if np.isfinite(p).any() else 0.0
            drawn = _line(axes[1], step, t["precond_threshold"], ptop, color,
                          f"{name}(2+2β₁)/((1−β₁)η)")
            tops[1] = max(tops[1], 1.1 * ptop, 1.05 * drawn)
    ax.set(xlabel="optimizer step", ylabel="λ_max of the training-loss Hessian",
           title="sharpness" + (" (dotted: training loss, right axis)" if ax_loss else ""))
    ax.set_ylim(0, tops[0] or None)
    if ax_loss is not None:
        losses = np.concatenate([t.get("train_loss", np.array([])) for t in tables.values()])
        if losses.size and (losses[np.isfinite(losses)] > 0).all():
            ax_loss.set_yscale("log")
        ax_loss.set_ylabel("training loss (dotted)")
    if pre:
        axes[1].set(xlabel="optimizer step", ylabel="λ_max(P⁻¹H)",
                    title="Adam-preconditioned sharpness")
        axes[1].set_ylim(0, tops[1] or None)
        axes[1].legend(fontsize=7)
        axes[1].grid(alpha=0.3)
    ax.grid(alpha=0.3)
    # below the axes, so that no curve is hidden (λ_max often peaks early, at the top left)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16),
              ncol=min(2 * len(tables), 4))
    fig.suptitle(title or "sharpness during training")
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
