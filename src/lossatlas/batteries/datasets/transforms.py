"""What changes a dataset: a class-balanced subset (:func:`take`), label noise
(:func:`corrupt_labels`), both chosen by a seed and recorded in ``info``, and the
standardization the built-in sets apply (:func:`standardize`, :func:`scale`).

>>> import torch
>>> from lossatlas.batteries.datasets.arrays import ArrayDataset
>>> data = ArrayDataset(torch.zeros(10, 2), torch.arange(10) % 2)
>>> take(data, 4, seed=0).y.tolist().count(0), corrupt_labels(data, 0.3, seed=0).info["flipped"]
(2, 3)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lossatlas.batteries.datasets.arrays import ArrayDataset
from lossatlas.core.errors import LossAtlasError

__all__ = ["check_seed", "corrupt_labels", "scale", "standardize", "take"]


def check_seed(seed: Any) -> None:
    """Refuse a ``seed`` that is not a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise LossAtlasError(f"seed={seed!r} must be a non-negative integer; pass e.g. seed=0.")


def _rng(seed: int, stream: int) -> np.random.Generator:
    """An independent generator per use (stream) of the user's seed."""
    return np.random.default_rng([int(seed), stream])


def take(dataset: ArrayDataset, size: int, *, seed: int = 0) -> ArrayDataset:
    """A class-balanced random subset of ``size`` samples (original order kept).

    Classes are filled round-robin: each class gets ``size // C`` or one more, as long as it
    has samples left; the rest goes to the classes that still have some.
    """
    n = len(dataset)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= n:
        raise LossAtlasError(
            f"train_size={size!r} must be an integer between 1 and {n} (the training set's "
            "size); pass a smaller train_size or None for the whole set."
        )
    check_seed(seed)
    rng = _rng(seed, 0)
    y = dataset.y.numpy()
    if y.ndim > 1:  # per-token targets: no class to balance, a plain random subset
        y = np.zeros(n, dtype=np.int64)
    key = np.empty(n)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        key[idx[rng.permutation(len(idx))]] = np.arange(len(idx))
    key += rng.random(n)  # rank within class first, a random class order within each rank
    chosen = np.sort(np.argsort(key, kind="stable")[:size])
    index = torch.from_numpy(chosen)
    return dataset.derive(dataset.X[index], dataset.y[index], subset_indices=chosen.tolist())


def corrupt_labels(dataset: ArrayDataset, fraction: float, *, seed: int = 0) -> ArrayDataset:
    """Change exactly ``round(fraction * n)`` labels, chosen by ``seed``, each to another class.

    The new class is uniform over the ``C - 1`` other classes. ``info`` records
    ``label_noise``, ``flipped`` (the count) and ``flipped_indices``.
    """
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        fraction = float("nan")
    if not 0.0 <= fraction <= 1.0:
        raise LossAtlasError(
            f"label_noise={fraction!r} must be a fraction between 0 and 1; pass e.g. "
            "label_noise=0.2 to change 20% of the training labels."
        )
    n, C = len(dataset), dataset.num_classes
    if dataset.y.ndim > 1 and fraction:
        raise LossAtlasError(
            f"label_noise={fraction} applies to one label per sample, but this dataset has "
            "per-token targets; pass label_noise=0."
        )
    m = round(fraction * n)
    if m and C < 2:
        raise LossAtlasError(
            f"label_noise={fraction} needs at least two classes, the dataset has {C}; "
            "pass label_noise=0."
        )
    check_seed(seed)
    rng = _rng(seed, 1)
    idx = np.sort(rng.permutation(n)[:m])
    y = dataset.y.clone()
    if m:
        shift = torch.from_numpy(rng.integers(1, C, size=m))
        index = torch.from_numpy(idx)
        y[index] = (y[index] + shift) % C
    return dataset.derive(
        dataset.X, y, label_noise=fraction, flipped=int(m), flipped_indices=idx.tolist()
    )


def standardize(X_train: np.ndarray, X_test: np.ndarray, axis: tuple[int, ...]):
    """Center and scale, in place, by the training mean/std over ``axis`` (zero std -> 1)."""
    mean = X_train.mean(axis=axis, keepdims=True, dtype=np.float64)
    std = X_train.std(axis=axis, keepdims=True, dtype=np.float64)
    return scale(X_train, X_test, mean, std)


def scale(X_train: np.ndarray, X_test: np.ndarray, mean: np.ndarray, std: np.ndarray):
    """``(X - mean) / std`` in place for both arrays, a zero ``std`` taken as 1."""
    std = np.where(std < 1e-8, 1.0, std).astype(X_train.dtype)
    mean = mean.astype(X_train.dtype)
    for X in (X_train, X_test):
        X -= mean
        X /= std
    return X_train, X_test
