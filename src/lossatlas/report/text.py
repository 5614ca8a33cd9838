"""Results as text lines for the terminal: what each ``lossatlas`` command prints about the
result it computed (the CLI echoes them; any report may reuse them).

Every function takes a result object (and the few settings that shape the wording) and returns
lines without a trailing newline; none prints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "cka_lines",
    "connect_lines",
    "cosine_line",
    "curve_shape_line",
    "delta_lines",
    "hessian_lines",
    "landscape_line",
    "mined_line",
    "run_summary",
    "shape_line",
    "sharpness_line",
    "sweep_table",
    "track_line",
    "trajectory_lines",
]


def landscape_line(result, path: Path) -> str:
    """A curve, interpolation or surface: points computed, loss range, engine and (surfaces)
    the cosine of the two directions, e.g. ``surface: 121/121 points, loss 0.1 .. 2.3 (engine
    affine, cos(d1, d2) = 0.012) -> s.h5``."""
    loss = np.asarray(result.loss)
    cos = result.meta.get("cosine")
    axes = "" if cos is None else (f", cos(d1, d2) = {cos:.3f}"
                                   + (" before orthogonalizing" if result.meta.get(
                                       "orthogonalized") else ""))
    return (f"{result.kind}: {int(np.sum(result.done))}/{result.done.size} points, loss "
            f"{np.nanmin(loss):.4g} .. {np.nanmax(loss):.4g} (engine "
            f"{result.meta.get('engine', '-')}{axes}) -> {path}")


def _fmt(xs) -> str:
    return "[" + ", ".join(f"{x:.2f}" for x in xs) + "]"


def shape_line(file, shape, note: str = "") -> str:
    """A saved curve's type with its evidence (``lossatlas shapes``): stationary points,
    extrema, minima, maxima, where the center sits, the reason; ``note`` marks a partial file."""
    above = f", above log C on {shape.above_log_c}" if shape.above_log_c else ""
    return (f"{file}: {shape.kind} [{shape.stationary}] extrema {shape.pattern or 'none'} "
            f"minima {_fmt(shape.minima)} maxima {_fmt(shape.maxima)} center at "
            f"{shape.center_at}{above} ({shape.reason})"
            + (f" [{note}: the type of the computed points only]" if note else ""))


def curve_shape_line(label: str, shape, path) -> str:
    """One curve of an overlay: ``gaussian: v-basin [1] (min) -> c-0.h5``."""
    return f"{label}: {shape.kind} [{shape.stationary}] ({shape.pattern or 'monotone'}) -> {path}"


def mined_line(path, shape, figure) -> str:
    """A mined direction's file and the type of its curve (Li, Li, Zhan 2024 Algorithms 1-2)."""
    return (f"{path}: curve {shape.kind} ({shape.pattern or 'monotone'}, {shape.stationary} "
            f"stationary points), figure {figure}")


def cosine_line(profile) -> str:
    """``  N.E.1:0.120 ... P.E.1:0.034``: |cos| of a direction with Hessian eigenvectors."""
    return "  " + " ".join(f"{lab}:{v:.3f}" for lab, v in zip(profile.labels, profile.values))


def delta_lines(dist) -> list[str]:
    """The δL histograms in numbers (Li, Li, Zhan 2024 Fig. 13): per λ, the mean second-order
    and true change and the share of positive true changes."""
    return [f"λ = {lam:g}: mean δL {p.mean():.3g} (second order), {t.mean():.3g} (true); "
            f"positive {100 * (t > 0).mean():.0f} %"
            for lam, p, t in zip(dist.lambdas, dist.predicted, dist.true)]


def hessian_lines(summary, trace: bool, processes: int = 1) -> list[str]:
    """Eigenvalues with their residuals, the trace (when estimated) and the cost."""
    lines = [f"{name:>7} λ = {v: .6g}   ‖Hv−λv‖ = {r:.2g}"
             for name, v, r in zip(summary.names, summary.values, summary.residuals)]
    if trace:
        lines.append(f"trace = {summary.trace:.6g} ± {summary.trace_error:.2g}")
    procs = f" on {processes} processes" if processes > 1 else ""
    lines.append(f"{summary.matvecs} Hessian-vector products over {len(summary.params)} "
                 f"tensors{procs}")
    return lines


def sharpness_line(res, rho: float, kind: str, norm: str, adaptive: bool) -> str:
    """``adaptive worst-case l2 sharpness, rho 0.5: 0.12 ± 0.01 (base loss ...; cost)``."""
    what = f"{'adaptive ' if adaptive else ''}{kind}-case {norm} sharpness, rho {rho:g}"
    return (f"{what}: {res.value:.6g} ± {res.error:.2g} (base loss {res.base_loss:.6g}; "
            f"{res.gradients} gradients, {res.forwards} forward passes, {res.seconds:.1f} s)")


def connect_lines(res, metric: str, unaligned_curve: bool = True) -> list[str]:
    """Mode connectivity of a trained curve beside the straight line, their values per t and,
    for aligned ends, the line and curve before alignment (Yang et al. 2021)."""
    unit = "%" if metric == "error" else ""
    lines = [f"mc = {res.mc:+.3f}{unit} at t* = {res.t_star:.2f}   (straight line: "
             f"{res.linear_mc:+.3f}{unit} at t* = {res.linear_t_star:.2f})",
             "t      " + " ".join(f"{t:8.2f}" for t in res.t),
             "curve  " + " ".join(f"{v:8.3f}" for v in res.values),
             "line   " + " ".join(f"{v:8.3f}" for v in res.linear)]
    if res.align:
        before = res.unaligned_linear_error if metric == "error" else res.unaligned_linear_loss
        lines.append("line, unaligned " + " ".join(f"{v:8.3f}" for v in before))
        lines.append(
            f"aligned by {res.align}: line barrier {res.unaligned_linear_barrier:.3f}{unit}"
            f" -> {res.linear_barrier:.3f}{unit}; line mc {res.unaligned_linear_mc:+.3f}"
            f"{unit} -> {res.linear_mc:+.3f}{unit}; curve mc "
            + (f"{res.unaligned_mc:+.3f}{unit}" if unaligned_curve else "(not trained)")
            + f" -> {res.mc:+.3f}{unit}")
    return lines


def cka_lines(value: float, distance: float, samples: int, alpha: float,
              noise: float | None, per_layer: dict[str, float] | None = None) -> list[str]:
    """CKA of two models' outputs, their ℓ2 distance and the layer-wise CKA."""
    how = f"inputs + U(±{noise})" if noise is not None else f"mixup Beta({alpha:g},{alpha:g})"
    lines = [f"CKA (softmax outputs, {samples} samples, {how}) = {value:.4f}",
             f"l2 distance = {distance:.4f}"]
    lines += [f"  {name or '(model)':<20} {v:.4f}" for name, v in (per_layer or {}).items()]
    return lines


_SWEEP_COLUMNS = ("test_acc", "train_loss", "hessian_max", "hessian_trace", "mc", "cka", "l2")


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def sweep_table(result):
    """A sweep's per-cell table (a ``rich.table.Table``): the two control values, the metrics
    and the phase (Yang et al. 2021)."""
    from rich.table import Table

    spec = result.spec
    table = Table(title=f"sweep {spec.name}: {len(result.cells)} cells")
    table.add_column(spec.load.label)
    table.add_column(spec.temperature.label)
    for c in _SWEEP_COLUMNS:
        table.add_column(c, justify="right")
    table.add_column("phase")
    for row in result.cells:
        table.add_row(str(row["load"]), str(row["temperature"]),
                      *(_cell(row.get(c)) for c in _SWEEP_COLUMNS), _cell(row.get("phase")))
    return table


def run_summary(run) -> str:
    """One line: final train/test loss and accuracy of a run."""
    parts = [f"{len(run)} checkpoints"]
    for split in ("train", "test"):
        loss, acc = getattr(run, f"{split}_loss")[-1], getattr(run, f"{split}_acc")[-1]
        if loss == loss:  # not NaN
            parts.append(f"{split} loss {loss:.4f} acc {100 * acc:.1f}%")
    return ", ".join(parts)


def track_line(name: str, table: dict[str, Any], lr: float) -> str:
    """A measurement tracked during training: its count, λ_max first -> last beside the
    optimizer's stability threshold (the table's ``threshold``: 2/η for GD, (2+2β)/η with
    momentum; 2/``lr`` for a table without it), Adam's preconditioned λ_max beside its own
    threshold when measured, and the median cost."""
    def last(key: str) -> float:
        col = table.get(key)
        return float(col[-1]) if col is not None and len(col) else math.nan

    prods = table["products"][1:] if len(table["products"]) > 1 else table["products"]
    lam = table["lambda_max"]
    threshold = last("threshold") if "threshold" in table else 2 / lr
    line = f"{name}: {len(table['step'])} measurements, lambda_max {lam[0]:.4g} -> {lam[-1]:.4g}"
    if math.isfinite(threshold):
        line += f" (stability threshold {threshold:.4g})"
    if math.isfinite(last("precond_lambda_max")):
        line += (f", preconditioned lambda_max {last('precond_lambda_max'):.4g} (Adam's "
                 f"threshold {last('precond_threshold'):.4g})")
    elif not math.isfinite(threshold):
        line += " (this optimizer has no stability threshold on lambda_max)"
    return line + f", median {float(np.median(prods)):.0f} products per measurement"


def trajectory_lines(method: str, summary: dict, center: int, out: Path,
                     figures: Sequence[Path] = ()) -> list[str]:
    """A trajectory plane: explained variance, Fitting Error (and the random planes'), where
    the files went."""
    r = summary["plane"].explained_variance_ratio
    lines = [f"{method} plane of {len(summary['plane'].indices)} checkpoints, center {center}: "
             f"explained variance {100 * r[0]:.1f} % + {100 * r[1]:.1f} % = "
             f"{100 * r.sum():.1f} %",
             f"fitting error {summary['trajectory'].fitting_error:.4g}"]
    if "random_fitting_errors" in summary:
        errs = summary["random_fitting_errors"]
        lines.append(f"random filter-normalized planes: fitting error "
                     f"{', '.join(f'{e:.4g}' for e in errs)}")
    lines.append(f"-> {out}")
    lines += [f"  figure: {f}" for f in figures]
    return lines
