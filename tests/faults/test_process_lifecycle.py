"""The service as a process: local mode start and clean stop, production refusal, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

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
def test_local_mode_starts_embedded_postgres_and_stops_it_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [INGEST, "run"],
        env=_env(INGEST_DATA_DIR=str(tmp_path / "data"), PORT=str(port), LOG_LEVEL="WARNING"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        pgdata = tmp_path / "data" / "pg"
        assert (pgdata / "postmaster.pid").exists()
        secrets = (tmp_path / "data" / "local-secrets.json").read_text()
        assert "INGEST_APP_TOKEN" in secrets
        # Straight after the first healthy answer: Sanic may still be waiting for its workers'
        # start-up acks, a window where a signal once left the main process spinning.
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    assert "INGEST_APP_TOKEN=" in output  # printed for the newcomer
    assert "embedded PostgreSQL stopped" in output
    assert not (pgdata / "postmaster.pid").exists()
