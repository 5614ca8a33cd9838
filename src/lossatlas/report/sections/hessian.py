"""The Hessian at the trained model: both ends of the spectrum, trace, SLQ density and the δL
histograms of the second-order approximation."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from lossatlas.report.registry import Figure, Output, section


@section("hessian", "Hessian spectrum, trace, density and δL", inputs=("run",),
         paper="Yang et al. 2021 (λ_max, trace); Li, Li, Zhan 2024, Figs. 8 and 13",
         options={"top": 3, "bottom": 3, "steps": 64, "products": 40, "samples": 60,
                  "batch_size": 2048},
         quick={"steps": 30, "products": 20, "samples": 30})
def hessian(ctx, opts) -> Output:
    """``la.hessian.summarize`` (Lanczos for the extreme eigenpairs, Hutchinson trace, SLQ
    density) and ``la.hessian.delta_distribution`` on the full training set."""
    import lossatlas as la
    from lossatlas.plot.hessian import plot_delta, summary_figures

    folder = ctx.folder("hessian")
    obj = ctx.objective(batch_size=opts["batch_size"])
    summary = la.hessian.summarize(obj, top=opts["top"], bottom=opts["bottom"], trace=True,
                                   dens=True, steps=opts["steps"], products=opts["products"],
                                   seed=ctx.seed)
    h5 = folder / "hessian.h5"
    summary.save(h5)
    figs = summary_figures(summary, h5)
    dist = la.hessian.delta_distribution(obj, samples=opts["samples"], seed=ctx.seed)
    dh5 = dist.save(folder / "hessian-delta.h5")
    delta_png = folder / "hessian-delta.png"
    plt.close(plot_delta(dist, delta_png))
    names = list(summary.names)
    vals = np.asarray(summary.values, dtype=float)
    lam_max, lam_min = float(vals.max()), float(vals.min())
    positive = [float(np.mean(np.asarray(t) > 0)) for t in dist.true]
    pred_mean = [float(np.mean(p)) for p in dist.predicted]
    true_mean = [float(np.mean(t)) for t in dist.true]
    numbers = {"lambda_max": lam_max, "lambda_min": lam_min,
               "trace": float(summary.trace), "trace_error": float(summary.trace_error),
               "eigenvalues": {n: float(v) for n, v in zip(names, vals)},
               "residuals": {n: float(r) for n, r in zip(names, summary.residuals)},
               "matvecs": int(summary.matvecs),
               "ratio_min_max": lam_min / lam_max if lam_max else None,
               "delta_lambdas": [float(x) for x in dist.lambdas],
               "delta_mean_second_order": pred_mean, "delta_mean_true": true_mean,
               "delta_positive_share": positive}
    rows = [["λ (step)", "mean δL, second order", "mean δL, true", "true δL > 0"]]
    rows += [[f"{lam:g}", f"{p:.3g}", f"{t:.3g}", f"{100 * s:.0f} %"]
             for lam, p, t, s in zip(dist.lambdas, pred_mean, true_mean, positive)]
    fig_titles = {"eigenvalues": "extreme eigenvalues (P.E.k, N.E.k)",
                  "density": "SLQ eigenvalue density"}
    figures = [Figure(p, next((t for k, t in fig_titles.items() if k in p.name), p.name))
               for p in figs]
    figures.append(Figure(delta_png, "δL histograms: second order vs true"))
    return Output(
        figures=figures, numbers=numbers,
        summary={"lambda_max": lam_max, "lambda_min": lam_min, "trace": numbers["trace"]},
        caption=[
            f"The Hessian H of the full-data training loss at the trained model: its "
            f"{opts['top']} largest eigenvalues (P.E.1 = λ<sub>max</sub> = {lam_max:.4g}) and "
            f"{opts['bottom']} smallest (N.E.1 = λ<sub>min</sub> = {lam_min:.4g}) by Lanczos "
            f"with residual checks, the trace by Hutchinson's estimator ({summary.trace:.4g} ± "
            f"{summary.trace_error:.2g}), and the eigenvalue density by stochastic Lanczos "
            "quadrature (log scale: most mass sits at zero). λ<sub>max</sub> and the trace "
            "are Yang et al. 2021's local metrics; P.E.k / N.E.k are Li, Li, Zhan 2024's names.",
            "The δL histograms (Li, Li, Zhan 2024, Fig. 13) compare, for Gaussian ε, the "
            "second-order prediction λεᵀg + ½λ²εᵀHε with the true change L(θ + λε) − L(θ). "
            "For a ReLU net they part ways as λ grows: the loss is piecewise smooth, so a step "
            "crosses activation boundaries that the local quadratic (built from H at θ alone) "
            f"cannot see. Here, at λ = {dist.lambdas[-1]:g}, the mean true δL is "
            f"{true_mean[-1]:.3g} against {pred_mean[-1]:.3g} predicted.",
        ],
        table=rows,
        files=[h5, dh5],
        command=[f"lossatlas hessian -c {ctx.run_path} --top {opts['top']} --bottom "
                 f"{opts['bottom']} --trace --density --delta --samples {opts['samples']} "
                 f"--steps {opts['steps']} --products {opts['products']} --batch-size "
                 f"{opts['batch_size']} --seed {ctx.seed} --out {h5}"],
        provenance={"files": [str(h5.relative_to(ctx.out)), str(dh5.relative_to(ctx.out))],
                    "bn": "eval mode (running statistics)", "seed": ctx.seed,
                    "data": ctx.recipe.data, "data_options": ctx.recipe.data_opts,
                    "samples": len(ctx.train), "matvecs": int(summary.matvecs)},
    )
