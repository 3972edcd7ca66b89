"""JSON responses and request-body parsing shared by every handler."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from sanic import Request
from sanic.response import HTTPResponse

from app.errors import BadRequest, UnsupportedMediaType, ValidationFailed

M = TypeVar("M", bound=BaseModel)


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> HTTPResponse:
    return HTTPResponse(
        orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def read_json(request: Request) -> Any:
    """The request body as JSON; a non-JSON content type is 415, unparsable JSON is 400."""
    content_type = request.headers.get("content-type", "application/json")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType()
    if not request.body:
        raise BadRequest("the request body is empty; a JSON object is expected")
    try:
        return orjson.loads(request.body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc.msg}") from exc


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
