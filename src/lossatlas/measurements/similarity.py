"""Similarity of two trained models: linear CKA of their outputs on mixup samples, and ℓ2.

Yang, Hodgkinson, Theisen, Zou, Gonzalez, Ramchandran, Mahoney 2021 (*Taxonomizing local versus
global structure in neural network loss landscapes*), Eq. 3 and App. A.1: for the outputs after
softmax ``F, F' ∈ R^{m×d}`` of two models on the same ``m`` inputs,

    CKA(F, F') = Cov(F, F') / sqrt(Cov(F, F) Cov(F', F')),
    Cov(X, Y) = (m−1)^{-2} tr(X Xᵀ H Y Yᵀ H),   H = I − 11ᵀ/m,

which, after centering the columns, equals ‖F'ᵀF‖_F² / (‖FᵀF‖_F ‖F'ᵀF'‖_F). The inputs are
``m = 640`` mixup samples x̃ = λx₁ + (1−λ)x₂ of training inputs, λ ~ Beta(16, 16) (App. A.1);
App. A.4.1 also uses uniform pixel noise instead (``noise=``). Layer-wise CKA compares the
outputs of named submodules, captured with forward hooks.

>>> import torch
>>> F = torch.randn(50, 4)
>>> round(linear_cka(F, 3 * F), 6)
1.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lossatlas.core import params as P
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.losses import logits_of
from lossatlas.core.objective import module_outputs

__all__ = ["inputs_of", "l2_distance", "layer_outputs", "linear_cka", "mixup_samples",
           "model_cka", "noise_samples"]


def linear_cka(F1: torch.Tensor, F2: torch.Tensor) -> float:
    """Centered linear CKA of two representations of the same ``m`` samples.

    ``F1``: (m, d1), ``F2``: (m, d2) (extra trailing dims are flattened). Columns are centered,
    then CKA = ‖F2ᵀF1‖_F² / (‖F1ᵀF1‖_F ‖F2ᵀF2‖_F) (Kornblith et al. 2019; Yang et al. 2021,
    Eq. 3). In [0, 1]; 1 when F2 = c·F1·Q for an orthogonal Q and c ≠ 0. Computed in float64.
    A constant representation has no variance: the result is then nan.
    """
    X, Y = _as_matrix(F1, "F1"), _as_matrix(F2, "F2")
    if X.shape[0] != Y.shape[0]:
        raise LossAtlasError(
            f"F1 has {X.shape[0]} rows and F2 {Y.shape[0]}; both must hold the same samples"
        )
    if X.shape[0] < 2:
        raise LossAtlasError("linear_cka needs at least 2 samples (rows); pass more")
    X = X - X.mean(0, keepdim=True)
    Y = Y - Y.mean(0, keepdim=True)
    # use the smaller of the (d x d) and (m x m) Gram forms
    if X.shape[0] < max(X.shape[1], Y.shape[1]):
        K, L = X @ X.T, Y @ Y.T
        hsic, nx, ny = (K * L).sum(), K.norm(), L.norm()
    else:
        hsic = (Y.T @ X).pow(2).sum()
        nx, ny = (X.T @ X).norm(), (Y.T @ Y).norm()
    denom = float(nx * ny)
    return float(hsic) / denom if denom > 0 else float("nan")


def _as_matrix(F, name: str) -> torch.Tensor:
    F = torch.as_tensor(F)
    if F.dim() < 2:
        raise LossAtlasError(f"{name} must be (m, d) with one row per sample, got {tuple(F.shape)}")
    return F.detach().reshape(F.shape[0], -1).to(torch.float64)


def inputs_of(data) -> torch.Tensor:
    """The input tensor of ``data``: a tensor, an ``(inputs, targets)`` pair, a dataset with
    ``.tensors`` or any map-style dataset of ``(input, target)`` items."""
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, np.ndarray):
        return torch.from_numpy(data)
    tensors = getattr(data, "tensors", None)
    if isinstance(tensors, (tuple, list)) and tensors:
        return torch.as_tensor(tensors[0])
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(
        data[0], (torch.Tensor, np.ndarray)
    ):
        return torch.as_tensor(data[0])
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and len(data) > 0:
        items = [data[i] for i in range(len(data))]
        xs = [it[0] if isinstance(it, (tuple, list)) else it for it in items]
        if all(isinstance(x, (torch.Tensor, np.ndarray)) for x in xs):
            return torch.stack([torch.as_tensor(x) for x in xs])
    raise LossAtlasError(
        f"data of type {type(data).__name__} has no input tensor; pass a tensor X, an (X, y) "
        "pair or a dataset of (input, target) items"
    )


def mixup_samples(X, m: int = 640, alpha: float = 16.0, seed: int = 0) -> torch.Tensor:
    """``m`` mixup samples x̃ = λ x₁ + (1 − λ) x₂ of the rows of ``X`` (Yang et al. App. A.1).

    x₁, x₂ are drawn uniformly (with replacement, x₁ ≠ x₂ when ``X`` has 2+ rows) and
    λ ~ Beta(alpha, alpha) per sample (16 in the paper: λ concentrates near ½).
    ``X``: (n, ...) or anything :func:`inputs_of` accepts; returns (m, ...), dtype of ``X``.
    """
    X = inputs_of(X)
    if m < 1:
        raise LossAtlasError(f"m={m} must be a positive number of samples")
    if alpha <= 0:
        raise LossAtlasError(f"alpha={alpha} must be > 0 (the Beta(alpha, alpha) parameter)")
    n = X.shape[0]
    if n < 1:
        raise LossAtlasError("X is empty; pass at least one training input")
    gen = torch.Generator().manual_seed(int(seed))
    i = torch.randint(0, n, (m,), generator=gen)
    shift = torch.randint(1, n, (m,), generator=gen) if n > 1 else torch.zeros(m, dtype=torch.long)
    j = (i + shift) % n
    lam = _beta(m, alpha, gen).to(X.dtype if X.is_floating_point() else torch.float32)
    lam = lam.reshape((m,) + (1,) * (X.dim() - 1)).to(X.device)
    Xf = X if X.is_floating_point() else X.float()
    return lam * Xf[i] + (1 - lam) * Xf[j]


def _beta(m: int, alpha: float, gen: torch.Generator) -> torch.Tensor:
    """Beta(alpha, alpha) draws from a seeded generator: G₁/(G₁+G₂), Gᵢ ~ Gamma(alpha)."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    return torch.from_numpy(rng.beta(alpha, alpha, size=m))


def noise_samples(X, m: int = 640, magnitude: float = 0.1, seed: int = 0) -> torch.Tensor:
    """``m`` training inputs (drawn uniformly) plus uniform noise U(−magnitude, magnitude) on
    every entry (Yang et al. App. A.4.1, "pixel noise"; the magnitude is in input units)."""
    X = inputs_of(X)
    Xf = X if X.is_floating_point() else X.float()
    gen = torch.Generator().manual_seed(int(seed))
    i = torch.randint(0, X.shape[0], (m,), generator=gen)
    u = torch.rand((m, *X.shape[1:]), generator=gen, dtype=Xf.dtype)
    return Xf[i] + magnitude * (2 * u - 1).to(X.device)


def _softmax_outputs(model: nn.Module, X: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Softmax of the model's logits on ``X`` (m, ...): (m, C), eval mode, no gradients."""
    return torch.cat([torch.softmax(logits_of(out).float(), dim=-1)
                      for out in module_outputs(model, X, batch_size)])


def layer_outputs(
    model: nn.Module, X: torch.Tensor, layers: Sequence[str], batch_size: int = 640
) -> dict[str, torch.Tensor]:
    """Outputs of the submodules named in ``layers`` on ``X`` (eval mode, no grad), captured
    with forward hooks: name -> (m, features) (trailing dims flattened). ``""`` is the model."""
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        names = [n for n in modules if n][:8]
        raise LossAtlasError(
            f"layers={missing[:3]} are not submodules of the model; pick from names like {names}"
        )
    got: dict[str, list[torch.Tensor]] = {n: [] for n in layers}

    def hook(name):
        def fn(_module, _inp, out):
            t = out if isinstance(out, torch.Tensor) else logits_of(out)
            got[name].append(t.detach().reshape(t.shape[0], -1).float())
        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in layers]
    try:
        module_outputs(model, X, batch_size)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in got.items()}


def _as_model(model, like: nn.Module | None = None) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, Mapping) and like is not None:
        import copy

        other = copy.deepcopy(like)
        missing = [k for k in model if k not in dict(other.named_parameters())
                   and k not in dict(other.named_buffers())]
        if missing:
            raise LossAtlasError(f"model_b holds names {missing[:3]} that model_a lacks")
        other.load_state_dict({**other.state_dict(), **dict(model)})
        return other
    raise LossAtlasError(
        f"expected an nn.Module (or a point / state dict for model_b), got {type(model).__name__}"
    )


def model_cka(
    model_a: nn.Module,
    model_b: nn.Module | Mapping[str, torch.Tensor],
    data,
    m: int = 640,
    alpha: float = 16.0,
    seed: int = 0,
    noise: float | None = None,
    layers: Sequence[str] | None = None,
    batch_size: int = 640,
    samples: int | None = None,
) -> Any:
    """Linear CKA of two models' softmax outputs on ``m`` perturbed training inputs.

    Yang et al. 2021 Eq. 3 / App. A.1: ``m = 640`` mixup samples with λ ~ Beta(16, 16) drawn
    from ``data`` (a tensor X, an (X, y) pair or a dataset); ``noise=`` uses inputs plus
    U(−noise, noise) instead (App. A.4.1). Both models run in eval mode without gradients and
    are left untouched. ``model_b`` may be a point / state dict for ``model_a``'s architecture.

    Returns a float; with ``layers=[names]`` a dict name -> CKA of those submodules' outputs
    (captured by forward hooks, before any softmax). ``samples`` is an alias of ``m``.
    """
    m = int(samples) if samples is not None else int(m)
    model_b = _as_model(model_b, like=model_a)
    X = (noise_samples(data, m, noise, seed) if noise is not None
         else mixup_samples(data, m, alpha, seed))
    dev = next(iter(model_a.parameters()), torch.empty(0)).device
    X = X.to(dev)
    if layers:
        fa = layer_outputs(model_a, X, layers, batch_size)
        fb = layer_outputs(model_b, X, layers, batch_size)
        return {n: linear_cka(fa[n], fb[n]) for n in layers}
    outs = [_softmax_outputs(model, X, batch_size) for model in (model_a, model_b)]
    return linear_cka(outs[0], outs[1])


def l2_distance(theta_a, theta_b) -> float:
    """‖θ − θ′‖₂ (Yang et al. Fig. 2g), in float64, over the floating-point tensors of two
    points or state dicts with the same names, or over two modules' trainable parameters."""
    a = P.of(theta_a) if isinstance(theta_a, nn.Module) else theta_a
    b = P.of(theta_b) if isinstance(theta_b, nn.Module) else theta_b
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        raise LossAtlasError("l2_distance takes two points, state dicts or modules")
    keys = [k for k in a if torch.as_tensor(a[k]).is_floating_point()]
    a64 = P.Point({k: torch.as_tensor(a[k]).double() for k in keys})
    b64 = P.Point({k: torch.as_tensor(b[k]).double() for k in b if k in a64 or
                   torch.as_tensor(b[k]).is_floating_point()})
    return float(P.norm(a64 - b64))
