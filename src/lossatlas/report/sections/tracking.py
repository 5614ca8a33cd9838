"""Sharpness through training (Cohen et al. 2021): the run's ``sharpness`` table, written during
training by :class:`la.track.Sharpness` (``--track sharpness:every=K``); the section is
absent when the run has no such table."""

from __future__ import annotations

import math
import shutil

import matplotlib.pyplot as plt
import numpy as np

from lossatlas.report.registry import Figure, Output, section


def _has_table(ctx) -> bool:
    return "sharpness" in (ctx.run.info.get("tracks") or [])


def _last(values) -> float | None:
    """The last finite value of a column (None when there is none)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(v[-1]) if v.size else None


def _reading(ratio: float | None, what: str) -> str:
    """One honest sentence on λ_max / threshold at the end of training."""
    if ratio is None:
        return f"no finite {what} to compare with"
    pct = f"{100 * ratio:.0f}" if ratio >= 0.1 else f"{100 * ratio:.2g}"
    if ratio > 1.1:
        return (f"{pct} % of {what}: above it, where the full-batch iteration is "
                "unstable along the top eigenvector (transient at a catapult, or mini-batch "
                "noise and weight decay at work)")
    if ratio >= 0.9:
        return f"{pct} % of {what}: at the edge of stability"
    return f"{pct} % of {what}: below the edge of stability"


@section("sharpness", "Sharpness during training", inputs=("run", "table:sharpness"),
         paper="Cohen, Kaur, Li, Kolter, Talwalkar 2021, Fig. 1; Cohen et al. 2022 (Adam)",
         when=_has_table)
def sharpness(ctx, opts) -> Output:
    """The table ``run.track("sharpness")`` drawn by ``la.plot.tracking.sharpness_curves``:
    λ_max(H) of the full-data training loss against the optimizer step with the stability
    threshold, λ_max(P⁻¹H) beside it for Adam; nothing is recomputed."""
    from lossatlas.plot.tracking import sharpness_curves

    run, r = ctx.run, ctx.recipe
    t = run.track("sharpness")
    h = run.info.get("hyperparameters", {})
    optimizer = str(h.get("optimizer", "SGD"))
    adam = optimizer.lower().startswith("adam")
    step, lam = t["step"], t["lambda_max"]
    folder = ctx.folder("sharpness")
    table = folder / "sharpness.csv"  # the atlas keeps its own copy of the table it shows
    shutil.copyfile(run.path / "sharpness.csv", table)
    path = folder / "sharpness.png"
    plt.close(sharpness_curves(run, path, title=f"{r.model.rsplit('/', 1)[-1]} on {r.data}, "
                               f"{optimizer} lr {h.get('lr')}, batch {h.get('batch_size')}"))
    every = int(np.median(np.diff(step))) if len(step) > 1 else 1
    k = sum(1 for c in t if c.startswith("lambda_") and c[7:].isdigit())
    prods = t["products"][1:] if len(step) > 1 else t["products"]
    peak = int(np.nanargmax(lam))
    wd = float(h.get("weight_decay") or 0.0)
    lam_final, thr = float(lam[-1]), _last(t.get("threshold", [math.nan]))
    two = _last(t["two_over_lr"])
    momentum = float(h.get("momentum") or 0.0)
    thr_name = "(2+2β)/η" if not adam and momentum else "2/η"
    numbers = {
        "measurements": len(step), "every": every, "k": k, "last_step": int(step[-1]),
        "lambda_max_initial": float(lam[0]), "lambda_max_final": lam_final,
        "lambda_max_peak": float(lam[peak]), "peak_step": int(step[peak]),
        "two_over_lr_final": two, "threshold_final": thr, "threshold": thr_name,
        "ratio_final": (lam_final + wd) / thr if thr else None,
        "residual_final": float(t["residual"][-1]),
        "products_median": float(np.median(prods)), "products_first": int(t["products"][0]),
        "seconds_total": float(np.nansum(t["seconds"])),
    }
    summary = {"lambda_max_final": lam_final, "sharpness_threshold": thr}
    if "precond_lambda_max" in t and _last(t["precond_lambda_max"]) is not None:
        p, pthr = _last(t["precond_lambda_max"]), _last(t["precond_threshold"])
        numbers.update(precond_lambda_max_final=p, precond_threshold_final=pthr,
                       precond_ratio_final=p / pthr if pthr else None)
        summary["precond_lambda_max_final"] = p
    if "trace" in t and _last(t["trace"]) is not None:
        numbers["trace_final"] = _last(t["trace"])
    if adam and "precond_ratio_final" in numbers:
        reading = _reading(numbers["precond_ratio_final"], "(2+2β₁)/((1−β₁)η) for λ_max(P⁻¹H)")
    else:
        reading = _reading(numbers["ratio_final"], f"{thr_name} = {thr:.4g}" if thr else thr_name)
    n_train = len(ctx.train)
    full = int(h.get("batch_size") or 0) >= n_train
    regime = ("full-batch gradient descent, Cohen et al.'s setting" if full and not momentum
              and not adam else f"{'full' if full else 'mini'}-batch {optimizer}, batch "
              f"{h.get('batch_size')} of {n_train}"
              f"{f', momentum {momentum:g}' if momentum and not adam else ''}")
    spec = f"sharpness:every={every}" + (f",k={k}" if k > 1 else "") \
        + (",trace=true" if "trace" in t else "")
    extra = f" --optimizer {optimizer.lower()}" if adam else ""
    cmd = (f"lossatlas train {r.flags()} --epochs {h.get('epochs')} --lr {h.get('lr')} "
           f"--momentum {h.get('momentum')} --weight-decay {h.get('weight_decay')} "
           f"--batch-size {h.get('batch_size')} --schedule {h.get('schedule', 'constant')}"
           f"{extra} --seed {r.seed} --track {spec} --out {ctx.run_path}-retrained")
    wd_note = (f" With weight decay wd = {wd:g} the iteration sees H + wd·I, so the ratio "
               "compares λ<sub>max</sub> + wd." if wd and not adam else "")
    return Output(
        figures=[Figure(path, "λ_max of the training loss per optimizer step, with the "
                              "stability threshold")],
        numbers=numbers, summary=summary,
        caption=[
            "λ<sub>max</sub> of the Hessian of the full-data training loss, measured during "
            f"training every {every} optimizer steps ({len(step)} measurements, warm-started "
            f"Lanczos, median {numbers['products_median']:.0f} Hessian-vector products each "
            "after the first) and read from the run's <code>sharpness.csv</code>; dotted, right "
            "axis: the training loss at the same weights.",
            "Cohen et al. 2021 found that full-batch gradient descent with step size η first "
            "sharpens (λ<sub>max</sub> rises) until it reaches 2/η, the largest curvature at "
            "which a step of η is stable on a quadratic, and then trains on at the <i>edge of "
            "stability</i>, λ<sub>max</sub> hovering just above 2/η while the loss keeps "
            "falling non-monotonically. Heavy-ball momentum β raises the threshold to "
            "(2+2β)/η; Adam has none on λ<sub>max</sub>(H) but one, (2+2β₁)/((1−β₁)η), on the "
            "preconditioned λ<sub>max</sub>(P⁻¹H) (Cohen et al. 2022, right panel when "
            "measured). Read the curve against its dashed line: far below it, the step size "
            "does not limit the curvature; at it, the step size does. Mini-batch SGD usually "
            "settles below the line, the more so for small batches.",
            f"This run trains with {regime}. λ<sub>max</sub> goes from {lam[0]:.4g} at step 0 to "
            f"{lam_final:.4g} at step {int(step[-1])} (peak {lam[peak]:.4g} at step "
            f"{int(step[peak])}), {reading}.{wd_note}",
        ],
        verdict=f"Final sharpness is {reading}.",
        files=[table],
        command=[cmd],
        provenance={"table": str(run.path / "sharpness.csv"), "run": ctx.run_path,
                    "optimizer": optimizer, "lr": h.get("lr"), "momentum": h.get("momentum"),
                    "weight_decay": h.get("weight_decay"), "batch_size": h.get("batch_size"),
                    "train_samples": n_train, "measured_on": "the full training set",
                    "files": [str(table.relative_to(ctx.out))]},
    )
