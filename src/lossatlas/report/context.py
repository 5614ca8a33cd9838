"""What every atlas section gets: the run, its rebuilt model and data, the output folder, and
shared things computed once on first use (the objective, the independent run B, another
section's output)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lossatlas.batteries.runs import Run, load_run
from lossatlas.report.runspec import Recipe, ensure_run, rebuild, recipe_of, run_hash

__all__ = ["AtlasContext"]


@dataclass
class AtlasContext:
    """``run`` (with ``recipe``), ``out`` (the atlas folder), ``quick`` (small sizes),
    ``with_run`` (a run folder for run B, else trained from the recipe with ``seed + 1``),
    ``sweep`` (a sweep folder or None), ``log(msg)``, ``progress`` (inner bars), and
    ``outputs`` (the sections done so far, by name: a section may read another's numbers and
    files)."""

    run: Run
    out: Path
    quick: bool = False
    with_run: Path | None = None
    sweep: Path | None = None
    log: Callable[[str], None] = print
    progress: bool = True
    outputs: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def recipe(self) -> Recipe:
        return recipe_of(self.run)

    @functools.cached_property
    def _built(self) -> tuple[nn.Module, Any, Any]:
        return rebuild(self.run)

    @property
    def model(self) -> nn.Module:
        """The model at the run's final weights (reloaded on every access: a section that
        changes it cannot leak into the next)."""
        model = self._built[0]
        self.run.load_into(model, -1)
        return model

    @property
    def train(self) -> Any:
        return self._built[1]

    @property
    def test(self) -> Any:
        return self._built[2]

    @property
    def seed(self) -> int:
        return self.recipe.seed

    @property
    def run_path(self) -> str:
        """The run folder as the commands in the page name it."""
        return str(self.run.path) if self.run.path is not None else "RUN"

    def folder(self, name: str) -> Path:
        path = self.out / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def objective(self, batch_size: int | None = None, data: str = "train"):
        """``la.Objective`` of the final model on the train (or test) split."""
        from lossatlas.core.objective import Objective

        return Objective(self.model, self.train if data == "train" else self.test,
                         batch_size=batch_size)

    # -- run B ------------------------------------------------------------------------------
    @functools.cached_property
    def run_b(self) -> Run:
        """The independent run: ``--with RUN_B``, or trained by the atlas into ``out/run_b``
        from the recorded recipe with seed + 1 (read back when already there)."""
        if self.with_run is not None:
            return load_run(self.with_run)
        r = self.recipe
        recipe_b = Recipe(r.model, r.model_opts, r.data, r.data_opts, r.train, r.seed + 1)
        return ensure_run(self.out / "run_b", recipe_b, progress=self.progress,
                          log=self.log)

    @property
    def model_b(self) -> nn.Module:
        return rebuild(self.run_b)[0]

    @property
    def run_b_path(self) -> str:
        return str(self.run_b.path)

    # -- cache inputs -----------------------------------------------------------------------
    def input_hash(self, name: str) -> str:
        """The hash of input ``name`` (``run``, ``run_b``, ``sweep``, ``table:NAME``: the run's
        tracked table ``NAME.csv``, or a section)."""
        if name == "run":
            return run_hash(self.run)
        if name == "run_b":
            return run_hash(self.run_b)
        if name == "sweep":
            from lossatlas.report.cache import folder_hash

            return folder_hash(self.sweep, ("results.jsonl", "spec.json")) if self.sweep else "-"
        if name.startswith("table:"):
            from lossatlas.report.cache import folder_hash

            return folder_hash(self.run.path, (f"{name[6:]}.csv",))
        out = self.outputs.get(name)
        return out["key"] if isinstance(out, dict) else "-"
