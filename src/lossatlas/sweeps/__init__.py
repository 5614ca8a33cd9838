"""Sweeps: grids of runs over load × temperature (Yang et al. 2021): the spec and its cells
(`spec`), what each job trains and measures (`jobs`), the driver that runs them locally, on
worker processes or on Ray (`driver`, `executors`), and the sweep folder with the aggregated
per-cell table (`results`)."""

from lossatlas.sweeps.driver import run
from lossatlas.sweeps.results import (
    CELLS,
    METRICS,
    MODELS,
    RESULTS,
    SPEC,
    SweepResult,
    describe_failure,
    load_results,
)
from lossatlas.sweeps.spec import ALIASES, MEASURE_DEFAULTS, Cell, SweepSpec, cells, load_spec

__all__ = ["ALIASES", "CELLS", "MEASURE_DEFAULTS", "METRICS", "MODELS", "RESULTS", "SPEC", "Cell",
           "SweepResult", "SweepSpec", "cells", "describe_failure", "load_results", "load_spec",
           "run"]
