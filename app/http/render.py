"""JSON responses and request-body parsing shared by every handler."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from sanic import Request
from sanic.response import HTTPResponse

from app.errors import BadRequest, ValidationFailed
from app.http.exceptions import UnsupportedMediaType

M = TypeVar("M", bound=BaseModel)

# orjson writes (jsonb parameters, content hashes) at most this many nested arrays and objects.
MAX_JSON_DEPTH = 254
_NUL_ESCAPE = b"\\u0000"


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> HTTPResponse:
    return HTTPResponse(
        orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def _strings(data: Any) -> Iterator[str]:
    """Every string in a parsed JSON document, object keys included (iterative: any depth)."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            yield from value.keys()
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def unstorable(body: bytes, data: Any) -> str | None:
    """Why a parsed JSON body could not be stored, or None.

    PostgreSQL text and jsonb cannot hold NUL (`\\u0000`), and jsonb values are written with
    orjson, which stops at MAX_JSON_DEPTH levels: refused once here, for every JSON body,
    rather than failing in the database half-way through a request. Both checks run at C
    speed (a byte search, an orjson write: about 50 us for a 64 KB batch of 500 events);
    the walk over the strings happens only when the raw body holds a NUL escape.
    """
    if _NUL_ESCAPE in body and any("\x00" in text for text in _strings(data)):
        return (
            "a string in the request body contains a NUL character (\\u0000), which "
            "PostgreSQL cannot store"
        )
    if len(body) > 2 * MAX_JSON_DEPTH:  # shorter text cannot nest that deep
        try:
            orjson.dumps(data)
        except orjson.JSONEncodeError:
            return f"the request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"
    return None


def read_json(request: Request) -> Any:
    """The request body as JSON; a non-JSON content type is 415, unparsable JSON is 400.

    Duplicate keys in an object: the last one wins (orjson, like most JSON parsers)."""
    content_type = request.headers.get("content-type", "application/json")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType()
    body = request.body
    if not body:
        raise BadRequest("the request body is empty; a JSON object is expected")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc.msg}") from exc
    reason = unstorable(body, data)
    if reason is not None:
        raise BadRequest(reason)
    return data


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's field errors without the offending input (it may be huge or sensitive)."""
    return [
        {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def parse_body(request: Request, model: type[M], *, empty_ok: bool = False) -> M:
    """Validate the JSON body against `model`; failures are a 400 with pydantic's field errors."""
    data = {} if empty_ok and not request.body else read_json(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(details=validation_details(exc)) from exc
