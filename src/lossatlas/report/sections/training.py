"""Training curves of the run (loss and accuracy per checkpoint, train and test)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt

from lossatlas.report.registry import Figure, Output, section


def _num(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


@section("training", "Training curves", inputs=("run",))
def training(ctx, opts) -> Output:
    """The run's recorded checkpoints: full-data loss and accuracy, train and test."""
    from lossatlas.plot.training import training_curves

    run, r = ctx.run, ctx.recipe
    path = ctx.folder("training") / "training.png"
    plt.close(training_curves(run, path, title=f"{r.model.rsplit('/', 1)[-1]} on {r.data}, "
                              f"seed {r.seed}"))
    h = r.train
    numbers = {
        "epochs": len(run) - 1, "checkpoints": len(run),
        "train_loss": _num(run.train_loss[-1]), "test_loss": _num(run.test_loss[-1]),
        "train_acc": _num(run.train_acc[-1]), "test_acc": _num(run.test_acc[-1]),
    }
    recipe = ", ".join(f"{k} {h[k]}" for k in ("epochs", "lr", "momentum", "weight_decay",
                                                "batch_size", "schedule") if k in h)
    train_cmd = (f"lossatlas train {r.flags()} --epochs {h.get('epochs')} --lr {h.get('lr')} "
                 f"--momentum {h.get('momentum')} --weight-decay {h.get('weight_decay')} "
                 f"--batch-size {h.get('batch_size')} --schedule {h.get('schedule', 'constant')} "
                 f"--seed {r.seed} --out {ctx.run_path}")
    if "optimizer" in h:  # adam / adamw (SGD is the default); the CLI keeps default betas
        train_cmd += f" --optimizer {h['optimizer']}"
        recipe += f", optimizer {h['optimizer']}"
    return Output(
        figures=[Figure(path, "loss and accuracy per epoch")],
        numbers=numbers,
        summary={"train_acc": numbers["train_acc"], "test_acc": numbers["test_acc"],
                 "train_loss": numbers["train_loss"]},
        caption=[
            "Full-dataset loss (log scale) and accuracy of every recorded checkpoint, in eval "
            "mode; epoch 0 is the initialization. Every later section measures the last "
            "checkpoint unless it says otherwise.",
            f"Recipe (SGD): {recipe}.",
        ],
        command=[train_cmd],
        provenance={"run": ctx.run_path, "model": r.model, "model_options": r.model_opts,
                    "data": r.data, "data_options": r.data_opts, "seed": r.seed,
                    "lossatlas_version": run.info.get("lossatlas_version"),
                    "torch_version": run.info.get("torch_version"),
                    "num_parameters": run.info.get("model", {}).get("num_parameters")},
    )
