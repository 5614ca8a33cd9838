"""Data as device tensors in fixed batches: what an :class:`~lossatlas.Objective` evaluates on.

:func:`as_batches` materializes a Dataset, a DataLoader, an ``(inputs, targets)`` pair or a
dict of tensors (Hugging Face style) once, and slices it into :class:`Batch` es; each batch
carries its ``weight``, the number of targets its loss averages over, so that a full-data mean
is Σ_b weight_b · L_b / Σ_b weight_b whatever the batch size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lossatlas.core.distributed import shard_range
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.losses import IGNORE_INDEX

__all__ = ["Batch", "as_batches", "cat", "check_loader_visits_all", "length_of", "slice_batch",
           "target_count"]


@dataclass
class Batch:
    """One slice of the data: ``inputs`` (a tensor, a tuple of tensors or a dict of keyword
    tensors), ``targets`` (or None when the model computes its own loss), and ``weight``: the
    number of targets the loss averages over in this batch."""

    inputs: Any
    targets: Any
    weight: float

    def to(self, device) -> Batch:
        return Batch(_to(self.inputs, device), _to(self.targets, device), self.weight)


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


def length_of(x) -> int:
    """Number of samples in a tensor, or in the first tensor of a dict / tuple of them."""
    if isinstance(x, torch.Tensor):
        return x.shape[0]
    if isinstance(x, Mapping):
        return length_of(next(iter(x.values())))
    if isinstance(x, (tuple, list)):
        return length_of(x[0])
    raise LossAtlasError(f"data of type {type(x).__name__} has no length; pass tensors")


def slice_batch(x, i: int, j: int):
    """Samples ``i:j`` of a tensor, or of every tensor of a dict / tuple of them."""
    if isinstance(x, torch.Tensor):
        return x[i:j]
    if isinstance(x, Mapping):
        return {k: slice_batch(v, i, j) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(slice_batch(v, i, j) for v in x)
    return x


def _as_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if isinstance(x, Mapping):
        return {k: _as_tensor(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_as_tensor(v) for v in x)
    return torch.as_tensor(x)


def _stack(items: list):
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(items)
    if isinstance(first, (int, float, np.integer, np.floating)):
        return torch.as_tensor(np.asarray(items))
    if isinstance(first, np.ndarray):
        return torch.from_numpy(np.stack(items))
    if isinstance(first, Mapping):
        return {k: _stack([it[k] for it in items]) for k in first}
    if isinstance(first, (tuple, list)):
        return tuple(_stack([it[i] for it in items]) for i in range(len(first)))
    raise LossAtlasError(f"cannot batch data items of type {type(first).__name__}")


def cat(items: list):
    """Concatenate batches of tensors, or of dicts / tuples of them, along the sample axis."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(items)
    if isinstance(first, Mapping):
        return {k: cat([it[k] for it in items]) for k in first}
    if isinstance(first, (tuple, list)):
        return tuple(cat([it[i] for it in items]) for i in range(len(first)))
    raise LossAtlasError(f"cannot concatenate data of type {type(first).__name__}")


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, Mapping):
        return all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _materialize(data, part: tuple[int, int] | None = None) -> tuple[Any, bool]:
    """Turn the user's data into one in-memory structure: (inputs, targets) or a dict, and
    whether it is already cut to ``part=(rank, world)`` (a Dataset reads only its shard)."""
    if isinstance(data, Mapping):
        return _as_tensor(dict(data)), False
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(
        data[0], (tuple, list)
    ):
        try:
            n0, n1 = length_of(_as_tensor(data[0])), length_of(_as_tensor(data[1]))
        except (LossAtlasError, IndexError, TypeError):
            n0 = n1 = -1
        if n0 == n1 and n0 > 0:
            return (_as_tensor(data[0]), _as_tensor(data[1])), False
        if n0 == n1 == 0:
            raise LossAtlasError("data is empty (0 samples); pass at least one sample")
        if n0 >= 0 and n1 >= 0:
            raise LossAtlasError(f"data has {n0} inputs but {n1} targets; pass inputs and "
                                 "targets of equal length")
    tensors = getattr(data, "tensors", None)
    if isinstance(tensors, (tuple, list)) and len(tensors) == 2:
        return (tensors[0], tensors[1]), False
    if isinstance(data, torch.utils.data.DataLoader) or (
        not hasattr(data, "__getitem__") and isinstance(data, Iterable)
    ):
        if isinstance(data, torch.utils.data.DataLoader):
            check_loader_visits_all(data)
        batches = [_as_tensor(b) for b in data]
        if not batches:
            raise LossAtlasError("data: the loader yielded no batch; pass a non-empty dataset")
        return cat(batches), False
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        if len(data) == 0:
            raise LossAtlasError("data: the dataset is empty; pass at least one sample")
        lo, hi = (0, len(data)) if part is None else shard_range(len(data), *part)
        whole = _stack([_as_tensor(data[i]) for i in range(lo, hi)])
        again = _stack([_as_tensor(data[lo])])
        if not _equal(slice_batch(whole, 0, 1), again):
            raise LossAtlasError(
                "data: the dataset returns a different item 0 on a second read (random "
                "augmentation?); pass a dataset without random transforms for evaluation"
            )
        return whole, part is not None
    raise LossAtlasError(
        f"data of type {type(data).__name__} is not understood; pass a Dataset, a DataLoader, "
        "an (inputs, targets) tuple of tensors or a dict of tensors"
    )


def check_loader_visits_all(loader: torch.utils.data.DataLoader) -> None:
    """Refuse a DataLoader that does not yield every sample of its dataset exactly once (a
    full-data mean over it would silently be over another subset each time): ``drop_last``
    with a partial last batch, a sampler of another length, or, decisively, one draw of its
    indices that is not a permutation of ``range(len(dataset))`` (a subset or weighted
    sampler). The draw uses a copy of the RNG state, so the loader's own draws are unchanged.
    An IterableDataset is its own stream; only ``drop_last`` is refused there."""
    fix = ("pass loader.dataset instead (the Objective batches it itself) or a loader "
           "with shuffle=False, drop_last=False and the default sampler")
    ds = loader.dataset
    if isinstance(ds, torch.utils.data.IterableDataset):
        if loader.drop_last:
            raise LossAtlasError(f"data: the DataLoader drops its last partial batch "
                                 f"(drop_last=True), so some samples are never seen; {fix}")
        return
    n = len(ds)  # type: ignore[arg-type]
    bs = loader.batch_size
    if loader.drop_last and bs and n % bs:
        raise LossAtlasError(
            f"data: the DataLoader has drop_last=True and {n} samples, not a multiple of "
            f"batch_size={bs}, so {n % bs} samples (others each time when shuffled) are never "
            f"seen; {fix}"
        )
    sampler = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
    with torch.random.fork_rng(devices=[]):
        gen = getattr(getattr(loader, "sampler", None), "generator", None)
        saved = gen.get_state() if isinstance(gen, torch.Generator) else None
        try:
            drawn = []
            for idx in sampler:
                drawn.extend(idx if isinstance(idx, (list, tuple)) else
                             np.asarray(idx).reshape(-1).tolist())
        finally:
            if saved is not None:
                gen.set_state(saved)
    try:
        visits_all = len(drawn) == n and sorted(int(i) for i in drawn) == list(range(n))
    except (TypeError, ValueError):  # keys that are not integer indices: cannot judge
        return
    if not visits_all:
        raise LossAtlasError(
            f"data: the DataLoader's sampler yields {len(drawn)} indices, not each of the "
            f"{n} samples once (a subset or weighted sampler?), so the mean would be over "
            f"other data; {fix}"
        )


def as_batches(
    data, batch_size: int | None, target_key: str | None = "labels", device=None,
    part: tuple[int, int] | None = None, info: dict | None = None,
) -> list[Batch]:
    """Split ``data`` into in-memory :class:`Batch` objects of ``batch_size`` (all at once when
    None). Dict data: ``target_key`` names the targets (None: the model computes its loss).
    ``part=(rank, world)`` keeps only that rank's contiguous shard of the samples
    (:func:`lossatlas.core.distributed.shard_range`), batched the same way; ``info`` (a dict) then
    receives ``"total"`` (samples before the cut) and ``"first"`` (a digest of sample 0), which
    tell whether every rank passed the same data."""
    whole, cut = _materialize(data, part)
    if isinstance(whole, Mapping):
        inputs = {k: v for k, v in whole.items() if k != target_key}
        targets = whole.get(target_key) if target_key else None
    elif isinstance(whole, (tuple, list)) and len(whole) == 2:
        inputs, targets = whole
    else:
        raise LossAtlasError(
            "data items must be (input, target) pairs or dicts; wrap other layouts in a Dataset"
        )
    n = length_of(inputs)
    if info is not None and part is not None:
        first = _stack([_as_tensor(data[0])]) if cut else slice_batch(whole, 0, 1)
        info.update(total=len(data) if cut else n, first=_digest(first))
    if part is not None and not cut:
        lo, n = shard_range(n, *part)
        n -= lo
        inputs = slice_batch(inputs, lo, lo + n)
        targets = slice_batch(targets, lo, lo + n) if targets is not None else None
    if batch_size is None:
        batch_size = n
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LossAtlasError(f"batch_size={batch_size!r} must be a positive integer or None")
    batches = []
    for i in range(0, n, batch_size):
        j = min(i + batch_size, n)
        tgt = slice_batch(targets, i, j) if targets is not None else None
        inp = slice_batch(inputs, i, j)
        batches.append(Batch(inp, tgt, target_count(tgt, j - i)))
    if device is not None:
        batches = [b.to(device) for b in batches]
    return batches


def _digest(x) -> str:
    """sha256 of the bytes of a tensor, or of every tensor of a dict / tuple of them."""
    h = hashlib.sha256()
    for t in _leaves(x):
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _leaves(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, Mapping):
        return [t for k in sorted(x) for t in _leaves(x[k])]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _leaves(v)]
    return []


def target_count(targets, n: int) -> float:
    """How many targets the loss averages over: non-ignored class labels, else samples."""
    if isinstance(targets, torch.Tensor) and not targets.is_floating_point():
        return float((targets != IGNORE_INDEX).sum())
    return float(n)


