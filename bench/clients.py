"""`make bench`, client section: events/s pushed through each client's `track()` against the
same service, as a ratio of the wrk ingest figure (batches of 100, 64 connections) measured in
rounds alternating with them. Both clients send every event with an idempotency key (the wrk
script keys 10% of them), as callers using them do.

The TypeScript client runs in its own Node process (bench/clients_track.mjs); the Python client
in this one. The figure is events stored per second, counted in the database as the wrk
figure is, from the first track() to the end of close(). BENCH_CLIENT_IN_FLIGHT (default 16)
sets each client's batches in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
from typing import Any

from bench.harness import ROOT, TOKEN, Service
from bench.ingest import count_events

TS_CLIENT = ROOT / "clients" / "typescript"
IN_FLIGHT = int(os.environ.get("BENCH_CLIENT_IN_FLIGHT", "16"))
OTHER_TYPES = ["COPY", "SAVE", "FORK", "VOTE"]


def build_typescript_client() -> str | None:
    """Build the package (its dev dependencies installed from the lock file); None when there
    is no Node, else the reason it could not be built."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node not found"
    steps = [] if (TS_CLIENT / "node_modules" / ".package-lock.json").exists() else [["ci"]]
    for args in [*steps, ["run", "build"]]:
        done = subprocess.run(
            ["npm", *args, "--no-audit", "--no-fund"] if args == ["ci"] else ["npm", *args],
            cwd=TS_CLIENT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            return f"npm {' '.join(args)} failed: {done.stderr[-500:]}"
    return None


def typescript_track(svc: Service, db_url: str, *, rules: int, seconds: int) -> dict[str, Any]:
    before = count_events(db_url)
    out = subprocess.run(
        ["node", str(ROOT / "bench" / "clients_track.mjs")],
        env={
            **os.environ,
            "BENCH_URL": svc.url,
            "BENCH_TOKEN": TOKEN,
            "BENCH_RULES": str(rules),
            "BENCH_SECONDS": str(seconds),
            "BENCH_IN_FLIGHT": str(IN_FLIGHT),
        },
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("BENCH_JSON "))
    figures: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    return _rates(figures, count_events(db_url) - before)


def _event(rules: int) -> dict[str, str]:
    rule = int(random.random() ** 2 * rules) + 1
    ip = f"10.{random.randrange(4)}.{random.randrange(256)}.{random.randrange(1, 255)}"
    kind = random.choice(OTHER_TYPES) if random.random() < 0.2 else "VIEW"
    return {"type": kind, "ruleId": f"rul_{rule}", "ip": ip}


async def _python_track(url: str, *, rules: int, seconds: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "clients" / "python"))
    from ingest_client import IngestClient

    client = IngestClient(url, app_token=TOKEN, max_in_flight=IN_FLIGHT)
    cpu0 = time.process_time()
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        while client.stats.queued < 4000:
            client.track(_event(rules))
        await asyncio.sleep(0.001)
    tracking = time.perf_counter() - started
    stats = await client.aclose(deadline_s=30)
    return {
        "tracking_s": tracking,
        "duration_s": time.perf_counter() - started,
        "tracked": stats.tracked,
        "delivered": stats.accepted + stats.duplicate + stats.accepted_or_duplicate,
        "failed": stats.failed,
        "dropped": stats.dropped,
        "requests": stats.requests,
        "retries": stats.retries,
        "client_cpu_ms_per_batch": (time.process_time() - cpu0) * 1000 / max(1, stats.batches),
    }


def python_track(svc: Service, db_url: str, *, rules: int, seconds: int) -> dict[str, Any]:
    before = count_events(db_url)
    figures = asyncio.run(_python_track(svc.url, rules=rules, seconds=seconds))
    return _rates(figures, count_events(db_url) - before)


def _rates(figures: dict[str, Any], stored: int) -> dict[str, Any]:
    figures["stored"] = stored
    figures["events_stored_per_s"] = stored / figures["duration_s"]
    figures["events_delivered_per_s"] = figures["delivered"] / figures["duration_s"]
    return figures


def _combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one client as one: stored events over the summed time."""
    duration = sum(r["duration_s"] for r in rounds)
    out = {key: sum(r[key] for r in rounds) for key in ("stored", "delivered", "failed", "dropped")}
    out["duration_s"] = duration
    out["rounds"] = len(rounds)
    out["events_stored_per_s"] = out["stored"] / duration
    out["client_cpu_ms_per_batch"] = sum(r["client_cpu_ms_per_batch"] for r in rounds) / len(rounds)
    return out


def measure(
    svc: Service, db_url: str, out: dict[str, Any], *, rules: int, seconds: int, rounds: int
) -> None:
    """Rounds of wrk (batches of 100, 64 connections), the TypeScript client and the Python
    client, one after the other, so that a neighbour's load lands on all three; each client's
    ratio is against the wrk rounds of this section."""
    from bench.ingest import http_batches

    problem = build_typescript_client()
    if problem is not None:
        print(f"\n== TypeScript client: not measured ({problem})")
        out["client_typescript_error"] = problem
    slice_s = max(1, seconds // rounds)
    wrk, ts, py = [], [], []
    for n in range(1, rounds + 1):
        print(f"\n== clients, round {n}/{rounds}: wrk, then each client's track(), {slice_s}s each")
        wrk.append(http_batches(svc, db_url, rules=rules, connections=64, seconds=slice_s))
        if problem is None:
            ts.append(typescript_track(svc, db_url, rules=rules, seconds=slice_s))
        py.append(python_track(svc, db_url, rules=rules, seconds=slice_s))
        print(
            json.dumps(
                {
                    "wrk": wrk[-1]["events_stored_per_s"],
                    "typescript": ts[-1] if ts else None,
                    "python": py[-1],
                }
            )
        )
    duration = sum(r["duration_s"] for r in wrk)
    out["clients_wrk_events_per_s"] = (
        sum(r["events_stored_per_s"] * r["duration_s"] for r in wrk) / duration
    )
    for key, runs in (("client_typescript", ts), ("client_python", py)):
        if runs:
            out[key] = _combine(runs)
            out[f"{key}_vs_wrk"] = out[key]["events_stored_per_s"] / out["clients_wrk_events_per_s"]


def table_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for name, key in (("TypeScript", "client_typescript"), ("Python", "client_python")):
        if key in r:
            figure = r[key]["events_stored_per_s"]
            ratio = r[f"{key}_vs_wrk"]
            target = " (target >= 0.8)" if key == "client_typescript" else ""
            rows.append(
                (
                    f"{name} client `track()`, {IN_FLIGHT} batches of 100 in flight",
                    f"{figure:,.0f} events/s, **{ratio:.2f} x** wrk "
                    f"({r['clients_wrk_events_per_s']:,.0f}){target}",
                )
            )
        elif f"{key}_error" in r:
            rows.append((f"{name} client `track()`", f"not measured: {r[f'{key}_error']}"))
    return rows
