"""Conventions shared by every ``lossatlas`` command.

- a **model** is a zoo name (``mlp``), ``package.module:factory`` or ``file.py:factory``
  (both found from the current folder);
- **data** is a dataset name (``digits``), ``package.module:factory`` or ``file.py:factory``;
- a **run folder** given to ``--checkpoint`` brings its own model and data (recorded in its
  manifest): ``--model`` / ``--data`` left at their defaults take the run's;
- **weights** come from ``--checkpoint PATH``: a state-dict ``.pt`` file, or a run folder with
  ``--index K`` (default: the last checkpoint).

Commands declare their options with the ``Annotated`` aliases below, e.g.::

    @app.command()
    def curve(model: ModelOpt = "mlp", data: DataOpt = "digits",
              checkpoint: CheckpointOpt = None, index: IndexOpt = None, seed: SeedOpt = 0):
        net, train, test = setup(model, data, checkpoint=checkpoint, index=index, seed=seed)
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from torch import nn

from lossatlas.core.errors import LossAtlasError

__all__ = [
    "BatchSizeOpt",
    "CheckpointOpt",
    "DataArgOpt",
    "DataOpt",
    "DepthOpt",
    "DeviceOpt",
    "IndexOpt",
    "ModelArgOpt",
    "ModelOpt",
    "OutOpt",
    "SeedOpt",
    "WidthOpt",
    "interrupted_line",
    "load_checkpoint",
    "model_options",
    "on_interrupt",
    "parse_options",
    "resolve_data",
    "resolve_model",
    "setup",
    "slug",
]

# -- option aliases -------------------------------------------------------------------------
DEFAULT_MODEL, DEFAULT_DATA = "mlp", "digits"
ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="Zoo name (mlp, ...), package.module:factory or "
                      "file.py:factory, found from the current folder; the factory takes its "
                      "--model-arg options and, if it names them, input_shape, num_classes, "
                      "in_features, and returns an nn.Module. Default: the run's own model "
                      "when --checkpoint is a run folder, else mlp.")
]
DataOpt = Annotated[
    str, typer.Option("--data", "-d", help="Dataset name (digits, ...), package.module:factory "
                      "or file.py:factory. Default: the run's own data when --checkpoint is a "
                      "run folder, else digits.")
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option("--checkpoint", "-c", help="Weights: a state-dict .pt file or a run folder."),
]
IndexOpt = Annotated[
    int | None,
    typer.Option("--index", "-k", help="Checkpoint index in a run folder (default: the last)."),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for initialization and sampling.")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder.")]
WidthOpt = Annotated[int | None, typer.Option("--width", help="Model width (zoo default).")]
DepthOpt = Annotated[int | None, typer.Option("--depth", help="Model depth (zoo default).")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Batch size.")]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="cpu, cuda, cuda:1, ... (default: cpu).")
]
ModelArgOpt = Annotated[
    list[str] | None,
    typer.Option("--model-arg", help="KEY=VALUE passed to the model builder (repeatable)."),
]
DataArgOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--data-arg", help="KEY=VALUE passed to the dataset loader, e.g. train_size=500."
    ),
]
IncludeOpt = Annotated[
    list[str] | None,
    typer.Option("--include", help="Only parameters matching this glob move (repeatable), e.g. "
                 "'transformer.h.*.attn.*'; the others stay at the checkpoint's values."),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Parameters matching this glob stay fixed (repeatable), "
                 "e.g. '*.bias'."),
]


def parse_options(pairs: list[str] | None, argument: str = "--model-arg") -> dict[str, Any]:
    """``["width=64", "act='tanh'", "name=relu"]`` -> ``{"width": 64, "act": "tanh", ...}``.

    Values are Python literals where they parse as one, strings otherwise.
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise LossAtlasError(
                f"{argument} {pair!r} is not KEY=VALUE; write e.g. {argument} width=64"
            )
        try:
            out[key] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            out[key] = raw.strip()
    return out


def model_options(
    width: int | None = None, depth: int | None = None, extra: list[str] | None = None
) -> dict[str, Any]:
    """Keyword options for :func:`resolve_model` from ``--width``, ``--depth``, ``--model-arg``
    (the ones left at None are dropped so the zoo's defaults apply)."""
    opts = {k: v for k, v in {"width": width, "depth": depth}.items() if v is not None}
    opts.update(parse_options(extra, "--model-arg"))
    return opts


def slug(text: str) -> str:
    """A file-name-safe version of a model/data name (``pkg.mod:make`` -> ``pkg.mod-make``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


# -- Ctrl-C ---------------------------------------------------------------------------------
_KEPT: list[tuple[Callable[[], str], bool | Callable[[], bool]]] = []


def on_interrupt(kept: Callable[[], str], resumes: bool | Callable[[], bool] = True) -> None:
    """Tell :func:`lossatlas.cli.main` what this command keeps if it is interrupted: ``kept()``
    says it in words at that moment ("37 of 121 points are kept in s.h5"); ``resumes`` (or
    ``resumes()`` at that moment) says whether the same command line continues from there."""
    _KEPT[:] = [(kept, resumes)]


def interrupted_line(argv: list[str]) -> str:
    """The one line printed on Ctrl-C: what was kept and the exact command to run next."""
    command = shlex.join(["lossatlas", *argv])
    if not _KEPT:
        return (f"interrupted: nothing was kept (this command writes its result when it "
                f"finishes); start it again with: {command}")
    kept, resumes = _KEPT[-1]
    try:
        what = kept()
        resumes = resumes() if callable(resumes) else resumes
    except Exception as exc:  # never a traceback on Ctrl-C
        what, resumes = f"what was kept is unknown ({type(exc).__name__})", False
    verb = "resume with" if resumes else "start it again with"
    return f"interrupted: {what}; {verb}: {command}"


# -- resolvers ------------------------------------------------------------------------------
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


PartialOpt = Annotated[bool, typer.Option(
    "--partial", help="Accept a half-computed file: analyse only its computed points and say "
    "so in the output.")]


def completeness(result: Any, file: str | os.PathLike, partial: bool) -> str:
    """``""`` for a whole result; for a half-computed one (some ``done`` False) refuse unless
    ``partial``, and then return the note ``"partial: 5 of 11 points"`` to print."""
    import numpy as np

    done = getattr(result, "done", None)
    if done is None or bool(np.all(done)):
        return ""
    n, total = int(np.sum(done)), int(np.size(done))
    if n == 0:
        raise LossAtlasError(f"FILE {str(file)!r} has no computed point yet (0 of {total}); "
                             "rerun the command that wrote it to compute them")
    if not partial:
        raise LossAtlasError(
            f"FILE {str(file)!r} is half-computed ({n} of {total} points); rerun the command "
            "that wrote it to finish it, or pass --partial to analyse only the computed points"
        )
    return f"partial: {n} of {total} points"
