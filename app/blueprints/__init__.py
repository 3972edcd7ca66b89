"""One blueprint per area. Each module here exposes `bp`; `all_blueprints` collects them."""

from __future__ import annotations

import importlib
import pkgutil

from sanic import Blueprint


def all_blueprints() -> list[Blueprint]:
    """Every `bp` defined by a module of this package, in module-name order."""
    found = []
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        bp = getattr(importlib.import_module(f"{__name__}.{module.name}"), "bp", None)
        if isinstance(bp, Blueprint):
            found.append(bp)
    return found
