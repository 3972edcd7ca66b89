"""The clients cannot drift from the service: the committed OpenAPI document is the live one,
the TypeScript types are what openapi-typescript makes of it, and the Python client's types
have the document's fields. After a change of the document: `make clients-types`."""

from __future__ import annotations

import json
import subprocess
import types
import typing
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import pytest
from ingest_client import types as client_types

from app.settings import Settings
from tests.client_helpers import TS_CLIENT, ts_client_built
from tests.conftest import RunningServer, make_settings

__all__ = ["ts_client_built"]  # the fixture, used by name

DOCUMENT = TS_CLIENT.parent / "openapi.json"
REGENERATE = "the clients are out of date with /openapi.json: run `make clients-types`"


@pytest.fixture
async def live_document(
    start_server: Callable[..., Awaitable[RunningServer]], db_url: str
) -> dict[str, Any]:
    """The document of a server with the default rate limits, as `make clients-types` reads it
    (the limited operations document their `RateLimit-*` headers)."""
    defaults = Settings.model_fields
    server = await start_server(
        make_settings(
            db_url,
            rate_limit_events_per_minute=defaults["rate_limit_events_per_minute"].default,
            rate_limit_crawl_per_minute=defaults["rate_limit_crawl_per_minute"].default,
        )
    )
    response = await server.client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


async def test_the_committed_document_is_the_live_one(live_document: dict[str, Any]) -> None:
    assert json.loads(DOCUMENT.read_text()) == live_document, REGENERATE


@pytest.mark.usefixtures("ts_client_built")
async def test_the_typescript_types_are_generated_from_the_live_document(
    live_document: dict[str, Any], tmp_path: Path
) -> None:
    live = tmp_path / "openapi.json"
    live.write_text(json.dumps(live_document, sort_keys=True))  # as `make clients-types` writes it
    check = subprocess.run(
        ["node", "scripts/types.mjs", "--check", str(live)],
        cwd=TS_CLIENT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert check.returncode == 0, f"{REGENERATE}\n{check.stdout}{check.stderr}"


def _typed_dicts() -> dict[str, type]:
    return {
        name: value
        for name, value in vars(client_types).items()
        if isinstance(value, type) and typing.is_typeddict(value)
    }


def _literal_values(hint: Any) -> set[Any] | None:
    """The values of a Literal hint (inside NotRequired or `| None` too), else None."""
    if get_origin(hint) is typing.Literal:
        return set(get_args(hint))
    if get_origin(hint) in (typing.NotRequired, typing.Union, types.UnionType):
        for arg in get_args(hint):
            values = _literal_values(arg)
            if values is not None:
                return values
    return None


async def test_the_python_types_have_the_document_fields(live_document: dict[str, Any]) -> None:
    schemas = live_document["components"]["schemas"]
    typed = _typed_dicts()
    assert len(typed) >= 15
    for name, typed_dict in typed.items():
        assert name in schemas, f"{name} is not a schema of the document"
        schema = schemas[name]
        properties = schema.get("properties", {})
        assert set(typed_dict.__annotations__) == set(properties), f"{name}: {REGENERATE}"
        required = typed_dict.__required_keys__  # type: ignore[attr-defined]
        assert set(required) == set(schema.get("required", [])), f"{name}: required fields"
        hints = get_type_hints(typed_dict)
        for field, spec in properties.items():
            if "enum" in spec:
                assert _literal_values(hints[field]) == set(spec["enum"]), f"{name}.{field}"
