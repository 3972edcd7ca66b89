"""The README documents every setting and every task the code defines."""

from __future__ import annotations

import re
from pathlib import Path

import jobs
from app.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def _first_column_names(section: str) -> set[str]:
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Za-z_]+)`", line.split("|")[1]))
    return names


def test_configuration_table_lists_every_setting() -> None:
    documented = _first_column_names(_section("Configuration"))
    defined = {(f.alias or name).upper() for name, f in Settings.model_fields.items()}
    assert defined - documented == set(), "settings missing from the README"
    assert documented - defined == set(), "README documents settings that do not exist"


def test_jobs_table_lists_every_task() -> None:
    section = _section("Jobs from a shell")
    documented = _first_column_names(section)
    app = jobs.create_app("postgresql://unused@localhost/unused")
    defined = {name for name in app.tasks if not name.startswith(("builtin:", "procrastinate."))}
    assert defined == documented
    for task in defined:
        assert re.search(rf"defer (-i )?{task} ", section), f"no defer example for {task}"
