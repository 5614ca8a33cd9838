"""The built-in datasets that are made, not read: scikit-learn's digits, MNIST-1D (Greydanus
2020) and the synthetic ``gaussians``, ``spirals``, ``teacher`` and ``tokens`` sets. Each
``_make_*`` function takes the dataset's options and returns ``(train, test)``
:class:`~lossatlas.batteries.datasets.arrays.ArrayDataset` objects; :data:`MAKERS` names them
for the catalog (:mod:`lossatlas.batteries.datasets.catalog`).
"""

from __future__ import annotations

import functools
import random
from typing import Any

import numpy as np

from lossatlas.batteries.datasets.arrays import Pair, dataset_pair
from lossatlas.batteries.datasets.transforms import standardize
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.losses import IGNORE_INDEX

__all__ = ["MAKERS"]


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
    Xtr, Xte = standardize(Xtr.astype(np.float64), Xte.astype(np.float64), axis=(0,))
    if image:
        Xtr, Xte = Xtr.reshape(-1, 1, 8, 8), Xte.reshape(-1, 1, 8, 8)
    return dataset_pair("digits", Xtr, ytr, Xte, yte, 10, image=bool(image))


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
    return dataset_pair("mnist1d", Xtr, ytr, Xte, yte, 10, channels=bool(channels), **options)


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
    return dataset_pair("gaussians", Xtr, ytr, Xte, yte, num_classes, dim=dim, data_seed=data_seed)


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
    return dataset_pair("spirals", Xtr, ytr, Xte, yte, arms, data_seed=data_seed)


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
    return dataset_pair("teacher", Xtr, ytr, Xte, yte, num_classes, dim=dim, data_seed=data_seed)


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
    return dataset_pair(
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
    return dataset_pair("tokens", Xtr, ytr, Xte, yte, vocab_size, vocab_size=vocab_size,
                        data_seed=data_seed, task="lm")


#: The built-in made datasets by name.
MAKERS = {
    "digits": _make_digits,
    "mnist1d": _make_mnist1d,
    "gaussians": _make_gaussians,
    "spirals": _make_spirals,
    "teacher": _make_teacher,
    "tokens": _make_tokens,
}
