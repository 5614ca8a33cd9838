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
  information (benchmarks/hessian.py counts the products against plain ARPACK, ARPACK with a
  larger ``ncv`` and ARPACK on the folded σI − H; figures in benchmarks/README.md). Folding
  alone gains little: σI − H spans the same Krylov space. The basis holds up to
  ``max_basis`` vectors and what the memory budget leaves beside the products
  (:mod:`lossatlas.core.memory`), allocated once; when it is full before the wanted pairs
  converge, the run goes on as a thick-restart Lanczos (Wu & Simon 2000) that keeps the half
  of the basis nearest the wanted end as Ritz vectors, in the same memory.
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

from lossatlas.core import memory as M
from lossatlas.core.errors import LossAtlasError
from lossatlas.measurements.hessian.lanczos import thick_restart
from lossatlas.measurements.hessian.operator import HessianOperator, resolve_params
from lossatlas.store.results import result

__all__ = ["Spectrum", "eigs"]

_HINTS = "pass params= a subset of the parameters or a smaller k"
MAX_PRODUCTS = 10  # a Lanczos run stops unconverged after this many products per max_basis


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
    """The start vector, flat float64: ``v0`` (a Point, a flat vector, or a block of start
    vectors as rows ``(b, dim)``, whose sum starts the Krylov space), else a seeded Gaussian."""
    if v0 is not None:
        v = op.flatten(v0) if isinstance(v0, dict) else torch.as_tensor(v0)
        v = v.to(torch.float64)
        if v.dim() == 2 and v.shape[-1] == op.dim:
            v = v.sum(0)
        if v.numel() != op.dim:
            raise LossAtlasError(
                f"v0 has {v.numel()} entries but the block has {op.dim}; pass a Point over "
                "obj.names or a flat vector of the block's size"
            )
        return v.reshape(-1).to(op.device)
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(op.dim, generator=g, dtype=torch.float64).to(op.device)


def _basis_sizes(k: int, dim: int, max_basis: int) -> tuple[int, int]:
    """(fewest, comfortable) Lanczos basis vectors for ``k`` pairs: a thick restart needs room
    for the ``k`` kept pairs and as many new directions; ``4k + 20`` rarely restarts."""
    least = min(dim, max_basis, 2 * k + 8)
    return least, min(dim, max_basis, max(least, 4 * k + 20))


def basis_vectors(op: HessianOperator, k: int, max_basis: int) -> int:
    """How many float64 basis vectors the budget leaves beside the products (the ``k`` Ritz
    vectors and two work vectors set aside); raises the one sentence when too few fit."""
    vec = 8 * op.dim
    free = M.usable(op.budget) - op.bytes - (k + 2) * vec
    least, _ = _basis_sizes(k, op.dim, max_basis)
    m = int(min(max_basis, op.dim, free // vec))
    if m < least:
        raise M.too_large(
            f"eigs(k={k}) over {op.dim:,} parameters (a Lanczos basis of {least} vectors "
            f"beside {M.fmt(op.bytes)} for the products)",
            (op.bytes + (least + k + 2) * vec) / (1 - M.HEADROOM), op.budget, _HINTS)
    return m


def _lanczos_eigs(op, k, which, tol, v0, max_basis, check_every):
    def converged(theta, res):
        return res <= tol * np.maximum(np.abs(theta), 1e-300)

    bar = f"Lanczos {which} k={k}" if (which == "SA" or k > 1) else None
    m = basis_vectors(op, k, max_basis)
    run = thick_restart(lambda q: op.matmat(q.to(op.dtype)), v0, k, which, m, converged,
                        MAX_PRODUCTS * max(max_basis, m), check_every, progress=bar)
    if not run.converged:
        raise LossAtlasError(
            f"Lanczos did not converge for which={which!r}, k={k} in {run.products} products "
            f"(basis {m}, {run.restarts} restarts; largest relative residual "
            f"{np.max(run.residuals / np.maximum(np.abs(run.values), 1e-300)):.2g}); raise "
            "tol=, max_basis= or the memory budget"
        )
    return run.values, run.vectors, run.residuals


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

    Residuals are Lanczos' own ``|β_m s_{m,i}|`` (exact up to rounding with full
    reorthogonalization), recomputed with one extra product per pair for ARPACK or when
    ``exact_residuals`` (counted in ``matvecs``).

    Args:
        obj: the :class:`~lossatlas.core.objective.Objective` whose loss is differentiated.
        k: pairs wanted, ``1 <= k < dim`` (at each end for ``which="both"``).
        which: ``"LA"`` (largest), ``"SA"`` (smallest) or ``"both"`` (k of each, 2k pairs).
        tol: ARPACK's relative residual ``‖Hv − θv‖ ≤ tol·|θ|``, met by every returned pair.
        params: the block: parameter names or glob patterns (``"net.0.*"``); None: all of
            ``obj.names``.
        point: where the Hessian is taken (a Point); None: the objective's center.
        method: ``"auto"`` (= ``"lanczos"``), ``"lanczos"`` or ``"arpack"`` (module docstring).
        ncv: ARPACK's basis size (default ``max(2k+1, 20)``); ARPACK only.
        max_basis: the most Lanczos basis vectors held (fewer when the memory budget says so);
            a full basis goes on as a thick restart.
        seed: seeds the Gaussian start vector.
        v0: a start vector instead: a Point, a flat vector of the block's size, or rows
            ``(b, dim)`` whose sum starts the Krylov space.
        hvp: how products are computed (``method`` of :class:`HessianOperator`).
        operator: a :class:`HessianOperator` to reuse; ``params``, ``point`` and ``hvp`` are
            then the operator's.
        exact_residuals: recompute every residual with one product per pair.

    Returns:
        A :class:`Spectrum`: ``values`` ascending, unit-norm ``vectors`` (Points over all of
        ``obj.names``, zeros outside the block) named P.E.1.. (largest first) / N.E.1..
        (smallest first), ``residuals``, ``matvecs`` (products used) and ``seconds``.

    Raises:
        LossAtlasError: an unknown ``which`` or ``method``, ``k`` out of range, a ``v0`` of the
            wrong size, or a block whose products and basis do not fit the memory budget.
    """
    if which not in ("LA", "SA", "both"):
        raise LossAtlasError(f'which={which!r} is unknown; use "LA", "SA" or "both"')
    if method == "auto":
        method = "lanczos"
    if method not in ("lanczos", "arpack"):
        raise LossAtlasError(f'method={method!r} is unknown; use "auto", "lanczos" or "arpack"')
    if operator is None:
        pt = obj.center if point is None else point
        vec = 8 * sum(pt[n].numel() for n in resolve_params(obj, params))
        least, comfortable = _basis_sizes(k, 2**62, max_basis)
        try:
            op = HessianOperator(obj, point, params, hvp, reserve=(comfortable + k + 2) * vec,
                                 reserve_min=(least + k + 2) * vec)
        except LossAtlasError as err:
            if not hasattr(err, "need"):
                raise
            raise M.too_large(
                f"eigs(k={k}) over {vec // 8:,} parameters (one sample's Hessian graph beside "
                f"a Lanczos basis of {least + k + 2} vectors)", err.need, err.budget,
                _HINTS) from None
    else:
        op = operator
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
        vals, V, res = _lanczos_eigs(op, k, which, tol, x0, max_basis, 1 if k == 1 else 5)
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
                    list(op.names), describe_objective(obj))


def describe_objective(obj) -> dict:
    """The objective's provenance (``obj.describe()``); ``{}`` for a duck-typed objective that
    has no ``describe``."""
    describe = getattr(obj, "describe", None)
    return describe() if callable(describe) else {}

