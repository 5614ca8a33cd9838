"""Writing a matplotlib figure to a file: the one place that creates the folder and saves.

>>> import matplotlib; matplotlib.use("Agg")
>>> import matplotlib.pyplot as plt, tempfile, os
>>> fig = plt.figure()
>>> path = os.path.join(tempfile.mkdtemp(), "sub", "f.png")
>>> save_figure(fig, path, dpi=50) is fig and os.path.exists(path)
True
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt

__all__ = ["save_figure"]


def save_figure(fig, path: str | os.PathLike | None, *, dpi: int = 150,
                layout_rect: tuple[float, float, float, float] | None = None,
                bbox_tight: bool = True, close: bool = False):
    """Lay out ``fig`` (``tight_layout(rect=layout_rect)`` when given), and when ``path`` is
    given write it there (parent folders created) at ``dpi``, cropped to its content when
    ``bbox_tight``, then close it when ``close``. Returns ``fig``."""
    if layout_rect is not None:
        fig.tight_layout(rect=layout_rect)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight" if bbox_tight else None)
        if close:
            plt.close(fig)
    return fig
