"""Extreme eigenpairs of the Hessian: ARPACK (``scipy.sparse.linalg.eigsh``) and Lanczos.

``eigs(obj, k, which)`` returns the ``k`` largest (``"LA"``: the P.E. directions of Li, Li, Zhan
2024) or smallest (``"SA"``: N.E.) eigenpairs, or both ends (``"both"``). Convergence is
ARPACK's test for every returned pair: ``‖Hv − θv‖ ≤ tol·|θ|``.

Methods:

* ``"arpack"``: ``eigsh`` on a float64 LinearOperator (implicitly restarted Lanczos, ``ncv``
  basis vectors; the default ``ncv = max(2k+1, 20)`` is scipy's).
* ``"lanczos"``: one Lanczos run with full reorthogonalization and no restart, stopped as soon
  as the wanted Ritz pairs pass the test (their residuals ``|β_m s_{m,i}|`` are free). With no
  restart nothing learned about the spectrum is thrown away, which matters at the bottom end
  of a trained network's Hessian: the most negative eigenvalues sit at the edge of a dense bulk
  around zero, and ARPACK's restarts with a 20-vector basis throw away most of that
  information. On the benchmark's MLP (9,610 parameters, five most negative eigenvalues
  ≈ −1.3e-3 against λ_max 0.17) the five SA pairs to tol 1e-3 took 250 products here,
  1,602 with plain ARPACK (ncv 20), 1,228 with ARPACK ncv 100, and 987 with ARPACK LA on the
  folded σI − H (σ = λ_max; the same Krylov space, so folding alone gains little once ARPACK's
  tol is rescaled to ask for the same ‖r‖). Up to ``max_basis``
  vectors are kept (and at most 4 GB of them); past that it hands over to ARPACK with the
  Ritz vectors as a start.
* ``"auto"``: ``"lanczos"``.

>>> import torch, lossatlas as la
>>> X, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
>>> obj = la.Objective(torch.nn.Linear(3, 2), (X, y))
>>> spec = la.hessian.eigs(obj, k=2, which="LA")
>>> spec.values.shape, len(spec.vectors), spec.vectors[0].meta["name"]
((2,), 2, 'P.E.2')
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, eigsh

from lossatlas.errors import LossAtlasError
from lossatlas.hessian._lanczos import lanczos, ritz
from lossatlas.hessian.operator import HessianOperator
from lossatlas.store import result

__all__ = ["Spectrum", "eigs"]

_BASIS_BYTES = 4e9  # the Lanczos basis (float64) is capped at this size; ARPACK takes over


@result("hessian_spectrum")
@dataclass
class Spectrum:
    """Eigenpairs of the Hessian (block). ``values`` ascending (k,), ``vectors`` the matching
    unit-norm Points over all of the objective's parameters (zeros outside the block), named in
    ``meta["name"]`` P.E.i (i-th largest) or N.E.i (i-th smallest); ``residuals`` (k,) are
    ‖Hv − λv‖; ``matvecs`` the Hessian-vector products used."""

    values: np.ndarray
    vectors: list = field(default_factory=list)
    residuals: np.ndarray = field(default_factory=lambda: np.zeros(0))
    matvecs: int = 0
    which: str = "LA"
    method: str = "lanczos"
    tol: float = 1e-3
    seconds: float = 0.0
    params: list = field(default_factory=list)
    objective: dict = field(default_factory=dict)

    @property
    def top(self) -> float:
        return float(self.values[-1])

    @property
    def bottom(self) -> float:
        return float(self.values[0])


def _v0(op: HessianOperator, seed: int, v0) -> torch.Tensor:
    if v0 is not None:
        v = op.flatten(v0) if isinstance(v0, dict) else torch.as_tensor(v0)
        return v.reshape(-1).to(torch.float64)
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(op.dim, generator=g, dtype=torch.float64).to(op.device)


def _wanted(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    return np.arange(len(theta))[-k:] if which == "LA" else np.arange(len(theta))[:k]


def _lanczos_eigs(op, k, which, tol, v0, max_basis, check_every):
    def converged(alpha, beta):
        if len(alpha) < k:
            return False
        theta, _, res = ritz(alpha, beta)
        idx = _wanted(theta, k, which)
        return bool(np.all(res[idx] <= tol * np.maximum(np.abs(theta[idx]), 1e-300)))

    bar = f"Lanczos {which} k={k}" if (which == "SA" or k > 1) else None
    run = lanczos(lambda q: op.matmat(q.to(op.dtype)), v0, max_basis, converged, check_every,
                  bar)
    theta, S, res = ritz(run.alpha, run.beta)
    idx = _wanted(theta, k, which)
    ok = res[idx] <= tol * np.maximum(np.abs(theta[idx]), 1e-300)
    done = bool(np.all(ok)) or run.products >= op.dim
    vecs = (run.Q.T @ torch.from_numpy(S[:, idx]).to(run.Q)).T  # (k, dim)
    if done:
        return theta[idx], vecs, res[idx]
    # basis full: hand over to ARPACK, started from the Ritz vectors' sum
    return _arpack(op, k, which, tol, vecs.sum(0), ncv=None)


def _arpack(op, k, which, tol, v0, ncv):
    A = op.scipy()
    try:
        vals, vecs = eigsh(A, k=k, which=which, tol=tol, ncv=ncv, v0=v0.cpu().numpy())
    except ArpackNoConvergence as exc:
        raise LossAtlasError(
            f"ARPACK did not converge for which={which!r}, k={k}; raise tol= or ncv="
        ) from exc
    V = torch.from_numpy(vecs.T.copy())
    return vals, V, None


def eigs(
    obj,
    k: int = 5,
    which: str = "LA",
    tol: float = 1e-3,
    *,
    params: str | Sequence[str] | None = None,
    point=None,
    method: str = "auto",
    ncv: int | None = None,
    max_basis: int = 1000,
    seed: int = 0,
    v0=None,
    hvp: str = "auto",
    operator: HessianOperator | None = None,
    exact_residuals: bool = False,
) -> Spectrum:
    """The ``k`` extreme eigenpairs of the Hessian of ``obj`` (block ``params``) at ``point``.

    ``which``: ``"LA"`` (largest), ``"SA"`` (smallest), ``"both"`` (k of each, 2k pairs).
    ``tol``: ARPACK's relative residual ``‖Hv − θv‖ ≤ tol·|θ|``. Residuals: Lanczos' own
    ``|β_m s_{m,i}|`` (exact up to rounding with full reorthogonalization), recomputed with one
    extra product per pair for ARPACK or when ``exact_residuals`` (counted in ``matvecs``).
    Vectors are unit-norm Points named P.E.1.. (largest first) / N.E.1.. (smallest first).
    """
    if which not in ("LA", "SA", "both"):
        raise LossAtlasError(f'which={which!r} is unknown; use "LA", "SA" or "both"')
    if method == "auto":
        method = "lanczos"
    if method not in ("lanczos", "arpack"):
        raise LossAtlasError(f'method={method!r} is unknown; use "auto", "lanczos" or "arpack"')
    op = operator or HessianOperator(obj, point, params, hvp)
    if not isinstance(k, int) or k < 1 or k >= op.dim:
        raise LossAtlasError(f"k={k!r} must be an integer between 1 and {op.dim - 1}")
    if which == "both":
        lo = eigs(obj, k, "SA", tol, method=method, ncv=ncv, max_basis=max_basis, seed=seed,
                  v0=v0, operator=op, exact_residuals=exact_residuals)
        hi = eigs(obj, k, "LA", tol, method=method, ncv=ncv, max_basis=max_basis, seed=seed,
                  v0=v0, operator=op, exact_residuals=exact_residuals)
        return Spectrum(
            np.concatenate([lo.values, hi.values]), lo.vectors + hi.vectors,
            np.concatenate([lo.residuals, hi.residuals]), lo.matvecs + hi.matvecs, "both",
            method, tol, lo.seconds + hi.seconds, lo.params, lo.objective,
        )
    start, t0 = op.matvecs, time.perf_counter()
    x0 = _v0(op, seed, v0)
    if method == "lanczos":
        basis = min(max_basis, op.dim, max(4 * k + 20, int(_BASIS_BYTES // (8 * op.dim))))
        vals, V, res = _lanczos_eigs(op, k, which, tol, x0, basis, 1 if k == 1 else 5)
    else:
        vals, V, res = _arpack(op, k, which, tol, x0, ncv)
    order = np.argsort(vals)
    vals, V = np.asarray(vals)[order], V[order]
    V = V / torch.linalg.vector_norm(V, dim=1, keepdim=True)
    if res is None or exact_residuals:
        HV = op.matmat(V.T.to(op.dtype).contiguous()).T.to(torch.float64)
        res = torch.linalg.vector_norm(HV - torch.from_numpy(vals)[:, None].to(HV) * V, dim=1)
        res = res.cpu().numpy()
    else:
        res = np.asarray(res)[order]
    seconds = time.perf_counter() - t0
    prefix = "P.E." if which == "LA" else "N.E."
    rank = np.arange(len(vals), 0, -1) if which == "LA" else np.arange(1, len(vals) + 1)
    vectors = [
        op.to_point(V[i], meta={"name": f"{prefix}{rank[i]}", "eigenvalue": float(vals[i]),
                                "which": which, "params": op.names})
        for i in range(len(vals))
    ]
    return Spectrum(vals, vectors, res, op.matvecs - start, which, method, tol, seconds,
                    list(op.names), _describe(obj))


def _describe(obj) -> dict:
    try:
        return obj.describe()
    except Exception:  # a duck-typed objective without describe()
        return {}

