"""One result holding what ``lossatlas hessian`` computes: extreme eigenpairs, trace, density."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lossatlas.measurements.hessian.eigenpairs import Spectrum, eigs
from lossatlas.measurements.hessian.hutchinson import trace_estimate
from lossatlas.measurements.hessian.operator import HessianOperator
from lossatlas.measurements.hessian.slq import Density, density
from lossatlas.store.results import result

__all__ = ["HessianSummary", "summarize"]


@result("hessian_summary")
@dataclass
class HessianSummary:
    """``values`` ascending with ``names`` (P.E.i / N.E.i), ``residuals`` and ``vectors``;
    ``trace`` ± ``trace_error`` (nan when not asked); SLQ ``grid`` / ``density`` (empty when not
    asked) and its Ritz nodes; ``matvecs`` in all."""

    values: np.ndarray
    residuals: np.ndarray
    names: list = field(default_factory=list)
    vectors: list = field(default_factory=list)
    trace: float = float("nan")
    trace_error: float = float("nan")
    grid: np.ndarray = field(default_factory=lambda: np.zeros(0))
    density: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ritz_values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    ritz_weights: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    sigma: float = 0.0
    matvecs: int = 0
    params: list = field(default_factory=list)
    objective: dict = field(default_factory=dict)

    def spectrum(self) -> Spectrum:
        return Spectrum(self.values, self.vectors, self.residuals, self.matvecs, "both")

    def as_density(self) -> Density | None:
        if not self.grid.size:
            return None
        return Density(self.grid, self.density, self.ritz_values, self.ritz_weights, self.sigma)


def summarize(obj, top: int = 5, bottom: int = 5, trace: bool = True, dens: bool = True, *,
              params: str | Sequence[str] | None = None, tol: float = 1e-3,
              products: int = 100, steps: int = 100, seed: int = 0) -> HessianSummary:
    """Top/bottom eigenpairs, trace and density of the Hessian (block), sharing one operator.

    Args:
        obj: the :class:`~lossatlas.core.objective.Objective`.
        top: largest eigenpairs (P.E.i); 0 skips them.
        bottom: smallest eigenpairs (N.E.i); 0 skips them.
        trace: estimate tr H (:func:`trace_estimate`, ``products`` products).
        dens: the SLQ density (:func:`density`, one run of ``steps`` steps).
        params: the block: parameter names or glob patterns; None: all of ``obj.names``.
        tol: the eigenpairs' relative residual (see :func:`eigs`).
        products: the trace's budget of products.
        steps: the density's Lanczos steps.
        seed: seeds every start vector.

    Returns:
        A :class:`HessianSummary`: ``values`` ascending with ``names``, ``residuals`` and
        ``vectors``; ``trace`` ± ``trace_error`` (nan when not asked); ``grid`` / ``density``
        (empty when not asked); ``matvecs`` in all.
    """
    op = HessianOperator(obj, None, params)
    parts = [eigs(obj, k, w, tol, seed=seed, operator=op) for k, w in ((bottom, "SA"),
                                                                        (top, "LA")) if k > 0]
    values = np.concatenate([p.values for p in parts]) if parts else np.zeros(0)
    out = HessianSummary(
        values, np.concatenate([p.residuals for p in parts]) if parts else np.zeros(0),
        [v.meta["name"] for p in parts for v in p.vectors], [v for p in parts for v in p.vectors],
        params=list(op.names), objective=parts[0].objective if parts else {},
    )
    if trace:
        t = trace_estimate(obj, products, seed=seed, operator=op)
        out.trace, out.trace_error = t.value, t.error
    if dens:
        d = density(obj, steps, seed=seed, operator=op)
        out.grid, out.density, out.sigma = d.grid, d.density, d.sigma
        out.ritz_values, out.ritz_weights = d.ritz_values, d.ritz_weights
    out.matvecs = op.matvecs
    return out
