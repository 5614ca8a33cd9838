"""``lossatlas demo``: the atlas of the default run, with a small sweep's phase diagram.

The default run is an MLP 64-128-10 on scikit-learn's digits, trained for 30 epochs with SGD
(lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, seed 0); the atlas's training section
states its accuracy. It goes to ``OUT/run`` (read back when already there with the same recipe), the
small sweep of :data:`DEMO_SWEEP` (2 widths x 2 batch sizes x 2 seeds) to ``OUT/sweep``
(resumed / read back the same way), and the atlas of the run to ``OUT/index.html`` and
``OUT/atlas.json`` (:func:`lossatlas.report.atlas`). The sections are the atlas's registry
(:mod:`lossatlas.report.registry`): the demo keeps no list of its own.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from lossatlas.report.build import AtlasResult, atlas
from lossatlas.report.runspec import Recipe, ensure_run

__all__ = ["DEFAULTS", "DEMO_SWEEP", "default_recipe", "run_demo"]

#: The default model, data and training recipe.
DEFAULTS: dict[str, Any] = {
    "model": "mlp",
    "data": "digits",
    "width": 128,
    "epochs": 30,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "batch_size": 128,
}

#: The demo's small load x temperature sweep (its time: benchmarks/README.md): MLP width 4 or 64 x
#: batch size 32 or 512, two seeds, 8 epochs; enough for Phases I, II and IV on one page.
DEMO_SWEEP: dict[str, Any] = {
    "name": "demo",
    "seeds": [0, 1],
    "data": {"name": "digits"},
    "model": {"name": "mlp", "depth": 1},
    "train": {"epochs": 8, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "load": {"param": "width", "values": [4, 64]},
    "temperature": {"param": "batch_size", "values": [32, 512]},
    "measure": {"hessian_samples": 200, "cka_samples": 640, "connect": {"epochs": 4}},
}


def default_recipe(seed: int = 0, epochs: int | None = None) -> Recipe:
    """The demo's :class:`~lossatlas.report.runspec.Recipe` (``epochs`` overrides 30)."""
    train = {k: DEFAULTS[k] for k in ("epochs", "lr", "momentum", "weight_decay", "batch_size")}
    if epochs is not None:
        train["epochs"] = epochs
    train.update(schedule="constant", milestones=[], gamma=0.1, deterministic=True,
                 record="epoch", loss="cross_entropy")
    return Recipe(DEFAULTS["model"], {"width": DEFAULTS["width"]}, DEFAULTS["data"],
                  {"train_size": None, "label_noise": 0.0, "seed": 0}, train, seed)


def run_demo(
    out: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    epochs: int | None = None,
    only: Sequence[str] | None = None,
    sweep: bool = True,
    progress: bool = True,
    console: Console | None = None,
) -> AtlasResult:
    """Train (or read back) the default run into ``out/run``, run the small sweep into
    ``out/sweep`` (unless ``sweep=False``), then write the atlas into ``out``.

    ``quick`` and ``only`` go to :func:`lossatlas.report.atlas` (small sizes; only those
    sections); ``epochs`` overrides the default 30 (run B follows the same recipe).
    """
    from lossatlas import sweeps as S

    console = console or Console(stderr=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run = ensure_run(out / "run", default_recipe(seed, epochs), progress=progress,
                     log=lambda m: console.print(m, highlight=False, markup=False,
                                                 soft_wrap=True))
    console.print(f"run: {DEFAULTS['model']} on {DEFAULTS['data']}, {len(run) - 1} epochs, "
                  f"train acc {100 * run.train_acc[-1]:.1f} %, test acc "
                  f"{100 * run.test_acc[-1]:.1f} % ({time.perf_counter() - t0:.1f} s) -> "
                  f"{out / 'run'}", highlight=False, soft_wrap=True)
    sweep_dir = None
    if sweep:
        t1 = time.perf_counter()
        spec = copy.deepcopy(DEMO_SWEEP)
        if quick:
            spec["train"]["epochs"], spec["measure"]["connect"]["epochs"] = 3, 2
        sweep_dir = out / ("sweep-quick" if quick else "sweep")  # a quick spec has other jobs
        S.run(spec, sweep_dir, progress=progress)
        console.print(f"sweep: {len(spec['load']['values']) * len(spec['temperature']['values'])}"
                      f" cells ({time.perf_counter() - t1:.1f} s) -> {sweep_dir}",
                      highlight=False, soft_wrap=True)
    return atlas(run, out, quick=quick, sweep=sweep_dir, only=only, progress=progress,
                 console=console)
