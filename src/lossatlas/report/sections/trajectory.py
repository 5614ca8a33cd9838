"""The training trajectory on its PCA plane (Ding, Li, Huang 2023) beside a random
filter-normalized plane through the same center, with both Fitting Errors."""

from __future__ import annotations

import math

from lossatlas.report.registry import Figure, Output, section


@section("trajectory", "Trajectory plane vs random plane", inputs=("run",),
         paper="Ding, Li, Huang 2023, Figs. 2-3 and Table 1",
         options={"resolution": 15, "center": 0, "method": "ding2023"},
         quick={"resolution": 7})
def trajectory(ctx, opts) -> Output:
    """``la.trajectory.pca`` (Ding et al.'s centered PCA, center at the initialization),
    ``project`` (path and Fitting Error) and the surface of both planes; the shared
    ``analyse`` of ``lossatlas trajectory``."""
    from lossatlas.report.trajectory_plane import analyse

    folder = ctx.folder("trajectory")
    obj = ctx.objective(batch_size=None)
    res = analyse(obj, ctx.run, folder, method=opts["method"], center=opts["center"],
                  resolution=opts["resolution"], compare=1, progress=ctx.progress)
    plane, traj = res["plane"], res["trajectory"]
    err, err_r = float(traj.fitting_error), float(res["random_fitting_errors"][0])
    r = plane.explained_variance_ratio
    numbers = {"fitting_error": err, "fitting_error_random": err_r,
               "ratio_random_to_pca": err_r / err if err > 0 else math.inf,
               "explained_variance_pc1": float(r[0]), "explained_variance_pc2": float(r[1]),
               "checkpoints": len(ctx.run), "center_index": int(plane.center_index)}
    better = "lower" if err < err_r else "not lower"
    figs = res["figures"]
    return Output(
        figures=[Figure(figs[2], "trajectory PCA plane (left) beside a random plane (right)"),
                 Figure(figs[1], "true loss vs loss at the projection, per checkpoint")],
        numbers=numbers,
        summary={"fitting_error": err, "fitting_error_random": err_r},
        caption=[
            f"Left: the plane of the first two principal axes of the checkpoints centred at "
            f"checkpoint {plane.center_index} (Ding, Li, Huang 2023; PC1 and PC2 explain "
            f"{100 * r[0]:.1f} % and {100 * r[1]:.1f} % of the path's variance), the loss on "
            "it (log10 contours) and the projected path: black square the start, red ring the "
            "centre, green star the final model. Right: the same checkpoints projected on a "
            "random filter-normalized plane through the same centre.",
            "The Fitting Error Err = mean<sub>i</sub> [ln(L(w<sub>i</sub>) / "
            "L(w̃<sub>i</sub>))]² measures how far the loss at each checkpoint's projection "
            f"w̃<sub>i</sub> is from its true loss: {err:.3g} on the PCA plane against "
            f"{err_r:.3g} on the random plane ({better}; 0 would mean the plane holds the "
            "whole path). The second figure shows both projected losses per epoch.",
        ],
        files=[folder / n for n in ("plane.h5", "path.h5", "surface.h5", "random-0.h5",
                                    "random-surface.h5")],
        command=[f"lossatlas trajectory {ctx.run_path} --method {opts['method']} --center "
                 f"{opts['center']} --resolution {opts['resolution']} --compare 1 "
                 f"--out {folder}"],
        provenance={"files": ["trajectory/plane.h5", "trajectory/path.h5"],
                    "method": opts["method"], "random_plane_seed": 0, "norm": "filter",
                    "bn": "eval mode", "data": ctx.recipe.data},
    )
