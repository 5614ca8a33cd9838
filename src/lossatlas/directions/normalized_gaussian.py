"""Random Gaussian directions and their normalizations (Li, Xu, Taylor, Studer, Goldstein 2018).

A direction ε ~ N(0, I) is drawn over the model's parameters, then rescaled so that its size
matches the weights it perturbs (Li et al. 2018, Sec. 4; Li, Li, Zhan 2024 call these Norm,
LayNorm and FilNorm):

* ``"filter"``: each filter ε_{k,f} (slice along dim 0: a conv filter, a row of a Linear
  weight) becomes ε_{k,f} · ‖θ_{k,f}‖ / ‖ε_{k,f}‖,
* ``"layer"``:  each tensor ε_k becomes ε_k · ‖θ_k‖ / ‖ε_k‖,
* ``"model"``:  ε · ‖θ‖ / ‖ε‖ (norms over the included parameters),
* ``"none"``:   ε unchanged.

Biases and normalization parameters (1-D tensors) are zero by default (``ignore="biasbn"``, the
paper's recipe). With ``ignore=None`` they are kept and normalized once, as one filter each
(``ε_b · ‖θ_b‖ / ‖ε_b‖``).

The draw happens on the CPU from ``torch.Generator().manual_seed(seed)``, one tensor at a time in
model order, in float32, so the same seed gives the same direction on any device.

>>> import torch, lossatlas as la
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
>>> d = la.directions.gaussian(net, norm="filter", seed=0)
>>> theta = la.params.of(net)
>>> bool(torch.allclose(d["0.weight"].norm(dim=1), theta["0.weight"].norm(dim=1)))
True
>>> float(d["0.bias"].abs().sum()), d.meta["seed"]
(0.0, 0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lossatlas.core import params as P
from lossatlas.core.errors import LossAtlasError

__all__ = ["NORMS", "gaussian", "normalize"]

NORMS = ("filter", "layer", "model", "none")
_IGNORES = ("biasbn", None)


def _center_of(model_or_point, names, selection) -> P.Point:
    if isinstance(model_or_point, nn.Module):
        return P.of(model_or_point, names=names, **selection)
    if isinstance(model_or_point, Mapping):
        if selection:
            raise LossAtlasError(
                "include/exclude/trainable_only select from a model; with a point pass "
                "names= or a point restricted to the wanted parameters"
            )
        point = P.Point({k: v.detach() for k, v in model_or_point.items()})
        if names is not None:
            unknown = [n for n in names if n not in point]
            if unknown:
                raise LossAtlasError(f"names={unknown[:3]} are not in the point; check spelling")
            point = P.Point({n: point[n] for n in names})
        return point
    raise LossAtlasError(
        f"model_or_point must be an nn.Module or a name -> tensor mapping, got "
        f"{type(model_or_point).__name__}"
    )


def _check(norm: str, ignore: str | None) -> None:
    if norm not in NORMS:
        raise LossAtlasError(f"norm={norm!r} is unknown; use one of {list(NORMS)}")
    if ignore not in _IGNORES:
        raise LossAtlasError(f'ignore={ignore!r} is unknown; use "biasbn" or None')


def normalize(
    direction: Mapping[str, torch.Tensor],
    center: Mapping[str, torch.Tensor],
    norm: str = "filter",
    ignore: str | None = "biasbn",
) -> P.Point:
    """Rescale ``direction`` to the size of ``center`` (see the module docstring for the rules).

    1-D tensors are zeroed when ``ignore="biasbn"``, else scaled once as one filter. A zero
    slice of ``center`` gives a zero slice of the result. Returns a new :class:`Point`.
    """
    _check(norm, ignore)
    out = {}
    for k, d in direction.items():
        t = center[k].detach().to(d.device, torch.float64)
        e = d.detach().to(torch.float64)
        if ignore == "biasbn" and P.is_bias_or_bn(k, d):
            out[k] = torch.zeros_like(d)
            continue
        if norm == "filter":
            if e.dim() <= 1:
                e = e * (t.norm() / e.norm().clamp_min(1e-300))
            else:
                tf = t.reshape(t.shape[0], -1).norm(dim=1)
                ef = e.reshape(e.shape[0], -1).norm(dim=1).clamp_min(1e-300)
                e = e * (tf / ef).reshape(-1, *([1] * (e.dim() - 1)))
        elif norm == "layer":
            e = e * (t.norm() / e.norm().clamp_min(1e-300))
        out[k] = e
    if norm == "model":
        kept = [k for k in out if not (ignore == "biasbn" and P.is_bias_or_bn(k, out[k]))]
        tn = torch.sqrt(sum((center[k].detach().double() ** 2).sum().cpu() for k in kept))
        en = torch.sqrt(sum((out[k] ** 2).sum().cpu() for k in kept)).clamp_min(1e-300)
        for k in kept:
            out[k] = out[k] * (tn / en).to(out[k].device)
    return P.Point({k: v.to(direction[k].dtype) for k, v in out.items()})


def gaussian(
    model_or_point: nn.Module | Mapping[str, torch.Tensor],
    norm: str = "filter",
    seed: int = 0,
    ignore: str | None = "biasbn",
    names: Sequence[str] | None = None,
    **selection,
) -> P.Point:
    """A random direction ε ~ N(0, I), normalized to the center θ (Li et al. 2018).

    Args:
        model_or_point: the center θ: a model, whose parameters are read, or a point.
        norm: ``"filter"``, ``"layer"``, ``"model"`` or ``"none"`` (module docstring).
        seed: an int; the same seed gives the same direction on any device.
        ignore: ``"biasbn"`` zeroes biases and normalization parameters (1-D tensors); None
            keeps and normalizes them as one filter each.
        names: the parameters to draw over; pass ``names=obj.names`` to match an Objective.
        **selection: ``include``, ``exclude``, ``trainable_only`` of :func:`la.params.select`.

    Returns:
        A :class:`Point` on θ's device and dtype; ``.meta`` records ``kind="gaussian"``,
        ``seed``, ``norm``, ``ignore``, ``center_hash`` and ``names``.

    Raises:
        LossAtlasError: an unknown ``norm`` or ``ignore``, or a ``seed`` that is not an int.
    """
    _check(norm, ignore)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise LossAtlasError(f"seed={seed!r} must be an int")
    center = _center_of(model_or_point, names, selection)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    raw = P.Point({
        k: torch.randn(tuple(v.shape), generator=gen, dtype=torch.float32).to(v.device, v.dtype)
        for k, v in center.items()
    })
    d = normalize(raw, center, norm=norm, ignore=ignore)
    d.meta = {
        "kind": "gaussian",
        "seed": seed,
        "norm": norm,
        "ignore": ignore,
        "center_hash": P.hash_point(center),
        "names": list(center),
    }
    return d
