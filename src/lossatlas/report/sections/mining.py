"""Mined directions (Li, Li, Zhan 2024, Algorithms 1 and 2): a w-peak at an early checkpoint
and a vvv-basin at the final model, with an honest verdict on each."""

from __future__ import annotations

import matplotlib.pyplot as plt

from lossatlas.report.registry import Figure, Output, section
from lossatlas.report.sections.landscape import log_c


@section("mined", "Mined directions", inputs=("run",),
         paper="Li, Li, Zhan 2024, Algorithms 1-2, Figs. 9-10",
         options={"epochs": 5, "lr_w_peak": 1.0, "lr_vvv": 0.1, "gamma": 0.1, "batch_size": 32,
                  "points": 41},
         quick={"epochs": 2, "points": 21})
def mined(ctx, opts) -> Output:
    """``la.mining.mine_w_peak`` at checkpoint 1 and ``mine_vvv_basin`` at the final model,
    each followed by the curve along the mined direction and its shape."""
    import lossatlas as la
    from lossatlas.plot import shapes as plot

    folder = ctx.folder("mined")
    obj = ctx.objective(batch_size=None)
    small = ctx.objective(batch_size=opts["batch_size"])  # mining: many small steps
    lc = log_c(ctx)
    k = min(1, len(ctx.run) - 1)
    early = ctx.run.checkpoints[k]
    wp = la.mining.mine_w_peak(small, epochs=opts["epochs"], lr=opts["lr_w_peak"], center=early,
                               seed=ctx.seed, progress=ctx.progress)
    vvv = la.mining.mine_vvv_basin(small, epochs=opts["epochs"], lr=opts["lr_vvv"],
                                   gamma=opts["gamma"], seed=ctx.seed, progress=ctx.progress)
    files = [wp.save(folder / "w-peak.h5"), vvv.save(folder / "vvv-basin.h5")]
    kw = {"points": opts["points"], "progress": False}
    c_wp = la.curve(obj, wp.direction, center=early, **kw)
    c_vvv = la.curve(obj, vvv.direction, span=(-1, 2), **kw)
    files += [c_wp.save(folder / "w-peak-curve.h5"), c_vvv.save(folder / "vvv-basin-curve.h5")]
    rows, verdicts, numbers = [["algorithm", "target", "shape reached", "stationary points",
                                "verdict"]], [], {}
    for name, target, c, where in (("Algorithm 1", "w-peak", c_wp, f"checkpoint {k}"),
                                   ("Algorithm 2", "vvv-basin", c_vvv, "final model")):
        s = la.shapes.classify(c.x, c.loss, log_c=lc)
        ok = s.kind == target
        verdict = (f"{target} at the {where}: target shape reached" if ok else
                   f"{target} at the {where}: target shape NOT reached (the curve is a "
                   f"{s.kind}, pattern {s.pattern or 'monotone'})")
        verdicts.append(verdict)
        rows.append([name, target, s.kind, str(s.stationary), "reached" if ok else
                     "not reached"])
        numbers[f"{target}_shape"] = s.kind
        numbers[f"{target}_reached"] = ok
        numbers[f"{target}_stationary_points"] = int(s.stationary)
    path = folder / "mined.png"
    panel = {f"Algo. 1 at E={k} (w-peak)": [c_wp], "Algo. 2 (vvv-basin)": [c_vvv]}
    labels = {f"Algo. 1 at E={k} (w-peak)": ["mined ε"], "Algo. 2 (vvv-basin)": ["mined ε"]}
    markers = {"Algo. 2 (vvv-basin)": (0.0, 1.0)}
    plt.close(plot.types_panel(panel, labels, log_c=lc, markers=markers, path=path))
    return Output(
        figures=[Figure(path, "curves along the mined directions")],
        numbers=numbers, verdict="; ".join(verdicts), table=rows,
        caption=[
            "Directions found by optimization instead of drawn at random (Li, Li, Zhan 2024). "
            "Algorithm 1 (ε ← ε − ηλ∇L(θ + λε), λ ~ U[−α, α], α ramping 0 → 1) looks near an "
            "early checkpoint for a w-peak: a maximum at λ = 0 between two lower basins, "
            "evidence that the point sits on a ridge. Algorithm 2 (φ ← φ − η(∇L(φ) + "
            "γλ∇L((1−λ)θ + λφ))) looks for a vvv-basin: three basins along θ + λ(φ − θ).",
            "The panel titles give the shape the classifier reads; the verdict says plainly "
            "whether each algorithm reached its target with this budget "
            f"({opts['epochs']} epochs, batches of {opts['batch_size']}).",
        ],
        files=files,
        command=[f"lossatlas mine w-peak -c {ctx.run_path} --index {k} --epochs "
                 f"{opts['epochs']} --lr {opts['lr_w_peak']} --batch-size {opts['batch_size']} "
                 f"--out {files[0]}",
                 f"lossatlas mine vvv-basin -c {ctx.run_path} --epochs {opts['epochs']} --lr "
                 f"{opts['lr_vvv']} --gamma {opts['gamma']} --batch-size {opts['batch_size']} "
                 f"--out {files[1]}"],
        provenance={"files": [str(f.relative_to(ctx.out)) for f in files], "seed": ctx.seed,
                    "bn": "eval mode", "data": ctx.recipe.data},
    )
