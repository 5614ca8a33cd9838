"""Trace of the Hessian from products: Hutchinson, Hutch++, XTrace, and PyHessian's mode.

All estimators take a budget of ``products`` Hessian-vector products and return a
:class:`TraceEstimate` (value, standard-error estimate, products used):

* ``"hutchinson"`` (Hutchinson 1990): ``tr H ≈ (1/m) Σ ωᵢᵀHωᵢ`` with Rademacher ``ωᵢ``;
  error ``std(ωᵢᵀHωᵢ)/√m``.
* ``"hutch++"`` (Meyer, Musco, Musco, Woodruff 2021): a third of the products sketch the range
  ``Q = orth(HS)``, a third give ``tr(QᵀHQ)`` exactly, the last third estimate the trace of the
  deflated rest ``(I−QQᵀ)H(I−QQᵀ)`` by Hutchinson (its error is the estimate's).
* ``"xtrace"`` (Epperly, Tropp, Webber 2024, XTrace): m = products/2 test vectors Ω serve both as
  the sketch and, left out one at a time, as Hutchinson vectors for the rest:
  ``tᵢ = tr(Q₋ᵢᵀHQ₋ᵢ) + ωᵢᵀ(I−Q₋ᵢQ₋ᵢᵀ)H(I−Q₋ᵢQ₋ᵢᵀ)ωᵢ`` with ``Q₋ᵢQ₋ᵢᵀ = Q(I−sᵢsᵢᵀ)Qᵀ``,
  ``sᵢ`` the normalized i-th column of ``R⁻ᵀ`` (HΩ = QR); estimate ``mean tᵢ``, error
  ``std(tᵢ)/√m``. The default (``"auto"``): the best error at a fixed budget in
  benchmarks/hessian.py.
* a budget of ``products >= dim`` computes ``Σ eᵢᵀHeᵢ`` exactly with ``dim`` products.
* ``"pyhessian"``: PyHessian's ``trace()`` loop: Rademacher Hutchinson, stopped when the running
  mean changes by less than ``tol=1e-3`` relative, or after ``max_iter=100`` products.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lossatlas.core.errors import LossAtlasError
from lossatlas.measurements.hessian.operator import HessianOperator
from lossatlas.store.results import result

__all__ = ["ESTIMATORS", "TraceEstimate", "trace", "trace_estimate", "trace_of"]

ESTIMATORS = ("auto", "hutchinson", "hutch++", "xtrace", "pyhessian")


@result("hessian_trace")
@dataclass
class TraceEstimate:
    """``value`` ≈ tr H, ``error`` its estimated standard error, ``products`` used."""

    value: float
    error: float
    products: int
    method: str = "xtrace"
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    seconds: float = 0.0
    params: list = field(default_factory=list)

    def __float__(self) -> float:
        return float(self.value)


def _rademacher(n: int, m: int, gen: torch.Generator) -> torch.Tensor:
    return (torch.randint(0, 2, (n, m), generator=gen, dtype=torch.int8) * 2 - 1).double()


def _hutchinson(mm, n, products, gen):
    W = _rademacher(n, products, gen)
    s = (W * mm(W)).sum(0)
    return float(s.mean()), float(s.std() / math.sqrt(products)) if products > 1 else math.inf, s


def _hutchpp(mm, n, products, gen):
    if products < 3:
        raise LossAtlasError("products= must be at least 3 for hutch++; pass products=30 or more")
    k = products // 3
    m = products - 2 * k
    Q, _ = torch.linalg.qr(mm(_rademacher(n, k, gen)))
    exact = float((Q * mm(Q)).sum())
    G = _rademacher(n, m, gen)
    G = G - Q @ (Q.T @ G)
    s = (G * mm(G)).sum(0)
    err = float(s.std() / math.sqrt(m)) if m > 1 else math.inf
    return exact + float(s.mean()), err, exact + s


def _xtrace(mm, n, products, gen):
    m = products // 2
    if m < 2:
        raise LossAtlasError("products= must be at least 4 for xtrace; pass products=30 or more")
    W = _rademacher(n, m, gen)
    Y = mm(W)
    Q, R = torch.linalg.qr(Y)
    Z = mm(Q)
    Hq = Q.T @ Z  # (m, m) = QᵀHQ
    S = torch.linalg.inv(R).T
    S = S / torch.linalg.vector_norm(S, dim=0, keepdim=True)
    tr_q = torch.trace(Hq)
    tr_loo = tr_q - ((S * (Hq @ S)).sum(0))  # tr(Q₋ᵢᵀHQ₋ᵢ)
    # ωᵢᵀ(I−Pᵢ)H(I−Pᵢ)ωᵢ with Pᵢ = Q(I−sᵢsᵢᵀ)Qᵀ
    QW = Q.T @ W  # (m, m): column i is Qᵀωᵢ
    c = QW - S * (S * QW).sum(0)  # (I − sᵢsᵢᵀ)Qᵀωᵢ
    HPW = Y - Z @ c  # H(I−Pᵢ)ωᵢ
    QHPW = Q.T @ HPW
    PHPW = HPW - Q @ (QHPW - S * (S * QHPW).sum(0))
    t = tr_loo + (W * PHPW).sum(0)
    return float(t.mean()), float(t.std() / math.sqrt(m)), t


def _pyhessian(mm, n, products, gen, tol=1e-3):
    vals, mean = [], 0.0
    for _ in range(products):
        w = _rademacher(n, 1, gen)
        vals.append(float((w * mm(w)).sum()))
        new = float(np.mean(vals))
        if abs(new - mean) / (mean + 1e-6) < tol:
            break
        mean = new
    s = torch.tensor(vals)
    err = float(s.std() / math.sqrt(len(vals))) if len(vals) > 1 else math.inf
    return float(s.mean()), err, s


def trace_of(matmat, dim: int, products: int = 100, method: str = "auto",
             seed: int = 0) -> tuple[float, float, np.ndarray]:
    """Estimate tr A of a symmetric ``A`` given ``matmat(X: (dim, k) float64) -> A X``:
    (value, standard error, per-sample estimates)."""
    if method not in ESTIMATORS:
        raise LossAtlasError(f"method={method!r} is unknown; use one of {ESTIMATORS}")
    if not isinstance(products, int) or products < 1:
        raise LossAtlasError(f"products={products!r} must be a positive integer")
    if products >= dim:  # the budget covers the whole space: Σ eᵢᵀAeᵢ exactly
        d = torch.diagonal(matmat(torch.eye(dim, dtype=torch.float64))).clone()
        return float(d.sum()), 0.0, d.numpy()
    gen = torch.Generator().manual_seed(int(seed))
    fn = {"auto": _xtrace, "xtrace": _xtrace, "hutchinson": _hutchinson, "hutch++": _hutchpp,
          "pyhessian": _pyhessian}[method]
    value, err, s = fn(matmat, dim, products, gen)
    return value, err, np.asarray(s, dtype=np.float64)


def trace_estimate(
    obj,
    products: int = 100,
    method: str = "auto",
    *,
    params: str | Sequence[str] | None = None,
    point=None,
    seed: int = 0,
    hvp: str = "auto",
    operator: HessianOperator | None = None,
) -> TraceEstimate:
    """tr H of the Hessian (block) from ``products`` Hessian-vector products.

    Args:
        obj: the :class:`~lossatlas.core.objective.Objective`.
        products: the budget of products; ``products >= dim`` gives ``Σ eᵢᵀHeᵢ`` exactly.
        method: ``"auto"`` (XTrace), ``"hutchinson"``, ``"hutch++"``, ``"xtrace"`` or
            ``"pyhessian"`` (formulas in the module docstring).
        params: the block: parameter names or glob patterns; None: all of ``obj.names``.
        point: where the Hessian is taken; None: the objective's center.
        seed: seeds the random test vectors.
        hvp: how products are computed (``method`` of :class:`HessianOperator`).
        operator: a :class:`HessianOperator` to reuse; ``params``, ``point`` and ``hvp`` are
            then the operator's.

    Returns:
        A :class:`TraceEstimate`: ``value`` ≈ tr H, ``error`` (its estimated standard error),
        ``products`` used, ``method`` (``"exact"`` when the budget covered the dimension),
        the per-sample estimates ``samples`` and ``seconds``.

    Raises:
        LossAtlasError: an unknown ``method``, or ``products`` not a positive integer.
    """
    op = operator or HessianOperator(obj, point, params, hvp)
    start, t0 = op.matvecs, time.perf_counter()

    def mm(X):
        return op.matmat(X.to(op.device)).to(torch.float64).cpu()

    value, err, s = trace_of(mm, op.dim, products, method, seed)
    name = "exact" if products >= op.dim else "xtrace" if method == "auto" else method
    return TraceEstimate(value, err, op.matvecs - start, name, s, time.perf_counter() - t0,
                         list(op.names))


def trace(obj, products: int = 100, method: str = "auto", **kw) -> float:
    """tr H as a float (see :func:`trace_estimate` for the error estimate)."""
    return float(trace_estimate(obj, products, method, **kw).value)
