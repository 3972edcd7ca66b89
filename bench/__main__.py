"""`make bench`: the service against raw PostgreSQL, side by side, in one run.

Absolute figures drift on a shared machine; the ratios measured in the same run hold. Sizes can be
reduced for a quick look with BENCH_SECONDS, BENCH_ROLLUP_EVENTS.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import harness, ingest

RESULTS = Path(__file__).resolve().parent / "results"
RULES = 10_000
SECONDS = int(os.environ.get("BENCH_SECONDS", "15"))
WORKERS = int(os.environ.get("BENCH_WEB_WORKERS", "1"))
POOL = int(os.environ.get("BENCH_POOL_SIZE", "8"))


def _section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def measure_http(db_url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with harness.service(db_url, workers=WORKERS, pool_size=POOL) as svc:
        _section(f"health, 16 connections, {SECONDS}s")
        health = harness.run_wrk(
            svc.url + "/health", script="get.lua", connections=16, seconds=SECONDS
        )
        out["health_rps"] = health["requests"] / health["duration_s"]
        for connections in (16, 64):
            _section(f"ingest, batches of 100, {connections} connections, {SECONDS}s")
            figures = ingest.http_batches(
                svc, db_url, rules=RULES, connections=connections, seconds=SECONDS
            )
            out[f"batch100_c{connections}"] = figures
            print(json.dumps(figures))
        _section(f"single-event requests, 16 connections, {SECONDS}s")
        single = ingest.http_batches(
            svc, db_url, rules=RULES, connections=16, seconds=SECONDS, batch=1
        )
        out["single_rps"] = single["requests_per_s"]
        svc.sample_rss()
        out["rss_mb_per_worker"] = max(svc.peak_rss.values(), default=0) / 1024 / 1024
    return out


def main() -> int:
    started = time.perf_counter()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "web_workers": WORKERS,
        "pool_size": POOL,
    }
    with harness.postgres_server() as admin_url, harness.fresh_database(admin_url) as db_url:
        asyncio.run(ingest.seed(db_url, rules=RULES))
        results.update(measure_http(db_url))
        _section("raw asyncpg unnest baseline, 4 connections")
        raw = asyncio.run(ingest.raw_unnest(db_url, rules=RULES, seconds=SECONDS))
        results["raw_events_per_s"] = raw["events_per_s"]
    c64 = results["batch100_c64"]
    results["ingest_events_per_s"] = c64["events_stored_per_s"]
    results["ingest_vs_raw"] = results["ingest_events_per_s"] / results["raw_events_per_s"]
    results["p99_ms_batch100_c16"] = results["batch100_c16"]["p99_ms"]
    results["single_vs_health"] = results["single_rps"] / results["health_rps"]
    results["bench_seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return 0


def print_table(r: dict[str, Any]) -> None:
    rows = [
        ("ingest events/s (batch 100, c64)", f"{r['ingest_events_per_s']:,.0f}"),
        ("raw unnest events/s (4 conns)", f"{r['raw_events_per_s']:,.0f}"),
        ("ingest / raw", f"{r['ingest_vs_raw']:.2f}x  (target >= 0.7)"),
        (
            "p50 / p99 ms, batch 100, c16",
            f"{r['batch100_c16']['p50_ms']:.1f} / {r['p99_ms_batch100_c16']:.1f}"
            "  (target p99 < 60)",
        ),
        ("single-event requests/s", f"{r['single_rps']:,.0f}"),
        ("/health requests/s", f"{r['health_rps']:,.0f}"),
        ("single / health", f"{r['single_vs_health']:.2f}x  (target >= 0.25)"),
        ("peak RSS per worker", f"{r['rss_mb_per_worker']:.0f} MB  (target < 250)"),
    ]
    print("\n" + "\n".join(f"{name:<36} {value}" for name, value in rows))
    print(f"\nwritten to {RESULTS / 'latest.json'} in {r['bench_seconds']} s")


if __name__ == "__main__":
    raise SystemExit(main())
