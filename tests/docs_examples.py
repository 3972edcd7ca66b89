"""The shell and SQL examples of README.md and docs/*.md, as a reader would run them.

A fenced block whose language is `sh`, `bash` or `sql` is an example. One whose first line is
`# not run by the docs test: <why>` (`-- not run ...` in SQL) says so where the reader sees
it, and is skipped. A ```json or ```text block right after an example (nothing but blank
lines between) is the output it prints: it is compared with the example's standard output
ignoring whitespace (pretty-printed JSON matches compact JSON), `...` standing for anything
(doctest's ELLIPSIS). Shell examples run with bash (`-e -o pipefail`) in the checkout, in an
environment where `eval "$(.venv/bin/ingest env)"` ran; SQL examples go to psql on
`$DATABASE_URL`, stopping at the first error.

Markdown is read with markdown-it-py (CommonMark), not with regular expressions: fences
inside lists or indented, and longer fences, are found as a renderer finds them.
"""

from __future__ import annotations

import doctest
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt

SHELL = frozenset({"sh", "bash", "shell"})
SQL = frozenset({"sql"})
OUTPUT = frozenset({"json", "text", "output"})
NOT_RUN = re.compile(r"^\s*(?:#|--)\s*not run by the docs test:\s*(?P<why>\S.*)$", re.IGNORECASE)
EXAMPLE_TIMEOUT_S = 60


@dataclass(frozen=True)
class Example:
    path: Path
    line: int  # 1-based line of the opening fence
    kind: str  # "shell" or "sql"
    code: str
    expected: str | None
    not_run: str | None

    @property
    def name(self) -> str:
        return f"{self.path.name}:{self.line}"


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str


def _language(info: str) -> str:
    return info.split()[0].lower() if info.strip() else ""


def examples(path: Path) -> list[Example]:
    """Every example of one Markdown file, in order."""
    text = path.read_text()
    lines = text.splitlines()
    fences = [t for t in MarkdownIt("commonmark").parse(text) if t.type == "fence" and t.map]
    found = []
    for index, fence in enumerate(fences):
        language = _language(fence.info)
        if language not in SHELL | SQL:
            continue
        assert fence.map is not None
        expected = None
        if index + 1 < len(fences):
            after = fences[index + 1]
            assert after.map is not None
            between = lines[fence.map[1] : after.map[0]]
            if _language(after.info) in OUTPUT and not any(line.strip() for line in between):
                expected = after.content
        first = fence.content.splitlines()[0] if fence.content.strip() else ""
        not_run = NOT_RUN.match(first)
        found.append(
            Example(
                path=path,
                line=fence.map[0] + 1,
                kind="shell" if language in SHELL else "sql",
                code=fence.content,
                expected=expected,
                not_run=not_run.group("why") if not_run else None,
            )
        )
    return found


def run(example: Example, *, env: dict[str, str], cwd: Path, psql: str) -> Outcome:
    if example.kind == "shell":
        command = ["bash", "-e", "-o", "pipefail", "-c", example.code]
        stdin = None
    else:
        command = [psql, env["DATABASE_URL"], "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]
        stdin = example.code
    # A session of its own: on a timeout the whole group goes, not only bash.
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(stdin, timeout=EXAMPLE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        stderr += f"\n(killed after {EXAMPLE_TIMEOUT_S} s)"
        return Outcome(-signal.SIGKILL, stdout, stderr)
    return Outcome(process.returncode, stdout, stderr)


def _squashed(text: str) -> str:
    return re.sub(r"\s+", "", text)


def output_matches(expected: str, got: str) -> bool:
    """Equal but for whitespace, `...` standing for any text."""
    checker = doctest.OutputChecker()
    return checker.check_output(_squashed(expected), _squashed(got), doctest.ELLIPSIS)


def problem(example: Example, outcome: Outcome) -> str | None:
    """Why the example does not run as documented, or None."""
    if outcome.returncode != 0:
        return (
            f"{example.name} exited {outcome.returncode}\n--- example\n{example.code}"
            f"--- stdout\n{outcome.stdout}--- stderr\n{outcome.stderr[-3000:]}"
        )
    if example.expected is not None and not output_matches(example.expected, outcome.stdout):
        return (
            f"{example.name} printed something else than the output shown\n--- example\n"
            f"{example.code}--- shown\n{example.expected}--- printed\n{outcome.stdout}"
        )
    return None
