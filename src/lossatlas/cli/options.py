"""The options every ``lossatlas`` command shares, declared and checked once.

Two small dataclasses hold them, their fields annotated with the typer option they come from:

- :class:`Source`: what the command runs on (``--model``, ``--data``, ``--checkpoint``,
  ``--index``, ``--seed``, ``--width``, ``--depth``, ``--model-arg``, ``--data-arg``,
  ``--device``); ``source.load()`` gives ``(model, train, test)``;
- :class:`Evaluation`: how the loss is averaged (``--batch-size``, ``--bn``, ``--split``,
  ``--include``, ``--exclude``); ``evaluation.objective(model, train, test)`` gives the
  :class:`~lossatlas.core.objective.Objective`.

A command takes them as parameters and :func:`shared_options` turns each into its options,
with a command's own defaults and without the options it does not offer::

    @app.command()
    @shared_options(batch_size=128, omit=("split", "include", "exclude"))
    def mine(algorithm: str, src: Source, ev: Evaluation, epochs: int = 10): ...

Bad values are refused when the dataclass is built, before any data is loaded, with one
sentence naming the option (``--split 'val' is unknown; use train or test``).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer

from lossatlas.batteries.resolve import DEFAULT_DATA, DEFAULT_MODEL, setup
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.registry import parse_options

__all__ = [
    "BatchSizeOpt",
    "BnOpt",
    "CheckpointOpt",
    "DataArgOpt",
    "DataOpt",
    "DepthOpt",
    "DeviceOpt",
    "Evaluation",
    "ExcludeOpt",
    "IncludeOpt",
    "IndexOpt",
    "ModelArgOpt",
    "ModelOpt",
    "OutFileOpt",
    "OutOpt",
    "PartialOpt",
    "SeedOpt",
    "Source",
    "SplitOpt",
    "WidthOpt",
    "completeness",
    "model_options",
    "parse_options",
    "shared_options",
    "slug",
]

BN_POLICIES = ("keep", "recalibrate")
SPLITS = ("train", "test")

# -- option types ---------------------------------------------------------------------------
ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="Zoo name (mlp, ...), package.module:factory or "
                      "file.py:factory, found from the current folder; the factory takes its "
                      "--model-arg options and, if it names them, input_shape, num_classes, "
                      "in_features, and returns an nn.Module. Default: the run's own model "
                      "when the weights come from a run folder, else mlp.", show_default=False)
]
DataOpt = Annotated[
    str, typer.Option("--data", "-d", help="Dataset name (digits, ...), package.module:factory "
                      "or file.py:factory. Default: the run's own data when the weights come "
                      "from a run folder, else digits.", show_default=False)
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
OutFileOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Result file (.h5).")]
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
BnOpt = Annotated[str, typer.Option(
    "--bn", help="BatchNorm statistics: keep (the checkpoint's) or recalibrate (recomputed "
    "over the data at every point, the papers' UpBN).")]
SplitOpt = Annotated[str, typer.Option(
    "--split", help="Data split the loss is averaged over: train or test.")]
IncludeOpt = Annotated[
    list[str] | None,
    typer.Option("--include", help="Only parameters matching this glob move (repeatable), e.g. "
                 "`'transformer.h.*.attn.*'`; the others stay at the checkpoint's values."),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Parameters matching this glob stay fixed (repeatable), "
                 "e.g. `'*.bias'`."),
]
PartialOpt = Annotated[bool, typer.Option(
    "--partial", help="Accept a half-computed file: analyse only its computed points and say "
    "so in the output.")]


# -- the shared options as values -----------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """The model, its weights and its data: the options every command that loads a model
    takes (see :mod:`lossatlas.batteries.resolve` for what each may name)."""

    model: ModelOpt = DEFAULT_MODEL
    data: DataOpt = DEFAULT_DATA
    checkpoint: CheckpointOpt = None
    index: IndexOpt = None
    seed: SeedOpt = 0
    width: WidthOpt = None
    depth: DepthOpt = None
    model_arg: ModelArgOpt = None
    data_arg: DataArgOpt = None
    device: DeviceOpt = None

    def __post_init__(self) -> None:
        if self.device is not None:
            from lossatlas.core.resources import device as check_device

            check_device(self.device, "--device")

    def load(self, **changes: Any) -> tuple[Any, Any, Any]:
        """``(model, train, test)`` (:func:`lossatlas.batteries.resolve.setup`); ``changes``
        replace fields first, e.g. ``load(checkpoint=other, index=0)``."""
        s = replace(self, **changes) if changes else self
        return setup(s.model, s.data, checkpoint=s.checkpoint, index=s.index, seed=s.seed,
                     model_opts=model_options(s.width, s.depth, s.model_arg),
                     data_opts=parse_options(s.data_arg, "--data-arg"), device=s.device)


@dataclass(frozen=True)
class Evaluation:
    """How the loss is averaged: batch size, BatchNorm policy, data split and the parameters
    that move. ``--bn`` and ``--split`` are checked here, once for every command."""

    batch_size: BatchSizeOpt = 1024
    bn: BnOpt = "keep"
    split: SplitOpt = "train"
    include: IncludeOpt = None
    exclude: ExcludeOpt = None

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise LossAtlasError(f"--split {self.split!r} is unknown; use train or test")
        if self.bn not in BN_POLICIES:
            raise LossAtlasError(f"--bn {self.bn!r} is unknown; use keep or recalibrate")

    def dataset(self, train: Any, test: Any) -> Any:
        """The split the loss is averaged over."""
        return train if self.split == "train" else test

    def objective(self, net: Any, train: Any, test: Any = None, **changes: Any):
        """``la.Objective`` of ``net`` on the chosen split with these options; ``changes``
        (e.g. ``batch_size=512``, ``params=names``, ``distributed=True``) go to it too."""
        from lossatlas.core.objective import Objective

        kw = {"batch_size": self.batch_size, "bn": self.bn, "include": self.include,
              "exclude": self.exclude, **changes}
        return Objective(net, self.dataset(train, test), **kw)


def shared_options(*, omit: Iterable[str] = (), **defaults: Any) -> Callable:
    """Decorator: a command's parameters annotated with an option dataclass (:class:`Source`,
    :class:`Evaluation`, or a command's own, e.g. a surface's grid) become its fields' options,
    in field order where the parameter stands; the command receives the built dataclass.
    ``defaults`` change a field's default for this command (``batch_size=128``); ``omit``
    leaves options out (their fields keep the default)."""
    omit = set(omit)

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        params: list[inspect.Parameter] = []
        groups: dict[str, tuple[type, dict[str, Any], list[str]]] = {}
        for p in sig.parameters.values():
            if not (isinstance(p.annotation, type) and is_dataclass(p.annotation)):
                params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
                continue
            cls, hints = p.annotation, get_type_hints(p.annotation, include_extras=True)
            fixed, offered = {}, []
            for f in fields(cls):
                default = defaults.get(f.name, f.default)
                if f.name in omit:
                    fixed[f.name] = default
                    continue
                offered.append(f.name)
                params.append(inspect.Parameter(
                    f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                    default=inspect.Parameter.empty if default is MISSING else default))
            groups[p.name] = (cls, fixed, offered)
        named = {n for _, fixed, offered in groups.values() for n in [*fixed, *offered]}
        if (omit | set(defaults)) - named:
            raise TypeError(f"shared_options: {fn.__name__} has no option group field named "
                            f"{sorted((omit | set(defaults)) - named)}")

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            for name, (cls, fixed, offered) in groups.items():
                kwargs[name] = cls(**fixed, **{k: kwargs.pop(k) for k in offered})
            return fn(**kwargs)

        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


# -- option values --------------------------------------------------------------------------


def model_options(
    width: int | None = None, depth: int | None = None, extra: list[str] | None = None
) -> dict[str, Any]:
    """Keyword options for :func:`lossatlas.batteries.resolve.resolve_model` from ``--width``,
    ``--depth``, ``--model-arg`` (the ones left at None are dropped so the zoo's defaults
    apply)."""
    opts = {k: v for k, v in {"width": width, "depth": depth}.items() if v is not None}
    opts.update(parse_options(extra, "--model-arg"))
    return opts


def slug(text: str) -> str:
    """A file-name-safe version of a model/data name (``pkg.mod:make`` -> ``pkg.mod-make``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def completeness(result: Any, file: str | Path, partial: bool) -> str:
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
