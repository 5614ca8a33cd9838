"""Training curves of a recorded run: loss and accuracy per checkpoint, train and test."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

__all__ = ["training_curves"]


def training_curves(run, path: str | os.PathLike | None = None, title: str | None = None) -> Figure:
    """Two panels against epoch: loss (log scale when positive) and accuracy, train and test.

    ``run`` is a :class:`lossatlas.batteries.runs.Run`; the values are its full-dataset eval-mode
    means per checkpoint. ``path`` (``.png``, ``.pdf``, ...) saves the figure there.
    Uses ``matplotlib.figure.Figure`` directly, so no pyplot state or GUI backend is touched.
    """
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    x = run.epochs
    marker = "o" if len(x) <= 40 else None
    for split, color in (("train", "C0"), ("test", "C1")):
        loss, acc = getattr(run, f"{split}_loss"), getattr(run, f"{split}_acc")
        if np.isfinite(loss).any():
            ax_loss.plot(x, loss, color=color, marker=marker, ms=3, label=split)
        if np.isfinite(acc).any():
            ax_acc.plot(x, 100 * acc, color=color, marker=marker, ms=3, label=split)
    losses = np.concatenate([run.train_loss, run.test_loss])
    losses = losses[np.isfinite(losses)]
    if losses.size and (losses > 0).all():
        ax_loss.set_yscale("log")
        from lossatlas.plot.landscape import plain_log_ticks

        plain_log_ticks(ax_loss, losses)
    accs = np.concatenate([run.train_acc, run.test_acc])
    accs = accs[np.isfinite(accs)]
    if accs.size:  # 100 % stays inside the frame
        ax_acc.set_ylim(max(0.0, 100 * accs.min() - 5), min(103.0, 100 * accs.max() + 5))
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    if run.stopped_reason:
        fig.text(0.5, 0.01, f"stopped: {run.stopped_reason}", ha="center", fontsize=7, color="C3")
    model = run.info.get("model", {}).get("class", "model").rsplit(".", 1)[-1]
    data = run.info.get("data", {}).get("train", {}).get("name", "")
    fig.suptitle(title or f"training: {model}" + (f" on {data}" if data else ""))
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
