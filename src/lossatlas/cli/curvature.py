"""``lossatlas sharpness`` (Andriushchenko et al. 2023) and ``lossatlas blocks`` (block-wise
Hessian spectra, Zhang et al. 2024) at a checkpoint.

    lossatlas sharpness --checkpoint runs/mlp-digits-seed0 --rho 0.5 --kind worst --norm l2
    lossatlas blocks --checkpoint runs/mlp-digits-seed0 --out blocks.h5
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossatlas.cli import app
from lossatlas.cli.options import Evaluation, Source, shared_options

#: sharpness and blocks average the training loss, BN statistics as in the checkpoint.
_TRAIN_LOSS = ("bn", "split", "include", "exclude")


@app.command()
@shared_options(omit=_TRAIN_LOSS)
def sharpness(
    *,
    rho: Annotated[float, typer.Option(help="Radius of the perturbation ball.")],
    kind: Annotated[str, typer.Option(help="worst or average.")] = "worst",
    norm: Annotated[str, typer.Option(help="l2 or linf.")] = "l2",
    adaptive: Annotated[bool, typer.Option(
        "--adaptive/--no-adaptive", help="Scale perturbations by |w| elementwise.")] = True,
    m: Annotated[int | None, typer.Option(
        "--m-samples", "--m",
        help="m-sharpness: batches of m samples, the max per batch (worst case).")] = None,
    steps: Annotated[int | None, typer.Option(
        help="Ascent steps (default 9; 20 for --method apgd).")] = None,
    restarts: Annotated[int, typer.Option(help="Starts per batch (worst case).")] = 1,
    method: Annotated[str, typer.Option(help="ascent or apgd (the authors').")] = "ascent",
    samples: Annotated[int, typer.Option(help="Monte Carlo draws (average case).")] = 100,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Result file (.h5).")] = None,
    src: Source,
    ev: Evaluation,
) -> None:
    """Worst- or average-case (adaptive) sharpness of the training loss at a checkpoint
    (Andriushchenko et al. 2023), e.g.
    `lossatlas sharpness --checkpoint runs/mlp-digits-seed0 --rho 0.5 --norm l2`."""
    import lossatlas as la
    from lossatlas.report.text import sharpness_line

    seed = src.seed
    obj = ev.objective(*src.load())
    if kind == "worst":
        res = la.sharpness.worst_case(obj, rho, adaptive=adaptive, norm=norm, m=m, steps=steps,
                                      restarts=restarts, method=method, seed=seed)
    else:
        res = la.sharpness.sharpness(obj, rho, kind, adaptive=adaptive, norm=norm,
                                     samples=samples, seed=seed)
    typer.echo(sharpness_line(res, rho, kind, norm, adaptive))
    if out is not None:
        typer.echo(f"wrote {res.save(out)}")


@app.command()
@shared_options(omit=_TRAIN_LOSS)
def blocks(
    *,
    steps: Annotated[int, typer.Option(help="Lanczos steps of each block's density.")] = 40,
    out: Annotated[Path, typer.Option("--out", "-o", help="Result file (.h5).")] = Path(
        "blocks.h5"),
    src: Source,
    ev: Evaluation,
) -> None:
    """Block-wise Hessian spectra (Zhang et al. 2024): each layer's SLQ density and λ_max,
    grouped by block type, with the Jensen–Shannon distances between blocks; writes OUT and
    OUT-blocks.png, e.g. `lossatlas blocks --checkpoint runs/mlp-digits-seed0`."""
    import lossatlas as la
    from lossatlas.plot.blocks import block_densities

    obj = ev.objective(*src.load())
    res = la.hessian.block_spectra(obj, steps=steps, seed=src.seed)
    typer.echo(res.table())
    typer.echo(f"{res.matvecs} Hessian-vector products, {res.seconds:.1f} s")
    fig = out.with_name(f"{out.stem}-blocks.png")
    block_densities(res, fig, title=f"{src.model} on {src.data}: block-wise Hessian spectra")
    typer.echo(f"wrote {res.save(out)}")
    typer.echo(f"wrote {fig}")
