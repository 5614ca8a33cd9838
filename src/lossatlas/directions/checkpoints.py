"""Directions between points: from one point to another (Li et al. 2018's interpolation), and
toward other checkpoints (Li, Li, Zhan 2024, Sec. 2.3-2.4).

>>> import torch, lossatlas as la
>>> a, b = la.params.Point(w=torch.zeros(2)), la.params.Point(w=torch.ones(2))
>>> la.directions.between(a, b)["w"].tolist()
[1.0, 1.0]

* toward a **later checkpoint of the same run**: ε = θ_E′ − θ_E, a descent direction that
  accumulates many gradient steps; around θ_E it gives v-side curves (their Fig. 4, λ = 1 is
  the later checkpoint).
* toward an **independently trained checkpoint**: ε = θ₂ − θ₁; plotted on λ ∈ [−1, 2] it gives
  w-basin curves, the loss barrier of linear mode connectivity between two basins (Fig. 7).

Both are ``target − center``; the ``.meta`` records the kind, a suggested ``span`` and a label.
:func:`load_point` reads a checkpoint from a run folder or a state-dict file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from lossatlas.core import params as P
from lossatlas.core.errors import LossAtlasError
from lossatlas.store.results import read_state_dict

__all__ = ["between", "independent", "load_point", "toward"]


def between(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> P.Point:
    """The direction b − a from point ``a`` to point ``b`` (Li et al. 2018's 1D interpolation
    θ(α) = a + α(b − a)). ``.meta`` records both endpoints' hashes."""
    if a.keys() != b.keys():
        raise LossAtlasError(
            "between(a, b): the points cover different parameters; build both with "
            "la.params.of on the same model and selection"
        )
    d = P.Point({k: b[k].detach() - a[k].detach().to(b[k].device) for k in a})
    d.meta = {"kind": "between", "a_hash": P.hash_point(a), "b_hash": P.hash_point(b),
              "center_hash": P.hash_point(a)}
    return d


def _toward(center: Mapping, target: Mapping, kind: str, label: str,
            span: list[float]) -> P.Point:
    if center.keys() != target.keys():
        raise LossAtlasError(
            "the checkpoint covers other parameters than the center; build both from the same "
            "model and parameter selection"
        )
    d = P.Point({k: target[k].detach().to(center[k].device, center[k].dtype)
                 - center[k].detach() for k in center})
    d.meta = {"kind": kind, "label": label, "span": span, "markers": [0.0, 1.0],
              "center_hash": P.hash_point(center), "target_hash": P.hash_point(target)}
    return d


def toward(center: Mapping[str, torch.Tensor], later: Mapping[str, torch.Tensor],
           label: str = "later ckpt") -> P.Point:
    """ε = θ_E′ − θ_E: from ``center`` toward a later checkpoint of the same run (v-side)."""
    return _toward(center, later, "checkpoint", label, [-1.0, 1.5])


def independent(theta1: Mapping[str, torch.Tensor], theta2: Mapping[str, torch.Tensor],
                label: str = "indep. ckpt") -> P.Point:
    """ε = θ₂ − θ₁: toward an independently trained checkpoint (w-basin on λ ∈ [−1, 2])."""
    return _toward(theta1, theta2, "independent", label, [-1.0, 2.0])


def load_point(path: str | os.PathLike, names: Sequence[str], index: int | None = None
               ) -> P.Point:
    """The parameters ``names`` of a checkpoint: a run folder written by ``la.train``
    (checkpoint ``index``, default the last) or a ``.pt`` state dict."""
    path = Path(path)
    if not path.exists():
        raise LossAtlasError(f"checkpoint path {str(path)!r} does not exist; check the path")
    if path.is_dir():
        from lossatlas.batteries.runs import load_run

        run = load_run(path)
        state = run.states[-1 if index is None else index]
    else:
        if index is not None:
            raise LossAtlasError(f"index= applies to run folders but {str(path)!r} is a file; "
                                 "drop index")
        state = read_state_dict(path)
    missing = [n for n in names if n not in state]
    if missing:
        raise LossAtlasError(f"checkpoint {str(path)!r} lacks parameters {missing[:3]}; pass a "
                             "checkpoint of the same architecture")
    return P.Point({n: state[n].detach().float() for n in names})
