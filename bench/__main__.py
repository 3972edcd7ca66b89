"""`make bench`: the service against raw PostgreSQL, side by side, in one run.

Absolute figures drift on a shared machine; the ratios measured in the same run hold. The raw
baseline and the 64-connection ingest run alternate in rounds, so a neighbour's load lands on
both. Sizes can be reduced for a quick look (`make bench-smoke`): BENCH_SECONDS (per section),
BENCH_ROUNDS, BENCH_RULES, BENCH_ROLLUP_EVENTS and BENCH_ROLLUP_ROUNDS (read by bench.rollup),
BENCH_SKIP_ROLLUP=1.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import clients, crawl, harness, ingest, webhooks

RESULTS = Path(__file__).resolve().parent / "results"
RULES = int(os.environ.get("BENCH_RULES", "10000"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "12"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
WORKERS = int(os.environ.get("BENCH_WEB_WORKERS", "1"))
POOL = int(os.environ.get("BENCH_POOL_SIZE", "8"))
SKIP_ROLLUP = os.environ.get("BENCH_SKIP_ROLLUP") == "1"


def _section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _show(figures: dict[str, Any]) -> None:
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}))
    if figures.get("errors_status") or figures.get("errors_timeout"):
        print("   (some requests failed: see the service log)")


def _combine(rounds: list[dict[str, Any]], rate: str) -> dict[str, Any]:
    """Rounds of one measurement as one: rates over the summed time, the worst p50/p99."""
    duration = sum(r["duration_s"] for r in rounds)
    out: dict[str, Any] = {"duration_s": duration, "rounds": len(rounds)}
    out[rate] = sum(r[rate] * r["duration_s"] for r in rounds) / duration
    for key in ("p50_ms", "p99_ms"):
        if all(key in r for r in rounds):
            out[key] = max(r[key] for r in rounds)
    for key in rounds[0]:
        if "cpu_ms" in key:
            out[key] = sum(r[key] * r["duration_s"] for r in rounds) / duration
    for key in ("requests", "errors_status", "errors_timeout"):
        if all(key in r for r in rounds):
            out[key] = sum(r[key] for r in rounds)
    return out


def measure_ingest(db_url: str, svc: harness.Service, out: dict[str, Any]) -> None:
    """/health, batches of 100 at 16 and 64 connections (64 alternating with the raw baseline),
    then single-event requests; RSS per worker as the ingest sections leave it."""
    _section(f"/health, 16 connections, {SECONDS}s")
    health = harness.run_wrk(svc.url + "/health", script="get.lua", connections=16, seconds=SECONDS)
    _show(health)
    out["health_rps"] = health["requests"] / health["duration_s"]

    _section(f"ingest, batches of 100, 16 connections, {SECONDS}s")
    out["batch100_c16"] = ingest.http_batches(
        svc, db_url, rules=RULES, connections=16, seconds=SECONDS
    )
    _show(out["batch100_c16"])

    slice_s = max(1, SECONDS // ROUNDS)
    http_rounds, raw_rounds = [], []
    for n in range(1, ROUNDS + 1):
        _section(f"raw asyncpg unnest baseline, 4 connections, {slice_s}s (round {n}/{ROUNDS})")
        raw_rounds.append(asyncio.run(ingest.raw_unnest(db_url, rules=RULES, seconds=slice_s)))
        _show(raw_rounds[-1])
        _section(f"ingest, batches of 100, 64 connections, {slice_s}s (round {n}/{ROUNDS})")
        http_rounds.append(
            ingest.http_batches(svc, db_url, rules=RULES, connections=64, seconds=slice_s)
        )
        _show(http_rounds[-1])
    out["batch100_c64"] = _combine(http_rounds, "events_stored_per_s")
    out["raw"] = _combine(raw_rounds, "events_per_s")

    _section(f"single-event requests, 16 connections, {SECONDS}s")
    single = ingest.http_batches(svc, db_url, rules=RULES, connections=16, seconds=SECONDS, batch=1)
    _show(single)
    out["single"] = single
    out["single_rps"] = single["requests_per_s"]
    svc.sample_rss()
    out["rss_mb_per_worker"] = max(svc.peak_rss.values(), default=0) / 1024 / 1024


def measure_other_intake(
    db_url: str, svc: harness.Service, work_dir: Path, out: dict[str, Any]
) -> None:
    _section(f"Stripe webhook deliveries (signed, distinct events), 16 connections, {SECONDS}s")
    out["webhook"] = webhooks.deliveries(
        svc, db_url, work_dir=work_dir, rules=RULES, connections=16, seconds=SECONDS
    )
    _show(out["webhook"])
    out["webhook_deliveries_per_s"] = out["webhook"]["deliveries_per_s"]

    _section(f"crawl imports, batches of 200 new items, 8 connections, {SECONDS}s")
    out["crawl"] = crawl.import_batches(svc, db_url, connections=8, seconds=SECONDS)
    _show(out["crawl"])
    out["crawl_items_per_s"] = out["crawl"]["items_per_s"]
    svc.sample_rss()
    out["rss_mb_peak_all_sections"] = max(svc.peak_rss.values(), default=0) / 1024 / 1024


def rollup_measurer() -> Callable[[str], dict[str, Any]] | None:
    """bench.rollup's `measure_rollup`, when that module is present."""
    if SKIP_ROLLUP or importlib.util.find_spec("bench.rollup") is None:
        return None
    from bench import rollup  # type: ignore[attr-defined,unused-ignore]

    measure: Callable[[str], dict[str, Any]] = rollup.measure_rollup
    return measure


def measure_rollups(admin_url: str, out: dict[str, Any]) -> None:
    """bench.rollup's figures on a database of their own (its 5M events would slow the ingest
    sections' index inserts). A failure there is reported, not fatal: the intake figures stand."""
    measure = rollup_measurer()
    if measure is None:
        return
    _section("rollup: 30 days of events, full rollup vs the bare aggregate")
    try:
        with harness.fresh_database(admin_url) as rollup_url:
            out["rollup"] = measure(rollup_url)
    except Exception as exc:  # any failure of that section is reported as such
        out["rollup_error"] = f"{type(exc).__name__}: {exc}"
        print(f"   rollup section failed: {out['rollup_error']}")
        return
    _show(out["rollup"])
    for key in (
        "rollup_s",
        "bare_aggregate_s",
        "rollup_vs_bare",
        "rollup_cascade_s",
        "rollup_noop_ms",
    ):
        out[key] = out["rollup"].get(key)


def main() -> int:
    started = time.perf_counter()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "web_workers": WORKERS,
        "pool_size": POOL,
        "seconds_per_section": SECONDS,
        "load_average_at_start": os.getloadavg()[0],
    }
    harness.ensure_wrk()
    work_dir = Path(tempfile.mkdtemp(prefix="ingest-bench-work-"))
    try:
        with harness.postgres_server() as admin_url:
            with harness.fresh_database(admin_url) as db_url:
                results["postgres"] = harness.query_value(db_url, "SHOW server_version")
                asyncio.run(ingest.seed(db_url, rules=RULES))
                with harness.service(
                    db_url, workers=WORKERS, pool_size=POOL, log_dir=work_dir
                ) as svc:
                    measure_ingest(db_url, svc, results)
                    clients.measure(
                        svc, db_url, results, rules=RULES, seconds=SECONDS, rounds=ROUNDS
                    )
                    measure_other_intake(db_url, svc, work_dir, results)
            measure_rollups(admin_url, results)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    results["load_average_at_end"] = os.getloadavg()[0]
    derive(results)
    results["bench_seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n" + table(results))
    print(f"\nwritten to {RESULTS / 'latest.json'} in {results['bench_seconds']} s")
    return 0


def derive(r: dict[str, Any]) -> None:
    r["ingest_events_per_s"] = r["batch100_c64"]["events_stored_per_s"]
    r["raw_events_per_s"] = r["raw"]["events_per_s"]
    r["ingest_vs_raw"] = r["ingest_events_per_s"] / r["raw_events_per_s"]
    r["p99_ms_batch100_c16"] = r["batch100_c16"]["p99_ms"]
    r["single_vs_health"] = r["single_rps"] / r["health_rps"]
    # The same comparison in CPU per batch (worker or client plus their PostgreSQL backends):
    # a neighbour's load moves it far less than the rates, and on two shared cores CPU is what
    # bounds both paths. None when the server's backends are not visible in /proc.
    c64, raw = r["batch100_c64"], r["raw"]
    service_cpu = c64.get("service_cpu_ms_per_request", 0) + c64.get(
        "postgres_cpu_ms_per_request", 0
    )
    raw_cpu = raw.get("client_cpu_ms_per_batch", 0) + raw.get("postgres_cpu_ms_per_batch", 0)
    both_seen = c64.get("postgres_cpu_ms_per_request") and raw.get("postgres_cpu_ms_per_batch")
    r["ingest_vs_raw_cpu"] = raw_cpu / service_cpu if both_seen and service_cpu else None


def table(r: dict[str, Any]) -> str:
    """The figures as a Markdown table (the README's Performance section shows it)."""
    rows = [
        ("ingest, batches of 100, 64 connections", f"{r['ingest_events_per_s']:,.0f} events/s"),
        ("raw `unnest` insert, 4 connections", f"{r['raw_events_per_s']:,.0f} events/s"),
        ("**ingest / raw**", f"**{r['ingest_vs_raw']:.2f} x** (target >= 0.7)"),
        (
            "batch of 100 at 16 connections, p50 / p99",
            f"{r['batch100_c16']['p50_ms']:.1f} / **{r['p99_ms_batch100_c16']:.1f} ms**"
            " (target p99 < 60)",
        ),
        ("single-event requests, 16 connections", f"{r['single_rps']:,.0f} requests/s"),
        ("`GET /health`, 16 connections", f"{r['health_rps']:,.0f} requests/s"),
        ("**single / health**", f"**{r['single_vs_health']:.2f} x** (target >= 0.25)"),
        (
            "Stripe webhook deliveries (signed), 16 connections",
            f"{r['webhook_deliveries_per_s']:,.0f} deliveries/s",
        ),
        ("crawl import, batches of 200, 8 connections", f"{r['crawl_items_per_s']:,.0f} items/s"),
        *clients.table_rows(r),
    ]
    if r.get("rollup_error"):
        rows.append(("full 30-day rollup", f"not measured: {r['rollup_error'][:80]}"))
    elif r.get("rollup_s") is not None:
        events = r.get("rollup", {}).get("rollup_events", 0)
        rows += [
            (f"full 30-day rollup, {events / 1e6:.1f}M events", f"{r['rollup_s']:.1f} s"),
            ("bare counting aggregate (slots, cap)", f"{r['bare_aggregate_s']:.1f} s"),
            ("**rollup / bare**", f"**{r['rollup_vs_bare']:.2f} x** (target <= 1.0, < 30 s)"),
            (
                "late event for the oldest day: refresh with its 30-day cascade",
                f"{r['rollup_cascade_s']:.1f} s",
            ),
            ("refresh with nothing dirty", f"{r['rollup_noop_ms']:.1f} ms"),
        ]
    rows.append(
        ("peak RSS per worker after ingest", f"**{r['rss_mb_per_worker']:.0f} MB** (target < 250)")
    )
    c64, raw = r["batch100_c64"], r["raw"]
    if c64.get("postgres_cpu_ms_per_request") and raw.get("postgres_cpu_ms_per_batch"):
        rows += [
            (
                "PostgreSQL CPU per batch of 100: ingest / raw",
                f"{c64['postgres_cpu_ms_per_request']:.2f} / "
                f"{raw['postgres_cpu_ms_per_batch']:.2f} ms",
            ),
            (
                "client CPU per batch of 100: service worker / raw client",
                f"{c64['service_cpu_ms_per_request']:.2f} / "
                f"{raw['client_cpu_ms_per_batch']:.2f} ms",
            ),
            (
                "**raw / ingest in CPU per batch** (the steadier figure)",
                f"**{r['ingest_vs_raw_cpu']:.2f} x**",
            ),
        ]
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
