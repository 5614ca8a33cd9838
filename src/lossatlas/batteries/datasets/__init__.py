"""Datasets: small built-in sets, CIFAR from a folder, label noise and subsets for phase diagrams.

Every loader returns ``(train, test)``, two :class:`ArrayDataset` objects holding all samples in
memory as tensors ``X`` (float32, or int64 tokens) and ``y`` (int64 labels in ``[0, C)``).
A model adapts to a dataset through ``dataset.input_shape`` (per-sample shape) and
``dataset.num_classes`` (and ``dataset.vocab_size`` for token sequences); ``zoo.build`` reads
them when given ``dataset=``.

Built-in names (options in brackets; see `makers.py` and `cifar.py` beside this file):

- ``digits``: scikit-learn's 8x8 digits, 1437 train / 360 test, standardized. Shape ``(64,)``,
  or ``(1, 8, 8)`` with ``image=True``.
- ``mnist1d``: MNIST-1D (Greydanus 2020) built offline, 4000 / 1000. Shape ``(40,)``, or
  ``(1, 40)`` with ``channels=True`` for 1-D convolutions; MNIST-1D's own options
  (``num_samples``, ``shuffle_seq``, ...) pass through.
- ``gaussians``, ``spirals``, ``teacher``: synthetic vectors; ``tokens``: int64 sequences.
- ``cifar10``, ``cifar100``: read from ``root`` (the official python-pickle layout) with a
  restricted unpickler that admits only dicts, lists, bytes, str, ints and plain numpy arrays
  (:mod:`lossatlas.batteries.datasets.safe_pickle`): a crafted file runs no code.

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

from lossatlas.batteries.datasets.arrays import ArrayDataset
from lossatlas.batteries.datasets.catalog import from_factory, load, names, register, registered
from lossatlas.batteries.datasets.transforms import corrupt_labels, take
from lossatlas.core.registry import import_spec

__all__ = [
    "ArrayDataset",
    "corrupt_labels",
    "from_factory",
    "import_spec",
    "load",
    "names",
    "register",
    "registered",
    "take",
]
