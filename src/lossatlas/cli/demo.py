"""``lossatlas demo``: the atlas of the default run (and of a small sweep)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossatlas.cli import app
from lossatlas.cli.options import SeedOpt


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("atlas"),
    quick: Annotated[bool, typer.Option(help="Small sizes (a smoke run).")] = False,
    seed: SeedOpt = 0,
    epochs: Annotated[
        int | None, typer.Option(help="Training epochs (default 30).")
    ] = None,
    section: Annotated[
        list[str] | None,
        typer.Option("--section", "-s", help="Compute only this atlas section (repeatable)."),
    ] = None,
    sweep: Annotated[bool, typer.Option(help="Run the small sweep for the phase diagram.")
                     ] = True,
) -> None:
    """Train an MLP on digits and write its atlas: OUT/index.html and OUT/atlas.json.

    The run goes to OUT/run, the independent run B to OUT/run_b, the small sweep (2 widths x 2
    batch sizes x 2 seeds) to OUT/sweep. A rerun reads everything unchanged back.

    Exits with status 1 when a section failed; the others still run.
    """
    from lossatlas.report.demo import run_demo

    result = run_demo(out, quick=quick, seed=seed, epochs=epochs, only=section, sweep=sweep)
    typer.echo(f"{result.page}")
    if not result.ok:
        raise typer.Exit(1)
