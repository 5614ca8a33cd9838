"""The built-in atlas sections, registered in page order by importing their modules in the
order of :data:`MODULES` (a module registers its sections in the order it defines them)."""

import importlib

#: Page order of the built-in section modules.
MODULES = ("training", "tracking", "landscape", "hessian", "trajectory", "mining", "connectivity",
           "phases")

for _name in MODULES:
    importlib.import_module(f"{__name__}.{_name}")
