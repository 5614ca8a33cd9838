"""``lossatlas mine`` and ``lossatlas shapes`` (Li, Li, Zhan 2024), and the overlaid curves of
``lossatlas curve -D A -D B``.

    lossatlas mine w-peak --checkpoint runs/mlp-digits-seed0 --index 1 --out wpeak.h5
    lossatlas mine vvv-basin --checkpoint runs/mlp-digits-seed0 --gamma 0.1 --alpha 0
    lossatlas shapes curve1.h5 curve2.h5 --num-classes 10
    lossatlas curve -D gaussian:filter:seed=0 -D eigen:SA:1 -D independent:runs/b -c runs/a
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from lossatlas.cli import app
from lossatlas.cli.options import (
    Evaluation,
    PartialOpt,
    Source,
    completeness,
    shared_options,
)
from lossatlas.core.errors import LossAtlasError
from lossatlas.report.text import cosine_line, curve_shape_line, mined_line, shape_line

ALGORITHMS = ("w-peak", "vvv-basin")


@app.command()
@shared_options(batch_size=128, omit=("split", "include", "exclude"))
def mine(
    *,
    algorithm: Annotated[str, typer.Argument(help="w-peak (Algorithm 1) or vvv-basin (2).")],
    src: Source,
    epochs: Annotated[int, typer.Option(help="Passes over the data.")] = 10,
    lr: Annotated[float, typer.Option(help="Learning rate η (plain SGD).")] = 0.1,
    alpha: Annotated[float | None, typer.Option(
        help="w-peak: the final α of the 0→α ramp (1); vvv-basin: λ ∈ [0.5 ± α] (0).")] = None,
    gamma: Annotated[float, typer.Option(help="vvv-basin: weight γ of the midpoint loss.")] = 0.1,
    ev: Evaluation,
    points: Annotated[int, typer.Option(help="Points of the curve drawn along ε.")] = 41,
    profile: Annotated[bool, typer.Option(
        help="Also compute |cos| with N.E.1-10 and P.E.10-1 (Hessian eigenvectors).")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Result file (.h5).")] = None,
) -> None:
    """Mine a direction ε around the checkpoint whose curve is a w-peak or a vvv-basin.

    Writes the result (ε, history, settings) to --out, its curve θ + λε to OUT.png with the
    classifier's verdict, and with --profile the cosine profile to OUT-cosine.png. Use the
    result as a direction with --direction mined:OUT. The mining steps use the checkpoint's
    BatchNorm statistics (the paper's pseudo-code); --bn recalibrate recomputes them at every
    point of the curve that gives the verdict (UpBN), and the result records which.
    """
    import lossatlas as la
    from lossatlas.plot import shapes as plot

    if algorithm not in ALGORITHMS:
        raise LossAtlasError(f"ALGORITHM {algorithm!r} is unknown; use w-peak or vvv-basin")
    if out is not None:
        la.store.check_output(out, "--out", resumable=False)
    seed = src.seed
    obj = ev.objective(*src.load())
    if algorithm == "w-peak":
        res = la.mining.mine_w_peak(obj, epochs=epochs, lr=lr, seed=seed,
                                    alpha_max=1.0 if alpha is None else alpha)
    else:
        res = la.mining.mine_vvv_basin(obj, epochs=epochs, lr=lr, seed=seed, gamma=gamma,
                                       alpha=0.0 if alpha is None else alpha)
    out = Path(out) if out is not None else Path(f"mined-{algorithm}-seed{seed}.h5")
    res.save(out)
    span = tuple(res.direction.meta.get("span", (-1.0, 1.0)))
    c = la.curve(obj, res.direction, span=span, points=points)
    log_c = _log_c(obj)
    shape = la.shapes.classify(c.x, c.loss, log_c=log_c)
    marks = res.direction.meta.get("markers", [0.0])
    plot.overlay([c], [f"Mine ({algorithm})"], log_c=log_c, markers=marks,
                 title=f"{algorithm} → {shape.kind}", path=out.with_suffix(".png"))
    typer.echo(mined_line(out, shape, out.with_suffix(".png")))
    if profile:
        prof = la.mining.cosine_profile(res.direction, obj, k=10)
        path = out.with_name(out.stem + "-cosine.png")
        plot.cosine_bars(prof, title=f"|cos| of the mined {algorithm} direction", path=path)
        typer.echo(cosine_line(prof))


def overlay_curves(obj, net, specs: list[str], span: tuple[float, float] | None, points: int,
                   out: Path, title: str = "", **curve_kw) -> list:
    """Curves θ + λε for each direction spec, saved as OUT-0.h5, OUT-1.h5, ... and drawn
    overlaid into OUT (.png) with their stationary-point counts and types (Li, Li, Zhan 2024,
    Fig. 1 style). ``span=None``: each direction's suggested range."""
    import lossatlas as la
    from lossatlas.directions.spec import parse_directions
    from lossatlas.plot import shapes as plot

    out = Path(out).with_suffix(".png")
    log_c = _log_c(obj)
    results, labels = [], []
    for spec, d in zip(specs, parse_directions(specs, obj, model=net)):
        path = out.with_name(f"{out.stem}-{len(results)}.h5")
        c = la.curve(obj, d, span=span or tuple(d.meta.get("span", (-1.0, 1.0))), points=points,
                     **curve_kw)
        c.save(path)
        s = la.shapes.classify(c.x, c.loss, log_c=log_c)
        typer.echo(curve_shape_line(spec, s, path))
        results.append(c)
        labels.append(f"{d.meta.get('label', spec)} {s.kind}")
    plot.overlay(results, labels, log_c=log_c, markers=(0.0,), title=title, path=out)
    typer.echo(f"figure: {out}")
    return results


def _log_c(obj) -> float | None:
    c = obj.num_classes  # None for a model that is not a classifier
    return math.log(c) if c and c > 1 else None


@app.command()
def shapes(
    files: Annotated[list[Path], typer.Argument(help="Curve result files (.h5).")],
    num_classes: Annotated[int | None, typer.Option(
        help="C: the curve is clipped at the random-guess loss log C.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Also draw the curves overlaid here.")] = None,
    partial: PartialOpt = False,
) -> None:
    """Name the type of each saved curve (v-basin, v-side, w-basin, w-peak, vvv-basin, other)
    with its evidence: stationary points, minima, maxima, where the center sits. A
    half-computed file is refused unless --partial (then only its computed points count)."""
    import numpy as np

    import lossatlas as la

    log_c = math.log(num_classes) if num_classes else None
    curves, labels = [], []
    for f in files:
        res = la.load(f, what="FILE")
        if not hasattr(res, "x") or not hasattr(res, "loss") or np.ndim(res.loss) != 1:
            raise LossAtlasError(f"{f} holds a {type(res).__name__}, not a curve; pass files "
                                 "written by `lossatlas curve` or la.curve(...).save")
        note = completeness(res, f, partial)
        x, y = np.asarray(res.x), np.asarray(res.loss)
        if note:
            done = np.asarray(res.done, dtype=bool)
            x, y = x[done], y[done]
        typer.echo(shape_line(f, la.shapes.classify(x, y, log_c=log_c), note))
        curves.append(res)
        labels.append(Path(f).stem)
    if plot is not None:
        from lossatlas.plot import shapes as plots

        plots.overlay(curves, labels, log_c=log_c, path=plot)
