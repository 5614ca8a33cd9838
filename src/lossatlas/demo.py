"""``lossatlas demo``: train the default model, then run every section of :data:`SECTIONS`.

The default model is an MLP 64-128-10 on scikit-learn's digits, trained for 30 epochs with SGD
(lr 0.1, momentum 0.9, batch 128, seed 0): about 100% train and 97% test accuracy in well under a
second on two CPU cores. The run goes to ``OUT/run`` and its curves to ``OUT/training.png``.

A section is a ``"package.module:function"`` string; the function is called as ``fn(ctx)`` with
a :class:`DemoContext` and writes its files under ``ctx.out``. Add one by appending to
:data:`SECTIONS` (keep it to a few seconds; honour ``ctx.quick``). A failing section is
reported, the others still run, and :func:`run_demo` returns ``ok=False``.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from torch import nn

from lossatlas.errors import LossAtlasError
from lossatlas.runs import Run
from lossatlas.training import train

__all__ = ["DEFAULTS", "SECTIONS", "DemoContext", "DemoResult", "SectionResult", "run_demo"]

#: ``"package.module:function"`` strings, run in order after training; each takes a DemoContext.
SECTIONS: list[str] = [
    "lossatlas.cli.shapes:demo_panel",
    "lossatlas.cli.landscape:demo_landscape",
    "lossatlas.cli.hessian:demo_section",
    "lossatlas.cli.connect:demo_section",
    "lossatlas.cli.trajectory:demo_trajectory",
]

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


@dataclass
class DemoContext:
    """What a demo section gets.

    ``model`` is at the run's final weights (a section that changes it must restore it);
    ``train``/``test`` are the datasets; ``quick`` asks for small resolutions (tests, smoke
    runs); ``log(msg)`` prints and appends to ``OUT/demo.log``; ``retrain(seed)`` trains an
    independent model with the same recipe (e.g. for mode connectivity) and returns it with
    its Run.
    """

    out: Path
    run: Run
    model: nn.Module
    train: Any
    test: Any
    seed: int = 0
    quick: bool = False
    log: Callable[[str], None] = print
    build_model: Callable[[int], nn.Module] | None = field(default=None, repr=False)
    train_kwargs: dict[str, Any] = field(default_factory=dict, repr=False)

    def retrain(self, seed: int, out: str | Path | None = None) -> tuple[nn.Module, Run]:
        """A fresh model initialized with ``seed``, trained with the demo's recipe and ``seed``
        (checkpoints in memory unless ``out`` is given)."""
        if self.build_model is None:
            raise LossAtlasError("this DemoContext has no build_model; pass one to retrain")
        model = self.build_model(seed)
        kwargs = {**self.train_kwargs, "seed": seed, "out": out, "overwrite": True}
        run = train(model, self.train, test_data=self.test, **kwargs)
        return model, run


@dataclass
class SectionResult:
    name: str
    ok: bool
    seconds: float
    files: list[Path]
    error: str | None = None


@dataclass
class DemoResult:
    out: Path
    run: Run
    sections: list[SectionResult]
    files: list[Path]

    @property
    def ok(self) -> bool:
        """True when training finished and every section ran without an error."""
        return self.run.stopped_reason is None and all(s.ok for s in self.sections)


def _snapshot(folder: Path) -> dict[Path, tuple[int, int]]:
    return {
        p: (st.st_mtime_ns, st.st_size)
        for p in folder.rglob("*")
        if p.is_file() and "checkpoints" not in p.parts and (st := p.stat())
    }


def _changed(before: dict, after: dict) -> list[Path]:
    return sorted(p for p, sig in after.items() if before.get(p) != sig)


def _describe(path: Path, out: Path) -> str:
    if path.is_dir() and (path / "manifest.json").is_file():
        n = len(list((path / "checkpoints").glob("ckpt_*.pt")))
        return f"{path.relative_to(out)}/ ({n} checkpoints)"
    return str(path.relative_to(out))


def _label(spec: str) -> str:
    """A section's short name: ``lossatlas.cli.hessian:demo_section`` -> ``hessian``; a section
    of one's own is named by its function."""
    module, _, fn = spec.partition(":")
    return module.rpartition(".")[2] if module.startswith("lossatlas.") else fn or spec


def run_demo(
    out: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    epochs: int | None = None,
    sections: Sequence[str] | None = None,
    only: Sequence[str] | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> DemoResult:
    """Train the default model into ``out/run``, draw ``out/training.png``, run the sections.

    ``sections`` defaults to :data:`SECTIONS`; ``only`` keeps the sections whose spec contains
    one of the given substrings; ``epochs`` overrides the default 30. Prints a summary table
    and returns a :class:`DemoResult` (``ok`` is False when a section failed).
    """
    from lossatlas import datasets, zoo
    from lossatlas.plot.training import training_curves

    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    logfile = out / "demo.log"
    logfile.write_text("")

    def log(msg: str) -> None:
        console.print(msg, highlight=False, markup=False)
        with logfile.open("a") as f:
            f.write(msg + "\n")

    start = _snapshot(out)
    t0 = time.perf_counter()
    train_set, test_set = datasets.load(DEFAULTS["data"])

    def build_model(s: int) -> nn.Module:
        return zoo.build(DEFAULTS["model"], dataset=train_set, width=DEFAULTS["width"], seed=s)

    train_kwargs = {
        k: DEFAULTS[k] for k in ("epochs", "lr", "momentum", "weight_decay", "batch_size")
    }
    if epochs is not None:
        train_kwargs["epochs"] = epochs
    train_kwargs["progress"] = progress
    model = build_model(seed)
    run = train(
        model, train_set, test_data=test_set, seed=seed, out=out / "run", overwrite=True,
        **train_kwargs,
    )
    run.load_into(model, -1)
    training_curves(run, out / "training.png", title=f"demo: {DEFAULTS['model']} on "
                    f"{DEFAULTS['data']}, seed {seed}")
    log(
        f"trained {DEFAULTS['model']} on {DEFAULTS['data']} for {len(run) - 1} epochs in "
        f"{time.perf_counter() - t0:.1f} s: train acc {100 * run.train_acc[-1]:.1f}%, "
        f"test acc {100 * run.test_acc[-1]:.1f}%"
    )
    if run.stopped_reason:
        log(f"training stopped early: {run.stopped_reason}")
    results = [
        SectionResult("train", run.stopped_reason is None, time.perf_counter() - t0,
                      [out / "run", *_changed(start, _snapshot(out))], run.stopped_reason)
    ]

    specs = list(SECTIONS if sections is None else sections)
    if only:
        specs = [s for s in specs if any(o in s for o in only)]
    for spec in specs:
        before, t1 = _snapshot(out), time.perf_counter()
        run.load_into(model, -1)  # every section starts from the final weights
        ctx = DemoContext(
            out=out, run=run, model=model, train=train_set, test=test_set, seed=seed,
            quick=quick, log=lambda m, s=spec: log(f"[{_label(s)}] {m}"),
            build_model=build_model, train_kwargs=dict(train_kwargs),
        )
        try:
            datasets.import_spec(spec, "section")(ctx)
            error = None
        except Exception as exc:  # a failing section must not stop the demo
            error = f"{type(exc).__name__}: {exc}"
            log(f"section {spec} failed: {error}")
            with logfile.open("a") as f:
                f.write(traceback.format_exc())
        results.append(
            SectionResult(_label(spec), error is None, time.perf_counter() - t1,
                          _changed(before, _snapshot(out)), error)
        )

    files = _changed(start, _snapshot(out))
    result = DemoResult(out, run, results[1:], files)
    table = Table(title=f"lossatlas demo -> {out}")
    for col in ("section", "status", "seconds", "files written"):
        table.add_column(col)
    for r in results:
        names = ", ".join(
            _describe(p, out) for p in r.files if p != logfile and p.parent != out / "run"
        )
        status = "ok" if r.ok else f"FAILED: {r.error}"
        table.add_row(r.name, status, f"{r.seconds:.1f}", names)
    console.print(table)
    console.print(f"total {time.perf_counter() - t0:.1f} s; log in {logfile}")
    return result
