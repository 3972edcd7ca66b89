"""Sub-commands of `ingest` beyond the core ones. Each module exposes `add_commands(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil


def add_all(subparsers: argparse._SubParsersAction) -> None:
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        add = getattr(importlib.import_module(f"{__name__}.{module.name}"), "add_commands", None)
        if add is not None:
            add(subparsers)
