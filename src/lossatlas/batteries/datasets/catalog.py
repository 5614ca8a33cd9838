"""The datasets by name: :func:`register` a factory, :func:`names`, and :func:`load` (a
registered name or a ``"package.module:factory"`` string), which applies the ``train_size``
subset and the ``label_noise`` flips and records how to load the same data again.
The built-in makers (:mod:`.makers`, :mod:`.cifar`) are registered here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from lossatlas.batteries.datasets import cifar, makers
from lossatlas.batteries.datasets.arrays import Pair, as_pair
from lossatlas.batteries.datasets.transforms import check_seed, corrupt_labels, take
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.registry import absolute_spec, add_to_registry, check_options, import_spec

__all__ = ["from_factory", "load", "names", "register", "registered"]

_REGISTRY: dict[str, Callable[..., Any]] = {}


def register(name: str, factory: Callable[..., Any], *, overwrite: bool = False) -> None:
    """Make ``load(name, **kw)`` call ``factory(**kw)`` (plus ``root=`` when one is given).

    The factory returns ``(train, test)`` or a single dataset (used as both); each may be an
    :class:`ArrayDataset`, a ``TensorDataset``, an ``(X, y)`` tuple or any sized ``Dataset``.
    """
    add_to_registry(_REGISTRY, name, factory, overwrite=overwrite, kind="dataset")


def registered(name: str) -> Callable[..., Any] | None:
    """The factory registered as ``name``, or None."""
    return _REGISTRY.get(name)


def names() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(_REGISTRY)


def _unknown_name(name: Any) -> LossAtlasError:
    return LossAtlasError(
        f"name={name!r} is not a known dataset; use one of {', '.join(names())}, a "
        "'package.module:factory' string, or add it with lossatlas.batteries.datasets.register."
    )


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
        train, test = as_pair(factory(**kw), name)
    else:
        raise _unknown_name(name)
    check_seed(seed)
    n_full = len(train)
    if train_size is not None:
        train = take(train, train_size, seed=seed)
    train = corrupt_labels(train, label_noise, seed=seed)  # always a new object
    test = test.derive(test.X, test.y)  # never mutate what a factory may have cached
    train.info.update(seed=seed, train_size=train_size, full_train_size=n_full, split="train")
    # how to load the same data again (recorded in a run's manifest by la.train)
    options = {"train_size": train_size, "label_noise": label_noise, "seed": seed,
               **({"root": str(root)} if root is not None else {}), **kw}
    train.info["load"] = {"name": absolute_spec(name), "options": options}
    test.info.update(seed=seed, split="test")
    return train, test


def from_factory(spec: str, **kw: Any) -> Pair:
    """Call the factory named by ``"package.module:factory"`` with ``kw``; return ``(train, test)``.

    A factory that returns a single dataset gets it back as both train and test
    (``train.info["test_is_train"]`` is then True).
    """
    factory = import_spec(spec, "name")
    check_options(factory, kw, f"factory {spec!r}")
    return as_pair(factory(**kw), spec)


for _name, _factory in {**makers.MAKERS, **cifar.MAKERS}.items():
    register(_name, _factory)
