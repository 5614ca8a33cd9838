"""``lossatlas sweep FILE.toml``: a load x temperature phase-diagram sweep, local or on Ray;
``lossatlas phases RESULTS``: the per-cell table, phases and figures of a sweep folder."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lossatlas.cli import app
from lossatlas.cli.interrupt import on_interrupt
from lossatlas.cli.options import OutOpt
from lossatlas.core.errors import LossAtlasError
from lossatlas.report.text import sweep_table


def print_table(result, console: Console | None = None) -> None:
    """The per-cell table (:func:`lossatlas.report.text.sweep_table`) on the terminal."""
    console = console or Console(width=None if Console().is_terminal else 160)
    console.print(sweep_table(result))


def write_figures(result, out: Path) -> list[Path]:
    """``phases.png`` (every metric + phase map) and ``mc_curves.png`` under ``out``."""
    import matplotlib.pyplot as plt

    from lossatlas.plot import phases as P

    written = []
    if any(row["n_models"] for row in result.cells):
        plt.close(P.phase_diagram(result, out / "phases.png"))
        written.append(out / "phases.png")
    if result.curves():
        plt.close(P.mc_curves(result, out / "mc_curves.png"))
        written.append(out / "mc_curves.png")
    return written


def _jobs_kept(results: Path) -> str:
    """``"5 finished jobs are kept in sweeps/x/results.jsonl"`` (its complete lines)."""
    if not results.is_file():
        return f"no job had finished yet ({results} was not written)"
    with open(results, "rb") as fh:
        n = sum(1 for line in fh if line.endswith(b"\n") and line.strip())
    return f"{n} finished job{'s are' if n != 1 else ' is'} kept in {results}"


@app.command()
def sweep(
    file: Annotated[Path, typer.Argument(help="Sweep description (.toml); see examples/.")],
    ray: Annotated[str | None, typer.Option(
        "--ray", help="Run on Ray: auto (this machine's cluster), ADDRESS, or local.")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", "-w", help="Local worker processes (1: in this process).")] = 1,
    out: OutOpt = None,
    plot: Annotated[bool, typer.Option(help="Write phases.png and mc_curves.png.")] = True,
):
    """Train and measure every cell of a load x temperature grid; resumes where it stopped."""
    from lossatlas import sweeps as S
    from lossatlas.store.results import check_folder
    from lossatlas.sweeps.executors import make_executor

    spec = S.load_spec(file)
    if workers < 1:
        raise LossAtlasError(f"--workers {workers} must be at least 1; pass --workers 2.")
    target = check_folder(Path(out or spec.out or Path("sweeps") / spec.name), "--out")
    on_interrupt(lambda: _jobs_kept(target / S.RESULTS))
    with make_executor(ray=ray, workers=workers,
                       threads=spec.measure.get("threads", 1)) as executor:
        typer.echo(f"sweep {spec.name}: {len(spec.load.values)} x "
                   f"{len(spec.temperature.values)} cells x {len(spec.seeds)} seeds "
                   f"-> {target} ({type(executor).__name__}, {executor.workers} workers)")
        with warnings.catch_warnings():  # the failures are listed below, one line each
            warnings.simplefilter("ignore", UserWarning)
            result = S.run(spec, target, executor=executor)
    print_table(result)
    if plot:
        for p in write_figures(result, target):
            typer.echo(f"wrote {p}")
    typer.echo(f"wrote {target / S.RESULTS} and {target / S.CELLS}")
    if result.failures:
        for row in result.failures:
            typer.secho(f"failed: {S.describe_failure(row)}", err=True, fg="red")
        typer.secho(f"{len(result.failures)} job(s) failed (their cells lack those numbers); "
                    f"fix the cause and rerun `lossatlas sweep {file}` to retry only them",
                    err=True, fg="red")
        raise typer.Exit(1)


@app.command()
def phases(
    results: Annotated[Path, typer.Argument(help="A sweep folder (or its results.jsonl).")],
    out: OutOpt = None,
    plot: Annotated[bool, typer.Option(help="Write phases.png and mc_curves.png.")] = True,
):
    """Per-cell metrics and phase labels of a finished (or partial) sweep, with figures."""
    from lossatlas import sweeps as S

    result = S.load_results(results)
    print_table(result)
    target = Path(out or result.out)
    target.mkdir(parents=True, exist_ok=True)
    result.to_csv(target / S.CELLS)
    if plot:
        for p in write_figures(result, target):
            typer.echo(f"wrote {p}")
