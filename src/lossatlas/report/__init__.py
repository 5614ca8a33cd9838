"""The atlas: one page per run (``lossatlas atlas RUN``, ``la.atlas(run, out)``).

- :mod:`~lossatlas.report.registry`: the sections (``@section``), in page order;
- :mod:`~lossatlas.report.sections`: the built-in ones, one module per measurement family;
- :mod:`~lossatlas.report.runspec`: a run's model, data and recipe read from its manifest;
- :mod:`~lossatlas.report.context`: what a section gets (the run, its model, run B, ...);
- :mod:`~lossatlas.report.cache`: unchanged sections read back instead of recomputed;
- :mod:`~lossatlas.report.page`: ``index.html``;
- :mod:`~lossatlas.report.build`: the driver (``atlas``).
"""

from lossatlas.report.build import SUMMARY_KEYS, AtlasResult, atlas
from lossatlas.report.registry import SECTIONS, Figure, Output, section

__all__ = ["SECTIONS", "SUMMARY_KEYS", "AtlasResult", "Figure", "Output", "atlas", "section"]
