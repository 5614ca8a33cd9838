"""``lossatlas demo``: the default model trained and every demo section run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossatlas.cli import app
from lossatlas.cli._common import SeedOpt


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("atlas"),
    quick: Annotated[bool, typer.Option(help="Small resolutions (a smoke run).")] = False,
    seed: SeedOpt = 0,
    epochs: Annotated[
        int | None, typer.Option(help="Training epochs (default 30).")
    ] = None,
    section: Annotated[
        list[str] | None,
        typer.Option("--section", "-s", help="Run only sections whose name contains this."),
    ] = None,
) -> None:
    """Train an MLP on digits, then run every demo section into OUT.

    Writes OUT/run (the recorded run), OUT/training.png, the sections' files and OUT/demo.log.

    Exits with status 1 when training or a section failed; the others still run.
    """
    from lossatlas.demo import run_demo

    result = run_demo(out, quick=quick, seed=seed, epochs=epochs, only=section)
    if not result.ok:
        raise typer.Exit(1)
