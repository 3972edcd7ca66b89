"""`make bench-scale`: does the cost of intake and of the rollups stay flat as history grows?

Three databases on one server, in one run: BIG holds 30 days of generated history
(BENCH_SCALE_EVENTS, default 30 M, with the intake state such traffic leaves: bench.history),
MEDIUM a tenth of it (BENCH_SCALE_MEDIUM_EVENTS; 0 leaves it out), EMPTY none. The server is
an embedded PostgreSQL configured for the load (SERVER_SETTINGS), unless BENCH_DATABASE_URL
names one, which then runs as it is configured. DATABASE_URL is not used: it is often the local
service's own cluster (`ingest env` exports it), at PostgreSQL's defaults, and the run builds
about 11 GB of databases. Each database gets its own
`ingest serve` (as `make bench` runs it, with RATE_LIMIT_BACKEND=postgres so that the rate-limit
buckets are intake state in the database too). Then, in this order:

1. the full 30-day rollup on BIG and MEDIUM, exactly as the task runs it (bench.rollup);
2. intake in alternating rounds (BENCH_SCALE_ROUNDS, 5, of BENCH_SCALE_SECONDS, 10, after a
   warm-up of BENCH_SCALE_WARMUP_SECONDS each, not counted): batches of 100 at
   64 connections into each database in turn, then at 16 connections for p99 into BIG and EMPTY,
   the order rotated every round, so a neighbour's load lands on all of them alike. The load
   generator is `make bench`'s wrk script, with idempotency keys shaped like the clients' UUIDs;
3. on BIG and MEDIUM: the refresh the schedule runs every 5 minutes (today is dirty), the
   nightly rollup (the two days before today, plus the dirty days), the 30-day cascade of one
   late event for the oldest day, the no-op refresh;
4. the idempotency keys of the oldest day purged (what `purge_event_state` deletes over a day),
   and retention of the oldest day (`events_drop_partitions_before`, as `purge_old_events` runs
   it): time, the table's size before and after, dead rows left in the partitions.

Writes bench/results/scale.json and prints a Markdown table (the README's Performance section
shows it), with the extrapolation to 10 x BIG from the MEDIUM and BIG sizes (`extrapolate`).
`make bench-scale-smoke` runs it at toy sizes. The databases are dropped at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from app.rollup import Reason, run_rollup
from app.rollup.run import open_rollup_db
from app.settings import Settings
from app.sql import queries
from bench import harness, history, ingest, rollup
from bench.harness import connected

RESULTS = Path(__file__).resolve().parent / "results"
EVENTS = int(os.environ.get("BENCH_SCALE_EVENTS", "30000000"))
MEDIUM_EVENTS = int(os.environ.get("BENCH_SCALE_MEDIUM_EVENTS", str(EVENTS // 10)))
SECONDS = int(os.environ.get("BENCH_SCALE_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_SCALE_ROUNDS", "5"))
WARMUP_S = int(os.environ.get("BENCH_SCALE_WARMUP_SECONDS", "10"))
POOL = int(os.environ.get("BENCH_POOL_SIZE", "8"))
# The embedded server is configured for the load (docs/scaling.md, "Server settings for the
# working set"): a buffer cache that holds intake's working set, where PostgreSQL's default of
# 128MB does not, and room for the WAL of a few minutes of intake between checkpoints, where the
# default 1GB forces one every 15-30 s. A server given by BENCH_DATABASE_URL keeps its own
# configuration; the results say what it had.
SERVER_SETTINGS = {
    "shared_buffers": os.environ.get("BENCH_SCALE_SHARED_BUFFERS", "2GB"),
    "max_wal_size": os.environ.get("BENCH_SCALE_MAX_WAL_SIZE", "8GB"),
}
# Only a server named for the benchmark: DATABASE_URL is the service's (module docstring).
SERVER_URL_VARIABLES = ("BENCH_DATABASE_URL",)
REPORTED_SETTINGS = ("server_version", "shared_buffers", "max_wal_size", "checkpoint_timeout")
KEY_PURGE_BATCH = 10_000

SIZE_OF_EVENTS = """
SELECT sum(pg_total_relation_size(relid))::bigint FROM pg_partition_tree('events')
"""
DEAD_ROWS = """
SELECT coalesce(sum(s.n_dead_tup), 0)::bigint
FROM pg_partition_tree('events') t JOIN pg_stat_user_tables s ON s.relid = t.relid
"""


BLOCKS_READ = "SELECT blks_read FROM pg_stat_database WHERE datname = current_database()"


def _section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _show(figures: dict[str, Any]) -> None:
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}))


def _combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one database as one: rates and CPU weighted by time, p99 the median round's."""
    duration = sum(r["duration_s"] for r in rounds)
    out: dict[str, Any] = {"rounds": len(rounds), "duration_s": round(duration, 1)}
    for key in ("events_stored_per_s", "service_cpu_ms_per_request", "postgres_cpu_ms_per_request"):
        out[key] = sum(r[key] * r["duration_s"] for r in rounds) / duration
    requests = sum(r["requests"] for r in rounds)
    out["blocks_read_per_request"] = sum(r["blocks_read"] for r in rounds) / max(1, requests)
    out["p99_ms"] = statistics.median(r["p99_ms"] for r in rounds)
    out["p99_ms_rounds"] = [round(r["p99_ms"], 1) for r in rounds]
    out["errors"] = sum(r.get("errors_status", 0) + r.get("errors_timeout", 0) for r in rounds)
    return out


def _batches(svc: harness.Service, url: str, *, connections: int) -> dict[str, Any]:
    """One round of batches, with the blocks the database read from outside its buffer cache
    meanwhile (pg_stat_database.blks_read: the OS page cache or the disk)."""
    before = int(harness.query_value(url, BLOCKS_READ))
    figures = ingest.http_batches(
        svc, url, rules=rollup.RULES, connections=connections, seconds=SECONDS
    )
    figures["blocks_read"] = int(harness.query_value(url, BLOCKS_READ)) - before
    return figures


def intake_rounds(services: dict[str, harness.Service], urls: dict[str, str]) -> dict[str, Any]:
    """Batches of 100 at 64 connections into every database, at 16 into BIG and EMPTY, in
    rounds whose order rotates; first a short warm-up of each (not counted)."""
    names = list(services)
    for name in names:
        ingest.http_batches(
            services[name], urls[name], rules=rollup.RULES, connections=64, seconds=WARMUP_S
        )
    c64: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    c16: dict[str, list[dict[str, Any]]] = {n: [] for n in ("big", "empty")}
    for n in range(ROUNDS):
        order = names[n % len(names) :] + names[: n % len(names)]
        for name in order:
            _section(f"{name}: batches of 100, 64 connections, {SECONDS}s (round {n + 1}/{ROUNDS})")
            c64[name].append(_batches(services[name], urls[name], connections=64))
            _show(c64[name][-1])
        for name in order:
            if name not in c16:
                continue
            _section(f"{name}: batches of 100, 16 connections, {SECONDS}s (round {n + 1}/{ROUNDS})")
            c16[name].append(_batches(services[name], urls[name], connections=16))
            _show(c16[name][-1])
    return {
        "c64": {name: _combine(r) for name, r in c64.items()},
        "c16": {name: _combine(r) for name, r in c16.items()},
    }


async def time_refresh_and_nightly(db_url: str, *, today: date) -> dict[str, Any]:
    """The refresh the schedule runs every 5 minutes under traffic (today is dirty: its new
    events), then the nightly run (the two days before today, plus the dirty days)."""
    settings = Settings(database_url=db_url)
    db = await open_rollup_db(settings)
    try:
        started = time.perf_counter()
        refresh = await run_rollup(db, settings=settings, actor="bench")
        refresh_s = time.perf_counter() - started
        started = time.perf_counter()
        nightly = await run_rollup(
            db,
            settings=settings,
            end_day=today - timedelta(days=1),
            days=2,
            reason=Reason.SCHEDULE,
            actor="bench",
        )
        nightly_s = time.perf_counter() - started
    finally:
        await db.close()
    return {
        "refresh_today_s": round(refresh_s, 2),
        "refresh_today_days": len(refresh.days) + len(refresh.refreshed_days),
        "nightly_s": round(nightly_s, 2),
        "nightly_days": len(nightly.days) + len(nightly.refreshed_days),
    }


async def purge_keys_of_day(db_url: str, *, day: date) -> dict[str, Any]:
    """The idempotency keys of events before the end of `day`: what the hourly purge deletes
    over one day once `day` is older than the key horizon."""
    async with connected(db_url) as conn:
        started = time.perf_counter()
        deleted = 0
        while True:
            batch = await queries.events_purge_idempotency_keys(
                conn, before=rollup.utc_midnight(day + timedelta(days=1)), batch=KEY_PURGE_BATCH
            )
            deleted += batch
            if batch < KEY_PURGE_BATCH:
                break
        elapsed = time.perf_counter() - started
    return {"key_purge_day_s": round(elapsed, 2), "key_purge_day_keys": deleted}


async def time_retention(db_url: str, *, day: date) -> dict[str, Any]:
    """Retention of `day`, the oldest: its partition dropped as the retention task drops it.
    Dead rows in the partitions before and after (intake leaves a few: the batches in flight
    when wrk stops are cancelled and rolled back)."""
    async with connected(db_url, command_timeout=600) as conn:
        size_before = await conn.fetchval(SIZE_OF_EVENTS)
        dead_before = await conn.fetchval(DEAD_ROWS)
        started = time.perf_counter()
        removed = await queries.events_drop_partitions_before(
            conn, before=rollup.utc_midnight(day + timedelta(days=1))
        )
        elapsed = time.perf_counter() - started
        size_after = await conn.fetchval(SIZE_OF_EVENTS)
    await asyncio.sleep(1)  # statistics reach pg_stat_user_tables within a second
    async with connected(db_url) as conn:
        dead = await conn.fetchval(DEAD_ROWS)
    return {
        "retention_day_ms": round(elapsed * 1000, 1),
        "retention_day_events": removed,
        "events_bytes_before": size_before,
        "events_bytes_after": size_after,
        "dead_rows_before": dead_before,
        "dead_rows_after": dead,
    }


async def state_sizes(db_url: str) -> dict[str, Any]:
    async with connected(db_url) as conn:
        row = await queries.events_state_sizes(conn)
        events = await conn.fetchval("SELECT count(*) FROM events")
    return {**dict(row), "events": events}


def measure_database(name: str, url: str, *, events: int, out: dict[str, Any]) -> None:
    """History, then the full 30-day rollup (BIG and MEDIUM only)."""
    if not events:
        asyncio.run(_seed(url))
        return
    _section(f"{name}: {events:,} events of history")
    out["history"] = asyncio.run(history.generate(url, events=events))
    _show(out["history"])
    _section(f"{name}: full 30-day rollup")
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    elapsed, report = asyncio.run(rollup.time_rollup(url, end_day=yesterday))
    out["full_rollup_s"] = round(elapsed, 2)
    out["full_rollup_stage_s"] = round(report["stageMs"] / 1000, 2)
    out["full_rollup_apply_s"] = round(report["applyMs"] / 1000, 2)


async def _seed(url: str) -> None:
    async with connected(url) as conn:
        await rollup.seed_catalogue(conn)


def measure_after_intake(name: str, url: str, out: dict[str, Any]) -> None:
    today = datetime.now(UTC).date()
    oldest = date.fromisoformat(out["history"]["history_first_day"])
    _section(f"{name}: refresh of today, nightly rollup, cascade, no-op refresh")
    out.update(asyncio.run(time_refresh_and_nightly(url, today=today)))
    out.update(asyncio.run(rollup.time_refreshes(url, first_day=oldest)))
    _section(f"{name}: a day of idempotency keys purged, retention of the oldest day")
    out.update(asyncio.run(purge_keys_of_day(url, day=oldest)))
    out.update(asyncio.run(time_retention(url, day=oldest)))
    _show({k: v for k, v in out.items() if not isinstance(v, dict)})


def main() -> int:
    started = time.perf_counter()
    sizes = {"big": EVENTS, "medium": MEDIUM_EVENTS, "empty": 0}
    if not MEDIUM_EVENTS:
        del sizes["medium"]
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "seconds_per_round": SECONDS,
        "rounds": ROUNDS,
        "load_average_at_start": os.getloadavg()[0],
        "databases": {name: {"history_events_asked": n} for name, n in sizes.items()},
    }
    harness.ensure_wrk()
    os.environ["BENCH_RANDOM_KEYS"] = "1"  # read by bench/events.lua
    work_dir = Path(tempfile.mkdtemp(prefix="ingest-bench-scale-"))
    dbs = results["databases"]
    try:
        server = harness.postgres_server(SERVER_SETTINGS, url_variables=SERVER_URL_VARIABLES)
        if not harness.given_server_url(SERVER_URL_VARIABLES) and os.environ.get("DATABASE_URL"):
            print(
                "DATABASE_URL is set and not used: the scale benchmark runs on an embedded "
                "PostgreSQL configured for the load unless BENCH_DATABASE_URL names a server",
                flush=True,
            )
        with server as admin_url, ExitStack() as stack:
            urls = {n: stack.enter_context(harness.fresh_database(admin_url)) for n in sizes}
            results["postgres"] = harness.server_settings(admin_url, REPORTED_SETTINGS)
            for name, events in sizes.items():
                measure_database(name, urls[name], events=events, out=dbs[name])
            services = {}
            for name, url in urls.items():
                (work_dir / name).mkdir()
                services[name] = stack.enter_context(
                    harness.service(
                        url,
                        workers=1,
                        pool_size=POOL,
                        log_dir=work_dir / name,
                        extra_env={"RATE_LIMIT_BACKEND": "postgres"},
                    )
                )
            results["intake"] = intake_rounds(services, urls)
            for name, url in urls.items():
                dbs[name]["state_after_intake"] = asyncio.run(state_sizes(url))
            for name in sizes:
                if sizes[name]:
                    measure_after_intake(name, urls[name], dbs[name])
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    results["load_average_at_end"] = os.getloadavg()[0]
    derive(results)
    results["bench_seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print("\n" + table(results))
    print(f"\nwritten to {RESULTS / 'scale.json'} in {results['bench_seconds']} s")
    return 0


def derive(r: dict[str, Any]) -> None:
    """Ratios of BIG to EMPTY, and the extrapolation to 10 x BIG from MEDIUM and BIG."""
    c64, c16, dbs = r["intake"]["c64"], r["intake"]["c16"], r["databases"]
    big, empty = c64["big"], c64["empty"]
    r["intake_big_vs_empty"] = big["events_stored_per_s"] / empty["events_stored_per_s"]
    r["postgres_cpu_empty_vs_big"] = (
        empty["postgres_cpu_ms_per_request"] / big["postgres_cpu_ms_per_request"]
        if big["postgres_cpu_ms_per_request"]
        else None
    )
    r["p99_big_vs_empty"] = c16["big"]["p99_ms"] / c16["empty"]["p99_ms"]
    if "medium" in dbs:
        r["extrapolation"] = extrapolate(r)


def extrapolate(r: dict[str, Any]) -> dict[str, Any]:
    """Each cost as fixed + per-event x events of history, through the MEDIUM and BIG points,
    evaluated at 10 x BIG. Linear, not a power law: a rollup is a fixed part (boards, windows)
    plus a part per event, and a power law through two such points over-weights the fixed one."""
    c64, dbs = r["intake"]["c64"], r["databases"]
    sizes = {n: dbs[n]["history"]["history_events"] for n in ("medium", "big")}
    points = {
        "intake_postgres_cpu_ms_per_batch": {
            n: c64[n]["postgres_cpu_ms_per_request"] for n in sizes
        },
        **{
            key: {n: dbs[n][key] for n in sizes}
            for key in ("full_rollup_s", "refresh_today_s", "nightly_s", "rollup_cascade_s")
        },
    }
    out: dict[str, Any] = {"medium_events": sizes["medium"], "big_events": sizes["big"]}
    for name, y in points.items():
        slope = (y["big"] - y["medium"]) / (sizes["big"] - sizes["medium"])
        fixed = y["medium"] - slope * sizes["medium"]
        out[name] = {
            "medium": round(y["medium"], 3),
            "big": round(y["big"], 3),
            "fixed": round(fixed, 3),
            "per_million_events": round(slope * 1e6, 4),
            "ten_x_big": round(fixed + slope * 10 * sizes["big"], 2),
        }
    return out


EXTRAPOLATED = {
    "intake_postgres_cpu_ms_per_batch": "PostgreSQL CPU per intake batch, ms",
    "full_rollup_s": "full 30-day rollup, s",
    "refresh_today_s": "refresh of today, s",
    "nightly_s": "nightly rollup, s",
}


def _mb(n: float) -> str:
    return f"{n / 1024 / 1024:,.0f} MB"


def table(r: dict[str, Any]) -> str:
    """The figures as a Markdown table (the README's Performance section shows it)."""
    c64, c16, dbs = r["intake"]["c64"], r["intake"]["c16"], r["databases"]
    big = dbs["big"]
    events_m = big["history"]["history_events"] / 1e6
    cpu = r["postgres_cpu_empty_vs_big"]
    server = r["postgres"]
    rows = [
        (
            "server",
            f"PostgreSQL {server['server_version'].split()[0]}, shared_buffers "
            f"{server['shared_buffers']}, max_wal_size {server['max_wal_size']}, "
            f"checkpoint_timeout {server['checkpoint_timeout']}",
        ),
        (
            f"intake, batches of 100, 64 connections: big ({events_m:.1f} M events) / empty",
            f"{c64['big']['events_stored_per_s']:,.0f} / {c64['empty']['events_stored_per_s']:,.0f}"
            f" events/s, **{r['intake_big_vs_empty']:.2f} x** (target >= 0.9)",
        ),
        (
            "PostgreSQL CPU per batch of 100: big / empty",
            f"{c64['big']['postgres_cpu_ms_per_request']:.2f} / "
            f"{c64['empty']['postgres_cpu_ms_per_request']:.2f} ms"
            + (f", empty / big **{cpu:.2f} x** (target >= 0.9)" if cpu else ""),
        ),
        (
            "p99 of a batch of 100 at 16 connections: big / empty",
            f"{c16['big']['p99_ms']:.1f} / {c16['empty']['p99_ms']:.1f} ms, "
            f"**{r['p99_big_vs_empty']:.2f} x** (target <= 1.2)",
        ),
        (
            "blocks read past the buffer cache per batch, 64 connections: big / empty",
            f"{c64['big']['blocks_read_per_request']:.1f} / "
            f"{c64['empty']['blocks_read_per_request']:.1f}",
        ),
        (
            f"full 30-day rollup, big ({events_m:.1f} M events)",
            f"**{big['full_rollup_s']:.1f} s** (target < 30)",
        ),
        (
            "refresh with today dirty (every 5 minutes under traffic), big",
            f"{big['refresh_today_s']:.1f} s",
        ),
        (
            "nightly rollup (2 days + dirty days), big",
            f"{big['nightly_s']:.1f} s ({big['nightly_days']} days)",
        ),
        (
            "late event for the oldest day: refresh with its cascade, big",
            f"{big['rollup_cascade_s']:.1f} s ({big['rollup_cascade_days']} days); "
            f"no-op refresh {big['rollup_noop_ms']:.0f} ms",
        ),
        (
            "retention of one day (drop of its partition), big",
            f"{big['retention_day_ms']:.0f} ms for {big['retention_day_events']:,} events; "
            f"events {_mb(big['events_bytes_before'])} -> {_mb(big['events_bytes_after'])}, "
            f"dead rows in the partitions {big['dead_rows_before']:,} -> "
            f"{big['dead_rows_after']:,}",
        ),
        (
            "idempotency keys of one day purged, big",
            f"{big['key_purge_day_keys']:,} keys in {big['key_purge_day_s']:.1f} s",
        ),
    ]
    state = big["state_after_intake"]
    keys_mb = _mb(state["idempotency_keys_bytes"])
    rows.append(
        (
            "intake state after the run, big",
            f"{state['idempotency_keys']:,} idempotency keys ({keys_mb}), "
            f"{state['rate_limit_buckets']} rate-limit buckets, "
            f"{state['default_partition_events']} events in the default partition, "
            f"{state['partitions']} partitions",
        )
    )
    if "medium" in dbs:
        medium = dbs["medium"]
        rows += [
            (
                f"medium ({medium['history']['history_events'] / 1e6:.1f} M events): intake, "
                "PostgreSQL CPU per batch, full rollup",
                f"{c64['medium']['events_stored_per_s']:,.0f} events/s, "
                f"{c64['medium']['postgres_cpu_ms_per_request']:.2f} ms, "
                f"{medium['full_rollup_s']:.1f} s",
            ),
        ]
        for name, label in EXTRAPOLATED.items():
            m = r["extrapolation"][name]
            rows.append(
                (
                    f"10 x big, extrapolated: {label}",
                    f"{m['ten_x_big']:,} (medium {m['medium']:,}, big {m['big']:,}; "
                    f"{m['per_million_events']:+} per M events)",
                )
            )
    rows.append(
        (
            "load average (1 min) at start / end",
            f"{r['load_average_at_start']:.1f} / {r['load_average_at_end']:.1f} (2 cores)",
        )
    )
    lines = ["| measure | result |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
