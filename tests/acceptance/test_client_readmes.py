"""The examples of the client READMEs run as written, against a live service."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import asyncpg

from tests.client_helpers import TS_CLIENT, ts_client_built
from tests.conftest import APP_TOKEN, RunningServer
from tests.factories import create_rule, create_user

__all__ = ["ts_client_built"]  # the fixture, used by name

CLIENTS = TS_CLIENT.parent


def example(readme: Path, language: str) -> str:
    match = re.search(rf"## Example\n\n```{language}\n(.*?)```", readme.read_text(), re.S)
    assert match, f"no {language} example in {readme}"
    return match.group(1)


async def run(*command: str, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, output.decode()


async def site_rows(pool: asyncpg.Pool) -> None:
    """The user and rule the examples name."""
    await create_user(pool, id="usr_1")
    await create_rule(pool, id="rul_1", author_id="usr_1", title="A first rule")


async def test_the_python_example(server: RunningServer, pool: asyncpg.Pool) -> None:
    await site_rows(pool)
    code, output = await run(
        sys.executable,
        "-c",
        example(CLIENTS / "python" / "README.md", "python"),
        cwd=CLIENTS / "python",
        env={"INGEST_URL": server.url, "INGEST_APP_TOKEN": APP_TOKEN},
    )
    assert code == 0, output
    assert output.splitlines()[-1] == "2 0 0", output
    assert await pool.fetchval("SELECT count(*) FROM events WHERE rule_id = 'rul_1'") == 2


async def test_the_typescript_example(
    ts_client_built: Path, server: RunningServer, pool: asyncpg.Pool
) -> None:
    await site_rows(pool)
    # Inside the package, so that it imports itself by name as the main API would.
    script = ts_client_built / f"readme-example-{os.getpid()}.mjs"
    script.write_text(example(ts_client_built / "README.md", "js"))
    try:
        code, output = await run(
            "node",
            script.name,
            cwd=ts_client_built,
            env={"INGEST_URL": server.url, "INGEST_APP_TOKEN": APP_TOKEN},
        )
    finally:
        script.unlink()
    assert code == 0, output
    assert output.splitlines()[-1] == "2 0 0", output
    assert await pool.fetchval("SELECT count(*) FROM events WHERE rule_id = 'rul_1'") == 2
