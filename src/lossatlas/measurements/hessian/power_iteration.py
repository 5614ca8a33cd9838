"""PyHessian-compatible power iteration (Yao, Gholami, Keutzer, Mahoney 2020, PyHessian).

The same defaults and stopping rule as ``pyhessian.hessian.eigenvalues``: a Gaussian start,
``v ← Hv/‖Hv‖`` with the Rayleigh quotient ``θ = vᵀHv``, stopped when two consecutive ``θ``
agree to ``|θ_new − θ_old| / (|θ_old| + 1e-6) < tol`` (``tol=1e-3``) or after ``max_iter=100``
iterations; deflation against the vectors already found for ``top_n > 1``. It reaches only
about 1e-3 relative accuracy: use it to compare with published PyHessian numbers, and
:func:`lossatlas.measurements.hessian.eigs` for accurate eigenpairs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from lossatlas.measurements.hessian.eigenpairs import Spectrum, describe_objective
from lossatlas.measurements.hessian.operator import HessianOperator

__all__ = ["power"]


def power(
    obj,
    top_n: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    *,
    params: str | Sequence[str] | None = None,
    point=None,
    seed: int = 0,
    hvp: str = "auto",
) -> Spectrum:
    """The ``top_n`` largest-magnitude eigenpairs by PyHessian's power iteration (stopping rule
    in the module docstring).

    Args:
        obj: the :class:`~lossatlas.core.objective.Objective`.
        top_n: eigenpairs, found one after another with deflation.
        max_iter: iterations per eigenpair at most (PyHessian: 100).
        tol: stop when ``|θ_new − θ_old| / (|θ_old| + 1e-6) < tol`` (PyHessian: 1e-3).
        params: the block: parameter names or glob patterns; None: all of ``obj.names``.
        point: where the Hessian is taken; None: the objective's center.
        seed: seeds the Gaussian start vectors.
        hvp: how products are computed (``method`` of :class:`HessianOperator`).

    Returns:
        A :class:`~lossatlas.measurements.hessian.eigenpairs.Spectrum` (method ``"power"``):
        ``values`` ascending, ``vectors`` named P.E.i, ``residuals`` ``‖Hv − θv‖`` (one extra
        product per pair, not counted in ``matvecs``).
    """
    op = HessianOperator(obj, point, params, hvp)
    g = torch.Generator().manual_seed(int(seed))
    t0 = time.perf_counter()
    found: list[torch.Tensor] = []
    vals: list[float] = []
    for _ in range(top_n):
        v = torch.randn(op.dim, generator=g).to(op.device, op.dtype)
        v = v / v.norm()
        theta = None
        for _ in range(max_iter):
            for u in found:  # PyHessian's orthnormal(): deflate, then normalize
                v = v - torch.dot(v, u) * u
            v = v / v.norm()
            hv = op.matmat(v)
            new = float(torch.dot(hv, v))
            v = hv / (hv.norm() + 1e-6)
            if theta is not None and abs(theta - new) / (abs(theta) + 1e-6) < tol:
                theta = new
                break
            theta = new
        vals.append(theta)
        found.append(v)
    used = op.matvecs
    V = torch.stack(found)
    res = torch.linalg.vector_norm(
        op.matmat(V.T.contiguous()).T - torch.tensor(vals, dtype=V.dtype)[:, None] * V, dim=1
    )
    order = np.argsort(vals)
    vectors = [op.to_point(found[i], meta={"name": f"P.E.{len(vals) - r}", "eigenvalue": vals[i],
                                           "which": "power"})
               for r, i in enumerate(order)]
    return Spectrum(np.asarray(vals)[order], vectors, res.double().numpy()[order], used,
                    "LA", "power", tol, time.perf_counter() - t0, list(op.names),
                    describe_objective(obj))
