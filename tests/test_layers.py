"""The house (DESIGN.md, CONTRIBUTING.md): layer folders, imports that flow one way, no module
reaching into another's private names, and the flat import paths of the public names."""

from __future__ import annotations

import ast
import importlib
import types
from pathlib import Path

import pytest

import lossatlas as la

ROOT = Path(la.__file__).parent
# lowest first; a module may import its own layer and the layers below it
LAYERS = ["core", "store", "batteries", "directions", "measurements", "analyses", "sweeps",
          "plot", "report", "cli"]
# Upward imports that are deliberate, each inside a function (CONTRIBUTING.md, "Departures"):
# a direction along a Hessian eigenvector needs the eigenpairs when none are passed in;
# Objective.hvp is the one HVP implementation, the Hessian operator's product.
ALLOWED_UP = {
    ("lossatlas.directions.eigen", "lossatlas.measurements"),
    ("lossatlas.directions.spec", "lossatlas.measurements"),
    ("lossatlas.core.objective", "lossatlas.measurements.hessian.operator"),
}


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts).removesuffix(".__init__")
        yield name, path, ast.parse(path.read_text())


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name, []


def test_every_module_lives_in_a_layer_folder():
    loose = [p.name for p in ROOT.glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"modules outside the layer folders: {loose}"
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(LAYERS)


def test_lower_layers_never_import_higher_ones():
    upward = []
    for name, _, tree in _modules():
        mine = _layer(name)
        for node, target, _ in _imports(tree):
            theirs = _layer(target)
            if (mine and theirs and LAYERS.index(theirs) > LAYERS.index(mine)
                    and (name, target) not in ALLOWED_UP):
                upward.append(f"{name}:{node.lineno} imports {target}")
    assert upward == []


def test_no_module_imports_another_modules_private_names():
    found = []
    for name, _, tree in _modules():
        for node, target, names in _imports(tree):
            if not target.startswith("lossatlas"):
                continue
            private = [n for n in [target.rsplit(".", 1)[-1], *names]
                       if n.startswith("_") and not n.startswith("__")]
            if private:
                found.append(f"{name}:{node.lineno} {target} {private}")
    assert found == []


def test_no_module_calls_another_modules_private_functions():
    """``mod._name`` where ``mod`` was imported from lossatlas: a private name used across
    modules should be public in its home."""
    found = []
    for name, _, tree in _modules():
        aliases = set()
        for node, target, _names in _imports(tree):
            if not target.startswith("lossatlas"):
                continue
            if isinstance(node, ast.Import):
                aliases.update(a.asname or a.name for a in node.names)
            else:
                home = importlib.import_module(target)
                aliases.update(a.asname or a.name for a in node.names
                               if isinstance(getattr(home, a.name, None), types.ModuleType))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{name}:{node.lineno} {node.value.id}.{node.attr}")
    assert found == []


@pytest.mark.parametrize("old, new", [
    ("lossatlas.errors", "lossatlas.core.errors"),
    ("lossatlas.objective", "lossatlas.core.objective"),
    ("lossatlas.hessian", "lossatlas.measurements.hessian"),
    ("lossatlas.hessian.operator", "lossatlas.measurements.hessian.operator"),
    ("lossatlas.sweep", "lossatlas.sweeps"),
    ("lossatlas.track", "lossatlas.measurements.track"),
])
def test_flat_import_paths_give_the_layered_module_itself(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)
    assert importlib.import_module(new).__spec__.name == new


def test_flat_from_import_and_public_names():
    from lossatlas.errors import LossAtlasError
    from lossatlas.landscape import surface

    assert LossAtlasError is la.LossAtlasError
    assert surface is la.surface
    for name in la.__all__:
        assert getattr(la, name) is not None
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("lossatlas.hessian.no_such_module")


def test_no_function_hides_the_module_it_lives_in():
    """``la.hessian.trace`` once was a function hiding ``hessian/trace.py``: no package may
    export a name that is also one of its submodules."""
    import pkgutil

    hidden = []
    for info in pkgutil.walk_packages(la.__path__, "lossatlas."):
        if not info.ispkg:
            continue
        pkg = importlib.import_module(info.name)
        for sub in pkgutil.iter_modules(pkg.__path__):
            value = getattr(pkg, sub.name, None)
            if value is not None and not isinstance(value, types.ModuleType):
                hidden.append(f"{info.name}.{sub.name} is a {type(value).__name__}")
    assert hidden == []
