"""lossatlas: map the loss landscape of any PyTorch model.

>>> import lossatlas as la
>>> la.__version__
'0.1.0'
"""

from __future__ import annotations

import importlib

from lossatlas import params
from lossatlas.errors import LossAtlasError
from lossatlas.objective import Objective

__version__ = "0.1.0"

# Submodules and functions loaded on first use, so `import lossatlas` stays fast and a module
# under construction cannot break the others.
_LAZY_MODULES = {
    "datasets", "zoo", "training", "store", "directions", "landscape", "hessian", "trajectory",
    "shapes", "mining", "connect", "similarity", "taxonomy", "sweep", "executors", "plot",
    "runs", "align", "track", "sharpness", "memory", "distributed", "report",
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

__all__ = ["LossAtlasError", "Objective", "__version__", "params", *_LAZY_MODULES, *_LAZY_ATTRS]


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"lossatlas.{name}")
    if name in _LAZY_ATTRS:
        mod, attr = _LAZY_ATTRS[name]
        return getattr(importlib.import_module(f"lossatlas.{mod}"), attr)
    raise AttributeError(f"module 'lossatlas' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _LAZY_MODULES | set(_LAZY_ATTRS))
