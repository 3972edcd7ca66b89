"""What a shell beside a running local service (`make run`, `ingest run`) needs from it.

Local mode keeps its database URL, its base URL and its generated secrets in the data folder
(app/local.py). Every operator command, `ingest env` and `procrastinate --app=jobs.app` resolve
the database the same way: `DATABASE_URL`, else the running local service's
`.data/database_url`, else an error naming both. Never libpq's defaults: an empty conninfo
would connect to whatever server the machine's defaults name.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from app import local
from app.errors import ConfigurationError
from app.settings import Settings

SERVICE_URL_FILE = "service_url"
BASE_URL_VARIABLE = "INGEST_URL"


@dataclass(frozen=True)
class LocalService:
    """The local service running on a data folder: its database, base URL and secrets."""

    data_dir: Path
    database_url: str
    url: str | None
    secrets: dict[str, str] = field(default_factory=dict)


def record_service_url(data_dir: Path, url: str) -> None:
    """Where `ingest run` serves, for `ingest env` in another shell (removed when it stops)."""
    (data_dir / SERVICE_URL_FILE).write_text(url)


def forget_service_url(data_dir: Path) -> None:
    (data_dir / SERVICE_URL_FILE).unlink(missing_ok=True)


def _cluster_running(data_dir: Path) -> bool:
    """Whether the embedded cluster of `data_dir` runs (a URL file a killed run left behind
    names a server that is gone). When the folder cannot be read, the file is trusted."""
    try:
        return local.EmbeddedCluster.in_data_dir(data_dir).running() is not None
    except PermissionError:
        return True


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except (FileNotFoundError, PermissionError):
        return None


def running_local_service(data_dir: Path) -> LocalService | None:
    """The local service on `data_dir`, or None when none runs there."""
    database_url = local.recorded_database_url(data_dir)
    if not database_url or not _cluster_running(data_dir):
        return None
    stored = _read(data_dir / local.SECRETS_FILE)
    secrets = json.loads(stored) if stored else {}
    return LocalService(data_dir, database_url, _read(data_dir / SERVICE_URL_FILE), secrets)


def no_database_error(settings: Settings) -> ConfigurationError:
    recorded = settings.data_dir / local.URL_FILE
    return ConfigurationError(
        f"no database: DATABASE_URL is not set, and no local service is running ({recorded} "
        "is absent or names a stopped server). Set DATABASE_URL, or start the local service "
        "with `make run` in the checkout"
    )


def resolve_database_url(settings: Settings) -> str:
    """DATABASE_URL, else the running local service's, else a ConfigurationError naming both."""
    if settings.database_url:
        return settings.database_url
    service = running_local_service(settings.data_dir)
    if service is None:
        raise no_database_error(settings)
    return service.database_url


def operator_settings(settings: Settings) -> tuple[Settings, set[str]]:
    """`settings` with what it lacks taken from the running local service (its database and
    generated secrets), and the environment names so taken."""
    if settings.database_url:
        return settings, set()
    service = running_local_service(settings.data_dir)
    if service is None:
        return settings, set()
    update: dict[str, object] = {"database_url": service.database_url}
    taken = {"DATABASE_URL"}
    for name in local.GENERATED_SECRETS:
        if getattr(settings, name.lower()) is None and service.secrets.get(name):
            update[name.lower()] = SecretStr(service.secrets[name])
            taken.add(name)
    return settings.model_copy(update=update), taken


def _configured_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def shell_exports(settings: Settings) -> list[str]:
    """`export NAME=value` lines for a shell: the database, the base URL and the secrets,
    from this environment first, else from the running local service."""
    service = None if settings.database_url else running_local_service(settings.data_dir)
    if service is None and not settings.database_url:
        raise no_database_error(settings)
    values: dict[str, str | None] = {
        "DATABASE_URL": settings.database_url or (service.database_url if service else None),
        BASE_URL_VARIABLE: (service.url if service else None) or _configured_url(settings),
    }
    for name in local.GENERATED_SECRETS:
        own = os.environ.get(name)
        values[name] = own or (service.secrets.get(name) if service else None)
    if service is not None:
        values["INGEST_DATA_DIR"] = str(service.data_dir)
    return [f"export {name}={shlex.quote(value)}" for name, value in values.items() if value]
