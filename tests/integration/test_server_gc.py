"""The CLI's server processes freeze their start-up objects, so that full garbage collections
under load walk only what the worker allocated since (no 30-55 ms pauses of the worker).

Run in a child process: freezing is process-wide and must not touch the test runner's own
collector."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import APP_TOKEN, CRON_SECRET, WEBHOOK_SECRET, free_port

CHILD = """
import asyncio, gc, sys
from app.server import create_app
from app.settings import Settings

async def main(freeze_gc):
    app = create_app(Settings(), configure_logging=False, freeze_gc=freeze_gc)
    app.config.MOTD = False
    server = await app.create_server(
        host="127.0.0.1", port=int(sys.argv[2]), return_asyncio_server=True, access_log=False
    )
    await server.startup()
    await server.before_start()
    before = gc.get_freeze_count()
    await server.after_start()
    print(before, gc.get_freeze_count())
    await server.before_stop()
    server.close()
    await server.wait_closed()
    await server.after_stop()

asyncio.run(main(sys.argv[1] == "freeze"))
"""


def _frozen_counts(db_url: str, mode: str) -> tuple[int, int]:
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "INGEST_APP_TOKEN": APP_TOKEN,
        "CRON_SECRET": CRON_SECRET,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    before, after = out.stdout.split()[-2:]
    return int(before), int(after)


def test_served_worker_freezes_its_start_up_objects(db_url: str) -> None:
    before, after = _frozen_counts(db_url, "freeze")
    assert before == 0
    # Sanic, pydantic, the routes and the OpenAPI document: well over ten thousand objects.
    assert after > 10_000


def test_a_server_started_inside_another_program_leaves_its_collector_alone(db_url: str) -> None:
    assert _frozen_counts(db_url, "keep") == (0, 0)
