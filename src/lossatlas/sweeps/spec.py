"""A sweep's description: the TOML spec, its checks, and the grid of cells it resolves to
(Yang et al. 2021, Sect. 3 and App. B).

A sweep is a grid of *cells*: one value of a load-like parameter (model width, training-set
size, label noise) times one value of a temperature-like parameter (batch size, learning rate,
weight decay), with the other settings fixed. Each cell trains one model per seed and measures
it (:mod:`lossatlas.sweeps.jobs` says what). A sweep is described in a TOML file::

    name = "digits"
    seeds = [0, 1]
    [data]              # la.datasets.load(name, train_size=, label_noise=, seed=)
    name = "digits"
    [model]             # la.zoo.build(name, dataset=train, seed=<seed>, **rest)
    name = "mlp"
    [train]             # la.train(model, train, seed=<seed>, **rest)
    epochs = 10
    lr = 0.05
    [load]              # x axis; param: width | depth | train_size | label_noise | model.X | data.X
    param = "width"
    values = [4, 8, 16, 32, 64]
    [temperature]       # y axis; param: batch_size | lr | weight_decay | train.X
    param = "batch_size"
    values = [16, 32, 64, 128]
    [measure]           # optional; the defaults are the paper's (see MEASURE_DEFAULTS)
    hessian_samples = 200
    [measure.connect]   # keyword arguments of la.connect.train_curve (epochs, lr, bends, ...)
    epochs = 2
    [measure.sharpness] # optional: la.sharpness.sharpness (Andriushchenko et al. 2023) per model
    rho = 0.05          # (kind = "worst" | "average", norm, adaptive, m, ...), column sharpness
    [phases]            # optional: la.taxonomy.Thresholds overrides (train_loss, mc, cka, ...)
    cka = 0.9

Every table of the TOML is checked: a key the called function does not take is refused with
the valid keys. Every cell carries hashes of its settings (:class:`Cell`), which name its jobs'
rows and its models' files, so a rerun knows what is done.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lossatlas.core.errors import LossAtlasError

__all__ = ["ALIASES", "INVERSE_TEMPERATURE", "MEASURE_DEFAULTS", "Axis", "Cell", "SweepSpec",
           "cells", "load_spec"]


def _toml():
    """The TOML reader: ``tomllib`` (Python 3.11+) or its backport ``tomli``, which pyproject
    declares for Python 3.10."""
    try:
        import tomllib
    except ImportError:
        try:
            import tomli as tomllib
        except ImportError as exc:
            raise LossAtlasError("reading a sweep spec on Python < 3.11 needs tomli; install "
                                 "it (pip install tomli)") from exc
    return tomllib


#: Short names of the control parameters -> the section and key they set.
ALIASES: dict[str, str] = {
    "width": "model.width",
    "depth": "model.depth",
    "train_size": "data.train_size",
    "label_noise": "data.label_noise",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "learning_rate": "train.lr",
    "weight_decay": "train.weight_decay",
    "momentum": "train.momentum",
    "epochs": "train.epochs",
}
#: Temperature parameters where a *larger* value means a *colder* run (batch size is inverse
#: temperature); the phase plots put the hottest row at the top, as the paper's figures do.
INVERSE_TEMPERATURE = {"train.batch_size"}

#: The measurement settings and their defaults (the paper's, except the short curve training).
MEASURE_DEFAULTS: dict[str, Any] = {
    "hessian": True,            # λ_max and trace per model
    "hessian_samples": 200,     # one batch of this many random training samples (App. B)
    "connect": {},              # kwargs of la.connect.train_curve; {} = its defaults
    "connect_points": 5,        # t values where the curve's train error is evaluated
    "mc": True,
    "mc_aligned": False,        # mc after Git Re-Basin weight matching of the second model
    "cka": True,
    "cka_samples": 640,         # mixup samples, λ ~ Beta(16, 16) (App. A.1)
    "l2": True,
    "threads": 1,               # torch threads per job (results do not depend on the executor)
    "sharpness": {},            # kwargs of la.sharpness.sharpness (rho, kind, norm, ...); {} = off
}

# -- the spec ------------------------------------------------------------------------------
@dataclass
class Axis:
    """One control axis: ``param`` is ``"section.key"`` (after :data:`ALIASES`)."""

    param: str
    values: list
    label: str

    @property
    def section(self) -> str:
        return self.param.split(".", 1)[0]

    @property
    def key(self) -> str:
        return self.param.split(".", 1)[1]


@dataclass
class SweepSpec:
    """A resolved sweep: base settings, the two axes, the seeds and the measurements."""

    name: str
    data: dict
    model: dict
    train: dict
    load: Axis
    temperature: Axis
    seeds: list[int]
    measure: dict = field(default_factory=lambda: dict(MEASURE_DEFAULTS))
    out: str | None = None
    phases: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "data": self.data, "model": self.model, "train": self.train,
            "load": vars(self.load), "temperature": vars(self.temperature),
            "seeds": self.seeds, "measure": self.measure, "out": self.out,
            "phases": self.phases,
        }

    @property
    def hot_first(self) -> bool:
        """True when larger temperature values are hotter (lr, weight decay)."""
        return self.temperature.param not in INVERSE_TEMPERATURE


def _param(raw: Any, what: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise LossAtlasError(f"[{what}] param={raw!r} must name a setting, e.g. 'width'.")
    full = ALIASES.get(raw, raw)
    if "." not in full or full.split(".", 1)[0] not in ("data", "model", "train"):
        raise LossAtlasError(
            f"[{what}] param={raw!r} is unknown; use one of {', '.join(ALIASES)} or "
            "'data.KEY' / 'model.KEY' / 'train.KEY'."
        )
    return full


def _axis(raw: Any, what: str) -> Axis:
    if not isinstance(raw, Mapping) or "param" not in raw or "values" not in raw:
        raise LossAtlasError(
            f"the sweep needs a [{what}] table with param and values, e.g. "
            f"param = 'width' and values = [8, 16, 32]."
        )
    values = list(raw["values"])
    if not values or len(set(map(repr, values))) != len(values):
        raise LossAtlasError(
            f"[{what}] values={values!r} must be a non-empty list without repeats."
        )
    param = _param(raw["param"], what)
    return Axis(param, values, str(raw.get("label", param.split(".", 1)[1])))


def _section(raw: Mapping, name: str, required: bool) -> dict:
    sec = raw.get(name, {})
    if not isinstance(sec, Mapping):
        raise LossAtlasError(f"[{name}] must be a table of settings, got {type(sec).__name__}.")
    sec = dict(sec)
    if required and "name" not in sec:
        raise LossAtlasError(f"[{name}] needs a name, e.g. name = 'digits' / 'mlp'.")
    return sec


def load_spec(source: str | os.PathLike | Mapping) -> SweepSpec:
    """Read a sweep from a TOML file (or an already parsed mapping) and check it."""
    if isinstance(source, Mapping):
        raw = dict(source)
        default_name = "sweep"
    else:
        path = Path(source)
        if not path.is_file():
            raise LossAtlasError(f"FILE={str(path)!r} does not exist; pass a sweep .toml file.")
        toml = _toml()
        try:
            raw = toml.loads(path.read_text())
        except toml.TOMLDecodeError as exc:
            raise LossAtlasError(f"FILE={str(path)!r} is not valid TOML ({exc}); fix it.") from None
        default_name = path.stem
    known = {"name", "seeds", "data", "model", "train", "load", "temperature", "measure", "out",
             "phases"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise LossAtlasError(
            f"the sweep has unknown entries {unknown}; use only {sorted(known)}."
        )
    seeds = list(raw.get("seeds", [0, 1]))
    if (not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise LossAtlasError(
            f"seeds={seeds!r} must be distinct non-negative integers, e.g. [0, 1]."
        )
    measure = dict(MEASURE_DEFAULTS)
    extra = _section(raw, "measure", False)
    bad = sorted(set(extra) - set(MEASURE_DEFAULTS))
    if bad:
        raise LossAtlasError(f"[measure] has unknown keys {bad}; use {sorted(MEASURE_DEFAULTS)}.")
    measure.update(extra)
    load, temp = _axis(raw.get("load"), "load"), _axis(raw.get("temperature"), "temperature")
    if load.param == temp.param:
        raise LossAtlasError("[load] and [temperature] vary the same setting; pick two different.")
    spec = SweepSpec(
        name=str(raw.get("name", default_name)),
        data=_section(raw, "data", True), model=_section(raw, "model", True),
        train=_section(raw, "train", False), load=load, temperature=temp,
        seeds=seeds, measure=measure, out=raw.get("out"),
        phases=_section(raw, "phases", False),
    )
    for sec in ("data", "model", "train"):
        if "seed" in getattr(spec, sec) and sec != "data":
            raise LossAtlasError(f"[{sec}] must not set seed; list the seeds in seeds = [...].")
    for what in ("load", "temperature"):
        _check_keys(what, raw.get(what) or {}, {"param", "values", "label"})
    _check_settings(spec)
    return spec


#: What the sweep itself passes to la.train / la.connect.train_curve (not settable in the spec).
_SET_BY_SWEEP = {"train": {"seed", "record", "out", "test_data", "progress"},
                 "connect": {"points", "seed", "progress"}}


def _check_keys(table: str, given: Mapping | Iterable[str], valid: Iterable[str] | None) -> None:
    """Refuse keys of ``[table]`` outside ``valid`` (None: anything goes), listing the valid."""
    if valid is None:
        return
    valid = set(valid)
    unknown = sorted(set(given) - valid)
    if unknown:
        raise LossAtlasError(f"[{table}] has unknown keys {unknown}; use {sorted(valid)}.")


def _keywords(fn: Any, skip: Iterable[str] = (), open_ended: bool = False) -> set[str] | None:
    """The named keyword arguments ``fn`` takes (less ``skip``); None when it also takes
    ``**kwargs`` (unless ``open_ended``) or hides its signature."""
    from lossatlas.core.registry import keywords

    found = keywords(fn, open_ended)
    return None if found is None else set(found) - set(skip)


def _factory(module: Any, name: Any) -> Any:
    """The factory behind a dataset / model name (registered or ``pkg.mod:fn``), or None."""
    from lossatlas.core.registry import import_spec

    if not isinstance(name, str):
        return None
    if ":" in name:
        return import_spec(name, "name")
    return module.registered(name)


def _check_settings(spec: SweepSpec) -> None:
    """Every key of [data], [model], [train], [measure.connect] and [phases] (and every
    ``section.KEY`` an axis sets) must be one the called function takes."""
    from dataclasses import fields

    from lossatlas.analyses import taxonomy
    from lossatlas.batteries import datasets, training, zoo
    from lossatlas.measurements import connect

    own = {"data": _keywords(datasets.load, {"name"}, open_ended=True) or set(),
           "model": _keywords(zoo.build, {"name", "dataset", "seed"}, open_ended=True) or set()}
    valid: dict[str, set[str] | None] = {}
    for sec, module in (("data", datasets), ("model", zoo)):
        factory = _factory(module, getattr(spec, sec).get("name"))
        kw = _keywords(factory) if factory is not None else None
        valid[sec] = None if kw is None else {"name"} | own[sec] | kw
    valid["train"] = _keywords(training.train, {"model", "train_data"} | _SET_BY_SWEEP["train"])
    for sec in ("data", "model", "train"):
        _check_keys(sec, getattr(spec, sec), valid[sec])
    for what, axis in (("load", spec.load), ("temperature", spec.temperature)):
        ok = valid[axis.section]
        if ok is not None and axis.key not in ok:
            raise LossAtlasError(f"[{what}] param={axis.param!r} sets no known [{axis.section}] "
                                 f"key; use one of {sorted(ok)}.")
    connect_kw = spec.measure.get("connect") or {}
    if not isinstance(connect_kw, Mapping):
        raise LossAtlasError("[measure.connect] must be a table of la.connect.train_curve "
                             "options, e.g. epochs = 20.")
    valid = _keywords(connect.train_curve, {"obj", "theta_a", "theta_b", "data"}
                      | _SET_BY_SWEEP["connect"])
    _check_keys("measure.connect", connect_kw, None if valid is None else valid | {"metric"})
    _check_keys("phases", spec.phases, {f.name for f in fields(taxonomy.Thresholds)})


# -- cells ---------------------------------------------------------------------------------
def _hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Cell:
    """One (load, temperature) point of the grid with its fully resolved settings."""

    load: Any
    temperature: Any
    i: int                       # index along the load axis
    j: int                       # index along the temperature axis
    config: dict                 # {"data": ..., "model": ..., "train": ...}
    measure: dict

    @property
    def key(self) -> str:
        return _hash({"config": self.config, "measure": self.measure})

    def train_key(self, seed: int) -> str:
        """Identifies one trained model: the settings and the seed (not the measurements)."""
        return _hash({"config": self.config, "seed": seed, "version": 1})

    def model_key(self, seed: int) -> str:
        keep = {k: self.measure[k] for k in ("hessian", "hessian_samples")}
        if self.measure.get("sharpness"):  # only when asked: earlier models keep their keys
            keep["sharpness"] = self.measure["sharpness"]
        return _hash({"train": self.train_key(seed), "measure": keep, "job": "model"})

    def pair_key(self, a: int, b: int) -> str:
        keep = {k: self.measure[k] for k in
                ("connect", "connect_points", "mc", "cka", "cka_samples", "l2")}
        if self.measure.get("mc_aligned"):  # only then, so older sweeps keep their keys
            keep["mc_aligned"] = True
        return _hash({"a": self.train_key(a), "b": self.train_key(b), "measure": keep,
                      "job": "pair"})


def cells(spec: SweepSpec) -> list[Cell]:
    """Every cell of the grid, load-major."""
    out = []
    for i, lv in enumerate(spec.load.values):
        for j, tv in enumerate(spec.temperature.values):
            config = {"data": copy.deepcopy(spec.data), "model": copy.deepcopy(spec.model),
                      "train": copy.deepcopy(spec.train)}
            config[spec.load.section][spec.load.key] = lv
            config[spec.temperature.section][spec.temperature.key] = tv
            out.append(Cell(lv, tv, i, j, config, dict(spec.measure)))
    return out

