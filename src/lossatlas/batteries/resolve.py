"""What a command runs on: the model, its weights and its data, from the command line's words.

- a **model** is a zoo name (``mlp``), ``package.module:factory`` or ``file.py:factory``
  (both found from the current folder);
- **data** is a dataset name (``digits``), ``package.module:factory`` or ``file.py:factory``;
- a **run folder** given to ``--checkpoint`` brings its own model and data (recorded in its
  manifest): ``--model`` / ``--data`` left at their defaults take the run's;
- **weights** come from ``--checkpoint PATH``: a state-dict ``.pt`` file, or a run folder with
  ``--index K`` (default: the last checkpoint).

The options that name them are declared in :mod:`lossatlas.cli.options`; the atlas
(:mod:`lossatlas.report.runspec`) resolves a run's recipe with the same functions.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from torch import nn

from lossatlas.core.errors import LossAtlasError

DEFAULT_MODEL, DEFAULT_DATA = "mlp", "digits"


def importable_cwd() -> None:
    """Put the current folder on ``sys.path`` (an installed ``lossatlas`` script lacks it), so
    ``--model pkg.mod:factory`` finds a package there, as ``python -m`` would."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def resolve_data(name: str, **opts: Any) -> tuple[Any, Any]:
    """``(train, test)`` for a dataset name, ``package.module:factory`` or ``file.py:factory``
    (see ``lossatlas.batteries.datasets.load``; ``opts`` such as ``train_size``, ``label_noise``,
    ``seed`` go there)."""
    from lossatlas.batteries import datasets

    importable_cwd()
    return datasets.load(name, **opts)


def resolve_model(name: str, dataset: Any = None, **opts: Any) -> nn.Module:
    """An ``nn.Module`` for a zoo name, ``package.module:factory`` or ``file.py:factory``,
    sized for ``dataset`` (``lossatlas.batteries.zoo.build(name, dataset=dataset, **opts)``).

    A factory is called with its options (``--width``, ``--depth``, ``--model-arg K=V``) and,
    when its signature takes them (or ``**kwargs``), ``input_shape``, ``num_classes``,
    ``in_features`` and ``vocab_size`` from the dataset; it returns an ``nn.Module``
    ``(N, *input_shape) -> (N, num_classes)``. Its initialization is seeded by ``--seed``."""
    from lossatlas.batteries import zoo

    importable_cwd()
    model = zoo.build(name, dataset=dataset, **opts)
    if not isinstance(model, nn.Module):
        raise LossAtlasError(
            f"--model {name!r} returned a {type(model).__name__}, not a torch.nn.Module; "
            "make the factory return the model"
        )
    return model


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike, index: int | None = None
) -> nn.Module:
    """Load weights into ``model`` (in place) and return it.

    ``path`` is a run folder (checkpoint ``index``, default the last) or a ``.pt`` file holding
    a state dict (or a dict with a ``"state_dict"`` / ``"model"`` entry).
    """
    from lossatlas.batteries.runs import MANIFEST, load_run
    from lossatlas.store.results import read_state_dict

    path = Path(path)
    if not path.exists():
        raise LossAtlasError(f"--checkpoint {str(path)!r} does not exist; check the path")
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise LossAtlasError(
                f"--checkpoint {str(path)!r} is a folder without {MANIFEST}; pass a run folder "
                "written by `lossatlas train` or a .pt state-dict file"
            )
        return load_run(path).load_into(model, -1 if index is None else index)
    if index is not None:
        raise LossAtlasError(
            f"--index applies to run folders but --checkpoint {str(path)!r} is a file; drop --index"
        )
    state = read_state_dict(path, "--checkpoint")
    try:
        model.load_state_dict(state)
    except RuntimeError:
        from lossatlas.batteries.runs import mismatch

        raise LossAtlasError(
            f"--checkpoint {str(path)!r} does not fit the model ({mismatch(model, state)}); pass "
            "the --model (and --width / --model-arg) it was trained with"
        ) from None
    return model


def run_recipe(checkpoint: str | os.PathLike | None) -> dict[str, Any] | None:
    """``{"model", "model_opts", "data", "data_opts"}`` recorded in a run folder's manifest
    (``None`` for a ``.pt`` file, no checkpoint, or a run that did not record them)."""
    from lossatlas.batteries.runs import MANIFEST, load_run

    if checkpoint is None or not (Path(checkpoint) / MANIFEST).is_file():
        return None
    info = load_run(checkpoint).info
    build = info.get("model", {}).get("build")
    load = info.get("data", {}).get("train", {}).get("load")
    if not isinstance(build, dict) or not isinstance(load, dict):
        return None
    return {"model": build["name"], "model_opts": dict(build.get("options") or {}),
            "data": load["name"], "data_opts": dict(load.get("options") or {})}


def setup(
    model: str,
    data: str,
    *,
    checkpoint: str | os.PathLike | None = None,
    index: int | None = None,
    seed: int = 0,
    model_opts: dict[str, Any] | None = None,
    data_opts: dict[str, Any] | None = None,
    device: str | None = None,
) -> tuple[nn.Module, Any, Any]:
    """``(model, train, test)``: the data, then the model sized for it and initialized with
    ``seed`` (the zoo's ``seed=``, the global RNG is left alone), then the ``checkpoint``
    weights if given. A run folder's recorded model and data (and their options) replace
    ``model`` / ``data`` left at their defaults (``mlp`` / ``digits``); options given here win."""
    if device is not None:
        from lossatlas.core.resources import device as check_device

        check_device(device, "--device")
    recipe = run_recipe(checkpoint)
    if recipe is not None:
        if model in (DEFAULT_MODEL, recipe["model"]):
            model, model_opts = recipe["model"], {**recipe["model_opts"], **(model_opts or {})}
        if data in (DEFAULT_DATA, recipe["data"]):
            data, data_opts = recipe["data"], {**recipe["data_opts"], **(data_opts or {})}
    train, test = resolve_data(data, **(data_opts or {}))
    net = resolve_model(model, train, **{"seed": seed, **(model_opts or {})})
    if checkpoint is not None:
        load_checkpoint(net, checkpoint, index)
    if device is not None:
        net.to(device)
    return net, train, test
