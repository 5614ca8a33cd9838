"""Hessian eigenvector directions P.E.k and N.E.k (Li, Li, Zhan 2024, Sec. 2.4 and App. B.1).

P.E.k is the eigenvector of the k-th largest eigenvalue (ARPACK ``which="LA"``), N.E.k the one
of the k-th smallest (``which="SA"``); k = 1 is the largest |eigenvalue| on its side. P.E.
directions give v-basin curves; N.E. directions of eigenvalues < 0 give w-peak curves at early
checkpoints (second order: L(θ + λv) − L(θ) ≈ λ vᵀg + ½ λ² h with h < 0).

The eigenpairs come from ``la.hessian.eigs(obj, k, which)`` (unit-norm vectors). By default a
vector is rescaled to the model's norm, ε ← ‖θ‖ v/‖v‖ (their Sec. 2.1), so that λ ∈ [−1, 1]
moves as far as a "Norm" Gaussian direction; ``norm="none"`` keeps unit norm.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lossatlas.core import params as P
from lossatlas.core.errors import LossAtlasError
from lossatlas.directions.descent import rescale

__all__ = ["eigenvector", "eigenvectors", "ordered"]

_PREFIX = {"SA": "N.E.", "LA": "P.E."}


def ordered(values: Sequence[float], vectors: Sequence, which: str) -> tuple[np.ndarray, list]:
    """Eigenpairs sorted so that index 0 is N.E.1 (``"SA"``: ascending values) or P.E.1
    (``"LA"``: descending values)."""
    vals = np.asarray(values, dtype=float)
    order = np.argsort(vals) if which == "SA" else np.argsort(-vals)
    return vals[order], [vectors[i] for i in order]


def _check(which: str, k: int) -> None:
    if which not in _PREFIX:
        raise LossAtlasError(f'which={which!r} is unknown; use "SA" (N.E.) or "LA" (P.E.)')
    if not isinstance(k, int) or k < 1:
        raise LossAtlasError(f"k={k!r} must be a positive integer")


def eigenvectors(obj, k: int = 5, which: str = "SA", norm: str = "model",
                 spectrum=None) -> list[P.Point]:
    """The top ``k`` eigenvector directions of ``which`` side, N.E.1..k or P.E.1..k.

    ``spectrum``: a result of ``la.hessian.eigs(obj, k>=k, which)`` to reuse (else computed).
    Each ``.meta`` holds kind "eigen", which, index, eigenvalue, label ("N.E.1", ...).
    """
    _check(which, k)
    if spectrum is None:
        from lossatlas.measurements import hessian

        spectrum = hessian.eigs(obj, k=k, which=which)
    vals, vecs = ordered(spectrum.values, spectrum.vectors, which)
    if len(vecs) < k:
        raise LossAtlasError(f"the spectrum holds {len(vecs)} eigenpairs but k={k}; compute more")
    out = []
    for i in range(k):
        d = P.Point(vecs[i])
        d.meta = {"kind": "eigen", "which": which, "index": i + 1, "eigenvalue": float(vals[i]),
                  "label": f"{_PREFIX[which]}{i + 1}", "center_hash": P.hash_point(obj.center)}
        out.append(rescale(d, obj.center, norm))
    return out


def eigenvector(obj, index: int = 1, which: str = "SA", norm: str = "model",
                spectrum=None) -> P.Point:
    """N.E.``index`` (``which="SA"``) or P.E.``index`` (``"LA"``), see :func:`eigenvectors`."""
    _check(which, index)
    return eigenvectors(obj, k=index, which=which, norm=norm, spectrum=spectrum)[index - 1]
