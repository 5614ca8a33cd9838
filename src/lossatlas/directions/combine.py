"""Two directions for a 2D surface (Li, Li, Zhan 2024, Sec. 2.6): their cosine, and on request
the second made orthogonal to the first (Gram-Schmidt, keeping its norm).

>>> import torch, lossatlas as la
>>> a, b = la.params.Point(w=torch.tensor([1.0, 0.0])), la.params.Point(w=torch.tensor([1.0, 1.0]))
>>> d1, d2, cos = la.directions.pair(a, b, orthogonalize=True)
>>> round(cos, 4), float(d1.dot(d2))
(0.7071, 0.0)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lossatlas.core import params as P

__all__ = ["pair"]


def pair(d1: Mapping[str, torch.Tensor], d2: Mapping[str, torch.Tensor],
         orthogonalize: bool = False) -> tuple[P.Point, P.Point, float]:
    """``(d1, d2', cos∠(d1, d2))``; d2' = d2 − (d2·d1/‖d1‖²) d1 rescaled to ‖d2‖ when
    ``orthogonalize``, else d2. ``.meta`` of both are kept (``cosine`` added to d2')."""
    cos = P.cosine(d1, d2)
    a = P.Point(d1, meta=getattr(d1, "meta", {}))
    if orthogonalize:
        _, b = P.gram_schmidt([a, P.Point(d2, meta=getattr(d2, "meta", {}))])
    else:
        b = P.Point(d2, meta=getattr(d2, "meta", {}))
    b.meta = {**b.meta, "cosine_with_first": cos, "orthogonalized": orthogonalize}
    return a, b, cos
