"""Losses by name and the accuracy count, for any model output (tensor, ``.logits``, dict).

``LOSSES`` maps a name to ``loss(output, target) -> batch mean``; :func:`resolve_loss` accepts
a name or a callable; :func:`accuracy_count` counts argmax hits (NaN unless targets are class
labels). Token logits ``(B, T, C)`` with targets ``(B, T)`` are flattened, and targets equal to
:data:`IGNORE_INDEX` are left out of both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from lossatlas.core.errors import LossAtlasError

__all__ = ["IGNORE_INDEX", "LOSSES", "accuracy_count", "check_targets", "logits_of",
           "resolve_loss"]

IGNORE_INDEX = -100
LossFn = Callable[[Any, Any], torch.Tensor]


def logits_of(output):
    """The logits of a model output: a tensor, ``.logits``, ``["logits"]`` or the first item."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is not None:
        return logits
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if isinstance(output, (tuple, list)):
        return output[0]
    raise LossAtlasError(
        f"cannot find logits in a model output of type {type(output).__name__}; return a tensor "
        "or pass a custom loss callable"
    )


def _cross_entropy(output, target):
    logits = logits_of(output)
    if logits.dim() > 2 and target.dim() == logits.dim() - 1:  # (B, T, C) token logits
        logits = logits.reshape(-1, logits.shape[-1])
        target = target.reshape(-1)
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)


def _mse(output, target):
    out = logits_of(output)
    if out.shape != target.shape:
        target = target.reshape(out.shape)
    return F.mse_loss(out, target.to(out.dtype))


def _nll(output, target):
    return F.nll_loss(logits_of(output), target)


def _model_loss(output, target):
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if loss is None:
        raise LossAtlasError(
            'loss="model" needs a model output with a .loss (Hugging Face style); pass '
            "labels in the batch or choose loss='cross_entropy'"
        )
    return loss


LOSSES: dict[str, LossFn] = {
    "cross_entropy": _cross_entropy,
    "mse": _mse,
    "nll": _nll,
    "model": _model_loss,
}


def resolve_loss(loss) -> tuple[str, LossFn]:
    if callable(loss) and not isinstance(loss, str):
        return getattr(loss, "__name__", type(loss).__name__), loss
    if isinstance(loss, str) and loss in LOSSES:
        return loss, LOSSES[loss]
    raise LossAtlasError(
        f"loss={loss!r} is unknown; use one of {sorted(LOSSES)} or a callable "
        "loss(output, target) returning the batch mean"
    )


def check_targets(output, targets, loss_name: str, model: str = "model") -> None:
    """Refuse targets that a class-label loss (``cross_entropy``, ``nll``) cannot take, in one
    sentence: floating-point targets that are not class probabilities of the output's shape,
    or labels outside ``[0, C)`` for a model with C outputs (:data:`IGNORE_INDEX` is allowed).
    ``targets`` is a tensor or a list of them (the batches); ``output`` a model output on
    some of the data; other losses pass."""
    if loss_name not in ("cross_entropy", "nll"):
        return
    parts = [t for t in (targets if isinstance(targets, (list, tuple)) else [targets])
             if isinstance(t, torch.Tensor)]
    try:
        logits = logits_of(output)
    except LossAtlasError:
        return
    if not parts or not isinstance(logits, torch.Tensor):
        return
    if parts[0].is_floating_point():
        if logits.shape[-1:] == parts[0].shape[-1:] and parts[0].dim() == logits.dim():
            return  # class probabilities (soft labels) for cross-entropy
        raise LossAtlasError(
            f"the targets are floating point ({parts[0].dtype}) but loss={loss_name!r} needs "
            "integer class labels; pass y.long() for labels, or loss='mse' for real values"
        )
    classes = int(logits.shape[-1]) if logits.dim() >= 2 else 1
    for t in parts:
        bad = t[(t != IGNORE_INDEX) & ((t < 0) | (t >= classes))]
        if not bad.numel():
            continue
        label = int(bad[0])
        fix = ("class labels count from 0; fix the labels" if label < 0 else
               f"build the model with num_classes={int(t.max()) + 1} or fix the labels")
        raise LossAtlasError(
            f"the targets hold the label {label} but the model ({model}) outputs {classes} "
            f"classes (labels 0..{classes - 1}); {fix}"
        )


def accuracy_count(output, target) -> float:
    """Number of correct argmax predictions (nan when the targets are not class labels)."""
    if target is None or not isinstance(target, torch.Tensor) or target.is_floating_point():
        return math.nan
    try:
        logits = logits_of(output)
    except LossAtlasError:
        return math.nan
    if logits.dim() < 2 or logits.shape[:-1] != target.shape:
        return math.nan
    hits = logits.argmax(-1) == target  # an ignored target (-100) never equals a class index
    return float(hits.sum())


