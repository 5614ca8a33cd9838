"""Lanczos with full reorthogonalization, the shared core of eigs (method="lanczos") and SLQ.

For a symmetric ``H`` (given by products) and a start vector ``q_1 = v0/‖v0‖``, ``m`` steps give
an orthonormal basis ``Q = [q_1 … q_m]`` and the tridiagonal ``T = QᵀHQ`` with diagonal
``α`` and off-diagonal ``β`` (Golub & Van Loan, Alg. 10.1.1), with every new vector
orthogonalized twice against all previous ones (classical Gram-Schmidt, "twice is enough"), so
no spurious copies of converged Ritz values appear. A Ritz pair ``(θ_i, Q s_i)`` of ``T`` has
residual ``‖H Q s_i − θ_i Q s_i‖ = |β_m s_{m,i}|`` (exact up to rounding), which is what the
stopping tests use.

The basis is allocated once, at its final size (``torch.empty``: pages are only touched as
vectors are written), so growing it never holds two copies. Past a basis budget,
:func:`thick_restart` (Wu & Simon 2000, *Thick-restart Lanczos method for large symmetric
eigenvalue problems*, SIAM J. Matrix Anal. Appl. 22(2)) keeps the wanted Ritz vectors and goes
on in the same memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from lossatlas.core.progress import track

__all__ = ["Lanczos", "Restarted", "lanczos", "ritz", "thick_restart"]


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
    """Lanczos with full reorthogonalization from ``v0``.

    Breakdown (an invariant subspace, β ≈ 0) ends the run early.

    Args:
        matvec: ``q ↦ Hq`` on flat float64 vectors.
        v0: the start vector, flat float64 (normalized here).
        steps: Lanczos steps at most.
        stop: ``stop(alpha, beta)``, asked every ``check_every`` steps; True ends the run.
        check_every: how often ``stop`` is asked.
        progress: names a progress bar (up to ``steps``; it stops early when ``stop`` says so);
            None: no bar.

    Returns:
        A :class:`Lanczos`: the tridiagonal ``alpha`` (m,) and ``beta`` (m,; ``beta[-1]`` is the
        residual norm), the basis ``Q`` (m, dim) and the ``products`` taken.
    """
    dim = v0.numel()
    steps = min(steps, dim)
    Q = torch.empty(steps, dim, dtype=torch.float64, device=v0.device)  # allocated once
    alpha, beta = np.zeros(steps), np.zeros(steps)
    q = v0.to(torch.float64) / torch.linalg.vector_norm(v0.to(torch.float64))
    m = 0
    it = range(steps) if progress is None else track(range(steps), progress)
    for j in it:
        Q[j] = q
        w = matvec(q).to(torch.float64)
        a = float(torch.dot(w, q))
        alpha[j] = a
        _orthogonalize(w, Q[: j + 1])
        b = float(torch.linalg.vector_norm(w))
        beta[j] = b
        m = j + 1
        if b <= 1e-12 * max(abs(a), 1e-30):
            break
        if stop is not None and (m % check_every == 0) and stop(alpha[:m], beta[:m]):
            break
        q = w / b
    return Lanczos(alpha[:m], beta[:m], Q[:m], m)


def _orthogonalize(w: torch.Tensor, B: torch.Tensor) -> None:
    """``w -= Bᵀ(B w)`` twice, in place (classical Gram-Schmidt, "twice is enough")."""
    for _ in range(2):
        w.sub_(B.T @ (B @ w))


@dataclass
class Restarted:
    values: np.ndarray  # (k,) wanted Ritz values, ascending
    vectors: torch.Tensor  # (k, dim) float64 unit Ritz vectors
    residuals: np.ndarray  # (k,) |β s_last|: ‖H x − θ x‖ up to rounding
    products: int
    restarts: int
    converged: bool


def _wanted(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    idx = np.arange(len(theta))
    return idx[-k:] if which == "LA" else idx[:k]


def thick_restart(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    v0: torch.Tensor,
    k: int,
    which: str,
    basis: int,
    converged: Callable[[np.ndarray, np.ndarray], np.ndarray],
    max_products: int,
    check_every: int = 1,
    keep: int | None = None,
    progress: str | None = None,
) -> Restarted:
    """The ``k`` wanted eigenpairs of ``H`` with at most ``basis`` vectors of storage:
    thick-restart Lanczos (Wu & Simon 2000).

    Lanczos steps (full reorthogonalization) fill ``Q`` (basis, dim); the projection
    ``T = QᵀHQ`` is kept as a small dense matrix. When ``Q`` is full, the ``keep`` Ritz vectors
    nearest the wanted end, ``Q Y_keep``, replace the basis (computed in place, column block
    by column block, so no second basis is ever held), ``T`` becomes
    ``[[diag θ_keep, s], [sᵀ, α]]`` with ``s = β_m Y[m, keep]`` (the arrow of the thick
    restart) and the last Lanczos vector continues the run. Until the first restart this is
    plain Lanczos, step for step.

    Args:
        matvec: ``q ↦ Hq`` on flat float64 vectors.
        v0: the start vector, flat float64.
        k: wanted eigenpairs.
        which: ``"LA"`` (largest) or ``"SA"`` (smallest).
        basis: the most basis vectors held (capped at the dimension), more than ``k``.
        converged: ``converged(θ, r)`` with the wanted Ritz values and residuals
            ``|β y_last|``; returns a bool per pair. The run stops when all pass.
        max_products: the run stops unconverged after this many products.
        check_every: how often ``converged`` is asked (in steps).
        keep: Ritz vectors kept at a restart (default ``max(k, basis // 2)``, below ``basis``).
        progress: names a progress bar; None: no bar.

    Returns:
        A :class:`Restarted`: the wanted ``values`` ascending (k,), unit ``vectors`` (k, dim),
        ``residuals``, ``products``, ``restarts`` and whether all ``converged``. The run also
        ends on an invariant subspace (β ≈ 0).

    Raises:
        ValueError: ``basis`` (or ``keep``) does not exceed ``k``.
    """
    dim = v0.numel()
    m = int(min(basis, dim))
    keep = min(m - 1, max(k, m // 2) if keep is None else keep)
    if m < k + 1 or keep < k:
        raise ValueError(f"basis={basis} must exceed k={k}")
    Q = torch.empty(m, dim, dtype=torch.float64, device=v0.device)  # allocated once
    T = np.zeros((m, m))
    q = v0.to(torch.float64).reshape(-1)
    q = q / torch.linalg.vector_norm(q)
    j, start, products, restarts, b = 0, 0, 0, 0, 0.0
    bar = track(range(max_products), progress) if progress else None
    ticks = bar

    def ritz_now(n: int):
        if restarts == 0:  # still tridiagonal: O(n²)
            theta, Y, _ = ritz(np.diag(T)[:n].copy(), np.append(np.diag(T, 1)[: n - 1], b))
        else:
            theta, Y = np.linalg.eigh(T[:n, :n])
        return theta, Y, np.abs(b * Y[n - 1, :])

    try:
        while True:
            Q[j] = q
            w = matvec(Q[j]).to(torch.float64).reshape(-1)
            products += 1
            if ticks is not None:
                next(ticks, None)
            T[j, j] = float(torch.dot(w, Q[j]))
            _orthogonalize(w, Q[: j + 1])
            b = float(torch.linalg.vector_norm(w))
            n = j + 1
            done = b <= 1e-12 * max(abs(T[j, j]), 1e-30) or n >= dim
            full = products >= max_products
            if done or full or (n >= k and (n - start) % check_every == 0) or n == m:
                theta, Y, res = ritz_now(n)
                idx = _wanted(theta, k, which)
                ok = np.asarray(converged(theta[idx], res[idx]), dtype=bool)
                if done or full or (n >= k and ok.all()):
                    V = (Q[:n].T @ torch.from_numpy(Y[:, idx]).to(Q)).T.contiguous()
                    return Restarted(theta[idx], V, res[idx], products, restarts,
                                     bool(ok.all() or done))
            q = w / b
            if n < m:
                T[j, j + 1] = T[j + 1, j] = b
                j += 1
                continue
            # restart: keep the `keep` Ritz vectors nearest the wanted end
            kept = _wanted(theta, keep, which)
            Yk = torch.from_numpy(Y[:, kept].copy()).to(Q)  # (m, keep)
            for c in range(0, dim, 1 << 16):  # Q[:keep] = Yᵀ Q, one column block at a time
                Q[:keep, c:c + (1 << 16)] = Yk.T @ Q[:, c:c + (1 << 16)]
            T[:] = 0.0
            T[np.arange(keep), np.arange(keep)] = theta[kept]
            T[keep, :keep] = T[:keep, keep] = b * Y[m - 1, kept]
            j, start = keep, keep
            restarts += 1
    finally:
        if bar is not None:
            bar.close()
