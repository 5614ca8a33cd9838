"""1D curves and their shapes (Li, Li, Zhan 2024), the random filter-normalized surface (Li et
al. 2018) and the P.E.1 × N.E.1 surface (Hessian eigenvectors)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np

from lossatlas.report.registry import Figure, Output, section


def log_c(ctx) -> float | None:
    """The random-guess loss log C of the run's data (None without classes)."""
    c = getattr(ctx.train, "num_classes", None)
    return math.log(c) if c and c > 1 else None


def provenance(ctx, result, files) -> dict:
    """Where a landscape result comes from: its files and the attributes it was saved with."""
    meta = result.meta or {}
    return {"files": [str(f.relative_to(ctx.out)) for f in files],
            "lossatlas_version": meta.get("lossatlas_version"), "bn": meta.get("bn"),
            "engine": meta.get("engine"), "samples": meta.get("num_samples"),
            "data": ctx.recipe.data, "data_options": ctx.recipe.data_opts,
            "direction_seeds": [i.get("seed") for i in meta.get("directions_info", [])
                                if isinstance(i, dict)]}


@section("curves", "1D curves and their shapes", inputs=("run", "run_b"),
         paper="Li, Li, Zhan 2024, Fig. 1 and Table 1",
         options={"points": 41, "gaussians": 3}, quick={"points": 21, "gaussians": 2})
def curves(ctx, opts) -> Output:
    """Gaussian filter-normalized directions (v-basin expected), toward the final checkpoint from
    epoch 1 (v-side) and toward the independent run B on [−1, 2] (w-basin)."""
    import lossatlas as la
    from lossatlas.plot import shapes as plot

    folder = ctx.folder("curves")
    obj = ctx.objective(batch_size=None)
    lc, final = log_c(ctx), obj.center
    kw = {"points": opts["points"], "progress": False}
    panel, labels, markers, files, rows = {}, {}, {}, [], [["curve", "shape", "stationary points",
                                                            "pattern"]]
    gs = [la.directions.gaussian(final, norm="filter", seed=s) for s in range(opts["gaussians"])]
    panel["Gaussian (FilNorm)"] = [la.curve(obj, d, **kw) for d in gs]
    labels["Gaussian (FilNorm)"] = [f"seed {s}" for s in range(len(gs))]
    early = ctx.run.checkpoints[min(1, len(ctx.run) - 1)]
    side = la.directions.toward(early, final)
    panel["to final, from E=1"] = [la.curve(obj, side, center=early, span=(-1, 1.5), **kw)]
    labels["to final, from E=1"] = ["θ_E1 + λ(θ_final − θ_E1)"]
    markers["to final, from E=1"] = (0.0, 1.0)
    indep = la.directions.independent(final, la.params.of(ctx.model_b, names=obj.names))
    panel["to run B"] = [la.curve(obj, indep, span=(-1, 2), **kw)]
    labels["to run B"] = ["θ + λ(θ_B − θ)"]
    markers["to run B"] = (0.0, 1.0)
    # the files the section's two commands write: `curve -D ... --out curves.png` names its
    # curves curves-0.h5, curves-1.h5, ... in the order of the -D (Gaussians, then run B)
    names = {"Gaussian (FilNorm)": [f"curves-{i}.h5" for i in range(len(gs))],
             "to final, from E=1": ["to-final.h5"], "to run B": [f"curves-{len(gs)}.h5"]}
    counts: dict[str, list[int]] = {}
    kinds: dict[str, list[str]] = {}
    for name, cs in panel.items():
        for i, c in enumerate(cs):
            f = folder / names[name][i]
            c.save(f)
            files.append(f)
            s = la.shapes.classify(c.x, c.loss, log_c=lc)
            counts.setdefault(name, []).append(int(s.stationary))
            kinds.setdefault(name, []).append(s.kind)
            rows.append([f"{name}: {labels[name][i]}", s.kind, str(s.stationary),
                         s.pattern or "monotone"])
    path = folder / "curves.png"
    plt.close(plot.types_panel(panel, labels, log_c=lc, markers=markers, path=path))
    gauss = counts["Gaussian (FilNorm)"]
    numbers = {"stationary_points_gaussian": gauss,
               "stationary_points": float(np.mean(gauss)),
               "stationary_points_to_final": counts["to final, from E=1"][0],
               "stationary_points_to_run_b": counts["to run B"][0],
               "shapes": {r[0]: r[1] for r in rows[1:]}}
    run = ctx.run_path
    return Output(
        figures=[Figure(path, "curve types: Gaussian, toward the final model, toward run B")],
        numbers=numbers, summary={"stationary_points": numbers["stationary_points"]},
        caption=[
            "Loss along θ + λε for three kinds of direction ε (Li, Li, Zhan 2024, Fig. 1). "
            "The legend gives each curve's stationary-point count [n] (endpoints excluded, "
            "(y<sub>t</sub>−y<sub>t+1</sub>)(y<sub>t</sub>−y<sub>t−1</sub>) &gt; 0); a panel "
            "title gives the shape the classifier reads from the first curve and the mean count "
            "over the panel's curves. Dotted: λ = 0 (black) and the target checkpoint (red); "
            "dashed: the random-guess loss log C (an arrow when it lies far above).",
            "The paper finds a single basin along random Gaussian directions (v-basin, [1]), "
            "a monotone fall toward the final model from epoch 1 (v-side) and two minima with "
            "a barrier toward an independently trained model (w-basin). Here: "
            + "; ".join(f"{name} → {', '.join(kinds[name])}" for name in panel) + ".",
        ],
        table=rows,
        files=files,
        command=[f"lossatlas curve -c {run} "
                 + " ".join(f"-D gaussian:filter:seed={s}" for s in range(opts["gaussians"]))
                 + f" -D independent:{ctx.run_b_path} --points {opts['points']} "
                 f"--out {folder / 'curves.png'}",
                 f"lossatlas curve -c {run} --index {min(1, len(ctx.run) - 1)} -D checkpoint:"
                 f"{run} --span -1 1.5 --points {opts['points']} --out {folder / 'to-final.h5'}"],
        provenance=provenance(ctx, panel["Gaussian (FilNorm)"][0], files[:1]),
    )


def surface_output(ctx, res, folder, name: str, title: str) -> tuple[list[Figure], list]:
    """Contour PNG, 3D PNG and the interactive 3D plot (plotly JSON) of a surface."""
    import lossatlas as la
    from lossatlas.plot.interactive import figure

    contour = folder / f"{name}-contour.png"
    plt.close(la.plot.plot_surface(res, "contour", contour, title=title))
    view = folder / f"{name}-3d.png"
    plt.close(la.plot.plot_surface(res, "surface3d", view, title=title))
    spec = folder / f"{name}-3d.json"
    spec.write_text(figure(res, title=title).to_json())
    return [Figure(spec, f"{title}: interactive 3D (drag to turn)", interactive=True),
            Figure(contour, f"{title}: contours"), Figure(view, f"{title}: 3D view")], [spec]


@section("surface", "Random filter-normalized surface", inputs=("run",),
         paper="Li et al. 2018, Figs. 1 and 5",
         options={"resolution": 31, "span": 1.0}, quick={"resolution": 11})
def surface(ctx, opts) -> Output:
    """L(θ + a·d₁ + b·d₂) over two Gaussian filter-normalized directions (seeds 0 and 1,
    d₂ orthogonalized against d₁)."""
    import lossatlas as la

    folder = ctx.folder("surface")
    obj = ctx.objective(batch_size=None)
    d1 = la.directions.gaussian(ctx.model, seed=ctx.seed)
    d2 = la.directions.gaussian(ctx.model, seed=ctx.seed + 1)
    n, sp = opts["resolution"], opts["span"]
    h5 = folder / "surface.h5"
    res = la.surface(obj, d1, d2, span=(-sp, sp), resolution=n, path=h5, orthogonalize=True,
                     progress=ctx.progress)
    figs, extra = surface_output(ctx, res, folder, "surface", "random filter-normalized plane")
    figs, extra = figs[:2], [*extra, figs[2].path]  # the static 3D view: a file, not shown
    loss = np.asarray(res.loss)
    i0 = (int(np.argmin(np.abs(res.x))), int(np.argmin(np.abs(res.y))))
    numbers = {"loss_min": float(np.nanmin(loss)), "loss_max": float(np.nanmax(loss)),
               "loss_center": float(loss[i0]), "resolution": n, "span": sp,
               "cosine_before_orthogonalizing": res.meta.get("cosine")}
    return Output(
        figures=figs, numbers=numbers,
        caption=[
            f"Training loss on the plane θ + a·d₁ + b·d₂, a, b ∈ [−{sp:g}, {sp:g}], {n}×{n} "
            "points (Li et al. 2018, Fig. 5's method). d₁, d₂ are Gaussian directions scaled "
            "filter by filter to the norms of the model's filters (biases left at zero), d₂ "
            "made orthogonal to d₁. The red star is the trained model.",
            "Read it for width and convexity: wide, round contours around the star are a flat, "
            "convex-looking basin along random directions; random directions rarely see "
            "the negative curvature that the Hessian section finds.",
        ],
        files=[h5, *extra],
        command=[f"lossatlas surface -c {ctx.run_path} --resolution {n} --span -{sp:g} {sp:g} "
                 f"--x-direction gaussian:filter:seed={ctx.seed} --y-direction "
                 f"gaussian:filter:seed={ctx.seed + 1} --orthogonalize --plot contour "
                 f"--plot surface3d --plot html --out {h5}"],
        provenance=provenance(ctx, res, [h5]),
    )


@section("eigen_surface", "P.E.1 × N.E.1 surface", inputs=("run", "hessian"),
         paper="Li, Li, Zhan 2024, Figs. 9-12",
         options={"resolution": 25, "span": 1.0}, quick={"resolution": 9})
def eigen_surface(ctx, opts) -> Output:
    """The surface on the Hessian's top eigenvector (P.E.1) and bottom one (N.E.1), each scaled
    to the model's norm, from the hessian section's file."""
    import lossatlas as la

    folder = ctx.folder("eigen_surface")
    hess = la.load(ctx.out / "hessian" / "hessian.h5")
    obj = ctx.objective(batch_size=None)
    spectrum = hess.spectrum()
    dirs = [la.directions.eigenvector(obj, 1, which=w, norm="model", spectrum=spectrum)
            for w in ("LA", "SA")]
    lam = {d.meta["label"]: d.meta["eigenvalue"] for d in dirs}
    n, sp = opts["resolution"], opts["span"]
    h5 = folder / "eigen_surface.h5"
    res = la.surface(obj, dirs[0], dirs[1], span=(-sp, sp), resolution=n, path=h5,
                     progress=ctx.progress)
    figs, extra = surface_output(ctx, res, folder, "eigen_surface", "P.E.1 × N.E.1")
    loss = np.asarray(res.loss)
    numbers = {"loss_min": float(np.nanmin(loss)), "loss_max": float(np.nanmax(loss)),
               "lambda_P.E.1": lam["P.E.1"], "lambda_N.E.1": lam["N.E.1"], "resolution": n,
               "scale": "model norm ‖θ‖ per direction"}
    return Output(
        figures=figs[:2], numbers=numbers,
        caption=[
            "The same kind of plane, but on the Hessian's eigenvectors: P.E.1 (largest "
            f"eigenvalue, λ = {lam['P.E.1']:.3g}) on x and N.E.1 (smallest, λ = "
            f"{lam['N.E.1']:.3g}) on y, each rescaled to the norm of the whole model ‖θ‖ "
            "(Li, Li, Zhan 2024 use eigenvectors as directions, Figs. 9-12).",
            "P.E.k / N.E.k name the eigenvector of the k-th largest / k-th smallest eigenvalue. "
            "Along P.E.1 the loss curves up fastest. "
            + ("N.E.1's eigenvalue is negative: for small steps the loss falls along it, so the "
               "trained point is a saddle there however round the random plane looks; at the "
               "scale of ‖θ‖ higher-order terms can hide this."
               if lam["N.E.1"] < 0 else
               "N.E.1's eigenvalue is not negative: no direction of descending curvature was "
               "found at this point."),
        ],
        files=[h5, extra[0]],
        command=[f"lossatlas surface -c {ctx.run_path} --x-direction eigen:LA:1 --y-direction "
                 f"eigen:SA:1 --resolution {n} --span -{sp:g} {sp:g} --out {h5}"],
        provenance=provenance(ctx, res, [h5]),
    )
