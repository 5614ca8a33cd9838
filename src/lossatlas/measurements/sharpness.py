"""Sharpness measures of Andriushchenko, Croce, Müller, Hein, Flammarion (ICML 2023), "A modern
look at the relationship between sharpness and generalization".

For weights ``w``, a scale ``c`` (``c = |w|`` elementwise when ``adaptive``, else 1) and a
radius ``ρ`` the perturbations are ``δ = c ⊙ u`` with ``u`` in the ℓp ball of radius ρ
(``norm="l2"`` or ``"linf"``):

* **worst case** ``S_max = E_S [ max_{‖u‖_p ≤ ρ} L_S(w + c⊙u) − L_S(w) ]``;
* **average case** ``S_avg = E_S E_u [ L_S(w + c⊙u) − L_S(w) ]`` with the paper's noise:
  ``u ~ N(0, ρ² I)`` for ℓ2 and ``u ~ U[−ρ, ρ]`` elementwise for ℓ∞ (not on the ball).

``E_S`` is over batches ``S`` of ``m`` samples (m-sharpness: the max is taken per batch, then
averaged); ``m=None`` takes one batch of all the data (the exact full-data loss of the
Objective). Adaptive sharpness is invariant under rescalings that leave the function
unchanged, e.g. ``W₁ → αW₁, b₁ → αb₁, W₂ → W₂/α`` around a ReLU: ``c⊙u`` scales with the
weights, so the set of perturbed functions is the same.

The worst case is found by projected gradient ascent on ``u`` (the ball is the feasible set;
the ascent direction is ``∇_u = c ⊙ ∇L``): ``method="ascent"`` starts from ``u = 0`` and runs
Frank-Wolfe steps: from the best point so far it moves a fraction γ towards the maximizer over
the ball of the loss' linearization (``ρ ∇_u/‖∇_u‖`` for ℓ2, ``ρ sign ∇_u`` for ℓ∞; the first
step is SAM's), with γ = 1 halved whenever the loss did not rise; every gradient evaluation
also gives the loss at its point, so ``steps`` steps cost ``steps + 1`` gradients.
``method="apgd"`` is the procedure of the authors' code, written anew: a random start, steps of
``2ρ``, momentum 0.75 between the projected point and the previous one, step halved at the
checkpoints of auto-PGD (Croce & Hein 2020) when fewer than 75 % of the steps since the last
checkpoint improved, the loss evaluated after each step (``steps`` gradients and ``steps``
extra forward passes). Further
``restarts`` start from random points; the best value over restarts is kept per batch.

The average case is estimated by Monte Carlo with antithetic pairs ``±u`` (the odd terms of the
Taylor expansion cancel in every pair) and reported with its standard error. To second order,
``S_avg ≈ ½ Σᵢ cᵢ² Hᵢᵢ Var(uᵢ)`` = ``(ρ²/2) Σᵢ cᵢ² Hᵢᵢ`` for ℓ2 and ``(ρ²/6) Σᵢ cᵢ² Hᵢᵢ`` for
ℓ∞ (see :func:`second_order_average`).

>>> import torch, lossatlas as la
>>> _ = torch.manual_seed(0); X, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
>>> obj = la.Objective(torch.nn.Linear(3, 2), (X, y))
>>> s = la.sharpness.worst_case(obj, rho=0.1, adaptive=False)
>>> bool(s.value > 0), s.case
(True, 'worst')
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lossatlas.core import params as P
from lossatlas.core.batching import Batch
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.progress import track
from lossatlas.store.results import result

__all__ = [
    "Sharpness",
    "average_case",
    "second_order_average",
    "sharpness",
    "worst_case",
]

NORMS = ("l2", "linf")


@result("sharpness")
@dataclass
class Sharpness:
    """A sharpness value: ``value`` (mean over batches of the loss increase), ``error`` (its
    standard error: Monte Carlo for the average case; across batches for the worst case with
    ``m``, else 0), ``per_batch`` (the values of each batch), ``base_loss`` (mean ``L_S(w)``);
    ``gradients`` and ``forwards`` count the passes over a batch the estimate used."""

    value: float
    error: float
    per_batch: np.ndarray
    base_loss: float
    case: str = "worst"  # "worst" or "average"
    rho: float = 0.0
    adaptive: bool = True
    norm: str = "l2"
    m: int = -1
    method: str = "ascent"
    steps: int = 0
    restarts: int = 1
    samples: int = 0
    gradients: int = 0
    forwards: int = 0
    seconds: float = 0.0
    params: list = field(default_factory=list)

    def __float__(self) -> float:
        return float(self.value)


# -- set-up --------------------------------------------------------------------------------
def _check(rho: float, norm: str) -> None:
    if not (isinstance(rho, (int, float)) and rho > 0 and math.isfinite(rho)):
        raise LossAtlasError(f"rho={rho!r} must be a positive number, e.g. rho=0.05")
    if norm not in NORMS:
        raise LossAtlasError(f"norm={norm!r} is unknown; use 'l2' or 'linf'")


def _setup(obj, point, adaptive: bool):
    """The weights ``w``, the scale ``c`` (``|w|`` or ones) and the buffers at ``w``."""
    w = P.Point({k: v.detach() for k, v in (obj.center if point is None else point).items()})
    c = {k: v.abs() if adaptive else torch.ones_like(v) for k, v in w.items()}
    return w, c, obj.buffers_at(w)


def batches_of(obj, m: int | None) -> list[list[tuple[float, Batch]]]:
    """Groups of (weight, batch): one group of all the data (``m=None``), or one group per
    consecutive slice of ``m`` samples (tensor inputs; the last slice may be smaller)."""
    if m is None:
        return [list(zip(obj.weights, obj.batches))]
    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        raise LossAtlasError(f"m={m!r} must be a positive number of samples or None (all)")
    if obj.dist is not None:
        raise LossAtlasError("m= is not supported on data split across processes; pass m=None "
                             "or build the Objective with distributed=False")
    if not all(isinstance(b.inputs, torch.Tensor) and isinstance(b.targets, torch.Tensor)
               for b in obj.batches):
        raise LossAtlasError(
            "m= needs tensor inputs and targets; build the Objective with batch_size=m and "
            "pass m=None per batch instead"
        )
    X = torch.cat([b.inputs for b in obj.batches])
    y = torch.cat([b.targets for b in obj.batches])
    return [[(1.0, Batch(X[i:i + m], y[i:i + m], float(len(y[i:i + m]))))]
            for i in range(0, len(y), m)]


def _loss(obj, point, group, buffers) -> float:
    with torch.no_grad():  # all_sum: Σ over the ranks when the data is split across processes
        return float(obj.all_sum(float(sum(w * obj.batch_loss(point, b, buffers)
                                           for w, b in group))))


def _loss_grad(obj, w, c, u, group, buffers) -> tuple[float, dict[str, torch.Tensor]]:
    """``f(u) = L_S(w + c⊙u)`` and ``∇_u f = c ⊙ ∇L`` (one forward-backward per batch)."""
    leaves = {k: (w[k] + c[k] * u[k]).detach().requires_grad_(True) for k in w}
    total, grads = 0.0, {k: torch.zeros_like(v) for k, v in w.items()}
    for wt, b in group:
        lb = obj.batch_loss(leaves, b, buffers)
        gs = torch.autograd.grad(lb, list(leaves.values()), allow_unused=True)
        total += wt * float(lb.detach())
        for k, g in zip(leaves, gs):
            if g is not None:
                grads[k].add_(g, alpha=wt)
    total, grads = float(obj.all_sum(total)), obj.all_sum(grads)  # split data: Σ over ranks
    return total, {k: c[k] * g for k, g in grads.items()}


def _norm(u: dict[str, torch.Tensor], norm: str) -> float:
    if norm == "l2":
        return math.sqrt(sum(float((t * t).sum()) for t in u.values()))
    return max(float(t.abs().max()) for t in u.values())


def _project(u: dict[str, torch.Tensor], rho: float, norm: str) -> dict[str, torch.Tensor]:
    if norm == "l2":
        n = _norm(u, "l2")
        return {k: t * (rho / n) for k, t in u.items()} if n > rho else u
    return {k: t.clamp(-rho, rho) for k, t in u.items()}


def _direction(g: dict[str, torch.Tensor], norm: str) -> dict[str, torch.Tensor]:
    if norm == "linf":
        return {k: t.sign() for k, t in g.items()}
    n = max(_norm(g, "l2"), 1e-30)
    return {k: t / n for k, t in g.items()}


def _random_u(w, rho, norm, gen) -> dict[str, torch.Tensor]:
    if norm == "l2":  # uniform on the sphere of radius ρ
        z = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device)
             for k, v in w.items()}
        return _project({k: t * 1e6 for k, t in z.items()}, rho, "l2")
    return {k: ((2 * torch.rand(v.shape, generator=gen, dtype=v.dtype) - 1) * rho).to(v.device)
            for k, v in w.items()}


# -- worst case ----------------------------------------------------------------------------
def _ascent(obj, w, c, group, buffers, rho, norm, steps, u0):
    """Frank-Wolfe ascent over the ball: from the best point ``u`` so far, move a fraction
    ``γ`` towards ``s``, the maximizer over the ball of the loss' linearization at ``u``
    (``ρ ∇/‖∇‖`` for ℓ2, ``ρ sign ∇`` for ℓ∞); ``γ`` starts at 1 and halves whenever the loss
    did not rise. Returns (best f, gradients, forwards)."""
    u = u0 if u0 is not None else {k: torch.zeros_like(v) for k, v in w.items()}
    f, g = _loss_grad(obj, w, c, u, group, buffers)
    best, best_u, best_g = f, u, g
    gamma, grads = 1.0, 1
    for _ in range(steps):
        d = _direction(best_g, norm)
        u = {k: best_u[k] + gamma * (rho * d[k] - best_u[k]) for k in best_u}
        f, g = _loss_grad(obj, w, c, u, group, buffers)
        grads += 1
        if f > best:
            best, best_u, best_g = f, u, g
        else:
            gamma /= 2
    return best, grads, 0


def _apgd_checkpoints(steps: int) -> set[int]:
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return {math.ceil(q * steps) for q in p[1:]}


def _apgd(obj, w, c, group, buffers, rho, norm, steps, u0, base):
    """The authors' auto-PGD-style ascent (momentum 0.75, step 2ρ, halving at checkpoints)."""
    u = u0
    prev = {k: t.clone() for k, t in u.items()}
    best, best_u = base, u
    alpha, checks = 2 * rho, _apgd_checkpoints(steps)
    improved, last_check, best_at_check, alpha_at_check = 0, 0, base, alpha
    grads = forwards = 0
    for i in range(steps):
        _, g = _loss_grad(obj, w, c, u, group, buffers)
        grads += 1
        d = _direction(g, norm)
        z = _project({k: u[k] + alpha * d[k] for k in u}, rho, norm)
        new = {k: 0.75 * z[k] + 0.25 * prev[k] for k in z}
        prev, u = u, new
        f = _loss(obj, {k: w[k] + c[k] * u[k] for k in w}, group, buffers)
        forwards += 1
        if f > best:
            best, best_u, improved = f, u, improved + 1
        if i in checks:
            stalled = improved < 0.75 * (i - last_check)
            unchanged = alpha == alpha_at_check and best == best_at_check
            alpha_at_check, best_at_check, last_check, improved = alpha, best, i, 0
            if stalled or unchanged:
                alpha /= 2
                u = best_u
    return best, grads, forwards


def worst_case(
    obj,
    rho: float,
    *,
    adaptive: bool = True,
    norm: str = "l2",
    m: int | None = None,
    steps: int | None = None,
    restarts: int = 1,
    method: str = "ascent",
    max_batches: int | None = None,
    point=None,
    seed: int = 0,
) -> Sharpness:
    """Worst-case (adaptive) sharpness ``E_S max_{‖u‖_p≤ρ} L_S(w + c⊙u) − L_S(w)``.

    ``steps``: ascent steps per start (default 9 for ``"ascent"``, i.e. 10 gradients; 20 for
    ``"apgd"`` as in the authors' evaluation); ``restarts``: starts per batch (the first of
    ``"ascent"`` is ``u = 0``, the others random); ``m``: batch size of m-sharpness (None:
    all the data); ``max_batches``: only the first batches (m-sharpness on a subset, as the
    paper does).
    """
    _check(rho, norm)
    if method not in ("ascent", "apgd"):
        raise LossAtlasError(f"method={method!r} is unknown; use 'ascent' or 'apgd'")
    if not isinstance(restarts, int) or restarts < 1:
        raise LossAtlasError(f"restarts={restarts!r} must be a positive integer, e.g. 1")
    steps = (9 if method == "ascent" else 20) if steps is None else steps
    if not isinstance(steps, int) or steps < 1:
        raise LossAtlasError(f"steps={steps!r} must be a positive integer, e.g. 9")
    t0 = time.perf_counter()
    w, c, buffers = _setup(obj, point, adaptive)
    groups = batches_of(obj, m)[:max_batches]
    gen = torch.Generator().manual_seed(int(seed))
    values, bases, grads, forwards = [], [], 0, 0
    for group in track(groups, "worst-case sharpness", disable=len(groups) < 4 or None):
        base = _loss(obj, w, group, buffers)
        forwards += 1
        best = base
        for r in range(restarts):
            u0 = None if (method == "ascent" and r == 0) else _random_u(w, rho, norm, gen)
            if method == "ascent":
                f, ng, nf = _ascent(obj, w, c, group, buffers, rho, norm, steps, u0)
            else:
                f, ng, nf = _apgd(obj, w, c, group, buffers, rho, norm, steps, u0, base)
            best, grads, forwards = max(best, f), grads + ng, forwards + nf
        values.append(best - base)
        bases.append(base)
    v = np.array(values)
    err = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return Sharpness(float(v.mean()), err, v, float(np.mean(bases)), "worst", float(rho),
                     bool(adaptive), norm, -1 if m is None else int(m), method, steps,
                     restarts, 0, grads, forwards, time.perf_counter() - t0, list(w))


# -- average case --------------------------------------------------------------------------
def average_case(
    obj,
    rho: float,
    *,
    adaptive: bool = True,
    norm: str = "l2",
    samples: int = 100,
    point=None,
    seed: int = 0,
) -> Sharpness:
    """Average-case (adaptive) sharpness ``E_u L(w + c⊙u) − L(w)`` by Monte Carlo over
    ``samples`` draws (``samples/2`` antithetic pairs ``±u``) on the full data; ``error`` is
    the standard error over the pairs. (The expectation over batches of any size m equals the
    full-data value, so average-case m-sharpness needs no ``m``.)"""
    _check(rho, norm)
    if not isinstance(samples, int) or samples < 2:
        raise LossAtlasError(f"samples={samples!r} must be an integer >= 2, e.g. 100")
    t0 = time.perf_counter()
    w, c, buffers = _setup(obj, point, adaptive)
    group = batches_of(obj, None)[0]
    base = _loss(obj, w, group, buffers)
    gen = torch.Generator().manual_seed(int(seed))
    pairs = []
    for _ in track(range(samples // 2), "average-case sharpness", disable=samples < 200 or None):
        if norm == "l2":
            u = {k: rho * torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device)
                 for k, v in w.items()}
        else:
            u = {k: rho * (2 * torch.rand(v.shape, generator=gen, dtype=v.dtype) - 1
                           ).to(v.device) for k, v in w.items()}
        plus = _loss(obj, {k: w[k] + c[k] * u[k] for k in w}, group, buffers)
        minus = _loss(obj, {k: w[k] - c[k] * u[k] for k in w}, group, buffers)
        pairs.append(0.5 * (plus + minus) - base)
    v = np.array(pairs)
    err = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.inf
    return Sharpness(float(v.mean()), err, v, base, "average", float(rho), bool(adaptive), norm,
                     -1, "monte-carlo", 0, 1, 2 * len(v), 0, 2 * len(v) + 1,
                     time.perf_counter() - t0, list(w))


def second_order_average(hessian_diagonal: torch.Tensor, scale: torch.Tensor, rho: float,
                         norm: str = "l2") -> float:
    """``½ Σᵢ cᵢ² Hᵢᵢ Var(uᵢ)``: the average case to second order, from the Hessian diagonal
    and the scale ``c`` (flat tensors), with ``Var = ρ²`` (ℓ2, Gaussian) or ``ρ²/3`` (ℓ∞,
    uniform on [−ρ, ρ])."""
    _check(rho, norm)
    var = rho**2 if norm == "l2" else rho**2 / 3
    return float(0.5 * var * (scale.double() ** 2 * hessian_diagonal.double()).sum())


def sharpness(obj, rho: float, kind: str = "worst", **kw) -> Sharpness:
    """``worst_case`` (``kind="worst"``) or ``average_case`` (``kind="average"``)."""
    if kind == "worst":
        return worst_case(obj, rho, **kw)
    if kind == "average":
        return average_case(obj, rho, **kw)
    raise LossAtlasError(f"kind={kind!r} is unknown; use 'worst' or 'average'")

