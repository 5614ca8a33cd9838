"""The second-order view of GMI and MLI (Li, Li, Zhan 2024, Sect. 3 and App. B.3).

Along a direction ε from a point θ, ``L(θ + λε) − L(θ) ≈ δL = λb + ½λ²a`` with
``a = εᵀH_θε`` and ``b = εᵀg_θ`` (their Eq. 1). Two uses:

* :func:`delta_distribution` (their Fig. 13, second row): many Gaussian ε ~ N(0, σ²I)
  (σ = 1 by default, as in the paper), ``δL`` at each λ (``λ ∈ {0.001, 0.01}``) beside the true
  change ``L(θ + λε) − L(θ)``. For ``E[δL] = ½λ²σ² tr H``: at small λ the distribution is
  centred near zero (first-order term dominates), at larger λ it is mostly positive (GMI).
* :func:`local_quadratics` (their Fig. 14): anchors λ_k on a path θ + λε (λ ∈ [−1, 0]), at each
  the quadratic piece ``L(θ+λ_kε) + b_k(x−λ_k) + ½a_k(x−λ_k)²`` for ``x ∈ [λ_k − 0.05,
  λ_k + 0.05]`` with ``a_k, b_k`` taken at ``θ + λ_kε``. The paper plots ``½a(x−λ)² + b(x−λ)``
  (the change); we add the anchor's loss so the pieces sit on the true curve, which is returned
  alongside. :func:`gmi` uses a Gaussian ε, :func:`mli` uses ε = θ_final − θ_init (then
  λ = −1 is the initialization: MLI's (1−α)θ_0 + αθ_f with λ = α − 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lossatlas.core import params as P
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.progress import track
from lossatlas.measurements.hessian.operator import HessianOperator, resolve_params
from lossatlas.store.results import result

__all__ = ["DeltaDistribution", "QuadraticPath", "delta_distribution", "gaussian", "gmi",
           "local_quadratics", "mli", "quadratic_coefficients"]


def gaussian(obj, sigma: float = 1.0, seed: int = 0, params=None, like=None) -> P.Point:
    """ε with i.i.d. N(0, σ²) entries on the block ``params`` (zeros elsewhere)."""
    like = obj.center if like is None else like
    names = set(resolve_params(obj, params))
    g = torch.Generator().manual_seed(int(seed))
    return P.Point({k: (torch.randn(v.shape, generator=g, dtype=torch.float64) * sigma).to(v)
                    if k in names else torch.zeros_like(v) for k, v in like.items()},
                   meta={"kind": "gaussian", "sigma": sigma, "seed": seed})


def quadratic_coefficients(obj, directions: Sequence[Mapping], point=None, chunk: int = 16,
                           hvp: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """``a_i = ε_iᵀH ε_i`` and ``b_i = ε_iᵀg`` at ``point`` for each direction: two (n,) arrays
    (``chunk`` products per data pass)."""
    op = HessianOperator(obj, point, None, hvp)
    g = op.gradient().double()
    E = torch.stack([op.flatten(d).double() for d in directions], dim=1)  # (dim, n)
    a = np.zeros(E.shape[1])
    for i in range(0, E.shape[1], chunk):
        blk = E[:, i:i + chunk]
        a[i:i + chunk] = (blk * op.matmat(blk)).sum(0).numpy()
    return a, (g @ E).numpy()


@result("second_order_delta")
@dataclass
class DeltaDistribution:
    """``predicted[l, i] = λ_l b_i + ½λ_l² a_i`` and ``true[l, i] = L(θ+λ_l ε_i) − L(θ)``,
    shape (len(lambdas), samples); ``a``, ``b`` (samples,)."""

    lambdas: np.ndarray
    a: np.ndarray
    b: np.ndarray
    predicted: np.ndarray
    true: np.ndarray
    loss: float = 0.0
    sigma: float = 1.0
    seed: int = 0
    params: list = field(default_factory=list)


def delta_distribution(
    obj,
    lambdas: Sequence[float] = (0.001, 0.01),
    samples: int = 100,
    sigma: float = 1.0,
    *,
    seed: int = 0,
    params: str | Sequence[str] | None = None,
    point=None,
    true: bool = True,
) -> DeltaDistribution:
    """δL = λb + ½λ²a over ``samples`` Gaussian ε (Fig. 13 of Li, Li, Zhan 2024), with the true
    loss change when ``true`` (one loss evaluation per (λ, ε)).

    Args:
        obj: the :class:`~lossatlas.core.objective.Objective`.
        lambdas: the step sizes λ (the paper: 0.001 and 0.01).
        samples: Gaussian directions ε, a positive integer (the paper: 100).
        sigma: the standard deviation of ε's entries (the paper: 1).
        seed: seeds the directions (sample ``i`` uses ``seed * 100003 + i``).
        params: the block ε lives on (names or glob patterns; zeros elsewhere); None: all.
        point: θ; None: the objective's center.
        true: also evaluate ``L(θ + λε) − L(θ)`` for every pair.

    Returns:
        A :class:`DeltaDistribution`: ``predicted`` and ``true`` (len(lambdas), samples; ``true``
        is nan when not asked), ``a = εᵀHε`` and ``b = εᵀg`` (samples,), ``loss`` = L(θ).

    Raises:
        LossAtlasError: ``samples`` is not a positive integer.
    """
    if not isinstance(samples, int) or samples < 1:
        raise LossAtlasError(f"samples={samples!r} must be a positive integer (the paper: 100)")
    lam = np.asarray(lambdas, dtype=np.float64).reshape(-1)
    point = obj.center if point is None else point
    eps = [gaussian(obj, sigma, seed * 100003 + i, params, like=point) for i in range(samples)]
    a, b = quadratic_coefficients(obj, eps, point)
    predicted = lam[:, None] * b[None, :] + 0.5 * lam[:, None] ** 2 * a[None, :]
    loss0 = obj.loss(point)
    real = np.full_like(predicted, np.nan)
    if true:
        for li in track(range(len(lam)), "true δL"):
            pts = [P.axpy(point, [lam[li]], [e]) for e in eps]
            real[li] = obj.loss_batch(pts) - loss0
    return DeltaDistribution(lam, a, b, predicted, real, loss0, sigma, seed,
                             resolve_params(obj, params))


@result("second_order_path")
@dataclass
class QuadraticPath:
    """Anchors ``lambdas`` (K,) on θ + λε with ``loss``, ``a``, ``b`` (K,) there; the true
    ``curve`` (M,) at ``x`` (M,). :meth:`piece` gives the local quadratic of anchor k."""

    lambdas: np.ndarray
    loss: np.ndarray
    a: np.ndarray
    b: np.ndarray
    x: np.ndarray
    curve: np.ndarray
    half_width: float = 0.05
    kind: str = "GMI"

    def piece(self, k: int, points: int = 21) -> tuple[np.ndarray, np.ndarray]:
        """(x, L_k + b_k(x−λ_k) + ½a_k(x−λ_k)²) on [λ_k − w, λ_k + w]."""
        x = np.linspace(self.lambdas[k] - self.half_width, self.lambdas[k] + self.half_width,
                        points)
        d = x - self.lambdas[k]
        return x, self.loss[k] + self.b[k] * d + 0.5 * self.a[k] * d * d


def local_quadratics(
    obj,
    direction: Mapping,
    lambdas: Sequence[float] | None = None,
    half_width: float = 0.05,
    points: int = 101,
    *,
    point=None,
    kind: str = "custom",
) -> QuadraticPath:
    """Second-order pieces along θ + λε (Fig. 14 of Li, Li, Zhan 2024).

    Args:
        obj: the :class:`~lossatlas.core.objective.Objective`.
        direction: ε (a Point over ``obj.names``).
        lambdas: the anchors λ_k; None: 11 anchors on [−1, 0].
        half_width: each piece spans ``[λ_k − half_width, λ_k + half_width]``.
        points: points of the true curve over the anchors' range ± ``half_width``.
        point: θ; None: the objective's center.
        kind: a label kept with the result (``"GMI"``, ``"MLI"``, ...).

    Returns:
        A :class:`QuadraticPath`: at each anchor ``loss``, ``a_k = εᵀHε`` and ``b_k = εᵀg``
        (K,) taken at θ + λ_kε; the true ``curve`` (points,) at ``x``; :meth:`QuadraticPath.piece`
        draws the quadratic of anchor k.
    """
    lam = np.linspace(-1.0, 0.0, 11) if lambdas is None else np.asarray(lambdas, float)
    point = obj.center if point is None else point
    a, b, loss = np.zeros(len(lam)), np.zeros(len(lam)), np.zeros(len(lam))
    for k in track(range(len(lam)), f"{kind} second order"):
        at = P.axpy(point, [lam[k]], [direction])
        (a[k],), (b[k],) = quadratic_coefficients(obj, [direction], at)
        loss[k] = obj.loss(at)
    x = np.linspace(lam.min() - half_width, lam.max() + half_width, points)
    curve = obj.loss_batch([P.axpy(point, [xi], [direction]) for xi in x])
    return QuadraticPath(lam, loss, a, b, x, curve, half_width, kind)


def gmi(obj, seed: int = 0, scale: str | float = "model", **kw) -> QuadraticPath:
    """:func:`local_quadratics` along a Gaussian ε; ``scale="model"`` rescales ε to the norm of
    the center (so λ = −1 moves as far as MLI's path does for a comparable model), a float sets
    σ."""
    sigma = 1.0 if scale == "model" else float(scale)
    eps = gaussian(obj, sigma, seed)
    if scale == "model":
        eps = eps * float(P.norm(obj.center) / P.norm(eps))
    return local_quadratics(obj, eps, kind="GMI", **kw)


def mli(obj, theta_init: Mapping, **kw) -> QuadraticPath:
    """:func:`local_quadratics` along ε = θ_final − θ_init from θ_final = the objective's center
    (λ = −1 is the initialization)."""
    eps = P.Point({k: obj.center[k] - theta_init[k].to(obj.center[k]) for k in obj.center})
    return local_quadratics(obj, eps, kind="MLI", **kw)
