"""lossatlas: map the loss landscape of any PyTorch model.

>>> import lossatlas as la
>>> la.__version__
'0.1.0'
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys


def _starting_interrupted(kind, value, tb, _default=sys.excepthook) -> None:
    """The ``lossatlas`` command's hook for a Ctrl-C before its own handler is in place (while
    torch loads): one line instead of a traceback; Python still exits with code 130."""
    if issubclass(kind, KeyboardInterrupt):
        sys.stderr.write("interrupted while lossatlas was starting; nothing was done\n")
        return
    _default(kind, value, tb)


if sys.argv and os.path.basename(sys.argv[0]) == "lossatlas":  # the command, not a library user
    sys.excepthook = _starting_interrupted

from lossatlas.core import params as params  # noqa: E402
from lossatlas.core.errors import LossAtlasError  # noqa: E402
from lossatlas.core.objective import Objective  # noqa: E402

__version__ = "0.1.0"

# The public names `la.<name>` and the module behind each, by layer (CONTRIBUTING.md has the
# table). They load on first use, so `import lossatlas` stays fast.
_MODULES = {
    # core
    "params": "core.params", "errors": "core.errors", "losses": "core.losses",
    "batching": "core.batching", "objective": "core.objective", "memory": "core.memory",
    "resources": "core.resources", "distributed": "core.distributed",
    # batteries
    "datasets": "batteries.datasets", "zoo": "batteries.zoo", "hf": "batteries.hf",
    "training": "batteries.training", "runs": "batteries.runs", "track": "measurements.track",
    # store, directions
    "store": "store", "directions": "directions",
    # measurements
    "landscape": "measurements.landscape", "hessian": "measurements.hessian",
    "trajectory": "measurements.trajectory", "connect": "measurements.connect",
    "align": "measurements.align", "similarity": "measurements.similarity",
    "mining": "measurements.mining", "sharpness": "measurements.sharpness",
    # analyses
    "shapes": "analyses.shapes", "taxonomy": "analyses.taxonomy",
    # sweeps, plots, report
    "sweep": "sweeps", "executors": "sweeps.executors", "plot": "plot", "report": "report",
}
_LAZY_ATTRS = {
    "train": ("training", "train"),
    "Recorder": ("runs", "Recorder"),
    "load_run": ("runs", "load_run"),
    "curve": ("landscape", "curve"),
    "surface": ("landscape", "surface"),
    "interpolate": ("landscape", "interpolate"),
    "load": ("store", "load"),
    "atlas": ("report", "atlas"),
}

__all__ = ["LossAtlasError", "Objective", "__version__", *_MODULES, *_LAZY_ATTRS]


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f"lossatlas.{_MODULES[name]}")
    if name in _LAZY_ATTRS:
        mod, attr = _LAZY_ATTRS[name]
        return getattr(importlib.import_module(f"lossatlas.{_MODULES[mod]}"), attr)
    raise AttributeError(f"module 'lossatlas' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MODULES) | set(_LAZY_ATTRS))


class _FlatPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import lossatlas.<name>[.sub]`` for the public names of the flat layout before the layer
    folders (``lossatlas.errors``, ``lossatlas.hessian.operator``) gives the module that now
    lives in its layer (``lossatlas.core.errors``): the same module object, never a copy."""

    def __init__(self) -> None:
        self._specs: dict[str, object] = {}

    def find_spec(self, fullname, path, target=None):
        parts = fullname.split(".")
        if len(parts) < 2 or parts[0] != "lossatlas" or parts[1] not in _MODULES:
            return None
        if _MODULES[parts[1]] == parts[1]:
            return None  # a top-level package, found the normal way
        new = ".".join(["lossatlas", _MODULES[parts[1]], *parts[2:]])
        if importlib.util.find_spec(new) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = ".".join(["lossatlas", _MODULES[spec.name.split(".")[1]],
                        *spec.name.split(".")[2:]])
        module = importlib.import_module(new)
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # the import system stamped the alias's spec on the module: give it its own back
        module.__spec__ = self._specs.pop(module.__spec__.name)


if not any(isinstance(f, _FlatPaths) for f in sys.meta_path):
    sys.meta_path.insert(0, _FlatPaths())
