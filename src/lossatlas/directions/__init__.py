"""Directions in parameter space: Gaussian with filter / layer / model normalization (Li et al.
2018), between two points, saved with provenance. Other direction kinds add a module here and a
line below."""

from lossatlas.directions.checkpoints import between
from lossatlas.directions.files import load, save
from lossatlas.directions.normalized_gaussian import NORMS, gaussian, normalize

__all__ = ["NORMS", "between", "gaussian", "load", "normalize", "save"]

from lossatlas.directions.checkpoints import independent, load_point, toward
from lossatlas.directions.combine import pair
from lossatlas.directions.descent import gradient, rescale
from lossatlas.directions.eigen import eigenvector, eigenvectors
from lossatlas.directions.spec import parse_direction, parse_directions, parse_spec

__all__ += [
    "eigenvector", "eigenvectors", "gradient", "independent", "load_point", "pair",
    "parse_direction", "parse_directions", "parse_spec", "rescale", "toward",
]
