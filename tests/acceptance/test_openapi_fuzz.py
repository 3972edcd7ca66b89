"""`schemathesis run --checks all` against a real server, from the document it publishes.

The same command a stranger runs (README, "OpenAPI"), in every phase (examples, coverage,
fuzzing, stateful where links exist) and with every check (server errors, status codes,
content types, response headers and bodies, schema-valid requests accepted, schema-violating
ones refused, undeclared methods answered 405 with `Allow`, credentials enforced, ...), once
with the credentials and once without any. Any finding fails the test: there is no
deliberate exception. tests/schemathesis_hooks.py holds the webhook signing (Stripe's
algorithm over the exact bytes sent) and the crawl requests aimed at a registered source.

Rate limits are off in these servers (tests/conftest.make_settings): with a limit on, which
of two identical requests is answered 429 depends on the requests before it, and
schemathesis, which replays a failing case to confirm it, reports that as a flaky case
rather than as the finding it replayed. A 429 (with `Retry-After`) is documented, and
tests/integration/test_ratelimit.py checks it.

The run is derandomized (a fixed seed, deterministic generation): the same cases every time.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from app.settings import Settings
from tests.conftest import APP_TOKEN, CRON_SECRET, WEBHOOK_SECRET, RunningServer, make_settings
from tests.factories import add_source

ROOT = Path(__file__).resolve().parents[2]
METRICS_TOKEN = "test-metrics-token"
CREDENTIALS = {
    "x-app-token": APP_TOKEN,
    "x-cron-secret": CRON_SECRET,
    "Authorization": f"Bearer {METRICS_TOKEN}",
}
SEED = 20261201
EXAMPLES = 40
# A bound on every answer, against hangs (not a speed target: the machine is shared).
RESPONSE_TIME_LIMIT_S = 10
RUN_TIMEOUT_S = 300
OPERATIONS = {
    "GET /health",
    "GET /metrics",
    "POST /ingest/events",
    "POST /ingest/crawl",
    "POST /ingest/stripe/webhook",
    "POST /cron/rollup",
    "POST /cron/rebuild-search",
    "GET /internal/search",
}
OPEN = {"GET /health"}


@pytest.fixture
def fuzz_settings(db_url: str) -> Settings:
    """The test settings, with /metrics behind a token so that every route but /health has a
    credential to get wrong."""
    return make_settings(db_url, metrics_token=METRICS_TOKEN)


@pytest.fixture
async def fuzzed(start_server: object, fuzz_settings: Settings) -> RunningServer:
    running: RunningServer = await start_server(fuzz_settings)  # type: ignore[operator]
    return running


async def schemathesis_run(
    url: str, log: Path, *, headers: dict[str, str], env: dict[str, str]
) -> tuple[int, str]:
    """`schemathesis run` in a child process (the server keeps serving in this loop)."""
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-deterministic",
        "--max-response-time",
        str(RESPONSE_TIME_LIMIT_S),
        "--workers",
        "1",
        "--no-color",
        *[arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")],
    ]
    child_env = {
        **os.environ,
        **env,
        "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
        "FUZZ_STATUS_LOG": str(log),
        "PYTHONPATH": str(ROOT),
    }
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=log.parent,  # its crash cache (.schemathesis/) too: each run starts afresh
        env=child_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


def answers(log: Path) -> dict[str, Counter[int]]:
    """The statuses of every answer to a documented operation, by operation."""
    found: dict[str, Counter[int]] = {}
    for line in log.read_text().splitlines():
        method, path, status = line.split()
        label = f"{method} {path}"
        if label in OPERATIONS:
            found.setdefault(label, Counter())[int(status)] += 1
    return found


async def test_schemathesis_finds_nothing_with_the_credentials(
    fuzzed: RunningServer, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    source_id, _ = await add_source(pool, "Fuzz partner")
    log = tmp_path / "answers.log"
    env = {"FUZZ_WEBHOOK_SECRET": WEBHOOK_SECRET, "FUZZ_SOURCE_ID": source_id}
    code, output = await schemathesis_run(fuzzed.url, log, headers=CREDENTIALS, env=env)
    assert code == 0, output
    statuses = answers(log)
    assert set(statuses) == OPERATIONS, output
    # The runs reach the success paths, not only refusals.
    for label, success in (
        ("POST /ingest/events", 202),
        ("POST /ingest/crawl", 200),
        ("POST /ingest/stripe/webhook", 200),
        ("POST /cron/rollup", 202),
        ("POST /cron/rebuild-search", 202),
        ("GET /internal/search", 200),
        ("GET /metrics", 200),
        ("GET /health", 200),
    ):
        assert statuses[label][success] > 0, (label, statuses[label])


async def test_schemathesis_finds_nothing_without_credentials(
    fuzzed: RunningServer, tmp_path: Path
) -> None:
    log = tmp_path / "answers.log"
    code, output = await schemathesis_run(fuzzed.url, log, headers={}, env={})
    assert code == 0, output
    statuses = answers(log)
    assert set(statuses) == OPERATIONS, output
    for label, found in statuses.items():
        if label in OPEN:
            continue
        # Credentials are checked before the body is read; the webhook reads the body first
        # for what no JSON body may hold (400) and for its size (413).
        allowed = {400, 401, 413} if label == "POST /ingest/stripe/webhook" else {401}
        assert found[401] > 0 and set(found) <= allowed, (label, found)
