"""Figures: matplotlib (PNG/PDF), plotly HTML and ParaView ``.vtp`` exports of results."""

from lossatlas.plot import training as training
