"""Shared fixtures."""

from pathlib import Path

import matplotlib.figure
import pytest


@pytest.fixture
def saved_figures(monkeypatch):
    """Every matplotlib figure saved during the test, by file name (``{"c.png": Figure}``), so
    a test of a command that writes PNGs can check what was drawn, not only that a file exists."""
    figures: dict[str, matplotlib.figure.Figure] = {}
    savefig = matplotlib.figure.Figure.savefig

    def spy(self, fname, *args, **kwargs):
        figures[Path(fname).name] = self
        return savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return figures
