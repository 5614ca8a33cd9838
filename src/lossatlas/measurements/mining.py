"""Mining curve directions, and why Gaussian directions give v-basins (Li, Li, Zhan 2024).

* :func:`mine_w_peak` — Algorithm 1, a direction ε whose curve L(θ + λε) falls on both sides
  of θ (Eq. 2, min over λ ∈ [−1, 1] of L(θ + λε)): ε₀ = 0; per batch λ ~ U[−α, α],
  θ̂ = θ + λε, ε ← ε − η λ ∇L_batch(θ̂); α ramps linearly from 0 to 1 over all steps.
* :func:`mine_vvv_basin` — Algorithm 2 (Eq. 3, min over φ of E_λ[L(φ) + γ L((1−λ)θ + λφ)]):
  per batch λ ~ U[0.5 − α, 0.5 + α], φ̂ = (1 − λ)θ + λφ, φ ← φ − η(∇L(φ) + γλ∇L(φ̂));
  ε = φ − θ. θ, the midpoint and φ become three basins.
* :func:`cosine_profile` — |cos| of a direction with N.E.1..10 and P.E.10..1 (their Fig. 9).
* :func:`gaussian_angles` — angles between Gaussian samples and descent directions (Fig. 5).
* :func:`descent_vs_gaussian` — the negative gradient's descent curve beside that of the most
  overlapped Gaussian, scaled to the same norm, on [−s, s] and [−10s, 10s] (Fig. 6).

Choices the paper leaves open (documented, overridable): η = 0.1 (their training rate), plain
SGD (no momentum, no weight decay, as in the pseudo-code), 10 epochs, α_t = (t + 1)/T for
Algorithm 1, φ₀ a fresh initialization of the model for Algorithm 2 (φ is a second model: their
Fig. 10 marks it at λ = 1, like the independent checkpoint of Fig. 7), gradients with BN in eval
mode at the center's running statistics (``obj.buffers``). Batches are visited in a seeded
random order each epoch; λ draws come from the same seeded generator.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lossatlas.core import params as P
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.progress import track
from lossatlas.store import results as store

__all__ = [
    "AngleResult",
    "CosineProfile",
    "DescentCurves",
    "MinedDirection",
    "cosine_profile",
    "descent_vs_gaussian",
    "fresh_init",
    "gaussian_angles",
    "mine_vvv_basin",
    "mine_w_peak",
]


@store.result("mined")
@dataclass
class MinedDirection:
    """A mined direction ε (plot θ + λε around ``center``) with its optimization history.

    ``lambdas``, ``alphas``, ``losses``: one entry per step (the batch loss at θ̂ for
    Algorithm 1; L(φ) + γL(φ̂) on the batch for Algorithm 2). ``phi``: Algorithm 2's φ.
    """

    algorithm: str
    direction: P.Point
    center: P.Point
    lambdas: np.ndarray
    alphas: np.ndarray
    losses: np.ndarray
    settings: dict = field(default_factory=dict)
    phi: P.Point | None = None


def _batch_grad(obj, point: Mapping, batch) -> tuple[float, P.Point]:
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in point.items()}
    loss = obj.batch_loss(leaves, batch, obj.buffers)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return float(loss.detach()), P.Point({k: (g if g is not None else torch.zeros_like(v)).detach()
                                 for (k, v), g in zip(leaves.items(), grads)})


def _check(epochs: int, lr: float) -> None:
    if not isinstance(epochs, int) or epochs < 1:
        raise LossAtlasError(f"epochs={epochs!r} must be a positive integer")
    if not lr > 0:
        raise LossAtlasError(f"lr={lr!r} must be > 0")


def _order(obj, gen: torch.Generator, epochs: int) -> list[int]:
    n = len(obj.batches)
    return [int(i) for _ in range(epochs) for i in torch.randperm(n, generator=gen)]


def _center(obj, center) -> P.Point:
    c = obj.center if center is None else center
    if c.keys() != obj.center.keys():
        raise LossAtlasError("center covers other parameters than the objective; build it with "
                             "la.params.of on the objective's model (obj.names)")
    return P.Point({k: v.detach() for k, v in c.items()})


def mine_w_peak(obj, epochs: int = 10, lr: float = 0.1, alpha_max: float = 1.0,
                center: Mapping | None = None, seed: int = 0,
                progress: bool | None = None) -> MinedDirection:
    """Algorithm 1 of Li, Li, Zhan 2024: mine ε so that θ + λε is a w-peak curve.

    ε₀ = 0; at step t of T = epochs · len(obj.batches): α_t = alpha_max · (t + 1)/T,
    λ ~ U[−α_t, α_t], θ̂ = θ + λε, ε ← ε − lr · λ · ∇L_batch(θ̂).

    Args:
        obj: the :class:`~lossatlas.core.objective.Objective` (its batches, shuffled per epoch).
        epochs: passes over ``obj.batches``, a positive integer.
        lr: the step size η, > 0.
        alpha_max: the last step's α (α ramps linearly from alpha_max/T to it).
        center: θ, a Point over ``obj.names``; None: ``obj.center``.
        seed: seeds the batch order and the λ draws.
        progress: show a progress bar (None: unless ``LOSSATLAS_QUIET=1``).

    Returns:
        A :class:`MinedDirection` (``algorithm="w-peak"``): ε in ``direction``, the center, and
        ``lambdas``, ``alphas``, ``losses`` (the batch loss at θ̂) per step.

    Raises:
        LossAtlasError: ``epochs`` or ``lr`` out of range, a ``center`` over other parameters,
            or a loss that is not finite (lower ``lr``).
    """
    _check(epochs, lr)
    theta = _center(obj, center)
    gen = torch.Generator().manual_seed(seed)
    order = _order(obj, gen, epochs)
    total = len(order)
    eps = P.zeros_like(theta)
    lambdas, alphas, losses = np.zeros(total), np.zeros(total), np.zeros(total)
    steps = track(range(total), "mining w-peak (Algorithm 1)",
                  disable=None if progress is None else not progress)
    for t in steps:
        alpha = alpha_max * (t + 1) / total
        lam = float((2 * torch.rand((), generator=gen, dtype=torch.float64) - 1) * alpha)
        theta_hat = P.axpy(theta, [lam], [eps])
        loss, g = _batch_grad(obj, theta_hat, obj.batches[order[t]])
        for k in eps:
            eps[k].add_(g[k], alpha=-lr * lam)
        lambdas[t], alphas[t], losses[t] = lam, alpha, loss
        if not math.isfinite(loss):
            raise LossAtlasError(f"the loss became {loss} at step {t}; lower lr (now {lr})")
    eps.meta = {"kind": "mined", "algorithm": "w-peak", "label": "Mine",
                "center_hash": P.hash_point(theta), "span": [-1.0, 1.0]}
    settings = {"epochs": epochs, "lr": lr, "alpha_max": alpha_max, "seed": seed,
                "steps": total, **obj.describe()}
    return MinedDirection("w-peak", eps, P.Point(theta), lambdas, alphas, losses, settings)


def fresh_init(model: torch.nn.Module, names: Sequence[str], seed: int = 0) -> P.Point:
    """Parameters ``names`` of a fresh initialization of ``model``'s architecture: a deep copy
    whose modules' ``reset_parameters()`` run under ``torch.manual_seed(seed)`` (the global RNG
    is restored); the user's model is untouched."""
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in clone.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    params = dict(clone.named_parameters())
    return P.Point({n: params[n].detach().clone() for n in names})


def mine_vvv_basin(obj, epochs: int = 10, lr: float = 0.1, alpha: float = 0.0,
                   gamma: float = 0.1, init: str | Mapping = "random",
                   center: Mapping | None = None, seed: int = 0,
                   progress: bool | None = None) -> MinedDirection:
    """Algorithm 2 of Li, Li, Zhan 2024: mine φ, then ε = φ − θ, for vvv-basin curves.

    Per step: λ ~ U[0.5 − α, 0.5 + α], φ̂ = (1 − λ)θ + λφ,
    φ ← φ − lr · (∇L_batch(φ) + γ λ ∇L_batch(φ̂)) (the gradient of Eq. 3, same batch for both).
    Paper grid: α ∈ {0, 0.1}, γ ∈ {0.1, 0.5, 0.9}.

    Args:
        obj: the :class:`~lossatlas.core.objective.Objective` (its batches, shuffled per epoch).
        epochs: passes over ``obj.batches``, a positive integer.
        lr: the step size η, > 0.
        alpha: the half-width α of λ's range, in [0, 0.5].
        gamma: the weight γ of the midpoint's loss, >= 0.
        init: φ₀: ``"random"`` (:func:`fresh_init` of ``obj.model`` with ``seed``), ``"center"``
            (φ₀ = θ) or a Point.
        center: θ, a Point over ``obj.names``; None: ``obj.center``.
        seed: seeds φ₀ (``"random"``), the batch order and the λ draws.
        progress: show a progress bar (None: unless ``LOSSATLAS_QUIET=1``).

    Returns:
        A :class:`MinedDirection` (``algorithm="vvv-basin"``): ε = φ − θ in ``direction``, φ in
        ``phi``, and ``lambdas``, ``alphas``, ``losses`` (L(φ) + γL(φ̂) on the batch) per step.

    Raises:
        LossAtlasError: ``epochs``, ``lr``, ``alpha`` or ``gamma`` out of range, an unknown
            ``init``, a point over other parameters, or a loss that is not finite (lower ``lr``).
    """
    _check(epochs, lr)
    if not 0 <= alpha <= 0.5:
        raise LossAtlasError(f"alpha={alpha!r} must be in [0, 0.5] so that λ stays in [0, 1]")
    if gamma < 0:
        raise LossAtlasError(f"gamma={gamma!r} must be >= 0")
    theta = _center(obj, center)
    if isinstance(init, Mapping):
        phi = P.Point({k: v.detach().clone() for k, v in _center(obj, init).items()})
    elif init == "random":
        phi = fresh_init(obj.model, obj.names, seed).to(next(iter(theta.values())).device)
    elif init == "center":
        phi = theta.clone()
    else:
        raise LossAtlasError(f'init={init!r} is unknown; use "random", "center" or a point')
    gen = torch.Generator().manual_seed(seed)
    order = _order(obj, gen, epochs)
    total = len(order)
    lambdas, losses = np.zeros(total), np.zeros(total)
    steps = track(range(total), "mining vvv-basin (Algorithm 2)",
                  disable=None if progress is None else not progress)
    for t in steps:
        lam = 0.5 + float((2 * torch.rand((), generator=gen, dtype=torch.float64) - 1) * alpha)
        batch = obj.batches[order[t]]
        phi_hat = P.axpy(theta, [lam], [phi - theta])  # (1 − λ)θ + λφ = θ + λ(φ − θ)
        l_phi, g_phi = _batch_grad(obj, phi, batch)
        l_hat, g_hat = _batch_grad(obj, phi_hat, batch)
        for k in phi:
            phi[k].add_(g_phi[k] + (gamma * lam) * g_hat[k], alpha=-lr)
        lambdas[t], losses[t] = lam, l_phi + gamma * l_hat
        if not math.isfinite(losses[t]):
            raise LossAtlasError(f"the loss became {losses[t]} at step {t}; lower lr (now {lr})")
    eps = phi - theta
    eps.meta = {"kind": "mined", "algorithm": "vvv-basin", "label": "Mine (vvv)",
                "center_hash": P.hash_point(theta), "span": [-1.0, 2.0], "markers": [0.0, 1.0]}
    settings = {"epochs": epochs, "lr": lr, "alpha": alpha, "gamma": gamma, "seed": seed,
                "init": init if isinstance(init, str) else "point", "steps": total,
                **obj.describe()}
    return MinedDirection("vvv-basin", eps, P.Point(theta), lambdas, np.full(total, alpha),
                          losses, settings, phi=P.Point(phi))


# -- cosine with Hessian eigenvectors --------------------------------------------------------
@store.result("cosine_profile")
@dataclass
class CosineProfile:
    """|cos∠(ε, v)| for v = N.E.1..k then P.E.k..1 (their Fig. 9 bar order)."""

    labels: list
    values: np.ndarray
    eigenvalues: np.ndarray


def cosine_profile(direction: Mapping, obj=None, k: int = 10, negative=None,
                   positive=None) -> CosineProfile:
    """Absolute cosine of ``direction`` with the Hessian eigenvectors N.E.1..k and P.E.k..1.

    ``negative`` / ``positive``: spectra from ``la.hessian.eigs(obj, k, "SA")`` / ``"LA"`` (or
    any object with ``.values`` and ``.vectors``); computed from ``obj`` when None.
    """
    from lossatlas.directions.eigen import ordered

    if negative is None or positive is None:
        if obj is None:
            raise LossAtlasError("cosine_profile needs obj= or both negative= and positive=")
        from lossatlas.measurements import hessian

        negative = negative if negative is not None else hessian.eigs(obj, k=k, which="SA")
        positive = positive if positive is not None else hessian.eigs(obj, k=k, which="LA")
    nv, nvec = ordered(negative.values, negative.vectors, "SA")
    pv, pvec = ordered(positive.values, positive.vectors, "LA")
    kn, kp = min(k, len(nvec)), min(k, len(pvec))
    labels = [f"N.E.{i + 1}" for i in range(kn)] + [f"P.E.{i}" for i in range(kp, 0, -1)]
    vecs = list(nvec[:kn]) + list(pvec[:kp])[::-1]
    vals = np.concatenate([nv[:kn], pv[:kp][::-1]])
    cos = np.array([abs(P.cosine(direction, v)) for v in vecs])
    return CosineProfile(labels, cos, vals)


# -- Fig. 5: angles between Gaussian samples and descent directions ---------------------------
@store.result("gaussian_angles")
@dataclass
class AngleResult:
    """``angles[i, j]``: degrees between target i and Gaussian sample j (seeds seed..)."""

    labels: list
    angles: np.ndarray
    seeds: list
    norm: str = "none"


def gaussian_angles(center: Mapping, targets: Mapping[str, Mapping], samples: int = 100,
                    norm: str = "none", seed: int = 0,
                    progress: bool | None = None) -> AngleResult:
    """Angles between Gaussian directions and each target direction (their Fig. 5: nearly all
    within 90° ± 0.25° in high dimension).

    Args:
        center: θ (a Point); the Gaussians are ``la.directions.gaussian`` of it over every
            parameter.
        targets: label → direction, e.g. {"g_batch": −∇L_batch, "θ_f − θ_cur": ...}.
        samples: Gaussian directions, >= 1.
        norm: their normalization (``"none"``: plain N(0, I)).
        seed: sample j uses seed ``seed + j``.
        progress: show a progress bar (None: unless ``LOSSATLAS_QUIET=1``).

    Returns:
        An :class:`AngleResult`: ``angles`` (targets, samples) in degrees, ``labels``, ``seeds``.

    Raises:
        LossAtlasError: ``samples`` below 1.
    """
    from lossatlas.directions.normalized_gaussian import gaussian

    if samples < 1:
        raise LossAtlasError(f"samples={samples!r} must be >= 1")
    labels = list(targets)
    ang = np.zeros((len(labels), samples))
    seeds = list(range(seed, seed + samples))
    for j in track(range(samples), "Gaussian angles",
                   disable=None if progress is None else not progress):
        d = gaussian(center, norm=norm, seed=seeds[j], ignore=None)
        for i, lab in enumerate(labels):
            c = min(1.0, max(-1.0, P.cosine(d, targets[lab])))
            ang[i, j] = math.degrees(math.acos(c))
    return AngleResult(labels, ang, seeds, norm)


# -- Fig. 6: descent curves of the negative gradient and the best Gaussian --------------------
@store.result("descent_curves")
@dataclass
class DescentCurves:
    """For each scale s: ``x[i]`` on [−s, s]; ``gradient[i]`` = L(θ + x g̃), g̃ = −∇L;
    ``gaussian[i]`` = L(θ + zoom · x ε), ε the Gaussian sample most aligned with g̃,
    rescaled to ‖g̃‖ (``cosine`` its cosine with g̃)."""

    scales: np.ndarray
    x: np.ndarray
    gradient: np.ndarray
    gaussian: np.ndarray
    cosine: float
    zoom: float = 10.0
    seed: int = 0


def descent_vs_gaussian(obj, samples: int = 100, scales: Sequence[float] = (0.01, 0.1, 1.0),
                        points: int = 21, batch: int | None = None, zoom: float = 10.0,
                        seed: int = 0, progress: bool | None = None) -> DescentCurves:
    """Their Fig. 6: the loss along the negative gradient against the loss along the most
    overlapped of ``samples`` Gaussian directions, scaled to the gradient's norm.

    Args:
        obj: the :class:`~lossatlas.core.objective.Objective`.
        samples: Gaussian directions (seeds ``seed``..``seed + samples − 1``) from which the
            one most aligned with −∇L is kept.
        scales: for each s, a curve on [−s, s].
        points: points per curve.
        batch: the gradient's batch, as in ``la.directions.gradient`` (None: all data).
        zoom: the Gaussian's x-axis is stretched by this factor (10 in the paper).
        seed: the first Gaussian seed.
        progress: show a progress bar (None: unless ``LOSSATLAS_QUIET=1``).

    Returns:
        :class:`DescentCurves`: ``x``, ``gradient`` and ``gaussian`` (scales, points), the kept
        Gaussian's ``cosine`` with −∇L.
    """
    from lossatlas.directions.descent import gradient
    from lossatlas.directions.normalized_gaussian import gaussian

    g = gradient(obj, batch=batch)
    best, best_cos = None, -2.0
    for s in track(range(seed, seed + samples), "Gaussian samples",
                   disable=None if progress is None else not progress):
        d = gaussian(obj.center, norm="none", seed=s, ignore=None)
        c = P.cosine(d, g)
        if c > best_cos:
            best, best_cos = d, c
    eps = best * float(g.norm() / best.norm())
    scales = np.asarray(scales, dtype=float)
    xs = np.stack([np.linspace(-s, s, points) for s in scales])
    lg = np.zeros_like(xs)
    lgau = np.zeros_like(xs)
    for i in range(len(scales)):
        lg[i] = obj.loss_batch([P.axpy(obj.center, [float(a)], [g]) for a in xs[i]])
        lgau[i] = obj.loss_batch([P.axpy(obj.center, [float(zoom * a)], [eps]) for a in xs[i]])
    return DescentCurves(scales, xs, lg, lgau, float(best_cos), zoom, seed)
