"""Procrastinate jobs. `jobs.app` is the App the `procrastinate` command line uses:

    procrastinate --app=jobs.app defer purge_old_jobs '{}'

Each module in this package defines its tasks as plain functions and a `register(app)` that
binds them, with stable short names, to an App; `create_app` builds one App per process (or per
test database) so nothing global is ever re-pointed at another database.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

from procrastinate import App, PsycopgConnector

from app.local import recorded_database_url
from app.settings import Settings


def create_app(conninfo: str) -> App:
    """A Procrastinate App on `conninfo` with every task of this package registered."""
    app = App(connector=PsycopgConnector(conninfo=conninfo))
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        register = getattr(importlib.import_module(f"{__name__}.{module.name}"), "register", None)
        if register is not None:
            register(app)
    return app


def _shell_conninfo() -> str:
    """DATABASE_URL, else the URL a running local (embedded) service recorded."""
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    return recorded_database_url(Settings().data_dir) or ""


app = create_app(_shell_conninfo())
