"""The Sanic application factory and its lifecycle listeners."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from typing import Any

from procrastinate.exceptions import ConnectorException
from psycopg_pool import AsyncConnectionPool
from sanic import Request, Sanic
from sanic.response import HTTPResponse

from app import metrics
from app.blueprints import all_blueprints
from app.db import UNAVAILABLE_ERRORS, create_pool
from app.donations import HANDLED_TYPES
from app.http import middleware, openapi
from app.http.errors import JsonErrorHandler
from app.logs import logging_config
from app.resources import Resources
from app.settings import Settings

logger = logging.getLogger("ingest.server")

APP_NAME = "ingest"
# The largest body any route accepts (crawl, 5 MiB); routes set tighter limits of their own.
MAX_BODY_BYTES = 5 * 1024 * 1024
WORKER_SHUTDOWN_GRACE_S = 30.0
WORKER_RESTART_DELAY_S = 1.0
WORKER_SERVING_WAIT_S = 60.0  # longest wait, after the acks, for every worker to serve


def create_app(
    settings: Settings | None = None,
    *,
    run_worker: bool = False,
    configure_logging: bool = True,
    freeze_gc: bool = False,
) -> Sanic:
    """Build the app. With `run_worker`, a Procrastinate worker runs inside the server process.
    With `freeze_gc` (the CLI's server processes, not servers started inside another program),
    each worker freezes its start-up objects once it serves (`_freeze_startup_objects`)."""
    settings = settings or Settings()
    app = Sanic(
        APP_NAME,
        log_config=logging_config(settings.log_level) if configure_logging else None,
        configure_logging=configure_logging,
    )
    app.config.REQUEST_MAX_SIZE = MAX_BODY_BYTES
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.ACCESS_LOG = False
    app.ctx.settings = settings
    app.ctx.run_worker = run_worker
    app.error_handler = JsonErrorHandler()
    middleware.register(app)
    app.on_response(_count_request, priority=50)
    for bp in all_blueprints():
        app.blueprint(bp)
    openapi.configure(app)
    app.main_process_ready(_stop_waiting_for_acks_on_shutdown)
    app.main_process_ready(_refuse_new_connections_on_shutdown)
    app.main_process_ready(_take_sigterm_once_workers_started)
    app.before_server_start(_open_resources)
    app.before_server_start(_zero_metrics)
    if freeze_gc:
        app.after_server_start(_freeze_startup_objects)
    app.after_server_stop(_close_resources)
    return app


def _freeze_startup_objects(app: Sanic) -> None:
    """Put what the worker allocated while starting (modules, models, routes, the OpenAPI
    document: about 87,000 objects) out of the garbage collector's reach.

    Under load, the event dicts of requests in flight survive the young collections, so full
    collections come every few seconds, and each walked every startup object too: 30-55 ms
    pauses of the whole worker, which set the p99 latency of 100-event batches. Frozen, a full
    collection walks only what the worker allocated since (docs/performance.md).
    """
    gc.collect()
    gc.freeze()


def _stop_waiting_for_acks_on_shutdown(app: Sanic) -> None:
    """Let a SIGTERM that lands while Sanic waits for its workers' start-up acks stop the server.

    Sanic's manager loops until every worker has acked; a shutdown signal in that window
    terminates the workers, which then never ack, and the main process spins forever (seen
    with a SIGTERM right after the first healthy answer). Counting "shutting down" as acked
    lets the manager go on to its normal join and stop.
    """
    manager = app.manager
    all_acked = manager._all_workers_ack
    manager._all_workers_ack = lambda: manager._shutting_down or all_acked()  # type: ignore[method-assign]


def _refuse_new_connections_on_shutdown(app: Sanic) -> None:
    """On SIGTERM, close the main process's copy of the listening socket.

    The workers close theirs when their graceful shutdown starts, but the main process holds
    the socket until every worker has exited: meanwhile the kernel kept accepting connections
    into the backlog that nobody would ever serve (clients waited for their timeout). Closed
    here, a connection attempt during the shutdown is refused at once; in-flight requests are
    on their own sockets and finish.
    """
    manager = app.manager
    shutdown = manager.shutdown

    def close_listeners_then_shutdown() -> None:
        for info in app.state.server_info:
            sock = info.settings.get("sock")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        shutdown()

    manager.shutdown = close_listeners_then_shutdown  # type: ignore[method-assign]


def _take_sigterm_once_workers_started(app: Sanic) -> None:
    """Unblock SIGTERM in the main process once every Sanic worker serves.

    `ingest serve`/`ingest run` hold SIGTERM while they start (app/cli.py, `_sigterm_held`),
    so the processes Sanic starts inherit the block: its state-sharing manager process and
    the workers. A SIGTERM to the whole process group then reaches only the main process,
    which stops the workers in order, as for a SIGTERM to it alone (before, the manager
    process died at once and the main process's next look at the workers' state raised
    BrokenPipeError). A SIGTERM that came meanwhile is delivered here, to Sanic's handler,
    when the workers serve: not to workers still starting. (Sanic's workers ack before they
    install their signal handlers, and briefly ignore SIGINT while they do: the SIGINT by which
    the main process stops a worker in that window was lost, and the worker served on after
    the main process had stopped.)
    """
    manager = app.manager
    wait_for_ack = manager.wait_for_ack

    def wait_for_ack_then_take_sigterm() -> None:
        wait_for_ack()
        deadline = time.monotonic() + WORKER_SERVING_WAIT_S
        while not _all_serving(manager) and time.monotonic() < deadline:
            time.sleep(0.02)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

    manager.wait_for_ack = wait_for_ack_then_take_sigterm  # type: ignore[method-assign]


def _zero_metrics(app: Sanic) -> None:
    """Every series with known label values, at 0 before the first request (app/metrics.py)."""
    routes = {(route.path, method) for route in app.router.routes for method in route.methods}
    metrics.zero_initialise(routes=sorted(routes), stripe_types=sorted(HANDLED_TYPES))


def _all_serving(manager: Any) -> bool:
    """Every server worker has its signal handlers and serves (or one died: stop waiting)."""
    if any(not process.is_alive() for process in manager.processes):
        return True
    states = [state for state in manager.worker_state.values() if state.get("server")]
    return len(states) == manager.num_server and all(s.get("serving") for s in states)


def _count_request(request: Request, response: HTTPResponse) -> None:
    """Request count and latency by route pattern (never the raw path: unbounded labels)."""
    route = request.route.path if request.route else "unmatched"
    started = getattr(request.ctx, "started", None)
    metrics.HTTP_REQUESTS.labels(route, request.method, str(response.status)).inc()
    if started is not None:
        metrics.HTTP_LATENCY.labels(route, request.method).observe(time.perf_counter() - started)


async def _open_pool(settings: Settings) -> Any:
    dsn = settings.database_url or ""
    max_size, timeout = settings.db_pool_max_size, settings.db_command_timeout_s
    try:
        return await create_pool(
            dsn,
            min_size=settings.db_pool_min_size,
            max_size=max_size,
            command_timeout=timeout,
            statement_cache_size=settings.db_statement_cache_size,
        )
    except UNAVAILABLE_ERRORS:
        # Start anyway: requests answer 503 until the database is back.
        logger.warning("database unreachable at start-up; serving 503 until it answers")
        return await create_pool(
            dsn,
            min_size=0,
            max_size=max_size,
            command_timeout=timeout,
            statement_cache_size=settings.db_statement_cache_size,
        )


async def _open_resources(app: Sanic) -> None:
    """The worker process's `Resources` (app.ctx.res): its pools, the job app, the limiter."""
    import jobs  # the composition root: the one place the HTTP side builds the job app

    settings: Settings = app.ctx.settings
    pool = await _open_pool(settings)
    # Procrastinate gets its own small psycopg pool, opened without waiting so that the
    # server starts (and answers 503) while the database is unreachable.
    app.ctx.jobs_pool = AsyncConnectionPool(
        settings.database_url or "",
        min_size=1,
        max_size=4,
        open=False,
        check=AsyncConnectionPool.check_connection,
        # A defer waits no longer for a connection than a request does for an asyncpg one.
        timeout=settings.db_acquire_timeout_s,
        # psycopg prepares a query run 5 times on a connection: with asyncpg's cache off
        # (DB_STATEMENT_CACHE_SIZE=0, a transaction pooler), so is this.
        kwargs={} if settings.db_statement_cache_size else {"prepare_threshold": None},
    )
    await app.ctx.jobs_pool.open(wait=False)
    job_app = jobs.create_app(settings.database_url or "")
    await job_app.open_async(app.ctx.jobs_pool)
    app.ctx.res = resources = Resources.build(settings, pool=pool, jobs=job_app)
    app.ctx.worker_task = None
    if app.ctx.run_worker:
        app.ctx.worker_task = asyncio.create_task(
            _run_worker_until_stopped(
                job_app,
                install_signal_handlers=False,
                concurrency=settings.worker_concurrency,
                shutdown_graceful_timeout=WORKER_SHUTDOWN_GRACE_S,
                update_heartbeat_interval=settings.worker_heartbeat_s,
                stalled_worker_timeout=settings.jobs_stalled_after_s,
                additional_context={"resources": resources},
            ),
            name="procrastinate-worker",
        )


async def _run_worker_until_stopped(proc_app: Any, **options: Any) -> None:
    """The in-process worker, started again after a database error instead of left dead while
    the server goes on serving: its first query can wait longer than DB_ACQUIRE_TIMEOUT_S for
    the job pool when webhook deliveries fill that pool at start-up (seen in
    tests/integration/test_races.py), and the database can go away for a while."""
    while True:
        try:
            await proc_app.run_worker_async(**options)
            return
        except ConnectorException:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the server is stopping: no new worker
            logger.warning(
                "in-process worker stopped on a database error; restarting", exc_info=True
            )
            await asyncio.sleep(WORKER_RESTART_DELAY_S)


async def _close_resources(app: Sanic) -> None:
    task = getattr(app.ctx, "worker_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if getattr(app.ctx, "jobs_pool", None) is not None:
        await app.ctx.jobs_pool.close()
    if getattr(app.ctx, "res", None) is not None:
        await app.ctx.res.db.close()
