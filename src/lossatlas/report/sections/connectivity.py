"""Mode connectivity, CKA and ℓ2 distance to an independent run B (Yang et al. 2021)."""

from __future__ import annotations

import matplotlib.pyplot as plt

from lossatlas.report.registry import Figure, Output, section


@section("connectivity", "Mode connectivity, CKA and ℓ2 to run B", inputs=("run", "run_b"),
         paper="Yang et al. 2021, Sect. 2.2 and Eq. 3; Garipov et al. 2018 (Bezier curve)",
         options={"epochs": 20, "lr": 0.05, "points": 5, "dense": 21, "cka_samples": 640},
         quick={"epochs": 4, "dense": 11, "cka_samples": 200})
def connectivity(ctx, opts) -> Output:
    """A one-bend Bezier curve between the run and run B trained with ``la.connect.
    train_curve``; mc on ``points`` t values, the dense profile for the figure, the linear
    CKA of the two models' outputs on mixup samples and the ℓ2 distance of their weights."""
    import lossatlas as la
    from lossatlas.plot import connect as plot

    folder = ctx.folder("connectivity")
    model_a, model_b = ctx.model, ctx.model_b
    obj = la.Objective(model_a, ctx.train, batch_size=512)
    res = la.connect.train_curve(obj, model_a, model_b, epochs=opts["epochs"], lr=opts["lr"],
                                 points=opts["points"], seed=ctx.seed, progress=ctx.progress)
    h5 = res.save(folder / "mode_connectivity.h5")
    prof = la.connect.dense_profile(obj, res, opts["dense"])
    cka = float(la.similarity.model_cka(model_a, model_b, ctx.train, m=opts["cka_samples"],
                                        seed=ctx.seed))
    l2 = la.similarity.l2_distance(model_a, model_b)
    path = folder / "mode_connectivity.png"
    plt.close(plot.error_and_loss(
        res, dense=prof, path=path,
        title=f"run A (seed {ctx.seed}) to run B (seed {ctx.run_b.info.get('seed')}): "
              f"mc = {res.mc:+.2f} % at t* = {res.t_star:.2f} (straight line "
              f"{res.linear_mc:+.2f} %), CKA = {cka:.3f}, ℓ2 = {l2:.3g}"))
    numbers = {"mc": float(res.mc), "t_star": float(res.t_star),
               "mc_linear": float(res.linear_mc), "metric": "train error (%)", "cka": cka,
               "l2": l2, "curve_epochs": opts["epochs"]}
    sign = ("negative: a barrier between the two solutions (poorly connected)" if res.mc < 0
            else "non-negative: the curve is no worse than its ends (well connected)")
    return Output(
        figures=[Figure(path, "train error and loss along the Bezier curve and the line")],
        numbers=numbers, summary={"mc": numbers["mc"], "cka": cka, "l2": l2},
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
        ],
        files=[h5],
        command=[f"lossatlas connect {ctx.run_path} {ctx.run_b_path} --epochs {opts['epochs']} "
                 f"--lr {opts['lr']} --points {opts['points']} --dense {opts['dense']} "
                 f"--seed {ctx.seed} --out {h5}",
                 f"lossatlas cka {ctx.run_path} {ctx.run_b_path} --samples "
                 f"{opts['cka_samples']} --seed {ctx.seed}"],
        provenance={"files": [str(h5.relative_to(ctx.out))], "run_b": ctx.run_b_path,
                    "run_b_seed": ctx.run_b.info.get("seed"),
                    "bn": "recalibrated along the curve when the model has BN",
                    "cka_samples": opts["cka_samples"], "seed": ctx.seed},
    )
