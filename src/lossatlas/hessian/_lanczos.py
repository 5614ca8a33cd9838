"""Lanczos with full reorthogonalization, the shared core of eigs (method="lanczos") and SLQ.

For a symmetric ``H`` (given by products) and a start vector ``q_1 = v0/‖v0‖``, ``m`` steps give
an orthonormal basis ``Q = [q_1 … q_m]`` and the tridiagonal ``T = QᵀHQ`` with diagonal
``α`` and off-diagonal ``β`` (Golub & Van Loan, Alg. 10.1.1), with every new vector
orthogonalized twice against all previous ones (classical Gram-Schmidt, "twice is enough"), so
no spurious copies of converged Ritz values appear. A Ritz pair ``(θ_i, Q s_i)`` of ``T`` has
residual ``‖H Q s_i − θ_i Q s_i‖ = |β_m s_{m,i}|`` (exact up to rounding), which is what the
stopping tests use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from lossatlas._progress import track

__all__ = ["Lanczos", "lanczos", "ritz"]


@dataclass
class Lanczos:
    alpha: np.ndarray  # (m,)
    beta: np.ndarray  # (m,): beta[j] couples q_j and q_{j+1}; beta[-1] is the residual norm
    Q: torch.Tensor  # (m, dim) float64 rows
    products: int


def ritz(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ritz values θ (ascending), eigenvectors S of T (columns), residual norms |β_m s_{m,i}|."""
    if len(alpha) == 1:
        return alpha.copy(), np.ones((1, 1)), np.abs(beta[-1:])
    theta, S = eigh_tridiagonal(alpha, beta[:-1])
    return theta, S, np.abs(beta[-1] * S[-1, :])


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    v0: torch.Tensor,
    steps: int,
    stop: Callable[[np.ndarray, np.ndarray], bool] | None = None,
    check_every: int = 1,
    progress: str | None = None,
) -> Lanczos:
    """Run up to ``steps`` Lanczos steps from ``v0`` (flat float64); ``stop(alpha, beta)`` is
    asked every ``check_every`` steps and ends the run when it returns True. Breakdown (an
    invariant subspace, β ≈ 0) ends it too. ``progress`` names a progress bar (up to ``steps``;
    it stops early when ``stop`` says so)."""
    dim = v0.numel()
    steps = min(steps, dim)
    Q = torch.zeros(min(steps, 64), dim, dtype=torch.float64, device=v0.device)  # grows
    alpha, beta = np.zeros(steps), np.zeros(steps)
    q = v0.to(torch.float64) / torch.linalg.vector_norm(v0.to(torch.float64))
    m = 0
    it = range(steps) if progress is None else track(range(steps), progress)
    for j in it:
        if j == Q.shape[0]:  # double the basis storage (amortized O(1) copies per step)
            Q = torch.cat([Q, torch.zeros(min(Q.shape[0], steps - j), dim, dtype=Q.dtype,
                                          device=Q.device)])
        Q[j] = q
        w = matvec(q).to(torch.float64)
        a = float(torch.dot(w, q))
        alpha[j] = a
        B = Q[: j + 1]
        for _ in range(2):  # full reorthogonalization, twice
            w = w - B.T @ (B @ w)
        b = float(torch.linalg.vector_norm(w))
        beta[j] = b
        m = j + 1
        if b <= 1e-12 * max(abs(a), 1e-30):
            break
        if stop is not None and (m % check_every == 0) and stop(alpha[:m], beta[:m]):
            break
        q = w / b
    return Lanczos(alpha[:m], beta[:m], Q[:m], m)
