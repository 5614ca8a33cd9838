"""Adam's preconditioner and the preconditioned Hessian ``P⁻¹H`` (Cohen et al. 2022).

Adam (PyTorch's, step ``t``) updates ``θ ← θ − η · m̂/(√v̂ + ε)`` with ``m̂ = m/(1−β₁ᵗ)``,
``v̂ = v/(1−β₂ᵗ)``. Written as ``θ ← θ − η P⁻¹ m`` (Cohen, Ghorbani, Krishnan et al. 2022,
"Adaptive gradient methods at the edge of stability", Sec. 2) the preconditioner is

    P = (1 − β₁ᵗ) · diag(√(v/(1 − β₂ᵗ)) + ε),

the first moment's bias correction folded into P. The *preconditioned sharpness* is
``λ_max(P⁻¹H)``; it equals ``λ_max(P^{-1/2} H P^{-1/2})`` (a similar, symmetric matrix), which
is what Lanczos runs on. Its stability threshold for Adam is ``(2 + 2β₁)/((1 − β₁)η)``
(38/η at β₁ = 0.9). ``P`` is read from the optimizer's state after update ``t``: the
preconditioner the last update used (Cohen et al. pair ``H_t`` with the next one, which also
holds the gradient at ``θ_t``: one more EMA step of ``v``, weight ``1 − β₂``).
AdamW's decoupled weight decay is not part of ``P``; ``amsgrad`` uses ``max_exp_avg_sq``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lossatlas.core.errors import LossAtlasError

__all__ = ["ScaledOperator", "adam_preconditioner", "adam_threshold", "is_adam"]


def is_adam(optimizer) -> bool:
    """Whether ``optimizer`` is an Adam-family optimizer with second moments we can read."""
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))


def adam_threshold(optimizer, lr: float) -> float:
    """``(2 + 2β₁)/((1 − β₁)η)``: the stability threshold of Adam's preconditioned sharpness."""
    b1 = float(optimizer.param_groups[0]["betas"][0])
    return (2 + 2 * b1) / ((1 - b1) * lr)


def adam_preconditioner(optimizer, model: torch.nn.Module,
                        names: Sequence[str]) -> torch.Tensor | None:
    """The diagonal of ``P`` (flat, float64, over ``names`` in order), or None before the first
    update (no second moments yet)."""
    if not is_adam(optimizer):
        raise LossAtlasError(
            f"optimizer is {type(optimizer).__name__}; the preconditioned sharpness needs "
            "torch.optim.Adam or AdamW (pass preconditioned=False)"
        )
    params = dict(model.named_parameters())
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    parts = []
    for n in names:
        p = params[n]
        state = optimizer.state.get(p, {})
        g = group_of.get(id(p))
        if g is None:
            raise LossAtlasError(f"parameter {n!r} is not in the optimizer; pass the same model")
        if "exp_avg_sq" not in state:
            return None
        t = float(state["step"])
        b1, b2 = (float(b) for b in g["betas"])
        v = state["max_exp_avg_sq"] if g.get("amsgrad") else state["exp_avg_sq"]
        v = v.detach().to(torch.float64).reshape(-1)
        parts.append((1 - b1**t) * (torch.sqrt(v / (1 - b2**t)) + float(g["eps"])))
    return torch.cat(parts)


class ScaledOperator:
    """``D H D`` for a Hessian operator ``op`` and a positive diagonal ``D`` (flat ``d``):
    with ``d = P^{-1/2}`` its eigenvalues are those of ``P⁻¹H``. Everything else (names,
    ``to_point``, ``matvecs``) is ``op``'s, so :func:`la.hessian.eigs` takes it as
    ``operator=``."""

    def __init__(self, op, d: torch.Tensor):
        if d.numel() != op.dim or not bool((d > 0).all()) or not math.isfinite(float(d.sum())):
            raise LossAtlasError("the preconditioner must be positive and finite over the block")
        self.op = op
        self.d = d.to(op.device)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        d = self.d.to(V.dtype)
        d = d if V.dim() == 1 else d[:, None]
        return d * self.op.matmat(d * V)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v.reshape(-1))

    def __getattr__(self, name):
        return getattr(self.op, name)
