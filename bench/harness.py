"""Pieces the benchmark is built from: a database, the service as a process, wrk, RSS sampling."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

from app.migrate import migrate_url

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOKEN = "bench-app-token"
CRON = "bench-cron-secret"
WEBHOOK_SECRET = "whsec_bench_secret"


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@asynccontextmanager
async def connected(url: str, **options: Any) -> AsyncIterator[asyncpg.Connection]:
    """A one-off connection (seeding, counting, timing a query), closed on the way out."""
    conn = await asyncpg.connect(url, **options)
    try:
        yield conn
    finally:
        await conn.close()


def query_value(url: str, sql: str, *args: Any) -> Any:
    """One value, from a one-off connection: the bench's bookkeeping between sections."""

    async def fetch() -> Any:
        async with connected(url) as conn:
            return await conn.fetchval(sql, *args)

    return asyncio.run(fetch())


def given_server_url(variables: tuple[str, ...]) -> str | None:
    """The first of these environment variables that is set and not empty."""
    return next((os.environ[v] for v in variables if os.environ.get(v)), None)


@contextmanager
def postgres_server(
    settings: dict[str, str] | None = None,
    *,
    url_variables: tuple[str, ...] = ("BENCH_DATABASE_URL", "DATABASE_URL"),
) -> Iterator[str]:
    """An admin URL: the first of `url_variables` set, else an embedded PostgreSQL (the
    cluster of local mode, `app.local`) in a temporary folder, started with `settings` and
    deleted afterwards. A server given by URL runs as it is configured (`server_settings`
    reports what it has)."""
    url = given_server_url(url_variables)
    if url:
        yield url
        return
    from app.local import EmbeddedCluster

    base = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    cluster = EmbeddedCluster.in_data_dir(base, settings=settings)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def server_settings(url: str, names: tuple[str, ...]) -> dict[str, str]:
    """The server's values of `names` (SHOW), for the results."""
    return {name: str(query_value(url, f"SHOW {name}")) for name in names}


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new, migrated database on the server, dropped afterwards."""
    name = f"ingest_bench_{uuid.uuid4().hex[:10]}"

    query_value(admin_url, f'CREATE DATABASE "{name}"')
    url = with_database(admin_url, name)
    try:
        asyncio.run(migrate_url(url))
        yield url
    finally:
        query_value(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    peak_rss: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def workers(self) -> list[psutil.Process]:
        """The Sanic worker processes (spawned children, not multiprocessing's helpers)."""
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        found = []
        for child in children:
            try:
                cmdline = " ".join(child.cmdline())
            except psutil.NoSuchProcess:
                continue
            if "resource_tracker" not in cmdline and "semaphore_tracker" not in cmdline:
                found.append(child)
        return found

    def sample_rss(self) -> None:
        for proc in self.workers():
            try:
                rss = proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            self.peak_rss[proc.pid] = max(self.peak_rss.get(proc.pid, 0), rss)

    def start_sampling(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.sample_rss()
                time.sleep(0.25)

        threading.Thread(target=loop, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


# Raised, not off: the limiter still runs on every request, as it does in production.
RAISED_RATE_LIMIT = 100_000_000


@contextmanager
def service(
    db_url: str,
    *,
    workers: int,
    pool_size: int,
    log_dir: Path,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Service]:
    """`ingest serve` in production mode on a free port: default log level (one JSON access
    line per request, written to `log_dir/service.log`), rate limits raised for the run."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "INGEST_APP_TOKEN": TOKEN,
        "CRON_SECRET": CRON,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "INFO",
        "RATE_LIMIT_EVENTS_PER_MINUTE": str(RAISED_RATE_LIMIT),
        "RATE_LIMIT_CRAWL_PER_MINUTE": str(RAISED_RATE_LIMIT),
        "DB_POOL_MAX_SIZE": str(pool_size),
        **(extra_env or {}),
    }
    log_path = log_dir / "service.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(BIN / "ingest"), "serve", "--workers", str(workers)],
            env=env,
            stdout=log,
            stderr=log,
        )
    svc = Service(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(svc.url + "/health", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the service did not become healthy; its log ends with:\n{tail}")
    svc.start_sampling()
    try:
        yield svc
    finally:
        svc.stop()


def ensure_wrk() -> str:
    """wrk from PATH, installed from Debian's packages when missing."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: installing it from Debian's packages (apt-get install wrk)")
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "wrk"], check=False, stdout=subprocess.DEVNULL
    )
    found = shutil.which("wrk")
    if not found:
        subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "wrk"], check=True, stdout=subprocess.DEVNULL
        )
        found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is required for the benchmark and could not be installed")
    return found


def run_wrk(
    url: str,
    *,
    script: str,
    connections: int,
    seconds: int,
    threads: int = 2,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run wrk with one of bench/*.lua; return the figures its `done` hook (report.lua) prints."""
    cmd = [
        ensure_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(ROOT / "bench" / script),
        url,
    ]
    out = subprocess.run(
        cmd,
        env={
            **os.environ,
            "BENCH_DIR": str(ROOT / "bench"),
            "BENCH_THREADS": str(threads),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line.removeprefix("BENCH_JSON "))
    raise RuntimeError("wrk printed no figures:\n" + out.stdout + out.stderr)


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process (e.g. a PostgreSQL backend), None if not visible."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
