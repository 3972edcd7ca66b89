"""Procrastinate jobs. `jobs.app` is the App the `procrastinate` command line uses:

    procrastinate --app=jobs.app defer purge_old_jobs '{}'

Each module in this package defines its tasks as plain functions and a `register(app)` that
binds them, with stable short names, to an App; `create_app` builds one App per process (or per
test database) so nothing global is ever re-pointed at another database.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from procrastinate import App, PsycopgConnector

from app.errors import ConfigurationError
from app.local_service import resolve_database_url
from app.settings import Settings
from jobs.resources import RetryBesideAWaitingJob


def create_app(conninfo: str) -> App:
    """A Procrastinate App on `conninfo` with every task of this package registered."""
    return _with_tasks(App(connector=PsycopgConnector(conninfo=conninfo)))


def _with_tasks(app: App) -> App:
    """Every task of this package registered on `app`, whose retries keep their queueing locks
    (`RetryBesideAWaitingJob`)."""
    app.job_manager = RetryBesideAWaitingJob(app.connector)
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        register = getattr(importlib.import_module(f"{__name__}.{module.name}"), "register", None)
        if register is not None:
            register(app)
    return app


class UnresolvedConnector(PsycopgConnector):
    """The connector of `jobs.app` when no database is known: it refuses to open, with the
    reason, instead of letting libpq connect to whatever server its defaults name."""

    def __init__(self, problem: ConfigurationError) -> None:
        super().__init__(conninfo="")
        self.problem = problem

    async def open_async(self, pool: Any = None, **kwargs: Any) -> None:
        raise self.problem


def _shell_app() -> App:
    """The App of `procrastinate --app=jobs.app ...`: on DATABASE_URL, else on the running
    local service's database (app/local_service.py), else one that says why it cannot open."""
    try:
        return create_app(resolve_database_url(Settings()))
    except ConfigurationError as problem:
        return _with_tasks(App(connector=UnresolvedConnector(problem)))


app = _shell_app()
