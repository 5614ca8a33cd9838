"""Eigenvalue density by stochastic Lanczos quadrature (Golub & Meurant; Ghorbani, Krishnan,
Xiao 2019; PyHessian's ``density``).

For ``n_v`` Rademacher start vectors, ``steps`` Lanczos steps with full reorthogonalization give
Ritz values ``θ_j`` and weights ``τ_j = (e₁ᵀs_j)²`` (the Gauss quadrature nodes and weights of
the spectral measure seen from that vector, Σ_j τ_j = 1). The density is the average over
vectors of Gaussian-broadened nodes,

    φ(t) = (1/n_v) Σ_l Σ_j τ_j^(l) · N(t; θ_j^(l), σ²),

evaluated on ``grid`` (``bins`` points over ``[θ_min − pad, θ_max + pad]``, pad = 1 % of the
range plus 3σ) and renormalized so that the trapezoid integral over the grid is exactly 1.
``sigma`` defaults to the spectral range divided by the number of steps (about the spacing of
the Ritz values, so the curve is smooth without hiding the edges); PyHessian uses ``σ² = 1e-5``
absolute (``sigma=10**-2.5``), which is too wide for small curvature and too narrow for large.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lossatlas.core.errors import LossAtlasError
from lossatlas.core.progress import track
from lossatlas.measurements.hessian.lanczos import lanczos, ritz
from lossatlas.measurements.hessian.operator import HessianOperator
from lossatlas.store.results import result

__all__ = ["Density", "broaden", "density"]


@result("hessian_density")
@dataclass
class Density:
    """``grid`` (bins,), ``density`` (bins,) integrating to 1; ``ritz_values`` / ``ritz_weights``
    (n_v, steps): the quadrature nodes and weights of each start vector (rows sum to 1)."""

    grid: np.ndarray
    density: np.ndarray
    ritz_values: np.ndarray
    ritz_weights: np.ndarray
    sigma: float = 0.0
    matvecs: int = 0
    seconds: float = 0.0
    params: list = field(default_factory=list)

    @property
    def lambda_min(self) -> float:
        return float(self.ritz_values.min())

    @property
    def lambda_max(self) -> float:
        return float(self.ritz_values.max())

    def trace(self, dim: int) -> float:
        """SLQ's trace estimate ``dim · mean_l Σ_j τ_j θ_j``."""
        return float(dim * np.mean((self.ritz_values * self.ritz_weights).sum(1)))


def broaden(nodes: np.ndarray, weights: np.ndarray, sigma: float | None = None,
            bins: int = 2000) -> tuple[np.ndarray, np.ndarray, float]:
    """Gaussian-broadened density of weighted nodes (each row of ``weights`` sums to 1):
    (grid, density integrating to 1, sigma)."""
    lo, hi = float(nodes.min()), float(nodes.max())
    span = max(hi - lo, 1e-12 * max(abs(hi), 1.0), 1e-30)
    if sigma is None:
        sigma = span / nodes.shape[-1]
    if sigma <= 0:
        raise LossAtlasError(f"sigma={sigma!r} must be positive")
    pad = 0.01 * span + 3 * sigma
    grid = np.linspace(lo - pad, hi + pad, int(bins))
    n = nodes.reshape(-1)
    w = weights.reshape(-1) / nodes.shape[0]
    dens = np.zeros_like(grid)
    for a in range(0, len(n), 256):  # chunks keep the (bins, chunk) matrix small
        z = (grid[:, None] - n[None, a:a + 256]) / sigma
        dens += (np.exp(-0.5 * z * z) * w[None, a:a + 256]).sum(1)
    dens /= sigma * np.sqrt(2 * np.pi)
    dens /= np.trapezoid(dens, grid)
    return grid, dens, float(sigma)


def density(
    obj,
    steps: int = 100,
    n_v: int = 1,
    *,
    sigma: float | None = None,
    bins: int = 2000,
    params: str | Sequence[str] | None = None,
    point=None,
    seed: int = 0,
    hvp: str = "auto",
    operator: HessianOperator | None = None,
) -> Density:
    """SLQ density of the Hessian (block): ``n_v`` runs of ``steps`` Lanczos steps (the formula
    is in the module docstring).

    Args:
        obj: the :class:`~lossatlas.core.objective.Objective`.
        steps: Lanczos steps per run, an integer ``>= 2`` (capped at the block's dimension;
            PyHessian uses 100).
        n_v: Rademacher start vectors, one run each; the density averages them.
        sigma: the Gaussian broadening; None: the spectral range divided by ``steps``.
        bins: points of the evaluation grid.
        params: the block: parameter names or glob patterns; None: all of ``obj.names``.
        point: where the Hessian is taken; None: the objective's center.
        seed: seeds the start vectors.
        hvp: how products are computed (``method`` of :class:`HessianOperator`).
        operator: a :class:`HessianOperator` to reuse; ``params``, ``point`` and ``hvp`` are
            then the operator's.

    Returns:
        A :class:`Density`: ``grid`` (bins,), ``density`` (bins,) integrating to 1, the Ritz
        nodes and weights ``ritz_values`` / ``ritz_weights`` (n_v, steps), ``sigma``,
        ``matvecs`` and ``seconds``.

    Raises:
        LossAtlasError: ``steps`` below 2, ``n_v`` below 1, or a ``sigma`` that is not positive.
    """
    if not isinstance(steps, int) or steps < 2:
        raise LossAtlasError(f"steps={steps!r} must be an integer >= 2 (100 is PyHessian's)")
    if not isinstance(n_v, int) or n_v < 1:
        raise LossAtlasError(f"n_v={n_v!r} must be a positive integer")
    op = operator or HessianOperator(obj, point, params, hvp)
    start, t0 = op.matvecs, time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    steps = min(steps, op.dim)
    nodes = np.zeros((n_v, steps))
    weights = np.zeros((n_v, steps))
    for l in track(range(n_v), "SLQ", disable=True if n_v == 1 else None):
        v0 = (torch.randint(0, 2, (op.dim,), generator=gen) * 2 - 1).double().to(op.device)
        run = lanczos(lambda q: op.matmat(q.to(op.dtype)), v0, steps,
                      progress="SLQ Lanczos" if n_v == 1 else None)
        theta, S, _ = ritz(run.alpha, run.beta)
        m = len(theta)
        nodes[l, :m], weights[l, :m] = theta, S[0] ** 2
        if m < steps:  # invariant subspace found early: pad with zero-weight copies
            nodes[l, m:] = theta[-1]
    grid, dens, sigma = broaden(nodes, weights, sigma, bins)
    return Density(grid, dens, nodes, weights, sigma, op.matvecs - start,
                   time.perf_counter() - t0, list(op.names))
