"""Sweeps: grids of runs over load × temperature (Yang et al. 2021), their jobs, the driver that
runs them locally, on worker processes or on Ray (`executors`), and the aggregated results."""

from lossatlas.sweeps.sweep import (
    ALIASES,
    MEASURE_DEFAULTS,
    METRICS,
    Cell,
    SweepResult,
    SweepSpec,
    cells,
    load_results,
    load_spec,
    run,
)

__all__ = ["ALIASES", "MEASURE_DEFAULTS", "METRICS", "Cell", "SweepResult", "SweepSpec", "cells",
           "load_results", "load_spec", "run"]
