"""Loss landscapes on grids: 1D curves, 2D surfaces and interpolations (Li et al. 2018), written
as they are computed and resumable (`grids`), evaluated by the engine that fits the model
(`engine`)."""

from lossatlas.measurements.landscape.grids import (
    Curve,
    Interpolation,
    Surface,
    curve,
    interpolate,
    surface,
)

__all__ = ["Curve", "Interpolation", "Surface", "curve", "interpolate", "surface"]
