"""Mode connectivity, CKA and ℓ2 distance to an independent run B (Yang et al. 2021), and the
same connection after permutation alignment (Ainsworth et al. 2023; Entezari et al. 2022)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from lossatlas.core.errors import LossAtlasError
from lossatlas.report.registry import Figure, Output, section

#: Values of the ``align`` option: ``la.align.match`` methods, or none.
ALIGN = ("weights", "activations", "none")


@section("connectivity", "Mode connectivity, CKA and ℓ2 to run B", inputs=("run", "run_b"),
         paper="Yang et al. 2021, Sect. 2.2 and Eq. 3; Garipov et al. 2018 (Bezier curve); "
               "Ainsworth et al. 2023 and Entezari et al. 2022 (alignment)",
         options={"epochs": 20, "lr": 0.05, "points": 5, "dense": 21, "cka_samples": 640,
                  "align": "weights"},
         quick={"epochs": 4, "dense": 11, "cka_samples": 200}, version=2)
def connectivity(ctx, opts) -> Output:
    """A one-bend Bezier curve between the run and run B trained with ``la.connect.
    train_curve``; mc on ``points`` t values, the dense profile for the figure, the linear
    CKA of the two models' outputs on mixup samples and the ℓ2 distance of their weights.

    With ``align`` ("weights": Git Re-Basin weight matching, or "activations"), a second curve
    is trained from the run to run B permuted to match it (``train_curve(..., align=...,
    unaligned_curve=False)``: the curve between the unaligned ends is the first one, not
    trained twice); the straight line's barrier and mc and the curve's mc before and after."""
    if opts["align"] not in ALIGN:
        raise LossAtlasError(f"option connectivity.align={opts['align']!r} is unknown; use one "
                             f"of {', '.join(ALIGN)}")
    import lossatlas as la

    folder = ctx.folder("connectivity")
    model_a, model_b = ctx.model, ctx.model_b
    obj = la.Objective(model_a, ctx.train, batch_size=512)
    res = la.connect.train_curve(obj, model_a, model_b, epochs=opts["epochs"], lr=opts["lr"],
                                 points=opts["points"], seed=ctx.seed, progress=ctx.progress)
    cka = float(la.similarity.model_cka(model_a, model_b, ctx.train, m=opts["cka_samples"],
                                        seed=ctx.seed))
    l2 = la.similarity.l2_distance(model_a, model_b)
    h5, path = _save(obj, res, folder / "mode_connectivity", opts["dense"],
                     f"run A (seed {ctx.seed}) to run B (seed {ctx.run_b.info.get('seed')}): "
                     f"mc = {res.mc:+.2f} % at t* = {res.t_star:.2f} (straight line "
                     f"{res.linear_mc:+.2f} %), CKA = {cka:.3f}, ℓ2 = {l2:.3g}")
    numbers = {"mc": float(res.mc), "t_star": float(res.t_star),
               "mc_linear": float(res.linear_mc), "metric": "train error (%)", "cka": cka,
               "l2": l2, "curve_epochs": opts["epochs"]}
    figures = [Figure(path, "train error and loss along the Bezier curve and the line")]
    files, caption, rows, extra = [h5], [], [], []
    if opts["align"] != "none":
        al = _aligned(ctx, opts, obj, model_a, folder, res)
        numbers.update(al["numbers"])
        figures.append(al["figure"])
        files.append(al["file"])
        caption, rows, extra = al["caption"], al["table"], [al["command"]]
    sign = ("negative: a barrier between the two solutions (poorly connected)" if res.mc < 0
            else "non-negative: the curve is no worse than its ends (well connected)")
    return Output(
        figures=figures, numbers=numbers,
        summary={"mc": numbers["mc"], "cka": cka, "l2": l2,
                 **{k: numbers[k] for k in ALIGNED_SUMMARY if k in numbers}},
        caption=[
            "Two independently trained solutions (this run, A, and run B: same recipe, another "
            "seed) joined by a quadratic Bezier curve whose bend is trained to lower the loss "
            "along it (Garipov et al. 2018); the dashed line is the straight segment. Yang et "
            "al. 2021's mode connectivity is mc = ½(v(0) + v(1)) − v(t*), v the train error "
            "(%), t* the t where |v(t) − ½(v(0) + v(1))| is largest.",
            f"The sign is the reading: mc = {res.mc:+.2f} % is {sign}; the paper calls "
            "|mc| below a small tolerance connected, and mc &gt; 0 (Phase II) a curve lower "
            "than its ends because the ends are not minima. CKA (linear, on the softmax "
            "outputs at mixup samples) near 1 means the two models compute nearly the same "
            f"function (here {cka:.3f}); ℓ2 = ‖θ<sub>A</sub> − θ<sub>B</sub>‖ = {l2:.3g}.",
            *caption,
        ],
        table=rows,
        files=files,
        command=[f"lossatlas connect {ctx.run_path} {ctx.run_b_path} --epochs {opts['epochs']} "
                 f"--lr {opts['lr']} --points {opts['points']} --dense {opts['dense']} "
                 f"--seed {ctx.seed} --out {h5}", *extra,
                 f"lossatlas cka {ctx.run_path} {ctx.run_b_path} --samples "
                 f"{opts['cka_samples']} --seed {ctx.seed}"],
        provenance={"files": [str(f.relative_to(ctx.out)) for f in files], "run_b": ctx.run_b_path,
                    "run_b_seed": ctx.run_b.info.get("seed"),
                    "bn": "recalibrated along the curve when the model has BN",
                    "cka_samples": opts["cka_samples"], "seed": ctx.seed,
                    "align": opts["align"]},
    )


def _save(obj, res, stem: Path, dense: int, title: str) -> tuple[Path, Path]:
    """``stem.h5`` (the curve) and ``stem.png`` (error and loss along it, ``dense`` t values)."""
    import lossatlas as la
    from lossatlas.plot import connect as plot

    h5 = res.save(stem.with_suffix(".h5"))
    prof = la.connect.dense_profile(obj, res, dense)
    png = stem.with_suffix(".png")
    plt.close(plot.error_and_loss(res, dense=prof, path=png, title=title))
    return h5, png


#: The aligned numbers that also go to atlas.json's summary (when ``align`` is not "none").
ALIGNED_SUMMARY = ("mc_aligned", "mc_unaligned", "barrier_aligned", "barrier_unaligned")


def _aligned(ctx, opts, obj, model_a, folder, res) -> dict:
    """The curve and the line from the run to run B permuted to match it (its function
    unchanged), with the barrier (Entezari et al. 2022) before and after; ``res`` is the
    curve between the unaligned ends."""
    import lossatlas as la

    how = {"weights": "weight matching", "activations": "activation matching"}[opts["align"]]
    al = la.connect.train_curve(obj, model_a, ctx.model_b, epochs=opts["epochs"], lr=opts["lr"],
                                points=opts["points"], seed=ctx.seed, progress=ctx.progress,
                                align=opts["align"], unaligned_curve=False)
    loss_before = la.connect.barrier(al.t, al.unaligned_linear_loss)
    loss_after = la.connect.barrier(al.t, al.linear_loss)
    h5, path = _save(obj, al, folder / "mode_connectivity-aligned", opts["dense"],
                     f"run A to run B permuted by {how}: straight-line barrier "
                     f"{al.unaligned_linear_barrier:.2f} → {al.linear_barrier:.2f} % (loss "
                     f"{loss_before:.3g} → {loss_after:.3g}), curve mc {res.mc:+.2f} → "
                     f"{al.mc:+.2f} %")
    numbers = {"align": opts["align"], "align_converged": bool(al.settings["align_converged"]),
               "align_passes": int(al.settings["align_passes"]),
               "barrier_unaligned": float(al.unaligned_linear_barrier),
               "barrier_aligned": float(al.linear_barrier),
               "barrier_loss_unaligned": loss_before, "barrier_loss_aligned": loss_after,
               "mc_linear_aligned": float(al.linear_mc), "mc_unaligned": float(res.mc),
               "mc_aligned": float(al.mc), "t_star_aligned": float(al.t_star)}
    table = [["", "before alignment", f"after {how}"],
             ["straight line: barrier, train error (%)", f"{al.unaligned_linear_barrier:.3g}",
              f"{al.linear_barrier:.3g}"],
             ["straight line: barrier, train loss", f"{loss_before:.3g}", f"{loss_after:.3g}"],
             ["straight line: mc (%)", f"{al.unaligned_linear_mc:+.3g}", f"{al.linear_mc:+.3g}"],
             ["trained Bezier curve: mc (%)", f"{res.mc:+.3g}", f"{al.mc:+.3g}"]]
    fell = al.linear_barrier < al.unaligned_linear_barrier
    caption = [
        f"Aligned (second figure, <code>--set connectivity.align=none</code> turns it off): "
        f"run B's hidden units are permuted to match run A's by {how} (Ainsworth et al. 2023, "
        "Git Re-Basin; Entezari et al. 2022 conjecture that, after the right permutation, SGD "
        "solutions have no barrier on the straight line). A permutation does not change B's "
        "function, only where it sits in weight space. The barrier is Entezari et al.'s "
        "B = max<sub>t</sub> [v(t) − ((1 − t) v(0) + t v(1))] along the straight line, on the "
        f"train error at the same {opts['points']} t values as mc (the orange triangles are "
        "the line before alignment). A curve is trained once more, between A and the "
        "permuted B (the curve between the unaligned ends is the one above; it is not trained "
        "twice), so the section trains two curves. The summary's mc (and the phase) stays "
        "Yang et al.'s, between the unaligned solutions.",
        f"Here the straight-line barrier {'falls' if fell else 'does not fall'} from "
        f"{al.unaligned_linear_barrier:.3g} to {al.linear_barrier:.3g} points of train error "
        f"(loss barrier {loss_before:.3g} → {loss_after:.3g}); the trained curve's mc goes "
        f"from {res.mc:+.3g} to {al.mc:+.3g} %. Weight matching "
        f"{'reached a fixed point' if numbers['align_converged'] else 'did NOT converge'} in "
        f"{numbers['align_passes']} pass{'es' if numbers['align_passes'] != 1 else ''}.",
    ]
    return {"numbers": numbers, "figure": Figure(path, f"after {how}: the curve and the line "
                                                 "to the permuted run B"),
            "file": h5, "caption": caption, "table": table,
            "command": f"lossatlas connect {ctx.run_path} {ctx.run_b_path} --align "
                       f"{opts['align']} --no-unaligned-curve --epochs {opts['epochs']} --lr "
                       f"{opts['lr']} --points {opts['points']} --dense {opts['dense']} "
                       f"--seed {ctx.seed} --out {h5}"}
