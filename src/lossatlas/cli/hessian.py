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
from lossatlas.cli.options import Evaluation, Source, shared_options
from lossatlas.core.errors import LossAtlasError
from lossatlas.store.results import check_output


@app.command()
@shared_options(omit=("include", "exclude"))
def hessian(
    *,
    src: Source,
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
    ev: Evaluation,
    out: Annotated[Path, typer.Option("--out", "-o", help="Result file (.h5).")] = Path(
        "hessian.h5"),
    nproc: Annotated[int, typer.Option(
        "--nproc", help="Processes to split the data over (torch.distributed: gloo on "
        "127.0.0.1, NCCL with --device cuda); the numbers equal the one-process run.")] = 1,
) -> None:
    """Hessian spectrum of the full-data mean loss at a checkpoint (BN in eval mode, with the
    checkpoint's statistics or, with --bn recalibrate, statistics recomputed at it)."""
    from lossatlas.core import distributed

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
        backend = "nccl" if src.device is not None and src.device.startswith("cuda") else "gloo"
        lines = distributed.launch(_compute, nproc, opts, backend=backend)
    for line in lines:
        typer.echo(line)


def _compute(o: dict) -> list[str]:
    """The work of ``lossatlas hessian`` in this process (one rank of ``--nproc``: every rank
    computes, rank 0 writes the files and returns the lines to print)."""
    import lossatlas as la
    from lossatlas.core.distributed import is_main
    from lossatlas.plot.hessian import plot_delta, summary_figures
    from lossatlas.report.text import delta_lines, hessian_lines

    src, ev = o["src"], o["ev"]
    net, train_set, test_set = src.load()
    obj = ev.objective(net, train_set, test_set, distributed=o["nproc"] > 1)
    main, out, block = is_main(), Path(o["out"]), o["block"] or None
    top, bottom, trace, density = o["top"], o["bottom"], o["trace"], o["density"]
    lines, written = [], []
    if o["delta"]:
        dist = la.hessian.delta_distribution(obj, samples=o["samples"], seed=src.seed,
                                             params=block)
        if main:
            written += [dist.save(out.with_name(f"{out.stem}-delta.h5")),
                        out.with_name(f"{out.stem}-delta.png")]
            plot_delta(dist, written[-1])
        lines += delta_lines(dist)
        if top == bottom == 0 and not trace and not density:
            return lines + [f"wrote {p}" for p in written]
    summary = la.hessian.summarize(obj, top, bottom, trace, density, params=block,
                                   tol=o["tol"], products=o["products"], steps=o["steps"],
                                   seed=src.seed)
    lines += hessian_lines(summary, trace, o["nproc"])
    if main:
        path = summary.save(out)
        lines += [f"wrote {p}" for p in [path, *summary_figures(summary, out), *written]]
    return lines
