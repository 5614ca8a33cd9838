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

from lossatlas.batteries.resolve import load_checkpoint
from lossatlas.cli import app
from lossatlas.cli.options import Evaluation, Source, shared_options
from lossatlas.core.errors import LossAtlasError

WeightsArg = Annotated[Path, typer.Argument(help="Run folder or state-dict .pt file.")]


def _pair(a: Path, b: Path, src: Source):
    """``(model_a, model_b, train)``: A's model (its run's recipe, if any) and data, and a
    copy of it holding B's weights."""
    import copy

    net_a, train_set, _ = src.load(checkpoint=a)
    net_b = copy.deepcopy(net_a)  # the same architecture (a's run recipe, if any), b's weights
    load_checkpoint(net_b, b, src.index)
    if src.device is not None:
        net_b.to(src.device)
    return net_a, net_b, train_set


def _has_batchnorm(net) -> bool:
    from torch.nn.modules.batchnorm import _BatchNorm

    return any(isinstance(m, _BatchNorm) for m in net.modules())


@app.command()
@shared_options(bn="recalibrate",
                omit=("checkpoint", "batch_size", "split", "include", "exclude"))
def connect(
    *,
    a: WeightsArg,
    b: WeightsArg,
    src: Source,
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
    batch_size: Annotated[int, typer.Option(
        "--batch-size", "-b", help="Batch size of the curve's training (its evaluation "
        "averages over batches of 512).")] = 128,
    ev: Evaluation,
    out: Annotated[Path, typer.Option("--out", "-o", help="Result file (.h5); figure next to it.")
                   ] = Path("connect.h5"),
) -> None:
    """Train a Bezier curve between two models and report their mode connectivity.

    mc = ½(v(0) + v(1)) − v(t*) on the train error (percent): < 0 a barrier (poorly connected),
    ≈ 0 well connected, > 0 the ends are not minima. The straight line is the baseline. Writes
    the curve (control points included) to --out and its figure to OUT.png. With --align, B is
    first permuted to match A (same function) and the line and curve before alignment are
    reported beside the ones after. BatchNorm statistics are recomputed at every t (Yang et
    al. 2021); --bn keep is refused for a model with BatchNorm, as train_curve always
    recomputes them.
    """
    import lossatlas as la
    from lossatlas.plot import connect as plot
    from lossatlas.report.text import connect_lines

    la.store.check_output(out, "--out", resumable=False)
    net_a, net_b, train_set = _pair(a, b, src)
    if ev.bn == "keep" and _has_batchnorm(net_a):
        raise LossAtlasError("--bn keep: connect recomputes BatchNorm statistics at every t of "
                             "the curve (Yang et al. 2021); drop --bn or pass --bn recalibrate")
    obj = ev.objective(net_a, train_set, batch_size=512)
    res = la.connect.train_curve(obj, net_a, net_b, bends=bends, epochs=epochs, lr=lr,
                                 weight_decay=weight_decay, batch_size=batch_size,
                                 points=points, metric=metric, seed=src.seed, align=align,
                                 unaligned_curve=unaligned_curve)
    res.save(out)
    prof = la.connect.dense_profile(obj, res, dense) if dense >= 2 else None
    fig = out.with_suffix(".png")
    plot.error_and_loss(res, dense=prof, path=fig)
    for line in connect_lines(res, metric, unaligned_curve):
        typer.echo(line)
    typer.echo(f"wrote {out} and {fig}")


@app.command()
@shared_options(omit=("checkpoint",))
def cka(
    *,
    a: WeightsArg,
    b: WeightsArg,
    src: Source,
    samples: Annotated[int, typer.Option(help="Mixup samples m (the paper: 640).")] = 640,
    alpha: Annotated[float, typer.Option(help="λ ~ Beta(alpha, alpha) (the paper: 16).")] = 16.0,
    noise: Annotated[float | None, typer.Option(
        help="Use inputs + U(-noise, noise) instead of mixup (App. A.4.1).")] = None,
    layers: Annotated[list[str] | None, typer.Option(
        "--layers", "-l", help="Submodule name for layer-wise CKA (repeatable).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Figure of the layer-wise CKA (.png).")] = None,
) -> None:
    """Linear CKA of two models' softmax outputs on mixup samples of the training inputs
    (Yang et al. Eq. 3), the ℓ2 distance of their parameters, and with --layers the CKA of
    those submodules' outputs."""
    import lossatlas as la
    from lossatlas.report.text import cka_lines

    net_a, net_b, train_set = _pair(a, b, src)
    kw = dict(m=samples, alpha=alpha, seed=src.seed, noise=noise)
    value = la.similarity.model_cka(net_a, net_b, train_set, **kw)
    distance = la.similarity.l2_distance(net_a, net_b)
    per = la.similarity.model_cka(net_a, net_b, train_set, layers=layers, **kw) if layers \
        else None
    for line in cka_lines(value, distance, samples, alpha, noise, per):
        typer.echo(line)
    if per and out is not None:
        from lossatlas.plot import connect as plot

        plot.cka_layers(per, path=out)
        typer.echo(f"wrote {out}")

