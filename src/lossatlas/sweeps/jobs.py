"""What the jobs of a sweep do: train the model of one (cell, seed) and measure it, or
measure a pair of models of one cell (Yang et al. 2021, Sect. 3 and App. B). As the paper:

- per model: test accuracy, train loss and train error (percent), and the Hessian's top
  eigenvalue ``hessian_max`` and trace ``hessian_trace`` of the train loss on **one batch of 200
  random training samples** (App. B: "one batch of 200 random samples can already give stable
  results");
- per pair of seeds: mode connectivity ``mc`` on the train error in percent along a trained
  Bezier curve (Eq. 4) (``mc_aligned`` too when ``[measure] mc_aligned = true``: the same
  after Git Re-Basin weight matching of the second model), linear CKA ``cka`` of the softmax
  outputs on 640 mixup samples (Eq. 3, App. A.1) and the parameter distance ``l2``.

A job runs anywhere (in-process, in a worker process, on Ray) and writes no file: it returns
its metrics (and a model's state), which the driver (:mod:`lossatlas.sweeps.driver`) writes.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["guarded", "model_job", "pair_job"]


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


def _recorded(errors: dict[str, str], name: str, fn, *args: Any, rng: int | None = None):
    """``fn(*args)`` (with torch's generator seeded by ``rng`` and restored after, when
    given), or None with ``errors[name] = "Type: message"`` when it raises: a diverged model's
    measurement may fail, and the job records why and goes on."""
    try:
        if rng is None:
            return fn(*args)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rng)
            return fn(*args)
    except Exception as exc:
        errors[name] = f"{type(exc).__name__}: {exc}"
        return None


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
    errors: dict[str, str] = {}
    if measure.get("hessian"):
        metrics.update(_recorded(errors, "hessian", _hessian, model, train, measure, seed) or {})
    if measure.get("sharpness"):
        found = _recorded(errors, "sharpness", _sharpness, model, train, measure, seed)
        if found is not None:
            metrics["sharpness"] = found
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
    errors: dict[str, str] = {}
    both = (models[0], models[1], train, measure, seed)
    if measure.get("mc"):
        found = _recorded(errors, "mc", _connectivity, *both, rng=30_000 + seed)
        if found is not None:
            curve = {k: found[k] for k in ("t", "values", "linear") if k in found}
            metrics.update({k: found[k] for k in ("mc", "mc_linear", "t_star") if k in found})
    if measure.get("mc_aligned"):
        metrics.update(_recorded(errors, "mc_aligned", _aligned_connectivity, *both,
                                 rng=30_000 + seed) or {})
    if measure.get("cka"):
        metrics.update(_recorded(errors, "cka", _similarity, *both, rng=40_000 + seed) or {})
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

