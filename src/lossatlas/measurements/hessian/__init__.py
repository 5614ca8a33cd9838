"""The Hessian of the loss: extreme eigenpairs, trace, density, and the second-order view.

Every function takes an :class:`~lossatlas.Objective` and optionally ``params=`` (names or glob
patterns: the block of the Hessian over those parameters, the others held fixed) and
``point=`` (default: the objective's center). Products are of the exact full-data mean loss
(see :mod:`lossatlas.measurements.hessian.operator`).

>>> import torch, lossatlas as la
>>> X, y = torch.randn(50, 3), torch.randint(0, 2, (50,))
>>> obj = la.Objective(torch.nn.Linear(3, 2), (X, y))
>>> spec = la.hessian.eigs(obj, k=1, which="LA")
>>> bool(spec.residuals[0] < 1e-3 * abs(spec.values[0]))
True
"""

from lossatlas.measurements.hessian.blocks import (
    BLOCK_TYPES,
    Block,
    BlockSpectra,
    block_spectra,
    blocks_of,
)
from lossatlas.measurements.hessian.eigenpairs import Spectrum, eigs
from lossatlas.measurements.hessian.hutchinson import TraceEstimate, trace, trace_estimate, trace_of
from lossatlas.measurements.hessian.operator import HessianOperator, hvp, resolve_params
from lossatlas.measurements.hessian.power_iteration import power
from lossatlas.measurements.hessian.second_order import (
    DeltaDistribution,
    QuadraticPath,
    delta_distribution,
    gmi,
    local_quadratics,
    mli,
    quadratic_coefficients,
)
from lossatlas.measurements.hessian.slq import Density, broaden, density
from lossatlas.measurements.hessian.summary import HessianSummary, summarize

__all__ = [
    "BLOCK_TYPES",
    "Block",
    "BlockSpectra",
    "DeltaDistribution",
    "Density",
    "HessianOperator",
    "HessianSummary",
    "QuadraticPath",
    "Spectrum",
    "TraceEstimate",
    "block_spectra",
    "blocks_of",
    "broaden",
    "delta_distribution",
    "density",
    "eigs",
    "gmi",
    "hvp",
    "local_quadratics",
    "mli",
    "power",
    "quadratic_coefficients",
    "resolve_params",
    "summarize",
    "trace",
    "trace_estimate",
    "trace_of",
]
