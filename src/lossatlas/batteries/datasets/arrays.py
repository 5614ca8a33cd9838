"""In-memory datasets: :class:`ArrayDataset` (all samples as tensors) and the conversion of
whatever a dataset factory returns (an ArrayDataset, a ``TensorDataset``, an ``(X, y)`` tuple,
any sized ``Dataset``, or a pair of them) into a ``(train, test)`` pair.

>>> import torch
>>> train, test = as_pair((torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])), "toy")
>>> train.num_classes, train.input_shape, train.info["test_is_train"]
(3, (2,), True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lossatlas.core.errors import LossAtlasError
from lossatlas.core.losses import IGNORE_INDEX

__all__ = ["ArrayDataset", "Pair", "as_pair", "dataset_pair"]

Pair = tuple["ArrayDataset", "ArrayDataset"]


class ArrayDataset(Dataset):
    """An in-memory dataset: ``X`` (N, *input_shape) and ``y`` (N,) int64 labels in ``[0, C)``.

    Token sequences ``X`` (N, L) may carry per-token targets ``y`` (N, L) instead (a language
    model's next tokens), where ``-100`` (``losses.IGNORE_INDEX``) marks a position without one.

    ``tensors`` is ``(X, y)`` for fast whole-set evaluation; ``dataset[i]`` is ``(X[i], y[i])``.
    ``info`` records how the set was made (seed, train_size, label_noise, flipped, ...).
    ``vocab_size`` is set for integer token sequences and ``None`` otherwise.
    """

    def __init__(
        self,
        X: torch.Tensor | np.ndarray,
        y: torch.Tensor | np.ndarray | Sequence[int],
        *,
        num_classes: int | None = None,
        name: str = "data",
        info: Mapping[str, Any] | None = None,
        vocab_size: int | None = None,
    ):
        X = torch.as_tensor(np.ascontiguousarray(X) if isinstance(X, np.ndarray) else X)
        y = torch.as_tensor(np.ascontiguousarray(y) if isinstance(y, np.ndarray) else y)
        if X.is_floating_point():
            X = X.to(torch.float32)
        per_token = (y.ndim == 2 and not X.is_floating_point() and y.shape == X.shape)
        if y.is_floating_point() or y.dtype == torch.bool or (y.ndim != 1 and not per_token):
            raise LossAtlasError(
                f"y must be a 1-D tensor of integer class labels, got dtype {y.dtype} and shape "
                f"{tuple(y.shape)}; pass class indices in [0, num_classes)."
            )
        y = y.to(torch.int64)
        kept = y[y != IGNORE_INDEX] if per_token else y  # per-token targets may be ignored
        if X.ndim < 1 or len(X) != len(y):
            raise LossAtlasError(
                f"X and y must hold the same number of samples, got X of shape {tuple(X.shape)} "
                f"and y of shape {tuple(y.shape)}; pass one label per row of X."
            )
        if num_classes is None:
            num_classes = int(kept.max()) + 1 if len(kept) else 0
        if len(kept) and (int(kept.min()) < 0 or int(kept.max()) >= num_classes):
            raise LossAtlasError(
                f"labels must lie in [0, num_classes={num_classes}), got [{int(kept.min())}, "
                f"{int(kept.max())}]; pass num_classes= large enough or remap the labels."
            )
        if X.is_floating_point():
            vocab_size = None
        elif vocab_size is None:
            vocab_size = int(X.max()) + 1 if X.numel() else 0
        self.X = X
        self.y = y
        self.num_classes = int(num_classes)
        self.name = name
        self.info: dict[str, Any] = dict(info or {})
        self.vocab_size = vocab_size

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X, y)``: X (N, *input_shape), y (N,) int64."""
        return self.X, self.y

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. ``(64,)``, ``(1, 8, 8)`` or ``(3, 32, 32)``."""
        return tuple(self.X.shape[1:])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index):
        return self.X[index], self.y[index]

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(name={self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, dtype={self.X.dtype})"
        )

    def derive(self, X: torch.Tensor, y: torch.Tensor, **info: Any) -> ArrayDataset:
        """A new dataset of ``X`` and ``y`` with this one's classes, name and vocabulary, and
        its ``info`` updated by ``info`` (a subset, relabelled copy, ...)."""
        return ArrayDataset(
            X, y, num_classes=self.num_classes, name=self.name,
            info={**self.info, **info}, vocab_size=self.vocab_size,
        )


def _as_array(obj: Any, name: str, split: str) -> ArrayDataset:
    if isinstance(obj, ArrayDataset):
        return obj
    tensors = getattr(obj, "tensors", None)  # e.g. torch.utils.data.TensorDataset
    if tensors is None and isinstance(obj, (tuple, list)) and len(obj) == 2:
        tensors = obj
    if tensors is not None and len(tensors) == 2:
        X, y = tensors
        return ArrayDataset(X, y, name=name, info={"source": name})
    if isinstance(obj, Dataset) and hasattr(obj, "__len__"):
        items = [obj[i] for i in range(len(obj))]
        X = torch.stack([torch.as_tensor(x) for x, _ in items])
        y = torch.as_tensor([int(t) for _, t in items])
        return ArrayDataset(X, y, name=name, info={"source": name})
    raise LossAtlasError(
        f"the {split} data from {name!r} is a {type(obj).__name__}; the factory must return an "
        "ArrayDataset, a TensorDataset, an (X, y) tuple or a sized Dataset of (x, y) pairs."
    )


def _is_tensor_like(x: Any) -> bool:
    return isinstance(x, (torch.Tensor, np.ndarray))


def as_pair(out: Any, name: str) -> Pair:
    """``(train, test)`` ArrayDatasets from what a dataset factory returns: a pair, or one
    dataset used as both (``train.info["test_is_train"]`` is then True)."""
    is_pair = (
        isinstance(out, (tuple, list)) and len(out) == 2
        and not (_is_tensor_like(out[0]) and _is_tensor_like(out[1]))
    )
    if not is_pair:
        single = _as_array(out, name, "returned")
        train = single.derive(single.X, single.y, test_is_train=True)
        return train, single
    train, test = _as_array(out[0], name, "train"), _as_array(out[1], name, "test")
    C = max(train.num_classes, test.num_classes)
    if train.num_classes != test.num_classes:
        train.num_classes = test.num_classes = C
    return train, test


def dataset_pair(
    name: str, Xtr, ytr, Xte, yte, num_classes: int, vocab_size: int | None = None, **info: Any
) -> Pair:
    """``(train, test)`` ArrayDatasets of the given arrays, both with ``num_classes``,
    ``vocab_size`` and ``info`` (plus ``name``)."""

    def make(X, y):
        return ArrayDataset(
            X, y, num_classes=num_classes, name=name,
            info={"name": name, **info}, vocab_size=vocab_size,
        )

    return make(Xtr, ytr), make(Xte, yte)
