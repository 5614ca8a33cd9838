"""``lossatlas trajectory``: a training run on its PCA plane (Li et al. 2018; Ding et al. 2023);
``analyse`` is shared with the atlas's trajectory section.

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
from lossatlas.cli._common import (
    BatchSizeOpt,
    DataArgOpt,
    DepthOpt,
    DeviceOpt,
    ModelArgOpt,
    ModelOpt,
    WidthOpt,
    model_options,
    parse_options,
    setup,
)
from lossatlas.core.errors import LossAtlasError


def _objective(run_path: Path, center: int, model: str, data: str | None, width, depth,
               model_arg, data_arg, device, batch_size: int, bn: str, split: str,
               include: list[str] | None = None, exclude: list[str] | None = None):
    import lossatlas as la

    if split not in ("train", "test"):
        raise LossAtlasError(f"--split {split!r} is unknown; use train or test")
    run = la.load_run(run_path)
    if data is None:
        data = (run.info.get("data", {}).get("train", {}) or {}).get("name") or "digits"
    net, train_set, test_set = setup(
        model, data, checkpoint=run_path, index=center,
        model_opts=model_options(width, depth, model_arg),
        data_opts=parse_options(data_arg, "--data-arg"), device=device)
    names = la.params.match_names(run.parameter_names, include, exclude)
    if not names:
        raise LossAtlasError(f"--include {include} / --exclude {exclude} leave no parameter of "
                             f"the run ({run.parameter_names[:4]}...); widen the patterns")
    obj = la.Objective(net, train_set if split == "train" else test_set,
                       batch_size=batch_size, bn=bn, params=names)
    return run, obj


def analyse(obj, run, out: Path, *, method: str = "ding2023", center: int | None = None,
            slice_: str | None = None, resolution: int = 31, xspan=None, yspan=None,
            margin: float = 0.2, compare: int = 0, log: bool = True,
            progress: bool = True) -> dict:
    """Plane, projection, surface and figures for ``run`` (shared by the CLI and the demo).
    Returns a summary dict (paths and numbers)."""
    import lossatlas as la
    from lossatlas.plot import trajectory as TP

    out.mkdir(parents=True, exist_ok=True)
    plane = la.trajectory.pca(run, method=method, center=center, slice=slice_,
                              names=obj.names, progress=progress)
    plane.save(out / "plane.h5")
    traj = la.trajectory.project(obj, plane, run, progress=progress)
    traj.save(out / "path.h5")
    surf = la.trajectory.surface(obj, plane, traj, checkpoints=run, resolution=resolution,
                                 xspan=xspan, yspan=yspan, margin=margin,
                                 path=out / "surface.h5", progress=progress)
    figs = [out / "trajectory.png", out / "fit.png"]
    TP.plot_trajectory(surf, traj, plane, figs[0], log=log)
    fits, labels = [traj], [f"{method} plane"]
    summary = {"plane": plane, "trajectory": traj, "surface": surf, "figures": figs}
    if compare:
        panels = [(surf, traj, plane)]
        errs = []
        for s in range(compare):
            rp = la.trajectory.random_plane(plane, seed=2 * s)
            rt = la.trajectory.project(obj, rp, run, progress=progress)
            rt.save(out / f"random-{s}.h5")
            errs.append(rt.fitting_error)
            if s == 0:
                rs = la.trajectory.surface(obj, rp, rt, checkpoints=run, resolution=resolution,
                                           margin=margin, path=out / "random-surface.h5",
                                           progress=progress)
                panels.append((rs, rt, rp))
                fits.append(rt)
                labels.append("random FN plane")
        figs.append(out / "comparison.png")
        TP.plot_comparison(panels, figs[-1], log=log)
        summary["random_fitting_errors"] = errs
    TP.plot_fit(fits, labels, figs[1])
    return summary


@app.command()
def trajectory(
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
    include: Annotated[list[str] | None, typer.Option(
        help="Only parameters matching this glob enter the PCA and move on the plane "
        "(repeatable), e.g. '0.*'; the others stay at the center checkpoint's values, for "
        "the true losses too.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(
        help="Leave out parameters matching this glob (repeatable), e.g. '*.bias'.")] = None,
    model: ModelOpt = "mlp",
    data: Annotated[str | None, typer.Option(
        "--data", "-d", help="Dataset (default: the run's).")] = None,
    bn: Annotated[str, typer.Option(help="BatchNorm statistics: keep or recalibrate.")] = "keep",
    split: Annotated[str, typer.Option(help="Data split: train or test.")] = "train",
    batch_size: BatchSizeOpt = 1024,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder.")] = None,
    width: WidthOpt = None,
    depth: DepthOpt = None,
    model_arg: ModelArgOpt = None,
    data_arg: DataArgOpt = None,
    device: DeviceOpt = None,
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
    runobj, obj = _objective(run, c, model, data, width, depth, model_arg, data_arg, device,
                             batch_size, bn, split, include, exclude)
    out = Path(out or Path(run) / f"trajectory-{method}-c{c}")
    res = analyse(obj, runobj, out, method=method, center=c, slice_=slice_,
                  resolution=resolution, xspan=xspan, yspan=yspan, margin=margin,
                  compare=compare, log=log)
    r = res["plane"].explained_variance_ratio
    typer.echo(f"{method} plane of {len(res['plane'].indices)} checkpoints, center {c}: "
               f"explained variance {100 * r[0]:.1f} % + {100 * r[1]:.1f} % = "
               f"{100 * r.sum():.1f} %")
    typer.echo(f"fitting error {res['trajectory'].fitting_error:.4g}")
    if compare:
        errs = res["random_fitting_errors"]
        typer.echo(f"random filter-normalized planes: fitting error "
                   f"{', '.join(f'{e:.4g}' for e in errs)}")
    typer.echo(f"-> {out}")
    for f in res["figures"]:
        typer.echo(f"  figure: {f}")

