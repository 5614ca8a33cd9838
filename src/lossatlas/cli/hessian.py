"""``lossatlas hessian``: extreme eigenvalues, trace and density of the Hessian.

    lossatlas hessian --checkpoint runs/mlp-digits-seed0 --top 5 --bottom 5 --trace --density
    lossatlas hessian --checkpoint runs/mlp-digits-seed0 --block '2.*' --out block2.h5

Writes one HDF5 result (``la.load`` gives a HessianSummary) and, next to it, the figures
``<out>-density.png`` (log scale, λ_min marked) and ``<out>-eigenvalues.png``; ``--delta`` adds
``<out>-delta.h5`` and ``<out>-delta.png`` (the δL histograms of Li, Li, Zhan 2024, Fig. 13).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossatlas.cli import app
from lossatlas.cli._common import (
    BatchSizeOpt,
    CheckpointOpt,
    DataArgOpt,
    DataOpt,
    DepthOpt,
    DeviceOpt,
    IndexOpt,
    ModelArgOpt,
    ModelOpt,
    SeedOpt,
    WidthOpt,
    model_options,
    parse_options,
    setup,
)
from lossatlas.errors import LossAtlasError


def _figures(summary, out: Path) -> list[Path]:
    from lossatlas.plot import hessian as ph

    written = []
    spec = summary.spectrum()
    if len(summary.values):
        written.append(out.with_name(f"{out.stem}-eigenvalues.png"))
        ph.plot_eigenvalues(spec, written[-1])
    dens = summary.as_density()
    if dens is not None:
        written.append(out.with_name(f"{out.stem}-density.png"))
        ph.plot_density(dens, written[-1], spec=spec if len(summary.values) else None)
    return written


@app.command()
def hessian(
    model: ModelOpt = "mlp",
    data: DataOpt = "digits",
    checkpoint: CheckpointOpt = None,
    index: IndexOpt = None,
    top: Annotated[int, typer.Option(help="Largest eigenpairs to compute (P.E.).")] = 5,
    bottom: Annotated[int, typer.Option(help="Smallest eigenpairs to compute (N.E.).")] = 5,
    trace: Annotated[bool, typer.Option("--trace/--no-trace", help="Estimate tr H.")] = False,
    density: Annotated[bool, typer.Option("--density/--no-density",
                                          help="SLQ eigenvalue density.")] = False,
    delta: Annotated[bool, typer.Option(
        "--delta/--no-delta", help="δL = λb + ½λ²a over Gaussian ε vs the true change "
        "(Li, Li, Zhan 2024 Fig. 13).")] = False,
    samples: Annotated[int, typer.Option(help="Gaussian ε for --delta.")] = 100,
    block: Annotated[list[str] | None, typer.Option(
        help="Restrict to parameters matching NAME-PATTERN (glob, repeatable).")] = None,
    tol: Annotated[float, typer.Option(help="Relative residual ‖Hv−λv‖ ≤ tol·|λ|.")] = 1e-3,
    products: Annotated[int, typer.Option(help="Products for the trace estimate.")] = 100,
    steps: Annotated[int, typer.Option(help="Lanczos steps for the density.")] = 100,
    split: Annotated[str, typer.Option(help="Data split: train or test.")] = "train",
    batch_size: BatchSizeOpt = 1024,
    out: Annotated[Path, typer.Option("--out", "-o", help="Result file (.h5).")] = Path(
        "hessian.h5"),
    seed: SeedOpt = 0,
    width: WidthOpt = None,
    depth: DepthOpt = None,
    model_arg: ModelArgOpt = None,
    data_arg: DataArgOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Hessian spectrum of the full-data mean loss at a checkpoint (BN in eval mode)."""
    import lossatlas as la

    if split not in ("train", "test"):
        raise LossAtlasError(f"--split {split!r} is unknown; use train or test")
    if top < 0 or bottom < 0:
        raise LossAtlasError("--top and --bottom must be >= 0")
    if top == bottom == 0 and not trace and not density and not delta:
        raise LossAtlasError(
            "nothing to compute; pass --top K, --bottom K, --trace, --density or --delta")
    net, train_set, test_set = setup(
        model, data, checkpoint=checkpoint, index=index, seed=seed,
        model_opts=model_options(width, depth, model_arg),
        data_opts=parse_options(data_arg, "--data-arg"), device=device)
    obj = la.Objective(net, train_set if split == "train" else test_set, batch_size=batch_size)
    written = []
    if delta:
        dist = la.hessian.delta_distribution(obj, samples=samples, seed=seed,
                                             params=block or None)
        written += [dist.save(out.with_name(f"{out.stem}-delta.h5")),
                    out.with_name(f"{out.stem}-delta.png")]
        la.plot.hessian.plot_delta(dist, written[-1])
        for lam, p, t in zip(dist.lambdas, dist.predicted, dist.true):
            typer.echo(f"λ = {lam:g}: mean δL {p.mean():.3g} (second order), "
                       f"{t.mean():.3g} (true); positive {100 * (t > 0).mean():.0f} %")
        if top == bottom == 0 and not trace and not density:
            for p in written:
                typer.echo(f"wrote {p}")
            return
    summary = la.hessian.summarize(obj, top, bottom, trace, density, params=block or None,
                                   tol=tol, products=products, steps=steps, seed=seed)
    path = summary.save(out)
    for name, v, r in zip(summary.names, summary.values, summary.residuals):
        typer.echo(f"{name:>7} λ = {v: .6g}   ‖Hv−λv‖ = {r:.2g}")
    if trace:
        typer.echo(f"trace = {summary.trace:.6g} ± {summary.trace_error:.2g}")
    typer.echo(f"{summary.matvecs} Hessian-vector products over {len(summary.params)} tensors")
    for p in [path, *_figures(summary, Path(out)), *written]:
        typer.echo(f"wrote {p}")

