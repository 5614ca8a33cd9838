"""Attention with second derivatives: PyTorch's fused attention kernels (flash,
memory-efficient) have no second derivative, so a differentiable forward of an attention model
runs ``scaled_dot_product_attention`` on its math kernel (:func:`math_attention`)."""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["fused_attention", "math_attention"]

_FUSED_ATTENTION = ("sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
_said_math = False
_FUSED_SEEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fused_attention(model: nn.Module) -> bool:
    """True when the model runs attention through PyTorch's fused kernels (a transformers
    ``attn_implementation`` of sdpa / flash, or ``nn.MultiheadAttention``)."""
    if model not in _FUSED_SEEN:
        cfg = getattr(model, "config", None)
        _FUSED_SEEN[model] = getattr(cfg, "_attn_implementation", None) in _FUSED_ATTENTION \
            or any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    return _FUSED_SEEN[model]


@contextlib.contextmanager
def math_attention(model: nn.Module) -> Iterator[None]:
    """Within a differentiable forward of an attention model, SDPA on its math kernel (said
    once, on stderr, unless lossatlas is quiet)."""
    if not torch.is_grad_enabled() or not fused_attention(model):
        yield
        return
    global _said_math
    if not _said_math:
        _said_math = True
        from lossatlas.core.progress import quiet

        if not quiet():
            print("lossatlas: derivatives run scaled_dot_product_attention on its math kernel "
                  "(the fused kernels have no second derivative)", file=sys.stderr)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield
