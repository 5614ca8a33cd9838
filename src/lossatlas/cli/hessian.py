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
from lossatlas.core.errors import LossAtlasError
from lossatlas.store.results import check_output


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
    nproc: Annotated[int, typer.Option(
        "--nproc", help="Processes to split the data over (torch.distributed: gloo on "
        "127.0.0.1, NCCL with --device cuda); the numbers equal the one-process run.")] = 1,
) -> None:
    """Hessian spectrum of the full-data mean loss at a checkpoint (BN in eval mode)."""
    from lossatlas.core import distributed

    if split not in ("train", "test"):
        raise LossAtlasError(f"--split {split!r} is unknown; use train or test")
    if top < 0 or bottom < 0:
        raise LossAtlasError("--top and --bottom must be >= 0")
    if top == bottom == 0 and not trace and not density and not delta:
        raise LossAtlasError(
            "nothing to compute; pass --top K, --bottom K, --trace, --density or --delta")
    if nproc < 1:
        raise LossAtlasError(f"--nproc {nproc} must be at least 1 (1 runs in this process)")
    check_output(out, "--out", resumable=False)
    opts = dict(locals())
    del opts["distributed"]
    if nproc == 1:
        lines = _compute(opts)
    else:
        backend = "nccl" if device is not None and device.startswith("cuda") else "gloo"
        lines = distributed.launch(_compute, nproc, opts, backend=backend)
    for line in lines:
        typer.echo(line)


def _compute(o: dict) -> list[str]:
    """The work of ``lossatlas hessian`` in this process (one rank of ``--nproc``: every rank
    computes, rank 0 writes the files and returns the lines to print)."""
    import lossatlas as la
    from lossatlas.core.distributed import is_main

    net, train_set, test_set = setup(
        o["model"], o["data"], checkpoint=o["checkpoint"], index=o["index"], seed=o["seed"],
        model_opts=model_options(o["width"], o["depth"], o["model_arg"]),
        data_opts=parse_options(o["data_arg"], "--data-arg"), device=o["device"])
    obj = la.Objective(net, train_set if o["split"] == "train" else test_set,
                       batch_size=o["batch_size"], distributed=o["nproc"] > 1)
    main, out, block = is_main(), Path(o["out"]), o["block"] or None
    top, bottom, trace, density = o["top"], o["bottom"], o["trace"], o["density"]
    lines, written = [], []
    if o["delta"]:
        dist = la.hessian.delta_distribution(obj, samples=o["samples"], seed=o["seed"],
                                             params=block)
        if main:
            written += [dist.save(out.with_name(f"{out.stem}-delta.h5")),
                        out.with_name(f"{out.stem}-delta.png")]
            la.plot.hessian.plot_delta(dist, written[-1])
        for lam, p, t in zip(dist.lambdas, dist.predicted, dist.true):
            lines.append(f"λ = {lam:g}: mean δL {p.mean():.3g} (second order), "
                         f"{t.mean():.3g} (true); positive {100 * (t > 0).mean():.0f} %")
        if top == bottom == 0 and not trace and not density:
            return lines + [f"wrote {p}" for p in written]
    summary = la.hessian.summarize(obj, top, bottom, trace, density, params=block,
                                   tol=o["tol"], products=o["products"], steps=o["steps"],
                                   seed=o["seed"])
    for name, v, r in zip(summary.names, summary.values, summary.residuals):
        lines.append(f"{name:>7} λ = {v: .6g}   ‖Hv−λv‖ = {r:.2g}")
    if trace:
        lines.append(f"trace = {summary.trace:.6g} ± {summary.trace_error:.2g}")
    procs = f" on {o['nproc']} processes" if o["nproc"] > 1 else ""
    lines.append(f"{summary.matvecs} Hessian-vector products over {len(summary.params)} "
                 f"tensors{procs}")
    if main:
        path = summary.save(out)
        lines += [f"wrote {p}" for p in [path, *_figures(summary, out), *written]]
    return lines

