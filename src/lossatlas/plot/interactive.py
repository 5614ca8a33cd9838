"""An interactive 3D surface as one self-contained HTML file (plotly; plotly.js is inlined, so
the file opens without a network)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lossatlas.core.errors import LossAtlasError

__all__ = ["figure", "to_html"]


def to_html(result, path: str | os.PathLike, *, log: bool = False, metric: str = "loss",
            title: str | None = None) -> Path:
    """Write ``result`` (a surface, or a curve as a line) as a self-contained HTML page.

    The surface's z is ``loss[i, j]`` at ``(x[i], y[j])`` (plotly wants z[row=y, col=x], so
    the array is transposed); points not computed yet are gaps. Returns the path.
    """
    fig = figure(result, log=log, metric=metric, title=title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def figure(result, *, log: bool = False, metric: str = "loss", title: str | None = None):
    """The plotly figure of :func:`to_html` (for pages that hold several plots and inline
    plotly.js once). Axes are named from the directions (``P.E.1``, ``PC1 (84.4 %)``, ...)."""
    import plotly.graph_objects as go

    from lossatlas.plot.landscape import axis_names

    if metric not in ("loss", "accuracy"):
        raise LossAtlasError(f'metric={metric!r} must be "loss" or "accuracy"')
    z = np.array(getattr(result, metric), dtype=float)
    if getattr(result, "done", None) is not None:
        z[~np.asarray(result.done, dtype=bool)] = np.nan
    if log:
        z = np.log10(np.clip(z, 1e-12, None))
    label = f"log10 {metric}" if log else metric
    kind = getattr(result, "kind", None)
    if kind == "surface":
        xname, yname = axis_names(result)
        trace = go.Surface(x=np.asarray(result.x), y=np.asarray(result.y), z=z.T,
                           colorscale="Viridis", colorbar={"title": label})
        small = {"title_font": {"size": 11}, "tickfont": {"size": 10}, "nticks": 5}
        layout = {"scene": {"xaxis": {"title": {"text": xname}, **small},
                            "yaxis": {"title": {"text": yname}, **small},
                            "zaxis": {"title": {"text": label}, **small},
                            "camera": {"eye": {"x": 1.6, "y": 1.6, "z": 1.1}}}}
    elif kind in ("curve", "interpolation"):
        trace = go.Scatter(x=np.asarray(result.x), y=z, mode="lines+markers", name=label)
        layout = {"xaxis_title": "t" if kind == "interpolation" else "a", "yaxis_title": label}
    else:
        raise LossAtlasError(f"cannot draw a result of kind {kind!r}; pass a curve or surface")
    fig = go.Figure(trace)
    fig.update_layout(title=title or f"lossatlas {kind}", **layout)
    return fig
