"""Factories by name: the registries behind ``la.datasets.load(name)`` and ``la.zoo.build(name)``
and the importer of ``"package.module:factory"`` / ``"file.py:factory"`` names they both take.

A registry is a plain ``dict`` name -> factory owned by its module; :func:`add_to_registry`
checks a new entry, :func:`check_options` and :func:`accepts` match keyword options to a
factory's signature, :func:`import_spec` finds the factory a ``pkg.mod:fn`` name points to,
and :func:`absolute_spec` makes such a name usable from another folder (it is recorded in a
run's manifest).

>>> import_spec("math:sqrt")(4.0)
2.0
>>> accepts(lambda *, width=8: None, "width"), accepts(lambda *, width=8: None, "depth")
(True, False)
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lossatlas.core.errors import LossAtlasError

__all__ = [
    "absolute_spec",
    "accepts",
    "add_to_registry",
    "check_options",
    "import_spec",
    "keywords",
    "parse_options",
]


def _import_file(path_text: str, spec: str, argument: str) -> Any:
    """The module of the Python file ``path_text`` (relative to the current folder), loaded once
    under a name derived from its absolute path."""
    import importlib.util
    import sys

    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise LossAtlasError(
            f"{argument}={spec!r}: file {path_text!r} does not exist (looked in {Path.cwd()}); "
            "give the path of the .py file that defines the factory."
        )
    name = "lossatlas_user_" + "".join(c if c.isalnum() else "_" for c in str(path))
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    assert loader_spec is not None and loader_spec.loader is not None
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise LossAtlasError(
            f"{argument}={spec!r}: {path_text} fails to import ({type(e).__name__}: {e}); "
            "fix the file or run it with python to see the traceback."
        ) from e
    return module


def import_spec(spec: str, argument: str = "name") -> Callable:
    """The object named by ``"package.module:attribute"`` or ``"path/file.py:attribute"`` (dots
    after the colon walk attributes; a file path is read relative to the current folder)."""
    module_name, _, attr = spec.rpartition(":") if ".py:" in spec else spec.partition(":")
    if not module_name or not attr:
        raise LossAtlasError(
            f"{argument}={spec!r} is not of the form 'package.module:factory' or "
            "'file.py:factory'; write the module path, a colon and the function name."
        )
    if module_name.endswith(".py"):
        obj: Any = _import_file(module_name, spec, argument)
    else:
        try:
            obj = importlib.import_module(module_name)
        except ImportError as e:
            raise LossAtlasError(
                f"{argument}={spec!r}: module {module_name!r} cannot be imported ({e}); "
                "check the spelling and that the module is on sys.path (the current folder is)."
            ) from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise LossAtlasError(
                f"{argument}={spec!r}: module {module_name!r} has no attribute {attr!r}; "
                "check the name after the colon."
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise LossAtlasError(f"{argument}={spec!r} is not callable; name a function or class.")
    return obj


def add_to_registry(
    registry: dict[str, Callable], name: str, factory: Callable, *, overwrite: bool, kind: str
) -> None:
    """``registry[name] = factory`` after checking the name, the factory and ``overwrite``."""
    if not isinstance(name, str) or not name or ":" in name:
        raise LossAtlasError(
            f"name={name!r} cannot be registered; use a non-empty string without a colon."
        )
    if name in registry and not overwrite:
        raise LossAtlasError(
            f"name={name!r} is already a registered {kind}; pass overwrite=True to replace it."
        )
    if not callable(factory):
        raise LossAtlasError(f"factory={factory!r} is not callable; pass a function.")
    registry[name] = factory


def keywords(fn: Callable, open_ended: bool = False) -> list[str] | None:
    """The names ``fn`` takes as keywords, in the order of its signature; None when it hides
    its signature (some builtins) or, unless ``open_ended``, also takes ``**kwargs``."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    if not open_ended and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [n for n, p in params.items()
            if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]


def check_options(factory: Callable, kw: Mapping[str, Any], what: str) -> None:
    """Raise :class:`LossAtlasError` when ``factory`` does not accept every keyword in ``kw``
    (a factory that takes ``**kwargs`` or hides its signature lets the call decide)."""
    accepted = keywords(factory)
    if accepted is None:
        return
    unknown = [k for k in kw if k not in accepted]
    if unknown:
        raise LossAtlasError(
            f"{what} does not take the option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}; its options are: {', '.join(accepted) or 'none'}."
        )


def accepts(factory: Callable, name: str) -> bool:
    """True when ``factory`` can be called with the keyword ``name``."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


def absolute_spec(name: str) -> str:
    """``"file.py:f"`` with the file's absolute path (so a run can be rebuilt from elsewhere);
    other names unchanged."""
    module, sep, attr = name.rpartition(":")
    if sep and module.endswith(".py"):
        return f"{Path(module).expanduser().resolve()}:{attr}"
    return name


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
