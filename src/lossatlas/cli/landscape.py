"""``lossatlas curve``, ``surface``, ``interpolate`` and ``plot`` (Li et al. 2018).

    lossatlas curve --checkpoint runs/mlp-digits-seed0 --direction gaussian:filter:seed=0
    lossatlas surface --checkpoint runs/mlp-digits-seed0 --resolution 51 --out surface.h5
    lossatlas interpolate --checkpoint runs/a --to runs/b --span -0.5 1.5
    lossatlas plot surface.h5 --kind all

Results go to one HDF5 file each (rerun the same command to resume an interrupted surface);
a figure is written next to it.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from lossatlas.cli import app
from lossatlas.cli.interrupt import on_interrupt
from lossatlas.cli.options import (
    Evaluation,
    OutFileOpt,
    PartialOpt,
    Source,
    completeness,
    shared_options,
)
from lossatlas.core.errors import LossAtlasError
from lossatlas.report.text import landscape_line

SpanOpt = Annotated[tuple[float, float], typer.Option(help="Coefficient range LOW HIGH.")]
PlotKinds = ("contour", "contourf", "heatmap", "surface3d", "html", "vtp")


def _check_out(out: Path, counts: list[int], what: str, resumable: bool = True) -> Path:
    """Refuse, before any data is loaded, an --out that cannot be written (a folder, under a
    file, an unreadable file to resume) and a grid this machine cannot hold; on Ctrl-C the
    command then reports the points kept in --out."""
    from lossatlas.core import resources
    from lossatlas.store import results as store

    if min(counts) < 1:
        raise LossAtlasError(f"{what} asks for no point; pass a positive number, e.g. 41")
    store.check_output(out, "--out", resumable=resumable)
    resources.check_grid(tuple(counts), what, out)
    if resumable:
        on_interrupt(lambda: _points_kept(out))
    return out


def _points_kept(path: Path) -> str:
    """``"37 of 121 points are kept in s.h5"`` (read from the file's done mask)."""
    import numpy as np

    from lossatlas.store import results as store

    if not path.exists():
        return f"nothing was computed yet ({path} was not written)"
    try:
        with store.open_h5(path, "r", "--out") as f:
            done = np.asarray(f["done"][()])
    except (LossAtlasError, KeyError, OSError):
        return f"the points already in {path} are kept"
    return f"{int(done.sum())} of {done.size} points are kept in {path}"


def _figures(result, out: Path, kinds: list[str], log: bool = False) -> list[Path]:
    from lossatlas import plot

    written = []
    if result.kind in ("curve", "interpolation"):
        p = out.with_suffix(".png")
        plot.plot_curve(result, p, log=log)
        written.append(p)
        if "html" in kinds:
            written.append(plot.to_html(result, out.with_suffix(".html"), log=log))
        return written
    for k in kinds:  # the 3D view is OUT-3d.png (static) and OUT-3d.html (interactive)
        if k == "html":
            written.append(plot.to_html(result, out.with_name(f"{out.stem}-3d.html"), log=log))
        elif k == "vtp":
            written.append(plot.to_vtp(result, out.with_suffix(".vtp"), log=log))
        else:
            p = out.with_name(f"{out.stem}-{'3d' if k == 'surface3d' else k}.png")
            plot.plot_surface(result, k, p, log=log)
            written.append(p)
    return written


def _report(result, path: Path, figures: list[Path]) -> None:
    typer.echo(landscape_line(result, path))
    for f in figures:
        typer.echo(f"  figure: {f}")


DirectionSpecs = Annotated[list[str] | None, typer.Option(
    "--direction", "-D",
    help="Direction spec (gaussian[:NORM][:seed=S], gradient, checkpoint:PATH, "
    "independent:PATH, eigen:SA, eigen:LA:2, mined:FILE); repeat it for overlaid curves "
    "with their stationary-point counts. Default gaussian:filter:seed=0.")]
LogOpt = Annotated[bool, typer.Option(help="Log-scale loss axis in the figure.")]


@app.command()
@shared_options()
def curve(
    *,
    src: Source,
    direction: DirectionSpecs = None,
    span: Annotated[tuple[float, float] | None, typer.Option(
        help="Coefficient range LOW HIGH (default: the direction's own, -1 1 for most, "
        "-1 2 for independent).")] = None,
    points: Annotated[int, typer.Option(help="Points along the curve.")] = 41,
    ev: Evaluation,
    log: LogOpt = False,
    out: OutFileOpt = None,
) -> None:
    """1D curve L(θ + a·d) along one direction, to OUT (.h5) and OUT.png; with several
    --direction, overlaid curves to OUT.png and OUT-0.h5, OUT-1.h5, ..."""
    import lossatlas as la
    from lossatlas.directions import parse_direction

    out = Path(out or "curve.h5")
    specs = direction or ["gaussian:filter:seed=0"]
    if len(specs) > 1:
        _overlay(src, ev, specs, span, points, out)
        return
    _check_out(out, [points], f"--points {points}")
    net, train, test = src.load()
    obj = ev.objective(net, train, test)
    d = parse_direction(specs[0], obj, model=net)
    span = span or tuple(d.meta.get("span", (-1.0, 1.0)))
    res = la.curve(obj, d, span=span, points=points, path=out, split=ev.split)
    _report(res, out, _figures(res, out, [], log=log))


@app.command(hidden=True)
@shared_options(batch_size=512, omit=("bn", "split", "include", "exclude"))
def curves(
    *,
    direction: Annotated[list[str], typer.Option(
        "--direction", "-D", help="Direction spec, repeatable (see `lossatlas curve`).")],
    src: Source,
    span: Annotated[str | None, typer.Option(
        help="λ range LO,HI (default: each direction's own, e.g. -1,2 for independent).")] = None,
    points: Annotated[int, typer.Option(help="Points per curve (the paper: 41).")] = 41,
    ev: Evaluation,
    out: Annotated[Path, typer.Option("--out", "-o", help="Figure (.png).")] = Path("curves.png"),
) -> None:
    """The former spelling of `lossatlas curve -D A -D B ...` (overlaid curves), kept for old
    scripts: --span LO,HI, the figure is --out itself."""
    fixed = None
    if span is not None:
        try:
            lo, hi = (float(v) for v in span.split(","))
        except ValueError:
            raise LossAtlasError(f"--span {span!r} is not LO,HI; write e.g. --span=-1,2") from None
        fixed = (lo, hi)
    _overlay(src, ev, direction, fixed, points, out)


def _overlay(src: Source, ev: Evaluation, specs: list[str], span, points: int,
             out: Path) -> None:
    """Overlaid curves: OUT.png and OUT-0.h5, OUT-1.h5, ... (`curve` with several -D)."""
    from lossatlas.cli.shapes import overlay_curves

    _check_out(out, [points], f"--points {points}", resumable=False)
    net, train, test = src.load()
    obj = ev.objective(net, train, test)
    overlay_curves(obj, net, specs, span, points, out, title=f"{src.model} on {src.data}",
                   split=ev.split)


def _plot_kinds(kinds: list[str] | None, option: str, default: list[str],
                extra: str = "") -> list[str]:
    """The figure kinds asked for with ``option`` (``--plot`` / ``--kind``); ``all`` is every
    kind where ``extra`` says so."""
    kinds = list(kinds) if kinds else list(default)
    if extra and "all" in kinds:
        kinds = list(PlotKinds)
    bad = [k for k in kinds if k not in PlotKinds]
    if bad:
        raise LossAtlasError(f"{option} {bad[0]!r} is unknown; use {', '.join(PlotKinds)}{extra}")
    return kinds


ResolutionOpt = Annotated[int, typer.Option(help="Points per axis.")]


@dataclass(frozen=True)
class Grid:
    """The grid of a surface: a span and a resolution, or each axis its own. Each axis needs
    at least 2 points (its figures do)."""

    span: SpanOpt = (-1.0, 1.0)
    resolution: ResolutionOpt = 51
    xspan: Annotated[tuple[float, float] | None, typer.Option(
        help="x range (default span).")] = None
    yspan: Annotated[tuple[float, float] | None, typer.Option(
        help="y range (default span).")] = None
    xres: Annotated[int | None, typer.Option(help="Points along x.")] = None
    yres: Annotated[int | None, typer.Option(help="Points along y.")] = None

    def __post_init__(self) -> None:
        for name, n in self.counts().items():
            if n < 2:
                arg = "--resolution" if self.xres is None and self.yres is None else name
                raise LossAtlasError(f"{arg} {n} gives {n} point along an axis, and a surface's "
                                     f"figures need at least 2; pass {arg} 2 or more (e.g. 51)")

    def counts(self) -> dict[str, int]:
        """Points per axis: ``{"--xres": nx, "--yres": ny}``."""
        return {"--xres": self.xres or self.resolution, "--yres": self.yres or self.resolution}

    def described(self) -> str:
        """The options that set the grid, as typed (``--resolution 51``)."""
        if self.xres is None and self.yres is None:
            return f"--resolution {self.resolution}"
        return " ".join(f"{k} {v}" for k, v in self.counts().items())

    def spans(self) -> dict:
        """The keyword arguments of ``la.surface`` that set the grid."""
        return {"span": self.span, "resolution": self.resolution, "xspan": self.xspan,
                "yspan": self.yspan, "xres": self.xres, "yres": self.yres}


@app.command()
@shared_options()
def surface(
    *,
    src: Source,
    x_direction: Annotated[str, typer.Option(help="Direction spec of the x axis.")
                           ] = "gaussian:filter:seed=0",
    y_direction: Annotated[str, typer.Option(help="Direction spec of the y axis.")
                           ] = "gaussian:filter:seed=1",
    grid: Grid,
    orthogonalize: Annotated[bool, typer.Option(
        help="Use the part of the y direction orthogonal to the x direction.")] = False,
    ev: Evaluation,
    plot: Annotated[list[str] | None, typer.Option(
        help=f"Figures to write (repeatable): {', '.join(PlotKinds)}.")] = None,
    log: Annotated[bool, typer.Option(help="Plot log10 of the loss.")] = False,
    out: OutFileOpt = None,
    ray: Annotated[str | None, typer.Option(
        "--ray", help="Send the grid's chunks to Ray: auto, ADDRESS or local (only this "
        "process writes the file).")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", "-w", help="Local worker processes, one torch thread each (1: this "
        "process, torch's default threads).")] = 1,
) -> None:
    """2D surface L(θ + a·d₁ + b·d₂) on a grid, written as computed to OUT (.h5); rerun the
    same command to resume. Figures: OUT-contour.png and OUT-3d.html by default; --plot picks
    others (surface3d writes OUT-3d.png, html OUT-3d.html)."""
    from lossatlas.directions import parse_directions

    kinds = _plot_kinds(plot, "--plot", ["contour", "html"])
    if workers < 1:
        raise LossAtlasError(f"--workers {workers} must be at least 1; pass --workers 2.")
    out = _check_out(Path(out or "surface.h5"), list(grid.counts().values()), grid.described())
    net, train, test = src.load()
    obj = ev.objective(net, train, test)
    if src.checkpoint is None:  # on stdout, once the inputs are known to be good (stderr: errors)
        typer.secho(f"warning: no --checkpoint: this maps a random initialization of "
                    f"{src.model} (seed {src.seed}); pass -c RUN_FOLDER for trained weights",
                    fg="yellow")
    d1, d2 = parse_directions([x_direction, y_direction], obj, model=net,
                              options=["--x-direction", "--y-direction"])
    res = _compute_surface(obj, d1, d2, grid, orthogonalize, out, ev.split, ray, workers)
    _report(res, out, _figures(res, out, kinds, log=log))


def _compute_surface(obj, d1, d2, grid: Grid, orthogonalize: bool, out: Path, split: str,
                     ray: str | None, workers: int):
    """``la.surface`` into ``out``, on Ray or local workers when asked; its warnings are
    printed after it, one line each."""
    import lossatlas as la

    with contextlib.ExitStack() as stack:
        executor = None
        if ray or workers > 1:
            from lossatlas.sweeps.executors import make_executor

            executor = stack.enter_context(make_executor(ray=ray, workers=workers))
        caught = stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("always")
        res = la.surface(obj, d1, d2, **grid.spans(), orthogonalize=orthogonalize, path=out,
                         executor=executor, split=split)
    for w in caught:
        typer.secho(f"warning: {w.message}", err=True, fg="yellow")
    return res


@app.command()
@shared_options(omit=("checkpoint", "index"))
def interpolate(
    *,
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c",
                                             help="Weights a (t = 0): .pt file or run folder.")],
    to: Annotated[Path, typer.Option(help="Weights b (t = 1): .pt file or run folder.")],
    index: Annotated[int | None, typer.Option(
        "--index", "-k", help="Checkpoint index in a run folder (default: the last).")] = None,
    to_index: Annotated[int | None, typer.Option(help="Checkpoint index in --to's run.")
                        ] = None,
    src: Source,
    span: SpanOpt = (-0.5, 1.5),
    points: Annotated[int, typer.Option(help="Points along the line.")] = 41,
    ev: Evaluation,
    log: LogOpt = False,
    out: OutFileOpt = None,
) -> None:
    """Linear interpolation L(θ_a + t(θ_b − θ_a)) between two sets of weights (BN statistics
    of a, or recalibrated with --bn recalibrate)."""
    import lossatlas as la
    from lossatlas.directions import load_point

    out = _check_out(Path(out or "interpolation.h5"), [points], f"--points {points}")
    net, train, test = src.load(checkpoint=checkpoint, index=index)
    obj = ev.objective(net, train, test)
    b = load_point(to, obj.names, to_index)
    res = la.interpolate(obj, obj.center, b, span=span, points=points, path=out, split=ev.split)
    _report(res, out, _figures(res, out, [], log=log))


@app.command(name="plot")
def plot_cmd(
    file: Annotated[Path, typer.Argument(
        help="Any result file (.h5): curve, interpolation, surface, hessian, connect, "
        "trajectory path, mined, ...; or a sweep folder.")],
    kind: Annotated[list[str] | None, typer.Option(
        help=f"Surface figures (repeatable): {', '.join(PlotKinds)} or all.")] = None,
    log: Annotated[bool, typer.Option(help="Log scale / log10 of the loss.")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o",
                                             help="Figure base name (default: FILE).")] = None,
    partial: PartialOpt = False,
) -> None:
    """Draw a saved result, choosing the figure by its kind (curves, surfaces, Hessian
    spectra and densities, δL histograms, connectivity curves, trajectory fits, mined
    directions, sweeps). A half-computed curve or surface is refused unless --partial (then
    its missing points are left blank and the figure's title says "partial")."""
    import lossatlas as la

    if (file.is_dir() and (file / "results.jsonl").is_file()) or file.name == "results.jsonl":
        from lossatlas import sweeps as S  # a sweep folder: its phase diagram and mc curves
        from lossatlas.cli.sweep import write_figures

        result = S.load_results(file)
        target = Path(out or result.out)
        target.mkdir(parents=True, exist_ok=True)
        for f in write_figures(result, target):
            typer.echo(str(f))
        return
    res = la.load(file, what="FILE")
    if getattr(res, "kind", None) not in ("curve", "interpolation", "surface"):
        from lossatlas.plot.kinds import draw

        for f in draw(res, Path(out or file)):
            typer.echo(str(f))
        return
    note = completeness(res, file, partial)
    if note:
        typer.echo(f"{note}: the figures show only the computed points")
    if res.kind == "surface" and min(len(res.x), len(res.y)) < 2:
        raise LossAtlasError(
            f"FILE {str(file)!r} holds a {len(res.x)} x {len(res.y)} surface and its figures "
            "need at least 2 points per axis; recompute it with --resolution 2 or more"
        )
    kinds = _plot_kinds(kind, "--kind", ["contour", "contourf", "heatmap", "surface3d", "html"],
                        extra=" or all")
    figs = _figures(res, Path(out or file), kinds, log=log)
    for f in figs:
        typer.echo(str(f))

