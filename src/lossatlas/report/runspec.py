"""A run rebuilt from its folder alone: the model, the data and the training recipe that
``la.train`` recorded in ``manifest.json`` (``model.build``, ``data.train.load``,
``hyperparameters``), and a second run trained from the same recipe with another seed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from lossatlas.batteries.runs import MANIFEST, Run, load_run
from lossatlas.core.errors import LossAtlasError

__all__ = ["Recipe", "ensure_run", "rebuild", "recipe_of", "run_hash"]

#: ``la.train`` keywords taken from a manifest's ``hyperparameters``.
TRAIN_KEYS = ("epochs", "lr", "momentum", "weight_decay", "batch_size", "schedule",
              "milestones", "gamma", "deterministic", "record", "loss")


@dataclass
class Recipe:
    """How a run was made: ``model`` / ``model_opts`` for ``zoo.build``, ``data`` /
    ``data_opts`` for ``datasets.load``, ``train`` the ``la.train`` keywords, ``seed``."""

    model: str
    model_opts: dict[str, Any]
    data: str
    data_opts: dict[str, Any]
    train: dict[str, Any]
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "model_opts": self.model_opts, "data": self.data,
                "data_opts": self.data_opts, "train": self.train, "seed": self.seed}

    def flags(self) -> str:
        """The ``lossatlas train`` options of this recipe (model, data and their options)."""

        def opt(flag: str, k: str, v: Any) -> str:
            return f"{flag} {k}={v!r}" if isinstance(v, str) else f"{flag} {k}={v}"

        parts = [f"--model {self.model}", *(opt("--model-arg", k, v)
                                            for k, v in self.model_opts.items()),
                 f"--data {self.data}", *(opt("--data-arg", k, v) for k, v in
                                          self.data_opts.items()
                                          if v is not None and not (k == "label_noise" and not v)
                                          and k != "seed")]
        return " ".join(parts)


def recipe_of(run: Run) -> Recipe:
    """The recipe recorded in ``run``'s manifest; one sentence when the run predates it."""
    info = run.info
    build = info.get("model", {}).get("build")
    load = info.get("data", {}).get("train", {}).get("load")
    where = str(run.path) if run.path is not None else "the run"
    if not isinstance(build, dict):
        raise LossAtlasError(
            f"{where} does not record how its model was built (model.build in {MANIFEST}); "
            "retrain it with this lossatlas (la.train on a model from la.zoo.build, or "
            "`lossatlas train`)"
        )
    if not isinstance(load, dict):
        raise LossAtlasError(
            f"{where} does not record how its data was loaded (data.train.load in {MANIFEST}); "
            "train on data from la.datasets.load (or `lossatlas train --data ...`)"
        )
    hyper = info.get("hyperparameters", {})
    train = {k: hyper[k] for k in TRAIN_KEYS if k in hyper}
    if str(hyper.get("optimizer", "SGD")).lower() != "sgd":  # run B is trained as run A was
        train["optimizer"] = str(hyper["optimizer"]).lower()
        if "betas" in hyper:
            train["betas"] = tuple(hyper["betas"])
    return Recipe(build["name"], dict(build.get("options") or {}), load["name"],
                  dict(load.get("options") or {}), train, int(info.get("seed", 0)))


def rebuild(run: Run, index: int = -1) -> tuple[nn.Module, Any, Any]:
    """``(model, train, test)`` of a run from its manifest, the model at checkpoint ``index``
    (a checkpoint that does not fit says which keys and which ``--model`` to pass)."""
    from lossatlas.batteries.resolve import resolve_data, resolve_model

    r = recipe_of(run)
    train, test = resolve_data(r.data, **r.data_opts)
    model = resolve_model(r.model, train, seed=r.seed, **r.model_opts)
    run.load_into(model, index)
    return model, train, test


def run_hash(run: Run) -> str:
    """A short hash of what a run's checkpoints are: its manifest entries and recipe plus the
    bytes of its final checkpoint (a retrained run gets another hash)."""
    h = hashlib.sha256()
    doc = {"checkpoints": run.manifest, "config": run.info.get("config"),
           "hyperparameters": run.info.get("hyperparameters")}
    h.update(json.dumps(doc, sort_keys=True, default=str).encode())
    if run.path is not None and run.manifest and run.manifest[-1].get("file"):
        with open(run.path / run.manifest[-1]["file"], "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def _matches(path: Path, recipe: Recipe) -> bool:
    """A finished run in ``path`` trained from ``recipe``."""
    if not (path / MANIFEST).is_file():
        return False
    try:
        old = recipe_of(load_run(path))
        status = load_run(path).status
    except (LossAtlasError, OSError, ValueError, KeyError):
        return False
    return status == "finished" and old.as_dict() == recipe.as_dict()


def ensure_run(path: str | os.PathLike, recipe: Recipe, progress: bool = True,
               log=None) -> Run:
    """The run of ``recipe`` in ``path``: read back when a finished run of the same recipe is
    there, else trained (replacing what the folder held; ``log(msg)`` says so)."""
    from lossatlas.batteries.resolve import resolve_data, resolve_model
    from lossatlas.batteries.training import train

    path = Path(path)
    if _matches(path, recipe):
        return load_run(path)
    if log is not None:
        log(f"  training {path.name} (seed {recipe.seed}) from the recorded recipe -> {path}")
    train_set, test_set = resolve_data(recipe.data, **recipe.data_opts)
    model = resolve_model(recipe.model, train_set, seed=recipe.seed, **recipe.model_opts)
    return train(model, train_set, test_data=test_set, seed=recipe.seed, out=path,
                 overwrite=True, progress=progress, **recipe.train)
