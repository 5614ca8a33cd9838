"""``lossatlas trajectory``: a training run on its PCA plane (Li et al. 2018; Ding et al. 2023),
computed by :func:`lossatlas.report.trajectory_plane.analyse` (shared with the atlas).

    lossatlas trajectory runs/mlp-digits-seed0 --method ding2023 --center 0 --slice 0:31
    lossatlas trajectory runs/mlp-digits-seed0 --method li2018 --compare 3 --resolution 41

Writes, under --out (default RUN/trajectory-METHOD-cK): plane.h5, path.h5, surface.h5,
trajectory.png (contours + path), fit.png (true vs projected loss); with --compare S also the
random filter-normalized planes through the same center (random-*.h5, comparison.png).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossatlas.cli import app
from lossatlas.cli.options import Evaluation, Source, shared_options
from lossatlas.core.errors import LossAtlasError
from lossatlas.report.text import trajectory_lines
from lossatlas.report.trajectory_plane import analyse


def _objective(run_path: Path, center: int, src: Source, ev: Evaluation):
    """The run and the objective at its checkpoint ``center``; ``--include`` / ``--exclude``
    select among the run's recorded parameters."""
    import lossatlas as la

    run = la.load_run(run_path)
    data = src.data
    if data is None:
        data = (run.info.get("data", {}).get("train", {}) or {}).get("name") or "digits"
    net, train_set, test_set = src.load(checkpoint=run_path, index=center, data=data)
    names = la.params.match_names(run.parameter_names, ev.include, ev.exclude)
    if not names:
        raise LossAtlasError(f"--include {ev.include} / --exclude {ev.exclude} leave no "
                             f"parameter of the run ({run.parameter_names[:4]}...); widen the "
                             "patterns")
    return run, ev.objective(net, train_set, test_set, params=names)


@app.command()
@shared_options(data=None, omit=("checkpoint", "index", "seed"))
def trajectory(
    *,
    run: Annotated[Path, typer.Argument(help="A run folder written by `lossatlas train`.")],
    method: Annotated[str, typer.Option(help="li2018 or ding2023.")] = "ding2023",
    center: Annotated[int | None, typer.Option(
        help="Checkpoint at the plane's center (default: the slice's last).")] = None,
    slice_: Annotated[str | None, typer.Option(
        "--slice", help="Checkpoints M:N (Python's M:N) that enter the PCA.")] = None,
    resolution: Annotated[int, typer.Option(help="Grid points per axis.")] = 31,
    xspan: Annotated[tuple[float, float] | None, typer.Option(
        help="α range (default: the path's extent plus --margin).")] = None,
    yspan: Annotated[tuple[float, float] | None, typer.Option(help="β range.")] = None,
    margin: Annotated[float, typer.Option(help="Margin around the path, share of extent.")
                      ] = 0.2,
    compare: Annotated[int, typer.Option(
        help="Also project on this many random filter-normalized planes.")] = 0,
    log: Annotated[bool, typer.Option(help="Contour log10 of the loss.")] = True,
    src: Source,
    ev: Evaluation,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder.")] = None,
) -> None:
    """A training run's PCA plane, its path on the loss contours and the Fitting Error."""
    import lossatlas as la

    if method not in la.trajectory.METHODS:
        raise LossAtlasError(f"--method {method!r} is unknown; use li2018 or ding2023")
    if not (Path(run) / "manifest.json").is_file():
        raise LossAtlasError(f"RUN {str(run)!r} is not a run folder (no manifest.json); pass "
                             "a folder written by `lossatlas train`")
    n = len(la.load_run(run))
    c = la.trajectory.resolve_slice(slice_, n)[-1] if center is None else center
    if not -n <= c < n:
        raise LossAtlasError(f"--center {c} must be a checkpoint index in [-{n}, {n - 1}]")
    c %= n
    la.store.check_folder(out or Path(run) / f"trajectory-{method}-c{c}", "--out")
    runobj, obj = _objective(run, c, src, ev)
    out = Path(out or Path(run) / f"trajectory-{method}-c{c}")
    res = analyse(obj, runobj, out, method=method, center=c, slice_=slice_,
                  resolution=resolution, xspan=xspan, yspan=yspan, margin=margin,
                  compare=compare, log=log)
    for line in trajectory_lines(method, res, c, out, res["figures"]):
        typer.echo(line)
