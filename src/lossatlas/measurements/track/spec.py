"""Tracker specs for the command line: ``sharpness:every=10,k=2,trace=true``.

>>> t = parse("sharpness:every=5,k=2,trace=true")
>>> type(t).__name__, t.every, t.k, t.trace
('Sharpness', 5, 2, True)
"""

from __future__ import annotations

from lossatlas.core.errors import LossAtlasError
from lossatlas.measurements.track.sharpness import Sharpness

__all__ = ["TRACKERS", "parse"]

TRACKERS = {"sharpness": Sharpness}
_KEYS = {"every": int, "k": int, "batch_size": int, "tol": float, "trace": bool,
         "trace_products": int, "preconditioned": "auto-bool", "warm": bool, "seed": int}


def _value(key: str, text: str):
    kind = _KEYS[key]
    low = text.strip().lower()
    if kind is bool or kind == "auto-bool":
        if kind == "auto-bool" and low == "auto":
            return "auto"
        if low in ("true", "yes", "1", "on"):
            return True
        if low in ("false", "no", "0", "off"):
            return False
        raise LossAtlasError(f"--track {key}={text!r} is not a boolean; write {key}=true")
    try:
        return kind(text)
    except ValueError:
        raise LossAtlasError(f"--track {key}={text!r} is not a number; write e.g. every=10"
                             ) from None


def parse(spec: str):
    """A tracker from ``NAME[:key=value,...]`` (keys: every, k, batch_size, tol, trace,
    trace_products, preconditioned, warm, seed)."""
    name, _, rest = spec.partition(":")
    name = name.strip().lower()
    if name not in TRACKERS:
        raise LossAtlasError(f"--track {spec!r}: unknown tracker {name!r}; use one of "
                             f"{sorted(TRACKERS)}, e.g. sharpness:every=10")
    kw = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, val = part.partition("=")
        key = key.strip()
        if not eq or key not in _KEYS:
            raise LossAtlasError(f"--track {spec!r}: {part!r} is not key=value with a key of "
                                 f"{sorted(_KEYS)}; write e.g. sharpness:every=10,k=2")
        kw[key] = _value(key, val)
    return TRACKERS[name](**kw)
