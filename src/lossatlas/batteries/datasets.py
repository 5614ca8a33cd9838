"""Datasets: small built-in sets, CIFAR from a folder, label noise and subsets for phase diagrams.

Every loader returns ``(train, test)``, two :class:`ArrayDataset` objects holding all samples in
memory as tensors ``X`` (float32, or int64 tokens) and ``y`` (int64 labels in ``[0, C)``).
A model adapts to a dataset through ``dataset.input_shape`` (per-sample shape) and
``dataset.num_classes`` (and ``dataset.vocab_size`` for token sequences); ``zoo.build`` reads
them when given ``dataset=``.

Built-in names (options in brackets, see each ``_make_*`` function):

- ``digits``: scikit-learn's 8x8 digits, 1437 train / 360 test, standardized. Shape ``(64,)``,
  or ``(1, 8, 8)`` with ``image=True``.
- ``mnist1d``: MNIST-1D (Greydanus 2020) built offline, 4000 / 1000. Shape ``(40,)``, or
  ``(1, 40)`` with ``channels=True`` for 1-D convolutions; MNIST-1D's own options
  (``num_samples``, ``shuffle_seq``, ...) pass through.
- ``gaussians``, ``spirals``, ``teacher``: synthetic vectors; ``tokens``: int64 sequences.
- ``cifar10``, ``cifar100``: read from ``root`` (the official python-pickle layout) with a
  restricted unpickler that admits only dicts, lists, bytes, str, ints and plain numpy arrays
  (:mod:`lossatlas.batteries.safe_pickle`): a crafted file runs no code.

The data itself is fixed (``data_seed``); the ``seed`` of :func:`load` only chooses the
``train_size`` subset and the ``label_noise`` flips, which touch the training set alone.

>>> import lossatlas as la
>>> train, test = la.datasets.load("digits")
>>> len(train), len(test), train.input_shape, train.num_classes
(1437, 360, (64,), 10)
>>> train, _ = la.datasets.load("digits", train_size=100, label_noise=0.2, seed=1)
>>> len(train), train.info["flipped"]
(100, 20)
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lossatlas.batteries import safe_pickle as restricted_pickle
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.losses import IGNORE_INDEX

__all__ = [
    "ArrayDataset",
    "corrupt_labels",
    "from_factory",
    "import_spec",
    "load",
    "names",
    "register",
    "take",
]

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

    def _replace(self, X: torch.Tensor, y: torch.Tensor, **info: Any) -> ArrayDataset:
        return ArrayDataset(
            X, y, num_classes=self.num_classes, name=self.name,
            info={**self.info, **info}, vocab_size=self.vocab_size,
        )


# -- helpers shared with the zoo ---------------------------------------------------------------


def _import_file(path_text: str, spec: str, argument: str) -> Any:
    """The module of the Python file ``path_text`` (relative to the current folder), loaded once
    under a name derived from its absolute path."""
    import importlib.util
    import sys

    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise LossAtlasError(
            f"{argument}={spec!r}: file {path_text!r} does not exist (looked in {Path.cwd()}); "
            "give the path of the .py file that defines the factory."
        )
    name = "lossatlas_user_" + "".join(c if c.isalnum() else "_" for c in str(path))
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    assert loader_spec is not None and loader_spec.loader is not None
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise LossAtlasError(
            f"{argument}={spec!r}: {path_text} fails to import ({type(e).__name__}: {e}); "
            "fix the file or run it with python to see the traceback."
        ) from e
    return module


def import_spec(spec: str, argument: str = "name") -> Callable:
    """The object named by ``"package.module:attribute"`` or ``"path/file.py:attribute"`` (dots
    after the colon walk attributes; a file path is read relative to the current folder)."""
    module_name, _, attr = spec.rpartition(":") if ".py:" in spec else spec.partition(":")
    if not module_name or not attr:
        raise LossAtlasError(
            f"{argument}={spec!r} is not of the form 'package.module:factory' or "
            "'file.py:factory'; write the module path, a colon and the function name."
        )
    if module_name.endswith(".py"):
        obj: Any = _import_file(module_name, spec, argument)
    else:
        try:
            obj = importlib.import_module(module_name)
        except ImportError as e:
            raise LossAtlasError(
                f"{argument}={spec!r}: module {module_name!r} cannot be imported ({e}); "
                "check the spelling and that the module is on sys.path (the current folder is)."
            ) from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise LossAtlasError(
                f"{argument}={spec!r}: module {module_name!r} has no attribute {attr!r}; "
                "check the name after the colon."
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise LossAtlasError(f"{argument}={spec!r} is not callable; name a function or class.")
    return obj


def add_to_registry(
    registry: dict[str, Callable], name: str, factory: Callable, *, overwrite: bool, kind: str
) -> None:
    """``registry[name] = factory`` after checking the name, the factory and ``overwrite``."""
    if not isinstance(name, str) or not name or ":" in name:
        raise LossAtlasError(
            f"name={name!r} cannot be registered; use a non-empty string without a colon."
        )
    if name in registry and not overwrite:
        raise LossAtlasError(
            f"name={name!r} is already a registered {kind}; pass overwrite=True to replace it."
        )
    if not callable(factory):
        raise LossAtlasError(f"factory={factory!r} is not callable; pass a function.")
    registry[name] = factory


def check_options(factory: Callable, kw: Mapping[str, Any], what: str) -> None:
    """Raise :class:`LossAtlasError` when ``factory`` does not accept every keyword in ``kw``."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [
        n for n, p in params.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    unknown = [k for k in kw if k not in accepted]
    if unknown:
        raise LossAtlasError(
            f"{what} does not take the option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}; its options are: {', '.join(accepted) or 'none'}."
        )


def accepts(factory: Callable, name: str) -> bool:
    """True when ``factory`` can be called with the keyword ``name``."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


# -- registry ----------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., Any]] = {}


def register(name: str, factory: Callable[..., Any], *, overwrite: bool = False) -> None:
    """Make ``load(name, **kw)`` call ``factory(**kw)`` (plus ``root=`` when one is given).

    The factory returns ``(train, test)`` or a single dataset (used as both); each may be an
    :class:`ArrayDataset`, a ``TensorDataset``, an ``(X, y)`` tuple or any sized ``Dataset``.
    """
    add_to_registry(_REGISTRY, name, factory, overwrite=overwrite, kind="dataset")


def names() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(_REGISTRY)


def _unknown_name(name: Any) -> LossAtlasError:
    return LossAtlasError(
        f"name={name!r} is not a known dataset; use one of {', '.join(names())}, a "
        "'package.module:factory' string, or add it with lossatlas.batteries.datasets.register."
    )


# -- the public entry point --------------------------------------------------------------------


def load(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    train_size: int | None = None,
    label_noise: float = 0.0,
    seed: int = 0,
    **kw: Any,
) -> Pair:
    """Load ``(train, test)`` by name or ``"package.module:factory"`` string.

    ``train_size`` keeps a class-balanced random subset of that many training samples;
    ``label_noise`` (a fraction in [0, 1]) then changes exactly ``round(label_noise * n)``
    training labels, each to a different class. Both are chosen by ``seed`` and recorded in
    ``train.info``; the test set is never changed. ``kw`` goes to the dataset's builder.
    """
    if not isinstance(name, str):
        raise _unknown_name(name)
    if ":" in name:
        if root is not None:
            kw = {"root": root, **kw}
        train, test = from_factory(name, **kw)
    elif name in _REGISTRY:
        factory = _REGISTRY[name]
        if root is not None:
            kw = {"root": root, **kw}
        check_options(factory, kw, f"dataset {name!r}")
        train, test = _as_pair(factory(**kw), name)
    else:
        raise _unknown_name(name)
    _check_seed(seed)
    n_full = len(train)
    if train_size is not None:
        train = take(train, train_size, seed=seed)
    train = corrupt_labels(train, label_noise, seed=seed)  # always a new object
    test = test._replace(test.X, test.y)  # never mutate what a factory may have cached
    train.info.update(seed=seed, train_size=train_size, full_train_size=n_full, split="train")
    # how to load the same data again (recorded in a run's manifest by la.train)
    options = {"train_size": train_size, "label_noise": label_noise, "seed": seed,
               **({"root": str(root)} if root is not None else {}), **kw}
    train.info["load"] = {"name": _absolute_spec(name), "options": options}
    test.info.update(seed=seed, split="test")
    return train, test


def _absolute_spec(name: str) -> str:
    """``"file.py:f"`` with the file's absolute path (so a run can be rebuilt from elsewhere);
    other names unchanged."""
    module, sep, attr = name.rpartition(":")
    if sep and module.endswith(".py"):
        return f"{Path(module).expanduser().resolve()}:{attr}"
    return name


def from_factory(spec: str, **kw: Any) -> Pair:
    """Call the factory named by ``"package.module:factory"`` with ``kw``; return ``(train, test)``.

    A factory that returns a single dataset gets it back as both train and test
    (``train.info["test_is_train"]`` is then True).
    """
    factory = import_spec(spec, "name")
    check_options(factory, kw, f"factory {spec!r}")
    return _as_pair(factory(**kw), spec)


def _check_seed(seed: Any) -> None:
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
    _check_seed(seed)
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
    return dataset._replace(dataset.X[index], dataset.y[index], subset_indices=chosen.tolist())


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
    _check_seed(seed)
    rng = _rng(seed, 1)
    idx = np.sort(rng.permutation(n)[:m])
    y = dataset.y.clone()
    if m:
        shift = torch.from_numpy(rng.integers(1, C, size=m))
        index = torch.from_numpy(idx)
        y[index] = (y[index] + shift) % C
    return dataset._replace(
        dataset.X, y, label_noise=fraction, flipped=int(m), flipped_indices=idx.tolist()
    )


# -- turning what a factory returns into ArrayDatasets -----------------------------------------


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


def _as_pair(out: Any, name: str) -> Pair:
    is_pair = (
        isinstance(out, (tuple, list)) and len(out) == 2
        and not (_is_tensor_like(out[0]) and _is_tensor_like(out[1]))
    )
    if not is_pair:
        single = _as_array(out, name, "returned")
        train = single._replace(single.X, single.y, test_is_train=True)
        return train, single
    train, test = _as_array(out[0], name, "train"), _as_array(out[1], name, "test")
    C = max(train.num_classes, test.num_classes)
    if train.num_classes != test.num_classes:
        train.num_classes = test.num_classes = C
    return train, test


# -- built-in datasets -------------------------------------------------------------------------


def _standardize(X_train: np.ndarray, X_test: np.ndarray, axis: tuple[int, ...]):
    """Center and scale, in place, by the training mean/std over ``axis`` (zero std -> 1)."""
    mean = X_train.mean(axis=axis, keepdims=True, dtype=np.float64)
    std = X_train.std(axis=axis, keepdims=True, dtype=np.float64)
    return _scale(X_train, X_test, mean, std)


def _scale(X_train: np.ndarray, X_test: np.ndarray, mean: np.ndarray, std: np.ndarray):
    """``(X - mean) / std`` in place for both arrays, a zero ``std`` taken as 1."""
    std = np.where(std < 1e-8, 1.0, std).astype(X_train.dtype)
    mean = mean.astype(X_train.dtype)
    for X in (X_train, X_test):
        X -= mean
        X /= std
    return X_train, X_test


def _pair(
    name: str, Xtr, ytr, Xte, yte, num_classes: int, vocab_size: int | None = None, **info: Any
) -> Pair:
    def make(X, y):
        return ArrayDataset(
            X, y, num_classes=num_classes, name=name,
            info={"name": name, **info}, vocab_size=vocab_size,
        )

    return make(Xtr, ytr), make(Xte, yte)


def _make_digits(*, image: bool = False, test_size: int = 360) -> Pair:
    """scikit-learn's digits, a fixed stratified split (``random_state=0``), standardized.

    X (N, 64), or (N, 1, 8, 8) with ``image=True``; 10 classes.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    if not isinstance(test_size, int) or not 10 <= test_size <= len(y) - 10:
        raise LossAtlasError(
            f"test_size={test_size!r} must be an integer between 10 and {len(y) - 10}; "
            "pass e.g. test_size=360."
        )
    Xtr, Xte, ytr, yte = train_test_split(
        X, y, test_size=test_size, stratify=y, random_state=0
    )
    Xtr, Xte = _standardize(Xtr.astype(np.float64), Xte.astype(np.float64), axis=(0,))
    if image:
        Xtr, Xte = Xtr.reshape(-1, 1, 8, 8), Xte.reshape(-1, 1, 8, 8)
    return _pair("digits", Xtr, ytr, Xte, yte, 10, image=bool(image))


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(options: tuple[tuple[str, Any], ...]):
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    for k, v in options:
        setattr(args, k, v)
    # make_dataset seeds the global `random` and numpy generators: leave them as they were.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return d["x"], d["y"], d["x_test"], d["y_test"]


def _make_mnist1d(*, channels: bool = False, **options: Any) -> Pair:
    """MNIST-1D built in memory with ``mnist1d.data.make_dataset`` (nothing is written).

    X (N, 40), or (N, 1, 40) with ``channels=True`` (for Conv1d); 10 classes. The package's own
    options (``num_samples=5000``, ``train_split=0.8``, ``shuffle_seq``, ``seed=42``, ...) pass
    through; its global standardization is kept.
    """
    from mnist1d.data import get_dataset_args

    known = [k for k in get_dataset_args(as_dict=True) if k != "url"]
    unknown = [k for k in options if k not in known]
    if unknown:
        raise LossAtlasError(
            f"dataset 'mnist1d' does not take the option {', '.join(unknown)}; its options are: "
            f"channels, {', '.join(known)}."
        )
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))
    Xtr, ytr, Xte, yte = (np.array(a) for a in _mnist1d_arrays(frozen))  # never share the cache
    if channels:
        Xtr, Xte = Xtr[:, None, :], Xte[:, None, :]
    return _pair("mnist1d", Xtr, ytr, Xte, yte, 10, channels=bool(channels), **options)


def _check_sizes(name: str, **sizes: int) -> None:
    for arg, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise LossAtlasError(
                f"{arg}={v!r} for dataset {name!r} must be a positive integer; pass e.g. {arg}=2."
            )


def _make_gaussians(
    *,
    num_classes: int = 4,
    dim: int = 2,
    n_train: int = 1000,
    n_test: int = 1000,
    separation: float = 3.0,
    noise: float = 1.0,
    data_seed: int = 0,
) -> Pair:
    """``num_classes`` Gaussian blobs in ``dim`` dimensions; X (N, dim).

    Centers ~ N(0, separation² I), samples = center + noise·N(0, I), labels balanced.
    """
    _check_sizes("gaussians", num_classes=num_classes, dim=dim, n_train=n_train, n_test=n_test)
    rng = np.random.default_rng(data_seed)
    centers = separation * rng.standard_normal((num_classes, dim))

    def sample(n):
        y = rng.permutation(np.arange(n) % num_classes)
        return centers[y] + noise * rng.standard_normal((n, dim)), y

    (Xtr, ytr), (Xte, yte) = sample(n_train), sample(n_test)
    return _pair("gaussians", Xtr, ytr, Xte, yte, num_classes, dim=dim, data_seed=data_seed)


def _make_spirals(
    *,
    arms: int = 2,
    n_train: int = 1000,
    n_test: int = 1000,
    turns: float = 1.5,
    noise: float = 0.05,
    data_seed: int = 0,
) -> Pair:
    """Interleaved 2-D spirals, one class per arm; X (N, 2).

    Arm j at t ~ U(0, 1): r = t, angle = 2π(turns·t + j/arms), plus noise·N(0, I).
    """
    _check_sizes("spirals", arms=arms, n_train=n_train, n_test=n_test)
    rng = np.random.default_rng(data_seed)

    def sample(n):
        y = rng.permutation(np.arange(n) % arms)
        t = rng.random(n)
        angle = 2 * np.pi * (turns * t + y / arms)
        X = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1)
        return X + noise * rng.standard_normal((n, 2)), y

    (Xtr, ytr), (Xte, yte) = sample(n_train), sample(n_test)
    return _pair("spirals", Xtr, ytr, Xte, yte, arms, data_seed=data_seed)


def _make_teacher(
    *,
    num_classes: int = 2,
    dim: int = 20,
    hidden: int = 64,
    n_train: int = 2000,
    n_test: int = 1000,
    data_seed: int = 0,
) -> Pair:
    """Labels from a random one-hidden-layer ReLU teacher; X ~ N(0, I), X (N, dim).

    label = argmax(W2 relu(W1 x) - b), W ~ N(0, 1/fan_in); b centers the teacher's logits (fit on
    the training inputs) so the classes are about equally frequent.
    """
    _check_sizes(
        "teacher", num_classes=num_classes, dim=dim, hidden=hidden, n_train=n_train, n_test=n_test
    )
    rng = np.random.default_rng(data_seed)
    W1 = rng.standard_normal((dim, hidden)) / np.sqrt(dim)
    W2 = rng.standard_normal((hidden, num_classes)) / np.sqrt(hidden)
    Xtr, Xte = rng.standard_normal((n_train, dim)), rng.standard_normal((n_test, dim))

    def logits(X):
        return np.maximum(X @ W1, 0.0) @ W2

    L = logits(Xtr)
    b, step = np.zeros(num_classes), L.std()
    for _ in range(100):  # shift the biases until every class is about 1/C of the train set
        freq = np.bincount((L - b).argmax(1), minlength=num_classes) / n_train
        b += step * (freq - 1.0 / num_classes)
    ytr, yte = (logits(Xtr) - b).argmax(1), (logits(Xte) - b).argmax(1)
    return _pair("teacher", Xtr, ytr, Xte, yte, num_classes, dim=dim, data_seed=data_seed)


def _make_tokens(
    *,
    vocab_size: int = 16,
    seq_len: int = 12,
    num_classes: int = 4,
    n_train: int = 2000,
    n_test: int = 1000,
    data_seed: int = 0,
    task: str = "classify",
) -> Pair:
    """Uniform random token sequences; X (N, seq_len) int64 in ``[0, vocab_size)``.

    Token v lies in bucket ``v * num_classes // vocab_size``; the label is the most frequent
    bucket in the sequence (ties go to the smallest bucket).

    ``task="lm"``: sequences of a fixed random Markov chain instead (each token is followed by
    one of 2 tokens with probability 0.45 each, else by a uniform one: a learnable next-token
    law), and per-token targets y (N, seq_len): y[:, t] = X[:, t + 1], the last one -100
    (ignored), so a causal LM's logits (N, seq_len, vocab_size) meet them without a shift;
    ``num_classes`` is then the vocabulary.
    """
    _check_sizes(
        "tokens", vocab_size=vocab_size, seq_len=seq_len, num_classes=num_classes,
        n_train=n_train, n_test=n_test,
    )
    if task not in ("classify", "lm"):
        raise LossAtlasError(f"task={task!r} for dataset 'tokens' must be 'classify' or 'lm'.")
    if task == "lm":
        return _markov_tokens(vocab_size, seq_len, n_train, n_test, data_seed)
    if vocab_size < num_classes:
        raise LossAtlasError(
            f"vocab_size={vocab_size} must be at least num_classes={num_classes} for dataset "
            "'tokens'; pass a larger vocab_size."
        )
    rng = np.random.default_rng(data_seed)

    def sample(n):
        X = rng.integers(0, vocab_size, size=(n, seq_len))
        buckets = X * num_classes // vocab_size
        counts = (buckets[:, :, None] == np.arange(num_classes)).sum(1)
        return X, counts.argmax(1)

    (Xtr, ytr), (Xte, yte) = sample(n_train), sample(n_test)
    return _pair(
        "tokens", Xtr, ytr, Xte, yte, num_classes, vocab_size=vocab_size, data_seed=data_seed
    )


def _markov_tokens(vocab_size: int, seq_len: int, n_train: int, n_test: int,
                   data_seed: int) -> Pair:
    rng = np.random.default_rng([data_seed, 7])
    P = np.full((vocab_size, vocab_size), 0.1 / vocab_size)
    for v in range(vocab_size):
        P[v, rng.choice(vocab_size, 2, replace=False)] += 0.45
    cum = np.cumsum(P / P.sum(1, keepdims=True), axis=1)

    def sample(n):
        X = np.empty((n, seq_len), dtype=np.int64)
        X[:, 0] = rng.integers(0, vocab_size, n)
        for t in range(1, seq_len):
            u = rng.random(n)[:, None]
            X[:, t] = np.minimum((u > cum[X[:, t - 1]]).sum(1), vocab_size - 1)
        y = np.full_like(X, IGNORE_INDEX)
        y[:, :-1] = X[:, 1:]
        return X, y

    (Xtr, ytr), (Xte, yte) = sample(n_train), sample(n_test)
    return _pair("tokens", Xtr, ytr, Xte, yte, vocab_size, vocab_size=vocab_size,
                 data_seed=data_seed, task="lm")


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
    d = restricted_pickle.load(path.read_bytes(), f"root: the file {path}", fix)
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
    scale = np.float32(1 / 255)
    Xtr, Xte = _scale(Xtr * scale, Xte * scale, mean.reshape(shape), std.reshape(shape))
    classes = None
    if (folder / meta_file).is_file():
        meta = _read_pickle(folder / meta_file, name)
        raw = meta.get({"labels": "label_names", "fine_labels": "fine_label_names",
                        "coarse_labels": "coarse_label_names"}[key])
        if raw is not None:
            classes = [c.decode() if isinstance(c, bytes) else str(c) for c in raw]
    return _pair(name, Xtr, ytr, Xte, yte, C, root=str(folder), labels=labels, classes=classes)


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


for _name, _factory in {
    "digits": _make_digits,
    "mnist1d": _make_mnist1d,
    "gaussians": _make_gaussians,
    "spirals": _make_spirals,
    "teacher": _make_teacher,
    "tokens": _make_tokens,
    "cifar10": _make_cifar10,
    "cifar100": _make_cifar100,
}.items():
    register(_name, _factory)
