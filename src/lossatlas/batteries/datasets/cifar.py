"""CIFAR-10 and CIFAR-100 read from a folder in the official python-pickle layout, with a
restricted unpickler that admits only dicts, lists, bytes, str, ints and plain numpy arrays
(:mod:`lossatlas.batteries.datasets.safe_pickle`): a crafted file runs no code. The pixels are
standardized per channel with the training set's exact mean and std.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lossatlas.batteries.datasets import safe_pickle
from lossatlas.batteries.datasets.arrays import Pair, dataset_pair
from lossatlas.batteries.datasets.transforms import scale
from lossatlas.core.errors import LossAtlasError

__all__ = ["MAKERS"]


# CIFAR: (folder, train files, test file, meta file, label key per label kind, class count)
_CIFAR = {
    "cifar10": (
        "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
        "batches.meta", {"fine": ("labels", 10)}, "cifar-10-python.tar.gz",
    ),
    "cifar100": (
        "cifar-100-python", ["train"], "test", "meta",
        {"fine": ("fine_labels", 100), "coarse": ("coarse_labels", 20)},
        "cifar-100-python.tar.gz",
    ),
}


def _cifar_folder(name: str, root: str | os.PathLike | None) -> Path:
    folder, train_files, *_, archive = _CIFAR[name]
    if root is None:
        root = os.environ.get("LOSSATLAS_DATA")
    if root is None:
        raise LossAtlasError(
            f"root is required for {name}: pass root= the folder holding {folder}/ (or that "
            f"folder itself), extracted from https://www.cs.toronto.edu/~kriz/{archive}."
        )
    root = Path(root).expanduser()
    for candidate in (root, root / folder):
        if (candidate / train_files[0]).is_file():
            return candidate
    raise LossAtlasError(
        f"root={str(root)!r} does not contain {folder}/{train_files[0]} (nor {train_files[0]} "
        f"directly); pass root= the folder where https://www.cs.toronto.edu/~kriz/{archive} "
        "was extracted."
    )


def _read_pickle(path: Path, name: str) -> dict:
    if not path.is_file():
        raise LossAtlasError(
            f"root: {name} expects the file {path} (official python-pickle layout); "
            "re-extract the archive there."
        )
    fix = f"re-extract the official {name} archive into root"
    d = safe_pickle.load(path.read_bytes(), f"root: the file {path}", fix)
    if not isinstance(d, dict):
        raise LossAtlasError(f"root: the file {path} holds a {type(d).__name__}, not the dict "
                             f"of the official layout; {fix}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _cifar_split(folder: Path, files: list[str], key: str, name: str):
    parts = [_read_pickle(folder / f, name) for f in files]
    for f, p in zip(files, parts):
        if "data" not in p or key not in p:
            raise LossAtlasError(
                f"root: {folder / f} lacks the entries b'data' and b'{key}'; pass root= an "
                f"unmodified {name} python-pickle folder."
            )
    X = np.concatenate([np.asarray(p["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                        for p in parts])
    y = np.concatenate([np.asarray(p[key], dtype=np.int64) for p in parts])
    return X, y


def _make_cifar(name: str, root, labels: str = "fine") -> Pair:
    _, train_files, test_file, meta_file, label_keys, _ = _CIFAR[name]
    if labels not in label_keys:
        raise LossAtlasError(
            f"labels={labels!r} is not offered by {name}; pass one of {', '.join(label_keys)}."
        )
    key, C = label_keys[labels]
    folder = _cifar_folder(name, root)
    Xtr, ytr = _cifar_split(folder, train_files, key, name)
    Xte, yte = _cifar_split(folder, [test_file], key, name)
    # per-channel mean/std of the training pixels in [0, 1], exact from the 256-bin histograms
    counts = np.stack([np.bincount(Xtr[:, c].ravel(), minlength=256) for c in range(3)])
    levels = np.arange(256) / 255.0
    mean = counts @ levels / counts.sum(1)
    std = np.sqrt(counts @ levels**2 / counts.sum(1) - mean**2)
    shape = (1, 3, 1, 1)
    unit = np.float32(1 / 255)
    Xtr, Xte = scale(Xtr * unit, Xte * unit, mean.reshape(shape), std.reshape(shape))
    classes = None
    if (folder / meta_file).is_file():
        meta = _read_pickle(folder / meta_file, name)
        raw = meta.get({"labels": "label_names", "fine_labels": "fine_label_names",
                        "coarse_labels": "coarse_label_names"}[key])
        if raw is not None:
            classes = [c.decode() if isinstance(c, bytes) else str(c) for c in raw]
    return dataset_pair(name, Xtr, ytr, Xte, yte, C, root=str(folder), labels=labels,
                        classes=classes)


def _make_cifar10(*, root: str | os.PathLike | None = None) -> Pair:
    """CIFAR-10 from ``root`` (``cifar-10-batches-py`` or its parent); X (N, 3, 32, 32).

    Per-channel standardization with the training set's mean and std; 50000 / 10000, 10 classes.
    """
    return _make_cifar("cifar10", root)


def _make_cifar100(*, root: str | os.PathLike | None = None, labels: str = "fine") -> Pair:
    """CIFAR-100 from ``root`` (``cifar-100-python`` or its parent); X (N, 3, 32, 32).

    ``labels="fine"`` (100 classes, default) or ``"coarse"`` (20 superclasses).
    """
    return _make_cifar("cifar100", root, labels)


#: The CIFAR datasets by name.
MAKERS = {"cifar10": _make_cifar10, "cifar100": _make_cifar100}
