"""The `ingest` command: run, serve, worker, migrate, and the operator sub-commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import logging.config
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from multiprocessing import resource_tracker
from typing import Any

from pydantic import ValidationError

from app import __version__, local, local_service
from app.errors import IngestError
from app.logs import logging_config
from app.migrate import migrate_url
from app.settings import Settings

logger = logging.getLogger("ingest.cli")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise SystemExit(f"ingest: invalid configuration: {problems}") from exc


@contextlib.contextmanager
def local_database() -> Iterator[Settings]:
    """Settings for local mode: embedded PostgreSQL and generated secrets when not configured."""
    settings = _settings()
    if settings.database_url:
        yield settings
        return
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    with local.own_data_dir(data_dir):
        cluster = local.EmbeddedCluster.in_data_dir(data_dir)
        print(f"DATABASE_URL is not set: starting embedded PostgreSQL in {cluster.pgdata}")
        try:
            url = local.start_embedded_postgres(cluster, data_dir)
            os.environ["DATABASE_URL"] = url
            generated = local.load_or_create_secrets(data_dir)
            os.environ.update(generated)
            _print_local_banner(url, generated)
            settings = _settings()
            local_service.record_service_url(data_dir, f"http://{settings.host}:{settings.port}")
            yield settings
        finally:
            local_service.forget_service_url(data_dir)
            with _sigterm_held():
                local.stop_embedded_postgres(cluster, data_dir)
            print("embedded PostgreSQL stopped")


@contextlib.contextmanager
def _sigterm_held() -> Iterator[None]:
    """Hold SIGTERM (pending, not lost) while the server starts, or the cluster stops.

    Every process started meanwhile inherits the block: pg_ctl, Sanic's state-sharing manager
    process and its workers. So a SIGTERM to the whole process group (a terminal, systemd, a
    supervisor) reaches only this process: it cannot leave a half-started cluster nobody
    stops, kill the manager process under Sanic (the BrokenPipeError it then raised), or
    land as an exception inside whatever code runs at that instant (raised in a finalizer it
    was swallowed, and the service went on serving). It takes effect at `_unless_stopping()`,
    or in Sanic's own handler once the workers serve (app/server.py,
    `_take_sigterm_once_workers_started`).
    """
    # multiprocessing's resource tracker unblocks SIGTERM in this process when it starts, so
    # it starts first (Sanic's first process would start it).
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _unless_stopping() -> None:
    """Unwind here when a SIGTERM came while it was held."""
    if signal.SIGTERM in signal.sigpending():
        signal.sigtimedwait({signal.SIGTERM}, 0)  # consumed: it must not land again later
        raise Terminated


def _print_local_banner(url: str, generated: dict[str, str]) -> None:
    print(f"  DATABASE_URL={url}")
    for name, value in generated.items():
        print(f"  {name}={value}")
    if generated:
        print("  (local-mode secrets, generated once and kept in the data folder)")
    print('  In another shell, in the checkout: eval "$(.venv/bin/ingest env)" puts them there')


def _serve(settings: Settings, *, run_worker: bool, workers: int) -> None:
    """Sanic's workers (called with SIGTERM held: Sanic's handler takes it once they serve)."""
    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from app.server import create_app

    # Each Sanic worker is a process: metrics are shared through prometheus-client's
    # multiprocess files in a folder made fresh for this server run.
    metrics_dir = tempfile.mkdtemp(prefix="ingest-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    loader = AppLoader(factory=functools.partial(create_app, run_worker=run_worker, freeze_gc=True))
    app = loader.load()
    app.prepare(
        host=settings.host,
        port=settings.port,
        workers=workers,
        motd=False,
        access_log=False,
    )
    try:
        Sanic.serve(primary=app, app_loader=loader)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _log_reconciliation(settings: Settings) -> None:
    """Once per start of a process that runs the periodic tasks: is reconciliation on?"""
    from app import stripe_reconcile

    line = f"Stripe reconciliation {stripe_reconcile.describe(settings)}"
    logger.log(logging.INFO if stripe_reconcile.enabled(settings) else logging.WARNING, line)


def cmd_run(args: argparse.Namespace) -> int:
    with _sigterm_held(), local_database() as settings:
        _unless_stopping()
        print(asyncio.run(migrate_url(settings.database_url or "")).summary())
        _log_reconciliation(settings)
        _unless_stopping()
        print(f"serving on http://{settings.host}:{settings.port} (Ctrl-C to stop)")
        _serve(settings, run_worker=True, workers=args.workers or settings.web_workers)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings()
    settings.require_production_ready()
    with _sigterm_held():
        _serve(settings, run_worker=False, workers=args.workers or settings.web_workers)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    url = local_service.resolve_database_url(_settings())
    print(asyncio.run(migrate_url(url)).summary())
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings, _ = local_service.operator_settings(_settings())
    local_service.resolve_database_url(settings)
    _log_reconciliation(settings)
    asyncio.run(_run_worker(settings, queues=args.queues, concurrency=args.concurrency))
    return 0


async def _run_worker(
    settings: Settings, *, queues: list[str] | None, concurrency: int | None
) -> None:
    import jobs  # the composition root of the worker process
    from app.resources import open_worker_resources

    concurrency = concurrency or settings.worker_concurrency
    proc_app = jobs.create_app(settings.database_url or "")
    res = await open_worker_resources(settings, jobs=proc_app, max_size=concurrency + 1)
    try:
        async with proc_app.open_async():
            options: dict[str, Any] = {"queues": queues} if queues else {}
            await proc_app.run_worker_async(
                concurrency=concurrency,
                update_heartbeat_interval=settings.worker_heartbeat_s,
                stalled_worker_timeout=settings.jobs_stalled_after_s,
                additional_context={"resources": res},
                **options,
            )
    finally:
        await res.db.close()


def build_parser() -> argparse.ArgumentParser:
    from app.commands import add_all

    parser = argparse.ArgumentParser(prog="ingest", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="local mode: migrate, then HTTP plus an in-process worker")
    run.add_argument("--workers", type=int, help="Sanic worker processes (default WEB_WORKERS)")
    run.set_defaults(func=cmd_run)

    serve = sub.add_parser("serve", help="production HTTP server (requires its secrets)")
    serve.add_argument("--workers", type=int, help="Sanic worker processes (default WEB_WORKERS)")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="Procrastinate worker only")
    worker.add_argument(
        "--queues",
        type=lambda s: [q for q in s.split(",") if q],
        default=None,
        help="comma-separated queues to listen on (default: all)",
    )
    worker.add_argument("--concurrency", type=int, default=None)
    worker.set_defaults(func=cmd_worker)

    mig = sub.add_parser("migrate", help="apply pending migrations and Procrastinate's schema")
    mig.set_defaults(func=cmd_migrate)

    add_all(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the server (starting, migrating, stopping): unwind like Ctrl-C, exit 0."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    logging.config.dictConfig(
        logging_config(level if level in logging.getLevelNamesMapping() else "INFO")
    )
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        result: Any = args.func(args)
    except IngestError as exc:
        print(f"ingest: {exc.message}", file=sys.stderr)
        return 2
    except Terminated:
        return 0  # a requested stop, whenever it came (Sanic's own handler says the same)
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
