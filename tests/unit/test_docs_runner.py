"""The docs examples runner itself (tests/docs_examples.py): what counts as an example, as its
shown output and as a "not run" mark, and when an example fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import docs_examples

DOCUMENT = """# A page

```sh
echo '{"a":1, "b": [2]}'
```

```json
{"a": 1, "b": [...]}
```

- in a list:

  ```sql
  SELECT 1;
  ```

```sh
# not run by the docs test: needs a Docker engine
docker compose up
```

Some prose, then a block that is not an output of the one before:

```sh
true
```

Text.

```json
{"shape": "only"}
```

```
a bare block: not an example
```
"""


@pytest.fixture
def page(tmp_path: Path) -> list[docs_examples.Example]:
    path = tmp_path / "page.md"
    path.write_text(DOCUMENT)
    return docs_examples.examples(path)


def test_examples_their_output_and_marks(page: list[docs_examples.Example]) -> None:
    assert [(e.kind, e.line) for e in page] == [
        ("shell", 3),
        ("sql", 13),
        ("shell", 17),
        ("shell", 24),
    ]
    assert page[0].expected == '{"a": 1, "b": [...]}\n'
    assert page[1].expected is None and page[1].code == "SELECT 1;\n"
    assert page[2].not_run == "needs a Docker engine"
    assert page[3].expected is None  # prose stands between it and the JSON


@pytest.mark.parametrize(
    ("expected", "printed", "matches"),
    [
        ('{"a": 1, "b": [...]}', '{"a":1,"b":[2,3]}\n', True),
        ('{"a": 1, "b": [...]}', '{"a":2,"b":[2]}', False),
        ("demo: ... events", "demo: 226 events", True),
        ("demo: ... events", "demo: 226 rules", False),
        ('{"ok": true}', "", False),
    ],
)
def test_shown_output_is_compared_without_whitespace_with_ellipsis(
    expected: str, printed: str, matches: bool
) -> None:
    assert docs_examples.output_matches(expected, printed) is matches


def test_a_failing_or_different_example_is_a_problem(
    page: list[docs_examples.Example], tmp_path: Path
) -> None:
    first = page[0]
    ok = docs_examples.run(first, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, psql="psql")
    assert docs_examples.problem(first, ok) is None
    wrong = docs_examples.Outcome(0, '{"a": 2}', "")
    assert "printed something else" in (docs_examples.problem(first, wrong) or "")
    failed = docs_examples.run(
        docs_examples.Example(first.path, 1, "shell", "false\n", None, None),
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        psql="psql",
    )
    assert "exited 1" in (docs_examples.problem(first, failed) or "")
