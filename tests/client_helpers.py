"""Shared by the client tests: the TypeScript package built once, its tests run with Node's own
runner against a live service, a proxy that loses answers, and row counts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import APP_TOKEN, CRON_SECRET

TS_CLIENT = Path(__file__).resolve().parent.parent / "clients" / "typescript"
NODE_MISSING = "node not found on PATH: the TypeScript client's tests did not run"


def npm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["npm", *args], cwd=TS_CLIENT, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="session")
def ts_client_built() -> Path:
    """The TypeScript package, its dev dependencies installed (`npm ci`, from its lock file)
    and built. Skipped, saying so, where there is no Node."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip(NODE_MISSING)
    if not (TS_CLIENT / "node_modules" / ".package-lock.json").exists():
        installed = npm("ci", "--no-audit", "--no-fund")
        assert installed.returncode == 0, installed.stdout + installed.stderr
    built = npm("run", "build")
    assert built.returncode == 0, built.stdout + built.stderr
    return TS_CLIENT


@dataclass
class NodeRun:
    returncode: int
    output: str
    report: dict[str, Any]


async def run_node_tests(
    test_file: str, *, url: str, rule_id: str, tmp_path: Path, timeout: float = 90, **env: str
) -> NodeRun:
    """`node --test test/<test_file>` against the service at `url`; the test's report (what it
    hands back for the database checks) is read from a file it writes."""
    report = tmp_path / f"{test_file}.report.json"
    environment = {
        **os.environ,
        "INGEST_URL": url,
        "INGEST_APP_TOKEN": APP_TOKEN,
        "INGEST_CRON_SECRET": CRON_SECRET,
        "INGEST_RULE_ID": rule_id,
        "INGEST_REPORT": str(report),
        **env,
    }
    process = await asyncio.create_subprocess_exec(
        "node",
        "--test",
        "--test-reporter=spec",
        f"test/{test_file}",
        cwd=TS_CLIENT,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
    text = output.decode(errors="replace")
    print(text)
    data = json.loads(report.read_text()) if report.exists() else {}
    return NodeRun(process.returncode if process.returncode is not None else -1, text, data)


async def stored_keys(url: str) -> Counter[str]:
    """Stored events per idempotency key (every key should count 1)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT idempotency_key FROM events")
    finally:
        await conn.close()
    return Counter(r["idempotency_key"] for r in rows)


async def event_requests(url: str) -> int:
    """Requests to POST /ingest/events that stored a batch (each writes one audit row)."""
    conn = await asyncpg.connect(url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'events.accepted'"
        )
    finally:
        await conn.close()
    return count


class LosingProxy:
    """A TCP proxy in front of the service that cuts the caller's connection as the first bytes
    of some answers come back (`lose`: their numbers, 0 the first answer): the service has done
    the work (it answers after the commit), the caller never hears of it."""

    def __init__(self, upstream_port: int, *, lose: set[int]) -> None:
        self.upstream_port = upstream_port
        self.to_lose = lose
        self.answers = 0
        self.lost = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        awaiting = asyncio.Event()  # a request went up: the next bytes down start its answer

        async def requests() -> None:
            while chunk := await client_r.read(65536):
                up_w.write(chunk)
                await up_w.drain()
                awaiting.set()

        sending = asyncio.create_task(requests())
        try:
            with contextlib.suppress(ConnectionError):
                while chunk := await up_r.read(65536):
                    if awaiting.is_set():
                        awaiting.clear()
                        self.answers += 1
                        if self.answers - 1 in self.to_lose:
                            self.lost += 1
                            return  # drop the answer and cut the connection
                    client_w.write(chunk)
                    await client_w.drain()
        finally:
            sending.cancel()
            for writer in (client_w, up_w):
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sending


@contextlib.asynccontextmanager
async def losing_proxy(upstream_url: str, *, lose: set[int]) -> AsyncIterator[LosingProxy]:
    proxy = LosingProxy(int(upstream_url.rsplit(":", 1)[1]), lose=lose)
    proxy.server = await asyncio.start_server(proxy._serve, "127.0.0.1", 0)
    try:
        yield proxy
    finally:
        proxy.server.close()
        await proxy.server.wait_closed()
