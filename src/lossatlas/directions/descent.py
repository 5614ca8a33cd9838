"""Descent directions: the negative gradient of the full data or of one batch.

Li, Li, Zhan 2024, Sec. 2.3: to first order L(θ + λε) ≈ L(θ) + λ εᵀg, so ε = −g is the sharpest
descent direction; around an intermediate checkpoint it gives v-side curves (their Fig. 4).
Their "g_batch" (Fig. 5) is the negative gradient of one mini-batch.

>>> import torch, lossatlas as la
>>> X, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
>>> obj = la.Objective(torch.nn.Linear(3, 2), (X, y))
>>> d = la.directions.gradient(obj)
>>> float(d.dot(obj.grad())) < 0
True
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lossatlas.core import params as P
from lossatlas.core.errors import LossAtlasError
from lossatlas.directions.normalized_gaussian import normalize

__all__ = ["gradient", "rescale"]


def rescale(direction: Mapping[str, torch.Tensor], center: Mapping[str, torch.Tensor],
            norm: str = "none") -> P.Point:
    """``norm="model"``: ε ← ‖θ‖ ε / ‖ε‖ (Li, Li, Zhan 2024, Sec. 2.1, over every parameter);
    ``"layer"`` / ``"filter"``: per tensor / per filter (Li et al. 2018); ``"none"``: as is.
    ``.meta`` is kept and records ``norm``."""
    meta = dict(getattr(direction, "meta", {}) or {})
    out = P.Point(direction) if norm == "none" else normalize(direction, center, norm,
                                                                 ignore=None)
    out.meta = {**meta, "norm": norm}
    return out


def gradient(obj, point: Mapping[str, torch.Tensor] | None = None, batch: int | None = None,
             norm: str = "none") -> P.Point:
    """The descent direction ε = −∇L(θ) at ``point`` (default ``obj.center``).

    ``batch=None``: the full-data mean loss (``obj.grad``); ``batch=i``: the mean loss of
    ``obj.batches[i]`` only (BN buffers as ``obj.buffers_at``). ``norm`` rescales (see
    :func:`rescale`). ``.meta``: kind "gradient", batch, grad_norm (‖g‖ before rescaling).
    """
    center = obj.center if point is None else point
    if batch is None:
        g = obj.grad(center)
    else:
        n = len(obj.batches)
        if not isinstance(batch, int) or not -n <= batch < n:
            raise LossAtlasError(f"batch={batch!r} is not a batch index; use 0..{n - 1} or None")
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in center.items()}
        loss = obj.batch_loss(leaves, obj.batches[batch], obj.buffers_at(center))
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        g = P.Point({k: (gr if gr is not None else torch.zeros_like(v)).detach()
                     for (k, v), gr in zip(leaves.items(), grads)})
    d = -g
    d.meta = {"kind": "gradient", "batch": batch, "grad_norm": float(g.norm()),
              "center_hash": P.hash_point(center),
              "label": "Neg. Grad." if batch is None else "Neg. Batch Grad."}
    return rescale(d, center, norm)
