"""The bench's derived figures: ratios from the measured sections, CPU ratio only when seen;
the scale bench's ratios and extrapolation, and the history it generates (at toy size)."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from bench import harness, history, scale
from bench.__main__ import derive, table


def _results(*, backends_visible: bool) -> dict[str, Any]:
    pg = 3.0 if backends_visible else 0.0
    raw_pg = 2.0 if backends_visible else 0.0
    return {
        "batch100_c64": {
            "events_stored_per_s": 30_000.0,
            "service_cpu_ms_per_request": 1.5,
            "postgres_cpu_ms_per_request": pg,
        },
        "raw": {
            "events_per_s": 60_000.0,
            "client_cpu_ms_per_batch": 0.5,
            "postgres_cpu_ms_per_batch": raw_pg,
        },
        "batch100_c16": {"p50_ms": 40.0, "p99_ms": 80.0},
        "single_rps": 1_000.0,
        "health_rps": 4_000.0,
        "webhook_deliveries_per_s": 400.0,
        "crawl_items_per_s": 8_000.0,
        "rss_mb_per_worker": 88.0,
        "postgres": {
            "server_version": "18.6 (a build)",
            "shared_buffers": "2GB",
            "max_wal_size": "8GB",
            "checkpoint_timeout": "5min",
        },
        "load_average_at_start": 1.0,
        "load_average_at_end": 2.0,
    }


def test_ratios_come_from_the_sections() -> None:
    r = _results(backends_visible=True)
    derive(r)
    assert r["ingest_vs_raw"] == pytest.approx(0.5)
    assert r["single_vs_health"] == pytest.approx(0.25)
    assert r["p99_ms_batch100_c16"] == 80.0
    # (0.5 + 2.0) / (1.5 + 3.0)
    assert r["ingest_vs_raw_cpu"] == pytest.approx(2.5 / 4.5)
    assert "**0.56 x**" in table(r)


def test_cpu_ratio_is_absent_when_backends_are_not_visible() -> None:
    r = _results(backends_visible=False)
    derive(r)
    assert r["ingest_vs_raw_cpu"] is None
    assert "CPU per batch" not in table(r)


def test_client_rows_show_each_client_against_wrk_or_why_not() -> None:
    r = _results(backends_visible=True)
    derive(r)
    r["client_python"] = {"events_stored_per_s": 21_000.0}
    r["client_python_vs_wrk"] = 0.7
    r["clients_wrk_events_per_s"] = 30_000.0
    r["client_typescript_error"] = "node not found"
    text = table(r)
    assert "21,000 events/s, **0.70 x** wrk (30,000)" in text
    assert "TypeScript client `track()` | not measured: node not found" in text


def _scale_results() -> dict[str, Any]:
    def intake(rate: float, cpu: float, p99: float, blocks: float = 0.0) -> dict[str, Any]:
        return {
            "blocks_read_per_request": blocks,
            "events_stored_per_s": rate,
            "postgres_cpu_ms_per_request": cpu,
            "service_cpu_ms_per_request": 2.0,
            "p99_ms": p99,
        }

    def history_db(events: int, full: float, refresh: float) -> dict[str, Any]:
        return {
            "history": {"history_events": events},
            "full_rollup_s": full,
            "refresh_today_s": refresh,
            "nightly_s": refresh * 2,
            "rollup_cascade_s": 20.0,
            "rollup_cascade_days": 31,
            "rollup_noop_ms": 4.0,
            "retention_day_ms": 150.0,
            "retention_day_events": events // 30,
            "events_bytes_before": 6e9,
            "events_bytes_after": 5.8e9,
            "dead_rows_before": 3,
            "dead_rows_after": 3,
            "key_purge_day_keys": events // 300,
            "key_purge_day_s": 0.3,
            "nightly_days": 3,
            "state_after_intake": {
                "idempotency_keys": events // 10,
                "idempotency_keys_bytes": 4.7e8,
                "rate_limit_buckets": 1,
                "default_partition_events": 0,
                "partitions": 40,
            },
        }

    return {
        "intake": {
            "c64": {
                "big": intake(18_000.0, 4.4, 0, blocks=2.5),
                "medium": intake(19_000.0, 4.1, 0),
                "empty": intake(20_000.0, 4.0, 0, blocks=0.25),
            },
            "c16": {"big": intake(0, 0, 150.0), "empty": intake(0, 0, 125.0)},
        },
        "databases": {
            "big": history_db(30_000_000, 100.0, 6.0),
            "medium": history_db(3_000_000, 37.0, 3.0),
            "empty": {},
        },
        "postgres": {
            "server_version": "18.6 (a build)",
            "shared_buffers": "2GB",
            "max_wal_size": "8GB",
            "checkpoint_timeout": "5min",
        },
        "load_average_at_start": 1.0,
        "load_average_at_end": 2.0,
    }


def test_scale_ratios_and_the_linear_extrapolation() -> None:
    r = _scale_results()
    scale.derive(r)
    assert r["intake_big_vs_empty"] == pytest.approx(0.9)
    assert r["postgres_cpu_empty_vs_big"] == pytest.approx(4.0 / 4.4)
    assert r["p99_big_vs_empty"] == pytest.approx(1.2)
    full = r["extrapolation"]["full_rollup_s"]
    # 37 s at 3 M and 100 s at 30 M: 2.333 s per M events on top of 30 s; at 300 M, 730 s.
    assert full["per_million_events"] == pytest.approx(2.3333, abs=1e-3)
    assert full["fixed"] == pytest.approx(30.0)
    assert full["ten_x_big"] == pytest.approx(730.0)
    text = scale.table(r)
    assert "**0.90 x** (target >= 0.9)" in text
    assert "**1.20 x** (target <= 1.2)" in text
    assert "**100.0 s** (target < 30)" in text
    assert "| server | PostgreSQL 18.6, shared_buffers 2GB, max_wal_size 8GB," in text
    assert "per batch, 64 connections: big / empty | 2.5 / 0.2 |" in text
    assert "full 30-day rollup, s | 730.0 (medium 37.0, big 100.0; +2.3333 per M events)" in text


def test_scale_without_a_medium_database_has_no_extrapolation() -> None:
    r = _scale_results()
    del r["databases"]["medium"]
    del r["intake"]["c64"]["medium"]
    scale.derive(r)
    assert "extrapolation" not in r
    assert "10 x big" not in scale.table(r)


async def test_generated_history_has_the_partitions_shape_and_the_intake_state(
    db_url: str,
) -> None:
    """bench.history at toy size: every event in its day's partition, each partition with the
    migration's three indexes and two foreign keys (attached, none built twice), the keys of
    the keyed events in their table, an audit row per 100 events."""
    figures = await history.generate(db_url, events=3_000)
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM events") == figures["history_events"]
        assert await conn.fetchval("SELECT count(*) FROM events_default") == 0
        shapes = await conn.fetch(
            "SELECT c.relname, (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) AS idx,"
            " (SELECT count(*) FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'f')"
            " AS fks, (SELECT count(*) FROM pg_constraint k WHERE k.conrelid = c.oid"
            " AND k.contype = 'c') AS checks "
            "FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid "
            "WHERE h.inhparent = 'events'::regclass"
        )
        assert {(r["idx"], r["fks"], r["checks"]) for r in shapes} == {(3, 2, 1)}
        keyed = await conn.fetchval("SELECT count(*) FROM events WHERE idempotency_key IS NOT NULL")
        assert keyed > 0
        assert await conn.fetchval("SELECT count(*) FROM event_idempotency_keys") == keyed
        audit = await conn.fetchval("SELECT count(*) FROM audit_log")
        assert audit == figures["history_events"] // 100
        next_id = await conn.fetchval(
            "INSERT INTO events (type, rule_id, ts) VALUES ('VOTE', 'rul_1', now()) RETURNING id"
        )
        assert next_id == figures["history_events"] + 1
    finally:
        await conn.close()


def test_scale_rounds_combine_blocks_read_per_request() -> None:
    def round_(requests: int, blocks: int, p99: float) -> dict[str, Any]:
        return {
            "duration_s": 10.0,
            "requests": requests,
            "blocks_read": blocks,
            "events_stored_per_s": requests * 10.0,
            "service_cpu_ms_per_request": 1.0,
            "postgres_cpu_ms_per_request": 2.0,
            "p99_ms": p99,
        }

    combined = scale._combine(
        [round_(300, 900, 80.0), round_(100, 100, 95.0), round_(100, 0, 70.0)]
    )
    assert combined["blocks_read_per_request"] == pytest.approx(1000 / 500)
    assert combined["p99_ms"] == 80.0
    assert combined["rounds"] == 3


def test_the_scale_benchmark_takes_only_a_server_named_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # DATABASE_URL is the service's database (often local mode's cluster, at the defaults):
    # `make bench` may use it, the scale run (11 GB of databases) only BENCH_DATABASE_URL.
    monkeypatch.delenv("BENCH_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://service@127.0.0.1/ingest")
    assert harness.given_server_url(scale.SERVER_URL_VARIABLES) is None
    assert harness.given_server_url(("BENCH_DATABASE_URL", "DATABASE_URL")) == (
        "postgresql://service@127.0.0.1/ingest"
    )
    monkeypatch.setenv("BENCH_DATABASE_URL", "")
    assert harness.given_server_url(scale.SERVER_URL_VARIABLES) is None
    monkeypatch.setenv("BENCH_DATABASE_URL", "postgresql://bench@127.0.0.1/postgres")
    assert harness.given_server_url(scale.SERVER_URL_VARIABLES) == (
        "postgresql://bench@127.0.0.1/postgres"
    )
