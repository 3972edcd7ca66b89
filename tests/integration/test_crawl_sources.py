"""`ingest sources`: operators register crawl sources from a shell."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from app.cli import main
from tests.factories import create_user


def sql(db_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(db_url)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def new_user(db_url: str) -> str:
    async def run() -> str:
        conn = await asyncpg.connect(db_url)
        try:
            return await create_user(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture
def shell(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A shell whose DATABASE_URL is this test's database."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    return db_url


def test_add_prints_the_id_list_shows_it_and_it_is_audited(
    shell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    curator = new_user(shell)
    assert main(["sources", "add", "Acme prompts", "--curator", curator]) == 0
    source_id = capsys.readouterr().out.strip()
    assert source_id.startswith("src_")
    (row,) = sql(shell, "SELECT id, name, curator_id FROM crawl_sources")
    assert dict(row) == {"id": source_id, "name": "Acme prompts", "curator_id": curator}
    (audit,) = sql(
        shell, "SELECT actor, subject FROM audit_log WHERE action = 'crawl.source_added'"
    )
    assert audit["subject"] == source_id and audit["actor"].startswith("cli:")

    assert main(["sources", "list"]) == 0
    listing = capsys.readouterr().out
    assert source_id in listing and "Acme prompts" in listing and curator in listing


def test_add_refuses_an_unknown_curator_and_a_taken_name(
    shell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sources", "add", "Acme", "--curator", "usr_missing"]) == 2
    assert "no user 'usr_missing'" in capsys.readouterr().err
    curator = new_user(shell)
    assert main(["sources", "add", "Acme", "--curator", curator]) == 0
    assert main(["sources", "add", "Acme", "--curator", curator]) == 2
    assert "already exists" in capsys.readouterr().err
    assert len(sql(shell, "SELECT id FROM crawl_sources")) == 1


def test_add_requires_a_curator(shell: str) -> None:
    with pytest.raises(SystemExit):
        main(["sources", "add", "Acme"])


def test_set_curator_fixes_a_source_added_with_plain_sql(
    shell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (row,) = sql(shell, "INSERT INTO crawl_sources (name) VALUES ('by hand') RETURNING id")
    assert main(["sources", "list"]) == 0
    assert "(none: imports refused)" in capsys.readouterr().out
    curator = new_user(shell)
    assert main(["sources", "set-curator", row["id"], curator]) == 0
    assert sql(shell, "SELECT curator_id FROM crawl_sources")[0]["curator_id"] == curator
    assert main(["sources", "set-curator", "src_nope", curator]) == 2


def test_without_a_database_url_it_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("INGEST_DATA_DIR", str(tmp_path))
    assert main(["sources", "list"]) == 2
    assert "DATABASE_URL is not set" in capsys.readouterr().err
