"""``lossatlas atlas RUN --out DIR``: the run's atlas, one page (``DIR/index.html``) and its
numbers (``DIR/atlas.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossatlas.cli import app


@app.command()
def atlas(
    run: Annotated[Path, typer.Argument(help="A run folder written by `lossatlas train` or "
                                        "la.train(..., out=...).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Atlas folder.")] = Path("atlas"),
    with_run: Annotated[Path | None, typer.Option(
        "--with", help="An independent run B for the connectivity and curve sections (default: "
        "trained from RUN's recorded recipe with seed + 1 into OUT/run_b).")] = None,
    sweep: Annotated[Path | None, typer.Option(
        help="A sweep folder (`lossatlas sweep`) whose phase diagram the page shows.")] = None,
    quick: Annotated[bool, typer.Option(help="Small sizes everywhere (a smoke run).")] = False,
    section: Annotated[list[str] | None, typer.Option(
        "--section", "-s", help="Compute only this section (repeatable); the page keeps the "
        "others' last results.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="SECTION.KEY=VALUE: a section option, e.g. surface.resolution=51 "
        "(repeatable); only that section is recomputed.")] = None,
    force: Annotated[bool, typer.Option(help="Recompute every section.")] = False,
) -> None:
    """Every measurement of RUN on one page: training curves, 1D curves and shapes, the random
    and P.E.1 x N.E.1 surfaces, the Hessian, the trajectory plane, mined directions, mode
    connectivity with CKA and l2, the phase reading (and a sweep's phase diagram).

    Model, data and recipe come from RUN's manifest. A rerun reads unchanged sections back
    from their files; an interrupted atlas resumes. Prints the page's path at the end.

    Exits with status 1 when a section failed (the page shows which and why).
    """
    from lossatlas.report import atlas as make_atlas
    from lossatlas.report.build import parse_sets

    res = make_atlas(run, out, quick=quick, with_run=with_run, sweep=sweep, only=section,
                     options=parse_sets(set_), force=force)
    typer.echo(f"{res.page}")
    if not res.ok:
        raise typer.Exit(1)
