"""Direction spec strings for the command line (Li, Li, Zhan 2024's direction kinds).

Grammar: ``KIND[:ARG...][:KEY=VALUE...]``::

    gaussian[:NORM][:seed=S][:ignore=none]   NORM filter (default) | layer | model | none
    gradient[:batch][:index=I][:norm=N]      −∇L of the full data, or of batch I (default 0)
    checkpoint:PATH[:index=K]                θ_E′ − θ_E, toward a later checkpoint (v-side)
    independent:PATH[:index=K]               θ₂ − θ₁, an independent checkpoint (w-basin)
    eigen:SA|LA[:K][:norm=N]                 N.E.K / P.E.K (default K=1, norm=model)
    mined:FILE[:norm=N]                      a direction from `lossatlas mine`, or a saved one

PATH is a run folder (``index`` defaults to the last checkpoint) or a ``.pt`` state dict.
Each parsed direction's ``.meta`` has a ``label`` (paper abbreviations: "Gau.", "Neg. Grad.",
"N.E.1", "Mine", ...) and a suggested ``span``.

>>> parse_spec("gaussian:layer:seed=3")
DirectionSpec(kind='gaussian', args=['layer'], options={'seed': 3})
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass, field

from lossatlas.core import params as P
from lossatlas.core.errors import LossAtlasError

__all__ = ["KINDS", "DirectionSpec", "parse_direction", "parse_directions", "parse_spec"]

KINDS = ("gaussian", "gradient", "checkpoint", "independent", "eigen", "mined")


@dataclass
class DirectionSpec:
    """A parsed spec: ``kind``, positional ``args`` and ``options``."""

    kind: str
    args: list = field(default_factory=list)
    options: dict = field(default_factory=dict)


def _value(raw: str):
    if raw.lower() == "none":
        return "none"
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def parse_spec(text: str, option: str = "--direction") -> DirectionSpec:
    """Split a spec string into kind, positional arguments and KEY=VALUE options (errors name
    ``option``, the command-line option the spec came from)."""
    if not isinstance(text, str) or not text.strip():
        raise LossAtlasError(f"{option} needs a spec such as gaussian:filter:seed=0")
    kind, *parts = text.strip().split(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise LossAtlasError(f"{option} {text!r}: unknown kind {kind!r}; use one of "
                             f"{', '.join(KINDS)}")
    args, options = [], {}
    for part in parts:
        key, sep, raw = part.partition("=")
        if sep and key.strip().isidentifier():
            options[key.strip()] = _value(raw.strip())
        else:
            args.append(part)
    return DirectionSpec(kind, args, options)


def _one(spec: DirectionSpec, text: str, allowed: Sequence[str], max_args: int,
         option: str) -> None:
    bad = sorted(set(spec.options) - set(allowed))
    if bad:
        raise LossAtlasError(f"{option} {text!r}: unknown option(s) {bad}; allowed: "
                             f"{', '.join(allowed) or 'none'}")
    if len(spec.args) > max_args:
        raise LossAtlasError(f"{option} {text!r} has too many ':' parts; see "
                             "`lossatlas curve --help` for the spec grammar")


def parse_direction(text: str, obj, model=None, cache: dict | None = None,
                    option: str = "--direction") -> P.Point:
    """The direction a spec string names, over ``obj.names`` at ``obj.center``.

    ``model`` is unused by the built-in kinds (kept for factories that need the module);
    ``cache`` (a dict) shares Hessian spectra between several ``eigen`` specs; errors name
    ``option`` (e.g. ``--x-direction``).
    """
    from lossatlas import directions as D

    spec = parse_spec(text, option)
    o, a = spec.options, spec.args
    center = obj.center
    if spec.kind == "gaussian":
        _one(spec, text, ("seed", "ignore", "norm"), 1, option)
        norm = a[0] if a else o.get("norm", "filter")
        seed = o.get("seed", 0)
        ignore = o.get("ignore", "biasbn")
        d = D.gaussian(center, norm=norm, seed=seed, ignore=None if ignore == "none" else ignore)
        d.meta.update(label=f"Gau. {norm} s{seed}", span=[-1.0, 1.0])
        return d
    if spec.kind == "gradient":
        _one(spec, text, ("index", "norm"), 1, option)
        if a and a[0] != "batch":
            raise LossAtlasError(f"{option} {text!r}: write gradient or gradient:batch")
        batch = o.get("index", 0) if a else None
        d = D.gradient(obj, batch=batch, norm=o.get("norm", "none"))
        d.meta.update(span=[-1.0, 1.0])
        return d
    if spec.kind in ("checkpoint", "independent"):
        _one(spec, text, ("index", "label"), 1, option)
        if not a:
            raise LossAtlasError(f"{option} {text!r} needs a path: {spec.kind}:PATH")
        target = D.load_point(a[0], obj.names, o.get("index"))
        fn = D.toward if spec.kind == "checkpoint" else D.independent
        return fn(center, target, label=str(o.get("label", f"→ {a[0]}")))
    if spec.kind == "eigen":
        _one(spec, text, ("norm",), 2, option)
        which = (a[0] if a else "SA").upper()
        if which not in ("SA", "LA") or (len(a) > 1 and not a[1].isdigit()):
            raise LossAtlasError(f"{option} {text!r}: write eigen:SA:K (N.E.K) or eigen:LA:K "
                                 "(P.E.K) with which SA or LA and K >= 1")
        k = int(a[1]) if len(a) > 1 else 1
        key = ("eigen", which)
        cache = {} if cache is None else cache
        spectrum = cache.get(key)
        if spectrum is None or len(spectrum.vectors) < k:
            from lossatlas.measurements import hessian

            spectrum = hessian.eigs(obj, k=max(k, 5), which=which)
            cache[key] = spectrum
        d = D.eigenvector(obj, k, which=which, norm=o.get("norm", "model"), spectrum=spectrum)
        d.meta.update(span=[-1.0, 1.0])
        return d
    # mined
    _one(spec, text, ("norm",), 1, option)
    if not a:
        raise LossAtlasError(f"{option} {text!r} needs a file: mined:FILE")
    from lossatlas.store import results as store

    res = store.load(a[0], what=f"{option} {text!r}: FILE")
    d = getattr(res, "direction", res)
    if not hasattr(d, "keys") or d.keys() != center.keys():
        raise LossAtlasError(f"{option} {text!r}: the file holds no direction over this "
                             "model's parameters; mine it for the same model")
    meta = dict(getattr(d, "meta", {}) or {})
    d = D.rescale(P.Point(d, meta=meta), center, o.get("norm", "none"))
    d.meta.setdefault("label", "Mine")
    d.meta.setdefault("span", [-1.0, 1.0])
    return d


def parse_directions(texts: Sequence[str], obj, model=None,
                     options: Sequence[str] | None = None) -> list[P.Point]:
    """:func:`parse_direction` for several specs, sharing Hessian spectra; ``options`` names
    the command-line option of each spec in errors (default ``--direction`` for all)."""
    cache: dict = {}
    options = list(options) if options is not None else ["--direction"] * len(texts)
    return [parse_direction(t, obj, model=model, cache=cache, option=o)
            for t, o in zip(texts, options)]
