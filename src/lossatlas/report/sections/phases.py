"""The phase this model's measurements indicate (Yang et al. 2021) and, with ``--sweep``, a
sweep's phase diagram."""

from __future__ import annotations

import dataclasses
import html

import matplotlib.pyplot as plt

from lossatlas.report.registry import Figure, Output, section


@section("phase", "Local phase reading", inputs=("run", "connectivity", "hessian"),
         paper="Yang et al. 2021, Sect. 3.1 and Fig. 1",
         options={"train_loss": 0.1, "mc": 2.0, "cka": 0.9})
def phase(ctx, opts) -> Output:
    """``la.taxonomy.classify`` on this run's final train loss, the connectivity section's mc
    and CKA, with λ_max and the trace reported beside (a single model has no scale to call
    them large or small)."""
    from lossatlas.analyses.taxonomy import Thresholds, classify

    conn = ctx.outputs["connectivity"]["numbers"]
    hess = ctx.outputs["hessian"]["numbers"]
    train_loss = float(ctx.run.train_loss[-1])
    th = Thresholds(train_loss=opts["train_loss"], mc=opts["mc"], cka=opts["cka"])
    metrics = {"train_loss": train_loss, "mc": conn["mc"], "cka": conn["cka"],
               "hessian_max": hess["lambda_max"], "hessian_trace": hess["trace"]}
    p = classify(metrics, th)
    rows = [["measurement", "value", "threshold", "reading"]]
    for key in ("train_loss", "mc", "cka"):
        e = p.evidence.get(key)
        if e:
            sign = {"train_loss": "&lt;", "mc": "≥", "cka": "≥"}[key]
            rows.append([key, f"{e['value']:.4g}", f"{sign} {e['threshold']:g}", e["verdict"]])
    rows.append(["λ_max (not thresholded)", f"{hess['lambda_max']:.4g}", "–",
                 "relative: compare across a sweep"])
    rows.append(["trace (not thresholded)", f"{hess['trace']:.4g}", "–",
                 "relative: compare across a sweep"])
    return Output(
        numbers={"phase": p.label, "local": p.local, "connectivity": p.connectivity,
                 "metrics": metrics, "thresholds": dataclasses.asdict(th)},
        summary={"phase": p.label},
        verdict=p.describe(),
        table=rows,
        caption=[
            "Yang et al. 2021 sort loss landscapes into phases by two transitions: local "
            "(train loss small or large, with λ<sub>max</sub> and the trace following it) and "
            "global (mode connectivity mc below −tolerance: a barrier). Phase I/II are sharp "
            "(under-fitted), III/IV flat; I/III poorly connected, II/IV well connected; IV "
            "splits by CKA into IV-A (dissimilar) and IV-B (similar, \"globally nice\").",
            f"This run reads as <b>{html.escape(p.describe())}</b>. The thresholds are "
            "explicit (the paper reads them off its figures): a single model cannot say "
            "whether its λ<sub>max</sub> is large, so the local side comes from the train loss; "
            "a sweep (next section) places the model among its neighbours.",
        ],
        command=[f"python -c \"import lossatlas as la; print(la.taxonomy.classify("
                 f"{{'train_loss': {train_loss:.4g}, 'mc': {conn['mc']:.4g}, 'cka': "
                 f"{conn['cka']:.4g}}}).describe())\""],
        provenance={"from": ["training (final train loss)", "connectivity/mode_connectivity.h5",
                             "hessian/hessian.h5"]},
    )


@section("phase_diagram", "Phase diagram of a sweep", inputs=("sweep",),
         paper="Yang et al. 2021, Fig. 2", when=lambda ctx: ctx.sweep is not None)
def sweep(ctx, opts) -> Output:
    """``lossatlas phases SWEEP``: every metric of the sweep's cells and their phase map."""
    from lossatlas import sweeps as S
    from lossatlas.plot import phases as P

    folder = ctx.folder("phase_diagram")
    result = S.load_results(ctx.sweep)
    path = folder / "phases.png"
    plt.close(P.phase_diagram(result, path))
    figs = [Figure(path, "every metric per cell and the phase map")]
    if result.curves():
        mc = folder / "mc_curves.png"
        plt.close(P.mc_curves(result, mc))
        figs.append(Figure(mc, "train error along every cell's curve"))
    counts: dict[str, int] = {}
    for row in result.cells:
        counts[str(row.get("phase"))] = counts.get(str(row.get("phase")), 0) + 1
    spec = result.spec
    rows = [[spec.load.label, spec.temperature.label, "train loss", "mc", "CKA", "phase"]]
    nan = float("nan")
    for c in result.cells:
        rows.append([str(c["load"]), str(c["temperature"]), f"{c.get('train_loss', nan):.3g}",
                     f"{c.get('mc', nan):.3g}", f"{c.get('cka', nan):.3g}",
                     str(c.get("phase"))])
    return Output(
        figures=figs, table=rows,
        numbers={"cells": len(result.cells), "phases": counts, "name": spec.name,
                 "load": spec.load.label, "temperature": spec.temperature.label},
        caption=[
            f"The sweep <code>{html.escape(spec.name)}</code>: load = {spec.load.label} "
            f"({', '.join(map(str, spec.load.values))}) across, temperature = "
            f"{spec.temperature.label} ({', '.join(map(str, spec.temperature.values))}) with "
            "the hottest row at the top, as in Yang et al. 2021's Fig. 2. Every cell trains "
            f"{len(spec.seeds)} seeds and measures λ<sub>max</sub>, the trace, mc, CKA and ℓ2; "
            "the last panel labels each cell's phase with the same thresholds as above (the "
            "key names I, II, III, IV-A and IV-B).",
        ],
        command=[f"lossatlas phases {ctx.sweep}"],
        provenance={"sweep": str(ctx.sweep), "seeds": list(spec.seeds)},
    )
