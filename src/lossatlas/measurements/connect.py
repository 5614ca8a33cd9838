"""Mode connectivity: Bezier curves between two trained models, for any ``nn.Module``.

Garipov et al. 2018 / Yang et al. 2021 (Eq. 4, App. A.2). A Bezier curve with control points
θ_0 = θ, θ_1, ..., θ_k = θ′ is

    γ(t) = Σ_j C(k, j) (1 − t)^{k−j} t^j θ_j,   t ∈ [0, 1].

The ends are fixed; the ``bends`` θ_1..θ_{k−1} (one by default: "three bends" with the ends, a
quadratic curve) start on the straight line (so the untrained curve *is* the line) and are
trained with SGD on E_{t~U(0,1)} L(γ(t)): one t per mini-batch, the model run *functionally* at
γ(t) with ``torch.func.functional_call`` (no curve layers, no rewrite of the architecture; BN
uses batch statistics in this train-mode forward), plus Garipov's ½·wd·‖γ(t)‖² and his schedule
(lr constant for the first 50 % of training, linear decay to 1 % at 90 %, constant after).

The curve is then evaluated at ``points`` values of t (5 in the paper) with BN statistics
recomputed at every t (``Objective.recalibrate``), and summarised by the mode connectivity

    mc(θ, θ′) = ½ (L(θ) + L(θ′)) − L(γ(t*)),   t* = argmax_t |½ (L(θ) + L(θ′)) − L(γ(t))|

on the train error in percent (range [−100, 100], the paper's choice) or on the loss. mc < 0:
a barrier (poorly connected); mc ≈ 0: well connected; mc > 0: the ends are not minima. The
same number along the straight line is the linear-interpolation baseline.

With ``align="weights"`` (or ``"activations"``) θ′ is first permuted to match θ
(:func:`la.connect.align`, Ainsworth et al. 2023 / Entezari et al. 2022): the function of θ′
is unchanged, only its hidden units are reordered. The result then holds the straight line, its
mc and its loss barrier before alignment (``unaligned_*``) beside the ones after, and, unless
``unaligned_curve=False``, Yang's mc of a curve trained between the unaligned ends too. The loss
barrier along a path (Entezari et al. 2022) is

    B = max_t [ v(t) − ((1 − t) v(0) + t v(1)) ],

the height of the path above the chord between its ends (0 for a convex path).

>>> import torch
>>> a, b = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
>>> bezier([a, {"w": torch.tensor([0.5, 2.5])}, b], 0.5)["w"].tolist()
[0.5, 1.5]
>>> mode_connectivity([0, 0.5, 1], [1.0, 9.0, 3.0])
ModeConnectivity(mc=-7.0, t_star=0.5)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from lossatlas.core import params as P
from lossatlas.core.batching import Batch, cat
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.objective import Objective
from lossatlas.core.progress import track
from lossatlas.measurements.align import align, match
from lossatlas.store.results import result

__all__ = [
    "ConnectResult",
    "CurveTraining",
    "ModeConnectivity",
    "align",
    "barrier",
    "bernstein",
    "bezier",
    "dense_profile",
    "evaluate_curve",
    "garipov_lr",
    "initial_bends",
    "linear_barrier",
    "mode_connectivity",
    "mode_connectivity_between",
    "train_curve",
]


# -- the curve ------------------------------------------------------------------------------
def bernstein(k: int, t: float) -> np.ndarray:
    """The k+1 Bernstein weights C(k, j) (1 − t)^{k−j} t^j, j = 0..k (they sum to 1)."""
    if k < 1:
        raise LossAtlasError(f"a Bezier curve needs at least 2 control points, got {k + 1}")
    t = float(t)
    return np.array([math.comb(k, j) * (1 - t) ** (k - j) * t ** j for j in range(k + 1)])


def _combine(weights: Sequence[float], points: Sequence) -> Any:
    if isinstance(points[0], Mapping):
        if any(set(p) != set(points[0]) for p in points[1:]):
            raise LossAtlasError("the control points cover different parameters; build them "
                                 "all from the same model")
        return P.lincomb(weights, points)
    return sum(float(w) * torch.as_tensor(p) for w, p in zip(weights, points))


def bezier(points: Sequence, t):
    """γ(t) = Σ_j C(k, j) (1 − t)^{k−j} t^j points[j] (Garipov et al. 2018; Yang et al. Eq. 12).

    ``points``: k+1 control points (points / dicts of tensors, or tensors), ends included.
    ``t``: a float (returns one point or tensor) or a 1-D array (returns a list of them).
    """
    points = list(points)
    if len(points) < 2:
        raise LossAtlasError(f"points: a Bezier curve needs 2+ control points, got {len(points)}")
    k = len(points) - 1
    if np.ndim(t) == 0:
        return _combine(bernstein(k, float(t)), points)
    ts = np.asarray(t, dtype=float)
    if ts.ndim != 1:
        raise LossAtlasError(f"t must be a float or a 1-D array, got shape {ts.shape}")
    return [_combine(bernstein(k, float(x)), points) for x in ts]


def initial_bends(theta_a: Mapping, theta_b: Mapping, bends: int = 1) -> list[P.Point]:
    """The ``bends`` free control points on the straight line, θ_j = θ + (j/k)(θ′ − θ), k =
    bends + 1 (the midpoint for one bend). By the linear precision of Bernstein polynomials,
    the Bezier curve through them is exactly the line θ + t (θ′ − θ)."""
    if not isinstance(bends, int) or bends < 1:
        raise LossAtlasError(f"bends={bends!r} must be an integer >= 1 (1 = three control points)")
    k = bends + 1
    d = P.Point(theta_b) - P.Point(theta_a)
    return [P.axpy(theta_a, [j / k], [d]) for j in range(1, k)]


def garipov_lr(base_lr: float, progress: float) -> float:
    """Garipov et al.'s schedule at ``progress`` = fraction of training done (0..1): base_lr up
    to 0.5, then linear decay to 1 % at 0.9, constant after."""
    if progress <= 0.5:
        return base_lr
    if progress <= 0.9:
        return base_lr * (1.0 - (progress - 0.5) / 0.4 * 0.99)
    return base_lr * 0.01


# -- the number -----------------------------------------------------------------------------
class ModeConnectivity(NamedTuple):
    """mc = ½ (v(0) + v(1)) − v(t*) and the t* where |½ (v(0) + v(1)) − v(t)| is largest."""

    mc: float
    t_star: float


def mode_connectivity(t: Sequence[float], values: Sequence[float]) -> ModeConnectivity:
    """Yang et al. Eq. 4 on a curve sampled at ``t`` (which must contain 0 and 1).

    mc = ½ (v(0) + v(1)) − v(t*), t* = argmax over the interior t of |½ (v(0) + v(1)) − v(t)|
    (the ends tie with opposite signs, so they are only used when no interior t is given;
    the first of equal maxima wins). mc < 0: a barrier; ≈ 0: well connected; > 0: the curve is
    lower than its ends.
    """
    t = np.asarray(t, dtype=float)
    v = np.asarray(values, dtype=float)
    if t.ndim != 1 or t.shape != v.shape or t.size < 2:
        raise LossAtlasError(
            f"t {t.shape} and values {v.shape} must be 1-D of the same length >= 2"
        )
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    if not (np.isclose(t[0], 0.0) and np.isclose(t[-1], 1.0)):
        raise LossAtlasError(f"t must include both ends 0 and 1 (got {t[0]:g}..{t[-1]:g})")
    if not np.all(np.isfinite(v)):
        raise LossAtlasError("values hold NaN or inf; evaluate the curve again")
    ref = 0.5 * (v[0] + v[-1])
    dev = ref - v
    idx = np.arange(1, t.size - 1) if t.size > 2 else np.arange(t.size)
    i = int(idx[np.argmax(np.abs(dev[idx]))])
    return ModeConnectivity(float(dev[i]), float(t[i]))


def barrier(t: Sequence[float], values: Sequence[float]) -> float:
    """Entezari et al.'s barrier max_t [v(t) − ((1 − t) v(0) + t v(1))] on a path sampled at
    ``t`` (which must contain 0 and 1); >= 0 since the ends contribute 0.

    >>> barrier([0, 0.5, 1], [1.0, 4.0, 3.0])
    2.0
    """
    t = np.asarray(t, dtype=float)
    v = np.asarray(values, dtype=float)
    mode_connectivity(t, v)  # the same checks on t and values
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    return float(np.max(v - ((1 - t) * v[0] + t * v[-1])))


# -- evaluation -----------------------------------------------------------------------------
def _grid(points: int | Sequence[float]) -> np.ndarray:
    if isinstance(points, (int, np.integer)):
        if points < 2:
            raise LossAtlasError(f"points={points} must be >= 2 (the ends are always evaluated)")
        return np.linspace(0.0, 1.0, int(points))
    ts = np.asarray(points, dtype=float)
    if ts.ndim != 1 or ts.size < 2 or ts.min() < 0 or ts.max() > 1:
        raise LossAtlasError("points: pass a count >= 2 or t values in [0, 1]")
    return ts


def _evaluate_points(obj: Objective, pts: Sequence[Mapping], desc: str) -> dict[str, np.ndarray]:
    loss, err = [], []
    bn = obj.has_bn
    for p in track(pts, desc, total=len(pts), disable=None if len(pts) > 8 else True):
        ev = obj.evaluate(p, obj.recalibrate(p) if bn else obj.buffers)
        loss.append(ev["loss"])
        err.append(100.0 * (1.0 - ev["accuracy"]))
    return {"loss": np.array(loss), "error": np.array(err)}


def evaluate_curve(obj: Objective, control: Sequence[Mapping], points: int | Sequence[float] = 5
                   ) -> dict[str, np.ndarray]:
    """Loss and train error (percent) along the Bezier curve with ``control`` points at
    ``points`` values of t (a count: evenly spaced, ends included), BN statistics recomputed
    at every t when the model has BN. Returns ``{"t", "loss", "error"}`` arrays."""
    ts = _grid(points)
    out = _evaluate_points(obj, bezier(control, ts), "curve")
    return {"t": ts, **out}


def linear_barrier(obj: Objective, theta_a: Mapping, theta_b: Mapping,
                   points: int | Sequence[float] = 5, metric: str = "error") -> dict[str, Any]:
    """The straight-line baseline: loss / error along θ + t (θ′ − θ), its mc and its barrier
    (:func:`barrier`) on ``metric``. Returns ``{"t", "loss", "error", "mc", "t_star",
    "barrier"}``."""
    a, b = _ends(obj, theta_a, theta_b)
    ts = _grid(points)
    d = b - a
    out = _evaluate_points(obj, [P.axpy(a, [float(x)], [d]) for x in ts], "line")
    mc = mode_connectivity(ts, out[_metric(metric)])
    return {"t": ts, **out, "mc": mc.mc, "t_star": mc.t_star,
            "barrier": barrier(ts, out[_metric(metric)])}


def dense_profile(obj: Objective, res: ConnectResult, points: int = 21,
                  linear: bool = True) -> dict[str, np.ndarray]:
    """The curve (and the straight line) of ``res`` at ``points`` evenly spaced t, for figures:
    ``{"t", "curve_loss", "curve_error", "line_loss", "line_error"}`` (BN recalibrated at every
    t as in :func:`train_curve`; mc stays the one of the paper's 5 points)."""
    ts = _grid(points)
    cur = _evaluate_points(obj, bezier(res.control, ts), "dense curve")
    out = {"t": ts, "curve_loss": cur["loss"], "curve_error": cur["error"]}
    if linear:
        a, b = res.control[0], res.control[-1]
        d = P.Point(b) - P.Point(a)
        lin = _evaluate_points(obj, [P.axpy(a, [float(x)], [d]) for x in ts], "dense line")
        out.update(line_loss=lin["loss"], line_error=lin["error"])
    return out


def _metric(metric: str) -> str:
    if metric not in ("error", "loss"):
        raise LossAtlasError(f'metric={metric!r} is unknown; use "error" (train error in %) or '
                             '"loss"')
    return metric


def _ends(obj: Objective, theta_a, theta_b) -> tuple[P.Point, P.Point]:
    out = []
    for name, th in (("theta_a", theta_a), ("theta_b", theta_b)):
        if isinstance(th, nn.Module):
            th = dict(th.named_parameters())
        if not isinstance(th, Mapping):
            raise LossAtlasError(f"{name} must be a point, a state dict or an nn.Module")
        missing = [k for k in obj.names if k not in th]
        if missing:
            raise LossAtlasError(f"{name} lacks parameters {missing[:3]}; pass a point or state "
                                 "dict of the same architecture")
        out.append(P.Point({k: torch.as_tensor(th[k]).detach().to(obj.device,
                                                                     obj.center[k].dtype).clone()
                            for k in obj.names}))
    return out[0], out[1]


# -- the result -----------------------------------------------------------------------------
@result("connect")
@dataclass
class ConnectResult:
    """A trained Bezier curve and its evaluation.

    t (n,), loss (n,), error (n,) in percent along the curve; ``metric`` ("error" | "loss") is
    what ``mc`` / ``t_star`` use; ``linear_loss`` / ``linear_error`` / ``linear_mc`` /
    ``linear_t_star`` the straight-line baseline at the same t; ``control`` the k+1 control
    points (ends included); ``history`` the mean training loss on the curve per epoch;
    ``linear_barrier`` the straight line's :func:`barrier` on the metric.

    After ``align="weights" | "activations"`` θ′ (``control[-1]``) is the aligned model and
    ``unaligned_linear_loss`` / ``unaligned_linear_error`` / ``unaligned_linear_mc`` /
    ``unaligned_linear_barrier`` describe the straight line before alignment,
    ``unaligned_mc`` / ``unaligned_t_star`` a curve trained between the unaligned ends (nan
    when it was not trained); ``align`` is "" without alignment.
    """

    t: np.ndarray
    loss: np.ndarray
    error: np.ndarray
    mc: float
    t_star: float
    metric: str = "error"
    linear_loss: np.ndarray | None = None
    linear_error: np.ndarray | None = None
    linear_mc: float = float("nan")
    linear_t_star: float = float("nan")
    control: list = field(default_factory=list)
    history: np.ndarray | None = None
    settings: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    linear_barrier: float = float("nan")
    align: str = ""
    unaligned_linear_loss: np.ndarray | None = None
    unaligned_linear_error: np.ndarray | None = None
    unaligned_linear_mc: float = float("nan")
    unaligned_linear_barrier: float = float("nan")
    unaligned_mc: float = float("nan")
    unaligned_t_star: float = float("nan")

    @property
    def values(self) -> np.ndarray:
        """The metric mc is computed on, along the curve."""
        return self.error if self.metric == "error" else self.loss

    @property
    def linear(self) -> np.ndarray | None:
        """The metric along the straight line (None when not evaluated)."""
        return self.linear_error if self.metric == "error" else self.linear_loss

    @property
    def bends(self) -> list:
        """The trained free control points (the ends excluded)."""
        return list(self.control[1:-1])

    def point(self, t: float) -> P.Point:
        """γ(t) from the stored control points."""
        return bezier(self.control, t)

    def as_dict(self) -> dict[str, Any]:
        """The compact form a sweep table stores: t, values, linear, mc, t_star, mc_linear."""
        out: dict[str, Any] = {"t": self.t.tolist(), "values": self.values.tolist(),
                               "mc": self.mc, "t_star": self.t_star, "metric": self.metric}
        if self.linear is not None:
            out.update(linear=self.linear.tolist(), mc_linear=self.linear_mc,
                       barrier_linear=self.linear_barrier)
        if self.align:
            out.update(align=self.align, mc_unaligned=self.unaligned_mc,
                       mc_linear_unaligned=self.unaligned_linear_mc,
                       barrier_linear_unaligned=self.unaligned_linear_barrier)
        return out


# -- training -------------------------------------------------------------------------------
def _take(x, idx: torch.Tensor):
    if isinstance(x, torch.Tensor):
        return x[idx]
    if isinstance(x, Mapping):
        return {k: _take(v, idx) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_take(v, idx) for v in x)
    return x


def _objective(obj_or_model, data, batch_size: int | None) -> Objective:
    if isinstance(obj_or_model, Objective):
        if data is not None:
            return obj_or_model.with_data(data)
        return obj_or_model
    if isinstance(obj_or_model, nn.Module):
        if data is None:
            raise LossAtlasError("data is required when the first argument is a model; pass the "
                                 "training set (or an Objective)")
        return Objective(obj_or_model, data, batch_size=batch_size, check=False)
    raise LossAtlasError(
        f"expected an Objective or an nn.Module, got {type(obj_or_model).__name__}"
    )


@dataclass(frozen=True)
class CurveTraining:
    """How the bends of a curve are trained (Garipov et al. 2018's settings by default): SGD
    with ``momentum`` on E_t L(γ(t)) + ½·``weight_decay``·‖γ(t)‖², one t ~ U(0, 1) per
    mini-batch of ``batch_size`` (shuffled each epoch by a generator seeded with ``seed``),
    ``lr`` with :func:`garipov_lr` over ``epochs``; ``bends`` free control points."""

    bends: int = 1
    epochs: int = 50
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    seed: int = 0
    progress: bool | None = None

    def check(self) -> None:
        """One sentence for a bad setting."""
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise LossAtlasError(f"epochs={self.epochs!r} must be an integer >= 0")
        if self.lr <= 0 or self.batch_size < 1:
            raise LossAtlasError("lr must be > 0 and batch_size >= 1")


def train_curve(
    obj: Objective | nn.Module,
    theta_a: Mapping | nn.Module,
    theta_b: Mapping | nn.Module,
    data=None,
    *,
    bends: int = 1,
    epochs: int = 50,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    points: int | Sequence[float] = 5,
    metric: str = "error",
    linear: bool = True,
    seed: int = 0,
    progress: bool | None = None,
    align: str | None = None,
    unaligned_curve: bool = True,
) -> ConnectResult:
    """Train the bends of a Bezier curve from θ (``theta_a``) to θ′ (``theta_b``) and measure mc.

    Paper settings: bends=1, epochs=50, lr=0.01, points=5. The ends are never changed;
    deterministic for a ``seed``.

    Args:
        obj: an :class:`Objective` on the training data, or a model plus ``data``.
        theta_a, theta_b: the ends θ, θ′ (points, state dicts or modules).
        data: the training data when ``obj`` is a model.
        bends, epochs, lr, momentum, weight_decay, batch_size, seed, progress: the training
            (see :class:`CurveTraining`); the bends start on the straight line.
        points: t values where the curve (and the straight line when ``linear``) is evaluated
            with BN recalibrated at every t (a count: evenly spaced, ends included).
        metric: what mc / t* are computed on: "error" (train error in percent) or "loss".
        align: ``"weights"`` (Git Re-Basin weight matching) or ``"activations"`` (on the
            training data) permutes θ′ to match θ first (same function, reordered units); the
            result then also reports the line (and, with ``unaligned_curve``, a curve) between
            the unaligned ends.

    Returns:
        a :class:`ConnectResult`.
    """
    metric = _metric(metric)
    obj = _objective(obj, data, 512)
    opts = CurveTraining(bends=bends, epochs=epochs, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, batch_size=batch_size, seed=seed,
                         progress=progress)
    if align is not None:
        return _train_aligned(obj, theta_a, theta_b, align, unaligned_curve, dict(
            bends=bends, epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
            batch_size=batch_size, points=points, metric=metric, linear=True, seed=seed,
            progress=progress))
    a, b = _ends(obj, theta_a, theta_b)
    opts.check()
    control, history = _train_bends(obj, a, b, opts)
    return _measure_curve(obj, control, history, opts, points, metric, linear)


def _train_bends(obj: Objective, a: P.Point, b: P.Point, opts: CurveTraining
                 ) -> tuple[list[P.Point], list[float]]:
    """The trained control points [θ, bends..., θ′] and the mean training loss per epoch."""
    leaves = [{k: v.requires_grad_(True) for k, v in p.clone().items()}
              for p in initial_bends(a, b, opts.bends)]
    inputs = cat([bt.inputs for bt in obj.batches])
    targets = cat([bt.targets for bt in obj.batches]) if obj.batches[0].targets is not None \
        else None
    n = obj.num_samples
    gen = torch.Generator().manual_seed(int(opts.seed))
    opt = torch.optim.SGD([t for p in leaves for t in p.values()], lr=opts.lr,
                          momentum=opts.momentum)
    total = max(1, opts.epochs * max(1, math.ceil(n / opts.batch_size)))
    scratch = {name: v.clone() for name, v in obj.buffers.items()}  # BN running stats land here
    history: list[float] = []
    step = 0
    for _ in track(range(opts.epochs), "curve", total=opts.epochs,
                   disable=None if opts.progress is None else not opts.progress):
        perm = torch.randperm(n, generator=gen).to(obj.device)
        run_loss, run_n = 0.0, 0
        for s in range(0, n, opts.batch_size):
            idx = perm[s:s + opts.batch_size]
            batch = Batch(_take(inputs, idx), _take(targets, idx), float(idx.numel()))
            pt = _curve_point(obj, [a, *leaves, b], float(torch.rand((), generator=gen)))
            for g in opt.param_groups:
                g["lr"] = garipov_lr(opts.lr, step / total)
            loss = _sgd_step(obj, opt, pt, batch, scratch, opts.weight_decay)
            run_loss += loss * idx.numel()
            run_n += idx.numel()
            step += 1
        history.append(run_loss / max(run_n, 1))
    control = [a, *[P.Point({k: v.detach().clone() for k, v in p.items()}) for p in leaves], b]
    return control, history


def _curve_point(obj: Objective, control: Sequence[Mapping], t: float) -> dict:
    """γ(t) = Σ_j C(k, j)(1 − t)^{k−j} t^j θ_j, differentiable in the bends (ends first, as
    the training has always summed them)."""
    w = bernstein(len(control) - 1, t)
    a, b, bends = control[0], control[-1], control[1:-1]
    return {name: float(w[0]) * a[name] + float(w[-1]) * b[name]
            + sum(float(w[j + 1]) * bends[j][name] for j in range(len(bends)))
            for name in obj.names}


def _sgd_step(obj: Objective, opt: torch.optim.Optimizer, pt: Mapping, batch: Batch,
              scratch: dict, weight_decay: float) -> float:
    """One SGD step on L_batch(γ(t)) + ½·weight_decay·‖γ(t)‖² (train-mode forward, BN batch
    statistics, running statistics into ``scratch``); returns the batch loss."""
    loss = obj.loss_fn(obj.forward(pt, batch, scratch, train=True), batch.targets)
    reg = 0.5 * weight_decay * sum(v.pow(2).sum() for v in pt.values()) \
        if weight_decay else 0.0
    opt.zero_grad(set_to_none=True)
    (loss + reg).backward()
    opt.step()
    return loss.item()


def _measure_curve(obj: Objective, control: list[P.Point], history: list[float],
                   opts: CurveTraining, points: int | Sequence[float], metric: str,
                   linear: bool) -> ConnectResult:
    """The trained curve (and the straight line) evaluated at ``points`` t values, mc on
    ``metric``, with the settings and provenance."""
    a, b = control[0], control[-1]
    ts = _grid(points)
    ev = _evaluate_points(obj, bezier(control, ts), "curve")
    mc = mode_connectivity(ts, ev[metric])
    lin = linear_barrier(obj, a, b, ts, metric) if linear else None
    settings = {"bends": opts.bends, "epochs": opts.epochs, "lr": opts.lr,
                "momentum": opts.momentum, "weight_decay": opts.weight_decay,
                "batch_size": opts.batch_size, "seed": opts.seed, "schedule": "garipov",
                "bn": "recalibrate" if obj.has_bn else "none"}
    return ConnectResult(
        t=ts, loss=ev["loss"], error=ev["error"], mc=mc.mc, t_star=mc.t_star, metric=metric,
        linear_loss=lin["loss"] if lin else None, linear_error=lin["error"] if lin else None,
        linear_mc=lin["mc"] if lin else float("nan"),
        linear_t_star=lin["t_star"] if lin else float("nan"),
        control=control, history=np.array(history), settings=settings,
        provenance={**obj.describe(), "hash_a": P.hash_point(a), "hash_b": P.hash_point(b)},
        linear_barrier=lin["barrier"] if lin else float("nan"),
    )


def _as_model(obj: Objective, theta, name: str) -> nn.Module:
    """``theta`` itself when a module, else a copy of the objective's model holding it."""
    if isinstance(theta, nn.Module):
        return theta
    if not isinstance(theta, Mapping):
        raise LossAtlasError(f"{name} must be a point, a state dict or an nn.Module")
    model = copy.deepcopy(obj.model)
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with torch.no_grad():
        for k, v in theta.items():
            if k in tensors:
                tensors[k].copy_(torch.as_tensor(v))
    return model


def _train_aligned(obj: Objective, theta_a, theta_b, method: str, unaligned_curve: bool,
                   kw: dict) -> ConnectResult:
    """train_curve between θ and θ′ permuted to match θ, with the unaligned baselines."""
    model_a, model_b = _as_model(obj, theta_a, "theta_a"), _as_model(obj, theta_b, "theta_b")
    data = None
    if method == "activations":
        data = cat([bt.inputs for bt in obj.batches])
    found = match(model_a, model_b, method, data, seed=kw["seed"])
    if unaligned_curve:
        before = train_curve(obj, model_a, model_b, **kw)
        lin = {"loss": before.linear_loss, "error": before.linear_error,
               "mc": before.linear_mc, "barrier": before.linear_barrier}
    else:
        before = None
        lin = linear_barrier(obj, model_a, model_b, kw["points"], kw["metric"])
    res = train_curve(obj, model_a, found.model, **kw)
    res.align = method
    res.unaligned_linear_loss, res.unaligned_linear_error = lin["loss"], lin["error"]
    res.unaligned_linear_mc, res.unaligned_linear_barrier = lin["mc"], lin["barrier"]
    if before is not None:
        res.unaligned_mc, res.unaligned_t_star = before.mc, before.t_star
    res.settings.update(align=method, align_converged=bool(found.converged),
                        align_passes=max(len(found.history) - 1, 0))
    return res


def mode_connectivity_between(
    model_a: nn.Module, model_b: nn.Module, data, points: int = 5, seed: int = 0,
    metric: str = "error", **train_kwargs,
) -> dict[str, Any]:
    """Train a curve between two models of the same architecture on ``data`` and return the
    compact form a sweep stores: ``t``, ``values`` (the metric along the curve), ``linear``
    (along the line), ``mc``, ``t_star``, ``mc_linear``, ``metric``. ``train_kwargs`` go to
    :func:`train_curve`."""
    res = train_curve(model_a, model_a, model_b, data, points=points, seed=seed,
                      metric=metric, **train_kwargs)
    return res.as_dict()
