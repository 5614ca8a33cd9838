"""Training trajectories: PCA planes (Li et al. 2018, App. B; Ding, Li, Huang 2023), the
trajectory projected on them, and the Fitting Error.

>>> import lossatlas as la                                                   # doctest: +SKIP
>>> plane = la.trajectory.pca(run, method="ding2023", center=0)              # doctest: +SKIP
>>> path = la.trajectory.project(obj, plane, run)                            # doctest: +SKIP
>>> path.x, path.y, path.loss, path.projected_loss, path.fitting_error      # doctest: +SKIP
"""

from lossatlas.measurements.trajectory.planes import METHODS, Plane, gram, pca, resolve_slice
from lossatlas.measurements.trajectory.projection import (
    Comparison,
    Trajectory,
    compare,
    coordinates,
    fitting_error,
    plane_objective,
    project,
    random_plane,
    surface,
)
from lossatlas.measurements.trajectory.source import Source, as_source

__all__ = [
    "METHODS", "Comparison", "Plane", "Source", "Trajectory", "as_source", "compare",
    "coordinates", "fitting_error", "gram", "pca", "plane_objective", "project",
    "random_plane", "resolve_slice", "surface",
]
