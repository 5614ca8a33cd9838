"""``lossatlas connect A B`` and ``lossatlas cka A B`` (Yang et al. 2021); the atlas's
connectivity section (lossatlas.report.sections.connectivity) runs the same functions.

    lossatlas connect runs/mlp-digits-seed0 runs/mlp-digits-seed1 --epochs 50 -o mc.h5
    lossatlas connect runs/mlp-digits-seed0 runs/mlp-digits-seed1 --align weights
    lossatlas cka runs/mlp-digits-seed0 runs/mlp-digits-seed1 --layers net.1 --layers net.3

A and B are run folders (their last checkpoint, or ``--index``) or state-dict ``.pt`` files of
the same ``--model`` on the same ``--data``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossatlas.cli import app
from lossatlas.cli._common import (
    BatchSizeOpt,
    DataArgOpt,
    DataOpt,
    DepthOpt,
    DeviceOpt,
    IndexOpt,
    ModelArgOpt,
    ModelOpt,
    SeedOpt,
    WidthOpt,
    load_checkpoint,
    model_options,
    parse_options,
    setup,
)

WeightsArg = Annotated[Path, typer.Argument(help="Run folder or state-dict .pt file.")]


def _pair(a, b, model, data, index, seed, width, depth, model_arg, data_arg, device):
    opts = model_options(width, depth, model_arg)
    net_a, train_set, _ = setup(model, data, checkpoint=a, index=index, seed=seed,
                                model_opts=opts, data_opts=parse_options(data_arg, "--data-arg"),
                                device=device)
    import copy

    net_b = copy.deepcopy(net_a)  # the same architecture (a's run recipe, if any), b's weights
    load_checkpoint(net_b, b, index)
    if device is not None:
        net_b.to(device)
    return net_a, net_b, train_set


@app.command()
def connect(
    a: WeightsArg,
    b: WeightsArg,
    model: ModelOpt = "mlp",
    data: DataOpt = "digits",
    index: IndexOpt = None,
    bends: Annotated[int, typer.Option(help="Free bends (1: three control points, the paper's).")
                     ] = 1,
    epochs: Annotated[int, typer.Option(help="Curve training epochs (the paper: 50).")] = 50,
    lr: Annotated[float, typer.Option(help="Initial SGD learning rate (Garipov schedule).")
                  ] = 0.01,
    weight_decay: Annotated[float, typer.Option(help="½·wd·‖γ(t)‖² on the curve.")] = 5e-4,
    points: Annotated[int, typer.Option(help="t values for mc, ends included (the paper: 5).")
                      ] = 5,
    dense: Annotated[int, typer.Option(help="t values drawn in the figure (0: only --points).")
                     ] = 21,
    metric: Annotated[str, typer.Option(help="error (train error in %) or loss.")] = "error",
    align: Annotated[str | None, typer.Option(
        help="Permute B's hidden units to match A first: weights (Git Re-Basin weight "
             "matching) or activations (on the training data).")] = None,
    unaligned_curve: Annotated[bool, typer.Option(
        help="With --align, also train a curve between the unaligned ends (mc before).")
                               ] = True,
    seed: SeedOpt = 0,
    batch_size: BatchSizeOpt = 128,
    out: Annotated[Path, typer.Option("--out", "-o", help="Result file (.h5); figure next to it.")
                   ] = Path("connect.h5"),
    width: WidthOpt = None,
    depth: DepthOpt = None,
    model_arg: ModelArgOpt = None,
    data_arg: DataArgOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Train a Bezier curve between two models and report their mode connectivity.

    mc = ½(v(0) + v(1)) − v(t*) on the train error (percent): < 0 a barrier (poorly connected),
    ≈ 0 well connected, > 0 the ends are not minima. The straight line is the baseline. Writes
    the curve (control points included) to --out and its figure to OUT.png. With --align, B is
    first permuted to match A (same function) and the line and curve before alignment are
    reported beside the ones after.
    """
    import lossatlas as la
    from lossatlas.plot import connect as plot

    la.store.check_output(out, "--out", resumable=False)
    net_a, net_b, train_set = _pair(a, b, model, data, index, seed, width, depth, model_arg,
                                    data_arg, device)
    obj = la.Objective(net_a, train_set, batch_size=512)
    res = la.connect.train_curve(obj, net_a, net_b, bends=bends, epochs=epochs, lr=lr,
                                 weight_decay=weight_decay, batch_size=batch_size,
                                 points=points, metric=metric, seed=seed, align=align,
                                 unaligned_curve=unaligned_curve)
    res.save(out)
    prof = la.connect.dense_profile(obj, res, dense) if dense >= 2 else None
    fig = out.with_suffix(".png")
    plot.error_and_loss(res, dense=prof, path=fig)
    unit = "%" if metric == "error" else ""
    typer.echo(f"mc = {res.mc:+.3f}{unit} at t* = {res.t_star:.2f}   (straight line: "
               f"{res.linear_mc:+.3f}{unit} at t* = {res.linear_t_star:.2f})")
    typer.echo("t      " + " ".join(f"{t:8.2f}" for t in res.t))
    typer.echo("curve  " + " ".join(f"{v:8.3f}" for v in res.values))
    typer.echo("line   " + " ".join(f"{v:8.3f}" for v in res.linear))
    if res.align:
        before = res.unaligned_linear_error if metric == "error" else res.unaligned_linear_loss
        typer.echo("line, unaligned " + " ".join(f"{v:8.3f}" for v in before))
        typer.echo(f"aligned by {res.align}: line barrier {res.unaligned_linear_barrier:.3f}{unit}"
                   f" -> {res.linear_barrier:.3f}{unit}; line mc {res.unaligned_linear_mc:+.3f}"
                   f"{unit} -> {res.linear_mc:+.3f}{unit}; curve mc "
                   + (f"{res.unaligned_mc:+.3f}{unit}" if unaligned_curve else "(not trained)")
                   + f" -> {res.mc:+.3f}{unit}")
    typer.echo(f"wrote {out} and {fig}")


@app.command()
def cka(
    a: WeightsArg,
    b: WeightsArg,
    model: ModelOpt = "mlp",
    data: DataOpt = "digits",
    index: IndexOpt = None,
    samples: Annotated[int, typer.Option(help="Mixup samples m (the paper: 640).")] = 640,
    alpha: Annotated[float, typer.Option(help="λ ~ Beta(alpha, alpha) (the paper: 16).")] = 16.0,
    noise: Annotated[float | None, typer.Option(
        help="Use inputs + U(-noise, noise) instead of mixup (App. A.4.1).")] = None,
    layers: Annotated[list[str] | None, typer.Option(
        "--layers", "-l", help="Submodule name for layer-wise CKA (repeatable).")] = None,
    seed: SeedOpt = 0,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Figure of the layer-wise CKA (.png).")] = None,
    width: WidthOpt = None,
    depth: DepthOpt = None,
    model_arg: ModelArgOpt = None,
    data_arg: DataArgOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Linear CKA of two models' softmax outputs on mixup samples of the training inputs
    (Yang et al. Eq. 3), the ℓ2 distance of their parameters, and with --layers the CKA of
    those submodules' outputs."""
    import lossatlas as la

    net_a, net_b, train_set = _pair(a, b, model, data, index, seed, width, depth, model_arg,
                                    data_arg, device)
    kw = dict(m=samples, alpha=alpha, seed=seed, noise=noise)
    value = la.similarity.model_cka(net_a, net_b, train_set, **kw)
    how = f"inputs + U(±{noise})" if noise is not None else f"mixup Beta({alpha:g},{alpha:g})"
    typer.echo(f"CKA (softmax outputs, {samples} samples, {how}) = {value:.4f}")
    typer.echo(f"l2 distance = {la.similarity.l2_distance(net_a, net_b):.4f}")
    if layers:
        per = la.similarity.model_cka(net_a, net_b, train_set, layers=layers, **kw)
        for name, v in per.items():
            typer.echo(f"  {name or '(model)':<20} {v:.4f}")
        if out is not None:
            from lossatlas.plot import connect as plot

            plot.cka_layers(per, path=out)
            typer.echo(f"wrote {out}")

