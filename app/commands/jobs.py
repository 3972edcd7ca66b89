"""`ingest jobs`: queue depth and failed jobs; `ingest jobs retry <id>` runs a failed job again."""

from __future__ import annotations

import argparse
import asyncio

from app import queue
from app.commands._common import database_url
from app.db import connect, init_connection
from app.errors import NotFound
from app.settings import Settings
from app.sql import queries


async def _show(url: str, limit: int) -> None:
    conn = await connect(url)
    try:
        await init_connection(conn)
        depth = [row async for row in queries.jobs_queue_depth(conn)]
        failed = [row async for row in queries.jobs_failed(conn, limit_=limit)]
    finally:
        await conn.close()
    print("queue               status   jobs")
    for row in depth or []:
        print(f"{row['queue_name']:<19} {row['status']:<8} {row['jobs']}")
    if not depth:
        print("(no queued, running or failed jobs)")
    print(f"\nfailed jobs (latest {limit}):")
    for row in failed:
        print(
            f"  #{row['id']} {row['task_name']} queue={row['queue_name']} "
            f"attempts={row['attempts']} at={row['failed_at']} args={row['args']}"
        )
    if not failed:
        print("  none")


async def _retry(url: str, job_id: int) -> int:
    """Defer a fresh job with the failed job's task, arguments and locks; return its id."""
    conn = await connect(url)
    try:
        await init_connection(conn)
        job = await queries.jobs_get(conn, job_id=job_id)
    finally:
        await conn.close()
    if job is None:
        raise NotFound(f"no job #{job_id}")
    if job["status"] != "failed":
        raise NotFound(
            f"job #{job_id} is {job['status']}, not failed; only failed jobs are retried"
        )
    args = job["args"] or {}
    app = queue.job_app(url)
    async with app.open_async():
        task = app.configure_task(
            job["task_name"],
            queue=job["queue_name"],
            lock=job["lock"],
            queueing_lock=job["queueing_lock"] or queue.argument_lock(job["task_name"], args),
        )
        return int(await task.defer_async(**args))


def _run(args: argparse.Namespace) -> int:
    url = database_url(Settings())
    if args.action == "retry":
        if args.job_id is None:
            raise SystemExit("ingest jobs retry: a job id is required")
        new_id = asyncio.run(_retry(url, args.job_id))
        print(f"job #{args.job_id} deferred again as job #{new_id}")
    else:
        asyncio.run(_show(url, args.limit))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("jobs", help="queue depth and failed jobs; retry a failed job")
    parser.add_argument("action", nargs="?", choices=["show", "retry"], default="show")
    parser.add_argument("job_id", nargs="?", type=int)
    parser.add_argument("--limit", type=int, default=20, help="failed jobs to list (default 20)")
    parser.set_defaults(func=_run)
