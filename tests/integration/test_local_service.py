"""One database resolution for every operator command and for `procrastinate --app=jobs.app`:
DATABASE_URL, else the running local service's, else an error naming both; never libpq's
defaults. (Beside a real running `ingest run`, tests/acceptance/test_docs_examples.py runs them
all.)"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import psycopg.conninfo
import pytest

from app import local
from app.cli import main
from app.errors import ConfigurationError
from app.local_service import resolve_database_url, shell_exports
from app.settings import Settings
from tests.faults.conftest import service_env

BIN = Path(sys.executable).parent


def test_database_url_wins(tmp_path: Path) -> None:
    (tmp_path / local.URL_FILE).write_text("postgresql://elsewhere/db")
    settings = Settings(database_url="postgresql://here/db", INGEST_DATA_DIR=tmp_path)
    assert resolve_database_url(settings) == "postgresql://here/db"


@pytest.mark.parametrize("stale_file", [False, True])
def test_without_either_the_error_names_both(tmp_path: Path, stale_file: bool) -> None:
    """A URL file a killed run left behind names a server that is gone: not a database."""
    if stale_file:
        (tmp_path / local.URL_FILE).write_text("postgresql://postgres:@/postgres?host=/nowhere")
    settings = Settings(database_url=None, INGEST_DATA_DIR=tmp_path)
    with pytest.raises(ConfigurationError) as refused:
        resolve_database_url(settings)
    assert "DATABASE_URL is not set" in refused.value.message
    assert str(tmp_path / local.URL_FILE) in refused.value.message
    with pytest.raises(ConfigurationError):
        shell_exports(settings)


def _libpq_defaults_naming(url: str) -> dict[str, str]:
    """PG* variables that would make libpq's defaults connect to the server of `url`."""
    parts = psycopg.conninfo.conninfo_to_dict(url)
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE"}
    return {names[k]: str(v) for k, v in parts.items() if k in names and v}


@pytest.mark.parametrize(
    "command",
    [
        [str(BIN / "procrastinate"), "--app=jobs.app", "defer", "purge_old_jobs", "{}"],
        [str(BIN / "ingest"), "migrate"],
        [str(BIN / "ingest"), "jobs"],
        [str(BIN / "ingest"), "env"],
    ],
    ids=["procrastinate", "migrate", "jobs", "env"],
)
def test_commands_refuse_instead_of_using_libpq_defaults(
    tmp_path: Path, db_url: str, command: list[str]
) -> None:
    """libpq's defaults here name a real, migrated database: a command that fell back on
    them would succeed. Each one stops and says why."""
    env = service_env(INGEST_DATA_DIR=str(tmp_path), **_libpq_defaults_naming(db_url))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode in (1, 2), done.stdout + done.stderr
    assert "no database: DATABASE_URL is not set" in done.stderr
    assert done.stdout == ""


def test_env_prints_exports_of_this_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRON_SECRET", "it's mine")
    settings = Settings(database_url="postgresql://db/x", INGEST_DATA_DIR=tmp_path, port=9000)
    exports = dict(shlex.split(line)[1].split("=", 1) for line in shell_exports(settings))
    assert exports["DATABASE_URL"] == "postgresql://db/x"
    assert exports["INGEST_URL"] == "http://127.0.0.1:9000"
    assert exports["CRON_SECRET"] == "it's mine"


def test_config_without_a_database_shows_it_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("INGEST_DATA_DIR", str(tmp_path))
    assert main(["config"]) == 0
    assert "DATABASE_URL                     unset\n" in capsys.readouterr().out


def test_reset_local_deletes_the_data_folder_unless_a_run_owns_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / local.SECRETS_FILE).write_text("{}")
    monkeypatch.setenv("INGEST_DATA_DIR", str(data))
    with pytest.raises(SystemExit):
        main(["reset-local"])  # without --yes
    with local.own_data_dir(data):
        assert main(["reset-local", "--yes"]) == 2  # an `ingest run` holds it
    assert data.exists()
    assert main(["reset-local", "--yes"]) == 0
    assert not data.exists()
