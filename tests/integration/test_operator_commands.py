"""Operator commands: `ingest config` masks secrets; `ingest jobs` shows and retries jobs; `ingest
rollup` checks its date."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from app.cli import main
from app.commands.config import describe
from app.commands.jobs import _retry, _show
from app.errors import NotFound
from app.settings import Settings


def test_config_masks_every_secret_and_database_password() -> None:
    settings = Settings(
        database_url="postgresql://ingest:hunter2@db:5432/ingest",
        ingest_app_token="token-one,token-two",
        cron_secret="cron-value",
    )
    shown = dict(describe(settings))
    text = "\n".join(f"{k} {v}" for k, v in shown.items())
    for secret in ("hunter2", "token-one", "token-two", "cron-value"):
        assert secret not in text
    assert shown["DATABASE_URL"] == "postgresql://ingest:****@db:5432/ingest"
    assert shown["INGEST_APP_TOKEN"].startswith("set (2 value(s)")
    assert shown["PORT"] == "8787"


async def _fail_job(pool: asyncpg.Pool, job_id: int) -> None:
    await pool.execute("UPDATE procrastinate_jobs SET status = 'doing' WHERE id = $1", job_id)
    await pool.execute("UPDATE procrastinate_jobs SET status = 'failed' WHERE id = $1", job_id)


async def test_jobs_lists_depth_and_failed_jobs(
    proc_app: Any, pool: asyncpg.Pool, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = await proc_app.configure_task("purge_old_jobs").defer_async()
    await _fail_job(pool, failed)
    await proc_app.configure_task("retry_stalled_jobs").defer_async(timestamp=0)
    await _show(db_url, 10)
    out = capsys.readouterr().out
    assert "maintenance         todo     1" in out
    assert "maintenance         failed   1" in out
    assert f"#{failed} purge_old_jobs" in out


async def test_retry_defers_a_failed_job_again(
    proc_app: Any, pool: asyncpg.Pool, db_url: str
) -> None:
    failed = await proc_app.configure_task("purge_old_jobs").defer_async()
    await _fail_job(pool, failed)
    new_id = await _retry(db_url, failed)
    row = await pool.fetchrow(
        "SELECT task_name, status FROM procrastinate_jobs WHERE id = $1", new_id
    )
    assert new_id != failed
    assert (row["task_name"], row["status"]) == ("purge_old_jobs", "todo")


async def test_retry_refuses_jobs_that_did_not_fail(proc_app: Any, db_url: str) -> None:
    queued = await proc_app.configure_task("purge_old_jobs").defer_async()
    with pytest.raises(NotFound, match="only failed jobs"):
        await _retry(db_url, queued)
    with pytest.raises(NotFound, match="no job"):
        await _retry(db_url, 999_999)


@pytest.mark.parametrize("text", ["31/01/2026", "9999-12-31"])
def test_rollup_command_refuses_a_day_a_rollup_cannot_have(text: str) -> None:
    """The CLI takes the same days as POST /cron/rollup and the rollup job."""
    with pytest.raises(SystemExit) as exited:
        main(["rollup", "--date", text])
    assert exited.value.code == 2
