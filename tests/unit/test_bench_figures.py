"""The bench's derived figures: ratios from the measured sections, CPU ratio only when seen."""

from __future__ import annotations

from typing import Any

import pytest

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
