"""Load x temperature phase-diagram sweeps (Yang et al. 2021, Sect. 3 and App. B).

A sweep is a grid of *cells*: one value of a load-like parameter (model width, training-set
size, label noise) times one value of a temperature-like parameter (batch size, learning rate,
weight decay), with the other settings fixed. Each cell trains one model per seed and
measures, as the paper does:

- per model: test accuracy, train loss and train error (percent), and the Hessian's top
  eigenvalue ``hessian_max`` and trace ``hessian_trace`` of the train loss on **one batch of 200
  random training samples** (App. B: "one batch of 200 random samples can already give stable
  results");
- per pair of seeds: mode connectivity ``mc`` on the train error in percent along a trained
  Bezier curve (Eq. 4) (``mc_aligned`` too when ``[measure] mc_aligned = true``: the same
  after Git Re-Basin weight matching of the second model), linear CKA ``cka`` of the softmax
  outputs on 640 mixup samples (Eq. 3, App. A.1) and the parameter distance ``l2``.

A sweep is described in a TOML file::

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

Results go to ``OUT/results.jsonl``, one JSON line per finished job (a model, or a pair of
seeds), appended (one write with its newline, then fsync) as each job finishes; every line
carries the hash of the job's configuration, so a rerun skips what is done and resumes where it
stopped (a last line torn by a crash is cut on open, and its job runs again). A job that raised
(or whose measurement raised on a model that trained normally) is written with ``"status":
"failed"`` and its errors, counts for no cell, is listed by :attr:`SweepResult.failures` and
run again by the next rerun; ``lossatlas sweep`` then exits non-zero. Every table of the TOML
is checked: a key the called function does not take is refused with the valid keys.

The trained weights go to ``OUT/models/<hash>.pt`` (so connectivity and similarity can be
recomputed later), the resolved sweep to ``OUT/sweep.json`` and the per-cell table to
``OUT/cells.csv``. Only the driver writes files: the jobs (local, in worker processes or on
Ray) return values.
"""

from __future__ import annotations

import copy
import csv
import functools
import hashlib
import itertools
import json
import math
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lossatlas import __version__
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.progress import track
from lossatlas.store.locks import lock_path, writer_lock
from lossatlas.store.results import read_state_dict

__all__ = [
    "ALIASES",
    "MEASURE_DEFAULTS",
    "METRICS",
    "Cell",
    "SweepResult",
    "SweepSpec",
    "cells",
    "load_results",
    "load_spec",
    "run",
]

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

#: Per-model and per-pair metrics of the cell table (means over seeds / pairs; ``*_std`` too).
MODEL_METRICS = ("test_acc", "test_loss", "train_acc", "train_loss", "train_error",
                 "hessian_max", "hessian_trace", "sharpness")
PAIR_METRICS = ("mc", "mc_linear", "mc_aligned", "mc_linear_aligned", "cka", "l2")
METRICS = MODEL_METRICS + PAIR_METRICS

RESULTS = "results.jsonl"
MODELS = "models"
SPEC = "sweep.json"
CELLS = "cells.csv"


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
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    if not open_ended and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {n for n, p in params.items() if p.kind in (inspect.Parameter.KEYWORD_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD)} - set(skip)


def _factory(module: Any, name: Any) -> Any:
    """The factory behind a dataset / model name (registered or ``pkg.mod:fn``), or None."""
    from lossatlas.batteries.datasets import import_spec

    if not isinstance(name, str):
        return None
    if ":" in name:
        return import_spec(name, "name")
    return module._REGISTRY.get(name)


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


# -- cells and jobs ------------------------------------------------------------------------
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


# -- what a job does (runs anywhere: must not write files) ---------------------------------
@functools.lru_cache(maxsize=4)
def _data_cached(text: str):
    from lossatlas.batteries import datasets

    kw = json.loads(text)
    name = kw.pop("name")
    return datasets.load(name, **kw)


def _data(cfg: Mapping):
    return _data_cached(json.dumps(dict(cfg), sort_keys=True))


def _build(config: Mapping, train, seed: int) -> torch.nn.Module:
    from lossatlas.batteries import zoo

    kw = dict(config["model"])
    name = kw.pop("name")
    return zoo.build(name, dataset=train, seed=seed, **kw)


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _hessian_batch(train, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = train.tensors
    g = torch.Generator().manual_seed(10_000 + seed)
    idx = torch.randperm(len(y), generator=g)[: min(int(n), len(y))]
    return X[idx], y[idx]


def _hessian(model: torch.nn.Module, train, measure: Mapping, seed: int) -> dict:
    """λ_max and trace of the train loss on one batch of ``hessian_samples`` samples."""
    from lossatlas.core.objective import Objective
    from lossatlas.measurements import hessian

    batch = _hessian_batch(train, measure["hessian_samples"], seed)
    obj = Objective(model, batch, check=False)
    top = float(np.max(np.asarray(hessian.eigs(obj, k=1, which="LA", seed=seed).values)))
    tr = float(hessian.trace(obj, seed=seed))
    return {"hessian_max": top, "hessian_trace": tr}


def _sharpness(model: torch.nn.Module, train, measure: Mapping, seed: int) -> float:
    """Andriushchenko et al.'s sharpness (``la.sharpness.sharpness`` with the ``[measure]``
    table ``sharpness``) on the same batch of ``hessian_samples`` samples as the Hessian."""
    from lossatlas.core.objective import Objective
    from lossatlas.measurements import sharpness

    obj = Objective(model, _hessian_batch(train, measure["hessian_samples"], seed), check=False)
    kw = dict(measure["sharpness"])
    return float(sharpness.sharpness(obj, float(kw.pop("rho")), kw.pop("kind", "worst"),
                                     seed=seed, **kw).value)


def model_job(job: Mapping) -> dict:
    """Train the model of one (cell, seed) and measure it; returns metrics and its state.

    ``job``: ``config`` (data/model/train settings), ``measure``, ``seed``.
    """
    from lossatlas.batteries.training import train as train_model

    config, measure, seed = job["config"], job["measure"], int(job["seed"])
    t0 = time.perf_counter()
    train, test = _data(config["data"])
    model = _build(config, train, seed)
    run = train_model(model, train, **config["train"], seed=seed, record=None, out=None,
                      test_data=test, progress=False)
    last = run.manifest[-1]
    metrics = {
        "train_loss": last.get("train_loss"),
        "train_acc": 100.0 * last["train_acc"] if last.get("train_acc") is not None else None,
        "test_loss": last.get("test_loss"),
        "test_acc": 100.0 * last["test_acc"] if last.get("test_acc") is not None else None,
    }
    if metrics["train_acc"] is not None:
        metrics["train_error"] = 100.0 - metrics["train_acc"]
    errors = {}
    if measure.get("hessian"):
        try:
            metrics.update(_hessian(model, train, measure, seed))
        except Exception as exc:  # a diverged model: record why, keep the cell
            errors["hessian"] = f"{type(exc).__name__}: {exc}"
    if measure.get("sharpness"):
        try:
            metrics["sharpness"] = _sharpness(model, train, measure, seed)
        except Exception as exc:
            errors["sharpness"] = f"{type(exc).__name__}: {exc}"
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {
        "metrics": {k: _finite(v) for k, v in metrics.items()},
        "stopped_reason": run.stopped_reason, "errors": errors, "state": state,
        "seconds": time.perf_counter() - t0,
    }


def _connectivity(model_a, model_b, train, measure: Mapping, seed: int) -> dict:
    """mc on the train error (percent) along a trained Bezier curve, and along the line."""
    from lossatlas.measurements import connect

    out = connect.mode_connectivity_between(
        model_a, model_b, train, points=int(measure["connect_points"]), seed=seed,
        **dict(measure.get("connect") or {}),
    )
    return out


def _aligned_connectivity(model_a, model_b, train, measure: Mapping, seed: int) -> dict:
    """mc (curve and line) after permuting model_b to match model_a (Git Re-Basin weight
    matching, Ainsworth et al. 2023): ``mc_aligned``, ``mc_linear_aligned``."""
    from lossatlas.measurements import align

    found = _connectivity(model_a, align.align(model_a, model_b, seed=seed), train, measure,
                          seed)
    return {"mc_aligned": found["mc"], "mc_linear_aligned": found.get("mc_linear")}


def _similarity(model_a, model_b, train, measure: Mapping, seed: int) -> dict:
    from lossatlas.measurements import similarity

    out: dict[str, float] = {}
    if measure.get("cka"):
        out["cka"] = float(similarity.model_cka(model_a, model_b, train,
                                                samples=int(measure["cka_samples"]), seed=seed))
    return out


def _l2(model_a, model_b) -> float:
    """‖θ − θ′‖₂ over the trainable parameters (the paper's Fig. 2g)."""
    from lossatlas.measurements import similarity

    return float(similarity.l2_distance(model_a, model_b))


def pair_job(job: Mapping) -> dict:
    """Connectivity and similarity of the models of two seeds of one cell.

    ``job``: ``config``, ``measure``, ``seeds`` (a, b) and ``states`` (their state dicts).
    """
    config, measure = job["config"], job["measure"]
    a, b = (int(s) for s in job["seeds"])
    t0 = time.perf_counter()
    train, _ = _data(config["data"])
    models = []
    for s, state in zip((a, b), job["states"]):
        m = _build(config, train, s)
        m.load_state_dict(state)
        models.append(m)
    seed = 1000 * a + b
    metrics: dict[str, Any] = {}
    curve: dict[str, Any] = {}
    errors = {}
    if measure.get("mc"):
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(30_000 + seed)
                found = _connectivity(models[0], models[1], train, measure, seed)
            curve = {k: found[k] for k in ("t", "values", "linear") if k in found}
            metrics.update({k: found[k] for k in ("mc", "mc_linear", "t_star") if k in found})
        except Exception as exc:
            errors["mc"] = f"{type(exc).__name__}: {exc}"
    if measure.get("mc_aligned"):
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(30_000 + seed)
                metrics.update(_aligned_connectivity(models[0], models[1], train, measure,
                                                     seed))
        except Exception as exc:
            errors["mc_aligned"] = f"{type(exc).__name__}: {exc}"
    if measure.get("cka"):
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(40_000 + seed)
                metrics.update(_similarity(models[0], models[1], train, measure, seed))
        except Exception as exc:
            errors["cka"] = f"{type(exc).__name__}: {exc}"
    if measure.get("l2"):
        metrics["l2"] = _l2(models[0], models[1])
    return {"metrics": {k: _finite(v) for k, v in metrics.items()},
            "curve": {k: [_finite(x) for x in v] for k, v in curve.items()},
            "errors": errors, "seconds": time.perf_counter() - t0}


def guarded(fn, job: Mapping) -> dict:
    """``fn(job)``, or ``{"failed": "Type: message"}`` when it raises: a job that raised is
    recorded as failed (and retried on resume) instead of ending the sweep."""
    try:
        return fn(job)
    except Exception as exc:
        return {"failed": f"{type(exc).__name__}: {exc}"}


def failed(row: Mapping) -> bool:
    """True for the row of a job that did not complete: it raised, or one of its measurements
    raised on a model that trained normally (a diverged model's measurements may fail: that
    is its result, recorded, not retried)."""
    if row.get("status") is not None:
        return row["status"] == "failed"
    return bool(row.get("errors")) and not row.get("stopped_reason")


# -- the driver ----------------------------------------------------------------------------
def _read_rows(path: Path) -> list[dict]:
    rows = []
    if not path.is_file():
        return rows
    with path.open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash: that job is redone
                continue
    return rows


def _append(path: Path, row: Mapping) -> None:
    """Append one row and its newline in a single write, then fsync: a crash leaves at most a
    torn last line, which :func:`_repair_tail` cuts on the next open."""
    data = (json.dumps(row, allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (no trailing newline: a crash during its write) so that its job
    runs again, instead of the next row being glued onto it."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    with path.open("r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())


def _save_state(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(state), tmp)
    os.replace(tmp, path)


def _echo(fn, item):
    return item, fn(item)


def _as_completed(executor, fn, items: Iterable, threads: int | None = 1
                  ) -> Iterable[tuple[Any, Any]]:
    """``(item, result)`` pairs from an executor with ``as_completed`` or with only ``map``.

    A map-only executor knows no thread count: each job is wrapped to run with ``threads`` torch
    threads, as our executors do, so that its results are bit-identical to theirs."""
    from lossatlas.sweeps.executors import run_job

    if hasattr(executor, "as_completed"):
        return executor.as_completed(fn, items)
    if hasattr(executor, "map"):
        job = functools.partial(run_job, fn, n_threads=threads)
        return executor.map(functools.partial(_echo, job), items)
    raise LossAtlasError(
        f"executor={executor!r} has neither as_completed(fn, items) nor map(fn, items); pass "
        "one of lossatlas.sweeps.executors (LocalExecutor, ProcessExecutor, RayExecutor)."
    )


def _cell_fields(spec: SweepSpec, cell: Cell) -> dict:
    return {"cell": cell.key, "load_param": spec.load.param, "load": cell.load,
            "temperature_param": spec.temperature.param, "temperature": cell.temperature,
            "i": cell.i, "j": cell.j}


def run(
    spec: SweepSpec | str | os.PathLike | Mapping,
    out: str | os.PathLike | None = None,
    *,
    executor=None,
    progress: bool = True,
) -> SweepResult:
    """Run (or resume) a sweep; returns its :class:`SweepResult`.

    ``out`` defaults to the spec's ``out`` or ``sweeps/<name>``. ``executor``: any object with
    ``as_completed(fn, items)`` or ``map(fn, items)`` (see :mod:`la.executors`); default
    in-process with the spec's ``threads``. Jobs whose
    hash is already in ``OUT/results.jsonl`` are skipped. First the models (one job per cell and
    seed), then the pairs of seeds of every cell. One writer per folder: a second run on
    ``out`` while this one holds ``OUT.lock`` is refused, naming this process.
    """
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    out = Path(out or spec.out or Path("sweeps") / spec.name)
    with writer_lock(lock_path(out), f"the sweep folder {str(out)!r}"):
        return _run(spec, out, executor, progress)


def _run(spec: SweepSpec, out: Path, executor, progress: bool) -> SweepResult:
    """:func:`run` once ``out`` is locked for this process."""
    from lossatlas.sweeps.executors import LocalExecutor

    out.mkdir(parents=True, exist_ok=True)
    (out / SPEC).write_text(json.dumps(spec.to_dict(), indent=2, default=str))
    results = out / RESULTS
    _repair_tail(results)
    rows = _read_rows(results)
    done = {r.get("key") for r in rows if not failed(r)}
    stopped = {(r.get("cell"), r.get("seed")): r.get("stopped_reason") for r in rows
               if r.get("kind") == "model" and not failed(r)}
    n_threads = spec.measure.get("threads", 1)
    executor = executor or LocalExecutor(threads=n_threads)
    grid = cells(spec)
    disable = None if progress else True

    # 1. models: one job per (cell, seed)
    todo = []
    for cell in grid:
        for s in spec.seeds:
            key = cell.model_key(s)
            if key in done and (out / MODELS / f"{cell.train_key(s)}.pt").is_file():
                continue
            todo.append({"key": key, "cell": cell, "seed": s})
    items = ({"config": t["cell"].config, "measure": t["cell"].measure, "seed": t["seed"],
              "_task": t} for t in todo)
    job = functools.partial(guarded, model_job)
    for item, res in track(_as_completed(executor, job, items, n_threads),
                           f"sweep {spec.name}: models", total=len(todo), disable=disable):
        t = item["_task"]
        cell, s = t["cell"], t["seed"]
        if "failed" in res:  # no weights: the pairs of this seed wait for a rerun
            _append(results, {"kind": "model", "key": t["key"], **_cell_fields(spec, cell),
                              "seed": s, "status": "failed", "errors": {"job": res["failed"]},
                              "metrics": {}, "version": __version__})
            continue
        file = out / MODELS / f"{cell.train_key(s)}.pt"
        _save_state(file, res["state"])  # the weights first: a row implies its model file
        row = {
            "kind": "model", "key": t["key"], **_cell_fields(spec, cell), "seed": s,
            "metrics": res["metrics"], "errors": res["errors"],
            "stopped_reason": res["stopped_reason"], "model_file": str(file.relative_to(out)),
            "seconds": res["seconds"], "version": __version__,
        }
        row["status"] = "failed" if failed(row) else "done"
        _append(results, row)
        if row["status"] == "done":
            stopped[(cell.key, s)] = res["stopped_reason"]

    # 2. pairs of seeds in every cell
    pairs = []
    if any(spec.measure.get(k) for k in ("mc", "mc_aligned", "cka", "l2")):
        for cell in grid:
            for a, b in itertools.combinations(spec.seeds, 2):
                key = cell.pair_key(a, b)
                trained = all((out / MODELS / f"{cell.train_key(x)}.pt").is_file()
                              for x in (a, b))
                if key not in done and trained:
                    pairs.append({"key": key, "cell": cell, "seeds": (a, b)})

    def pair_items() -> Iterable[dict]:
        for t in pairs:
            cell = t["cell"]
            states = [read_state_dict(out / MODELS / f"{cell.train_key(s)}.pt", "model file")
                      for s in t["seeds"]]
            yield {"config": cell.config, "measure": cell.measure, "seeds": t["seeds"],
                   "states": states, "_task": t}

    job = functools.partial(guarded, pair_job)
    for item, res in track(_as_completed(executor, job, pair_items(), n_threads),
                           f"sweep {spec.name}: pairs", total=len(pairs), disable=disable):
        t = item["_task"]
        diverged = [stopped.get((t["cell"].key, x)) for x in t["seeds"]]
        row = {"kind": "pair", "key": t["key"], **_cell_fields(spec, t["cell"]),
               "seeds": list(t["seeds"]), "metrics": res.get("metrics", {}),
               "curve": res.get("curve", {}), "errors": res.get("errors", {}),
               "seconds": res.get("seconds"), "version": __version__}
        if "failed" in res:
            row["errors"] = {"job": res["failed"]}
        row["stopped_reason"] = next((r for r in diverged if r), None)
        row["status"] = "failed" if "failed" in res or failed(row) else "done"
        _append(results, row)
    result = load_results(out, spec)
    result.to_csv(out / CELLS)
    if result.failures:
        warnings.warn(f"{len(result.failures)} sweep job(s) failed and will be retried by a "
                      f"rerun; the first: {describe_failure(result.failures[0])}",
                      stacklevel=3)
    return result


def describe_failure(row: Mapping) -> str:
    """One line: which job (cell, seed or seeds) and its errors."""
    who = f"seed {row['seed']}" if row.get("kind") == "model" else f"seeds {row.get('seeds')}"
    errs = "; ".join(f"{k}: {v}" for k, v in (row.get("errors") or {}).items())
    return (f"{row.get('kind')} job at {row.get('load_param')}={row.get('load')}, "
            f"{row.get('temperature_param')}={row.get('temperature')}, {who}: {errs}")


# -- reading results back ------------------------------------------------------------------
def _nan(v: Any) -> float:
    return math.nan if v is None else float(v)


def _summary(values: Sequence[float]) -> tuple[float, float]:
    arr = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if not len(arr):
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


@dataclass
class SweepResult:
    """A sweep's results: the raw ``rows`` (one per job) and the per-cell table ``cells``.

    ``cells`` is a list of dicts, one per (load, temperature) cell in grid order, with
    ``load``, ``temperature``, ``i``, ``j``, every metric of :data:`METRICS` (means over
    seeds or pairs; NaN where missing) with its ``*_std``, ``n_models``, ``n_pairs`` and
    ``phase`` (when :mod:`lossatlas.analyses.taxonomy` could label it).
    """

    spec: SweepSpec
    rows: list[dict]
    cells: list[dict]
    out: Path | None = None
    phases: list[Any] = field(default_factory=list)

    @property
    def load_values(self) -> list:
        return list(self.spec.load.values)

    @property
    def temperature_values(self) -> list:
        return list(self.spec.temperature.values)

    def grid(self, metric: str) -> np.ndarray:
        """``metric`` as an array (n_temperature, n_load): ``[j, i]`` is temperature j, load i."""
        arr = np.full((len(self.temperature_values), len(self.load_values)), np.nan, dtype=object
                      if metric == "phase" else float)
        if metric == "phase":
            arr[:] = None
        for c in self.cells:
            arr[c["j"], c["i"]] = c.get(metric, np.nan if metric != "phase" else None)
        return arr

    @property
    def failures(self) -> list[dict]:
        """Rows of this spec's jobs that failed and have not succeeded since (a rerun
        retries them)."""
        ok = {r.get("key") for r in self.rows if not failed(r)}
        mine = set()
        for cell in cells(self.spec):
            mine |= {cell.model_key(s) for s in self.spec.seeds}
            mine |= {cell.pair_key(a, b) for a, b in itertools.combinations(self.spec.seeds, 2)}
        last: dict[Any, dict] = {}
        for r in self.rows:
            if failed(r) and r.get("key") not in ok and r.get("key") in mine:
                last[r.get("key")] = r
        return list(last.values())

    def curves(self) -> list[dict]:
        """The pair rows that carry an mc curve: ``i``, ``j``, ``seeds``, ``t``, ``values``."""
        out = []
        for r in self.rows:
            if r.get("kind") == "pair" and r.get("curve", {}).get("t") and not failed(r):
                out.append({"i": r["i"], "j": r["j"], "seeds": r["seeds"], **r["curve"],
                            "mc": r["metrics"].get("mc")})
        return out

    def to_csv(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        keys: list[str] = []
        for c in self.cells:
            keys += [k for k in c if k not in keys]
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for c in self.cells:
                w.writerow({k: (str(v) if k == "phase_evidence" else v) for k, v in c.items()})
        os.replace(tmp, path)
        return path


def _phase_labels(cells_: list[dict], thresholds: Mapping) -> list[Any]:
    """Phases from :func:`lossatlas.analyses.taxonomy.classify_table`; ``thresholds`` (the sweep's
    ``[phases]`` table) override its defaults."""
    from lossatlas.analyses import taxonomy

    return list(taxonomy.classify_table(cells_, **dict(thresholds)))


def aggregate(spec: SweepSpec, rows: Sequence[Mapping]) -> list[dict]:
    """The per-cell table from job rows (rows of other configurations are ignored)."""
    table = []
    by_key = {}
    for r in rows:
        if not failed(r):  # a failed job measured nothing (its rerun appends the row)
            by_key[r.get("key")] = r
    for cell in cells(spec):
        models = [by_key[k] for k in (cell.model_key(s) for s in spec.seeds) if k in by_key]
        pairs = [by_key[k] for k in (cell.pair_key(a, b) for a, b in
                                     itertools.combinations(spec.seeds, 2)) if k in by_key]
        row: dict[str, Any] = {"load_param": spec.load.param, "load": cell.load,
                               "temperature_param": spec.temperature.param,
                               "temperature": cell.temperature, "i": cell.i, "j": cell.j,
                               "n_models": len(models), "n_pairs": len(pairs)}
        for names, source in ((MODEL_METRICS, models), (PAIR_METRICS, pairs)):
            for m in names:
                mean, std = _summary([_nan(r["metrics"].get(m)) for r in source])
                row[m], row[f"{m}_std"] = mean, std
        table.append(row)
    return table


def load_results(out: str | os.PathLike, spec: SweepSpec | None = None) -> SweepResult:
    """Read a sweep folder (``OUT/results.jsonl`` + ``OUT/sweep.json``) into a SweepResult,
    with the phase of every cell when :mod:`lossatlas.analyses.taxonomy` can label it."""
    out = Path(out)
    if out.is_file():
        out = out.parent
    if spec is None:
        if not (out / SPEC).is_file():
            raise LossAtlasError(
                f"RESULTS={str(out)!r} holds no {SPEC}; pass the folder a sweep wrote."
            )
        spec = load_spec({k: v for k, v in json.loads((out / SPEC).read_text()).items()})
    rows = _read_rows(out / RESULTS)
    table = aggregate(spec, rows)
    phases = (_phase_labels(table, spec.phases) if any(c["n_models"] for c in table) else [])
    for c, p in zip(table, phases):
        c["phase"] = getattr(p, "label", p)
        if hasattr(p, "evidence"):
            c["phase_evidence"] = p.evidence
    return SweepResult(spec=spec, rows=rows, cells=table, out=out, phases=phases)
