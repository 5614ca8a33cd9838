"""``lossatlas train``: train a model with recorded checkpoints and draw its training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossatlas.cli import app
from lossatlas.cli.interrupt import on_interrupt
from lossatlas.cli.options import BatchSizeOpt, OutOpt, Source, shared_options, slug
from lossatlas.core.errors import LossAtlasError
from lossatlas.report.text import run_summary, track_line


def parse_record(text: str) -> str | int | None:
    """``"epoch"`` -> "epoch", ``"none"`` -> None, ``"50"`` -> 50 (steps)."""
    low = text.strip().lower()
    if low == "epoch":
        return "epoch"
    if low in ("none", "no", "off"):
        return None
    try:
        return int(low)
    except ValueError:
        raise LossAtlasError(
            f"--record {text!r} is not valid; use epoch, a number of steps (e.g. 50) or none"
        ) from None


def parse_milestones(text: str | None) -> list[int] | None:
    """``"15,25"`` -> ``[15, 25]``."""
    if text is None or not text.strip():
        return None
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise LossAtlasError(
            f"--milestones {text!r} is not a comma-separated list of epochs; write e.g. 15,25"
        ) from None


def _checkpoint_files(out: Path) -> list[Path]:
    from lossatlas.batteries.runs import CKPT_DIR

    return sorted((out / CKPT_DIR).glob("ckpt_*.pt")) if (out / CKPT_DIR).is_dir() else []


def _checkpoints_kept(out: Path) -> str:
    """``"3 checkpoints are kept in runs/x"`` (the checkpoint files in the run folder)."""
    files = _checkpoint_files(out)
    if not files:
        return f"no checkpoint was written to {out} yet"
    n = len(files)
    return f"{n} checkpoint{'s are' if n > 1 else ' is'} kept in {out}"


@app.command()
@shared_options()
def train(
    *,
    src: Source,
    epochs: Annotated[int, typer.Option(help="Passes over the training set.")] = 30,
    lr: Annotated[float, typer.Option(help="Learning rate (SGD).")] = 0.1,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    weight_decay: Annotated[float, typer.Option(help="L2 weight decay.")] = 5e-4,
    batch_size: BatchSizeOpt = 128,
    schedule: Annotated[str, typer.Option(help="constant, step or cosine.")] = "constant",
    milestones: Annotated[
        str | None, typer.Option(help="Epochs where a step schedule multiplies lr by gamma.")
    ] = None,
    gamma: Annotated[float, typer.Option(help="Factor of the step schedule.")] = 0.1,
    record: Annotated[
        str, typer.Option(help="epoch, a number of steps, or none (final weights only).")
    ] = "epoch",
    out: OutOpt = None,
    overwrite: Annotated[
        bool, typer.Option(help="Train again and replace the run in --out (the old one stays "
                           "until the new one has finished).")
    ] = False,
    figure: Annotated[bool, typer.Option(help="Write training.png into the run folder.")] = True,
    track: Annotated[list[str] | None, typer.Option(
        help="Measure during training, e.g. sharpness:every=10 (keys: k, trace, tol, "
        "batch_size, preconditioned); writes sharpness.csv and sharpness.png.")] = None,
    optimizer: Annotated[str, typer.Option(help="sgd, adam or adamw.")] = "sgd",
) -> None:
    """Train MODEL on DATA with SGD (or --optimizer adam), recording checkpoints into a run folder.

    The folder (default runs/MODEL-DATA-seedSEED) gets manifest.json, checkpoints/ and training.png.

    The same command again does nothing on a finished run and continues an interrupted one
    from its last checkpoint (bit-identical to an uninterrupted run).

    --seed sets both the initialization and the data order.

    --checkpoint starts from given weights instead of a fresh initialization.

    --track sharpness:every=10 measures λ_max of the full-data training loss every 10 steps
    (warm-started Lanczos; with --optimizer adam also λ_max(P⁻¹H)); a --batch-size at least
    the training set's size with --momentum 0 is full-batch GD, e.g.
    `lossatlas train --epochs 200 --lr 0.5 --momentum 0 --weight-decay 0 --batch-size 100000
    --track sharpness:every=10`.
    """
    from lossatlas.batteries.training import train as train_fn
    from lossatlas.measurements.track import parse as parse_track
    from lossatlas.store.results import check_folder

    rec = parse_record(record)
    ms = parse_milestones(milestones)
    model, data, seed, device = src.model, src.data, src.seed, src.device
    out = Path(out) if out is not None else Path("runs") / f"{slug(model)}-{slug(data)}-seed{seed}"
    check_folder(out, "--out")
    on_interrupt(lambda: _checkpoints_kept(out), resumes=lambda: bool(_checkpoint_files(out)))
    net, train_set, test_set = src.load(device=None)  # la.train moves it to --device
    run = train_fn(
        net, train_set, test_data=test_set, epochs=epochs, lr=lr, momentum=momentum,
        weight_decay=weight_decay, batch_size=batch_size, schedule=schedule, milestones=ms,
        gamma=gamma, seed=seed, record=rec, out=out, device=device, overwrite=overwrite,
        callbacks=[parse_track(t) for t in track or []], optimizer=optimizer.lower(),
    )
    if run.already_done:
        typer.echo(f"{out}: already trained ({run.status}, {run_summary(run)}); nothing to do "
                   "(--overwrite trains it again)")
        return
    if run.resumed_after is not None:
        typer.echo(f"continued the interrupted run after checkpoint {run.resumed_after}")
    if figure:
        from lossatlas.plot.training import training_curves

        training_curves(run, out / "training.png", title=f"{model} on {data}, seed {seed}")
        for name in run.info.get("tracks", []):
            if name == "sharpness":
                from lossatlas.plot.tracking import sharpness_curves

                sharpness_curves(run, out / "sharpness.png",
                                 title=f"{model} on {data}, lr {lr:g}, batch {batch_size}")
    for name in run.info.get("tracks", []):
        typer.echo(track_line(name, run.track(name), lr))
    typer.echo(f"{out}: {run_summary(run)}")
    if run.stopped_reason:
        typer.secho(f"training stopped early: {run.stopped_reason}", err=True, fg="yellow")
        raise typer.Exit(1)
