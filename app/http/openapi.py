"""The OpenAPI 3.1 document (sanic-ext), built from the pydantic models the handlers validate with.

Served at /openapi.json (and to the pages under /docs, docs_ui.py). Routes describe themselves
with `sanic_ext.openapi.definition`, using the helpers here: `json_content` (a pydantic model as
a component), `checked_one_by_one` (arrays whose items are validated on their own),
`query_parameters`, `error_responses` (the shared error model) and the credential schemes;
`document` adds what the middleware puts on every answer.

sanic-ext's own conversion of a pydantic class reads type hints (field names instead of
aliases, no constraints), so models are registered as components from pydantic's JSON Schema
instead, which OpenAPI 3.1 takes as it is. Request models go through `RequestJsonSchema`,
which adds what every JSON body must also be (no NUL anywhere), so that the document allows
exactly what the service answers 2xx to; OpenAPI 3.0 could not say it of object keys.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import core_schema
from sanic import Request, Sanic
from sanic.response import HTTPResponse
from sanic_ext import openapi
from sanic_ext.extensions.openapi.builders import SpecificationBuilder
from sanic_ext.extensions.openapi.definitions import Parameter
from sanic_ext.extensions.openapi.types import Schema

from app import __version__
from app.http import docs_ui
from app.http.middleware import REQUEST_ID_PATTERN
from app.http.render import MAX_JSON_DEPTH, json_response
from app.settings import split_secret
from app.wire import WireModel

APP_TOKEN_SCHEME = "appToken"  # noqa: S105 (a scheme name, not a secret)
CRON_SECRET_SCHEME = "cronSecret"  # noqa: S105
STRIPE_SIGNATURE_SCHEME = "stripeSignature"
METRICS_TOKEN_SCHEME = "metricsToken"  # noqa: S105
OPENAPI_VERSION = "3.1.0"

# `secured=` values for `openapi.definition`.
APP_TOKEN: dict[str, Any] = {APP_TOKEN_SCHEME: []}
CRON_SECRET: dict[str, Any] = {CRON_SECRET_SCHEME: []}
STRIPE_SIGNATURE: dict[str, Any] = {STRIPE_SIGNATURE_SCHEME: []}

ERROR_DESCRIPTIONS = {
    400: "Bad JSON (NUL characters, invalid UTF-8 and malformed JSON included), or a body "
    "or query that does not match the schema; `details` lists the field errors",
    401: "Missing or invalid credentials",
    403: "A browser request (an `Origin` header, preflight included): this is a "
    "server-to-server API",
    404: "Not found",
    409: "Conflict with the stored state",
    413: "The body is larger than the route accepts; the message names the limit",
    415: "The body is not JSON (`Content-Type` must be `application/json` or `*+json`)",
    429: "Rate limited; retry after `Retry-After` seconds",
    503: "The database is unavailable; retry after `Retry-After` seconds",
}


# Base of documented answers: camelCase on the wire, and nothing undocumented.
ResponseModel = WireModel


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="stable machine-readable error code")
    message: str = Field(description="what went wrong, for a person")
    details: list[Any] = Field(default_factory=list, description="field errors, when any")


class ErrorBody(BaseModel):
    """Every error answer of the service."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


class JobQueued(ResponseModel):
    """A job queued (or the one already waiting, when a queueing lock holds)."""

    job_id: int
    status: Literal["queued"]
    already_queued: bool


# --- pydantic JSON Schema, as the service reads requests ---------------------------------

# What `read_json` refuses in every body, at any depth: a NUL character in a string or a key.
NO_NUL = "^[^\\x00]*$"
JSON_VALUE = "JsonValue"
JSON_VALUE_REF = {"$ref": f"#/components/schemas/{JSON_VALUE}"}
# Any JSON a request body may hold where the handler takes anything: no NUL in a string or a
# key, no number beyond a double (orjson reads it as infinity and refuses it). Nesting deeper
# than MAX_JSON_DEPTH levels is refused too, which a schema cannot state.
JSON_VALUE_SCHEMA: dict[str, Any] = {
    "description": "Any JSON value without a NUL character in a string or a key (PostgreSQL "
    "cannot store one), numbers within a double's range, nested at most "
    f"{MAX_JSON_DEPTH} levels deep",
    "anyOf": [
        {"type": "string", "pattern": NO_NUL},
        {"type": "number", "minimum": -sys.float_info.max, "maximum": sys.float_info.max},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "array", "items": JSON_VALUE_REF},
        {
            "type": "object",
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": JSON_VALUE_REF,
        },
    ],
}


# pydantic resolves every `$ref` it writes: a marker stands for JsonValue until it is done.
_ANY_JSON = {"x-any-json": True}


def _with_json_value_refs(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_with_json_value_refs(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("x-any-json"):
        return {**{k: v for k, v in schema.items() if k != "x-any-json"}, **JSON_VALUE_REF}
    return {key: _with_json_value_refs(value) for key, value in schema.items()}


class RequestJsonSchema(GenerateJsonSchema):
    """pydantic's JSON Schema of a request model, plus what every JSON body must also be.

    A string without its own pattern gets NO_NUL (the patterns the models set exclude NUL
    already), an object's keys too, and a value the model takes as `Any`, or an extra property
    an `extra="ignore"` model skips, is `JsonValue`: the document then allows exactly what the
    handler answers 2xx to.
    """

    def str_schema(self, schema: core_schema.StringSchema) -> JsonSchemaValue:
        out = super().str_schema(schema)
        out.setdefault("pattern", NO_NUL)
        return out

    def any_schema(self, schema: core_schema.AnySchema) -> JsonSchemaValue:
        return dict(_ANY_JSON)

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        out = super().dict_schema(schema)
        out.setdefault("propertyNames", {"pattern": NO_NUL})
        return out

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        out = super().model_schema(schema)
        if out.get("type") == "object" and "additionalProperties" not in out:
            out["additionalProperties"] = dict(_ANY_JSON)  # extra="ignore": skipped
        if out.get("type") == "object":
            out.setdefault("propertyNames", {"pattern": NO_NUL})
        return out


def model_schema(model: type[BaseModel], *, mode: JsonSchemaMode = "validation") -> dict[str, Any]:
    """The model's JSON Schema (OpenAPI 3.1 is JSON Schema 2020-12), sub-models as component
    references. Request models (`validation`) say what every JSON body must also be."""
    raw = model.model_json_schema(
        ref_template="#/components/schemas/{model}",
        mode=mode,
        schema_generator=RequestJsonSchema if mode == "validation" else GenerateJsonSchema,
    )
    spec = SpecificationBuilder()
    if mode == "validation":
        raw = _with_json_value_refs(raw)
        spec.add_component("schemas", JSON_VALUE, JSON_VALUE_SCHEMA)
    for name, sub in raw.pop("$defs", {}).items():
        spec.add_component("schemas", name, sub)
    return raw


def component(
    model: type[BaseModel],
    *,
    mode: JsonSchemaMode = "validation",
    properties: dict[str, dict[str, Any]] | None = None,
) -> dict[str, str]:
    """Register `model` as a schema component and return a reference to it.

    `properties` replaces the documentation of some fields, for fields the handler checks
    more closely than the model (events and crawl items, each checked on its own)."""
    schema = model_schema(model, mode=mode)
    for name, documented in (properties or {}).items():
        schema["properties"][name] = documented
    SpecificationBuilder().add_component("schemas", model.__name__, schema)
    return ref(model)


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def checked_one_by_one(item: type[BaseModel], *, min_items: int, max_items: int) -> dict[str, Any]:
    """The schema of an array whose items are validated one by one: an item that is not an
    `item` is listed in the answer's `rejected`, not refused, so any JSON value is allowed."""
    return {
        "type": "array",
        "minItems": min_items,
        "maxItems": max_items,
        "items": {"anyOf": [component(item), JSON_VALUE_REF]},
        "description": f"{min_items} to {max_items} items. Each is validated on its own: one "
        f"that is not a `{item.__name__}` is listed in `rejected` and the others are kept.",
    }


def json_content(
    model: type[BaseModel],
    *,
    mode: JsonSchemaMode = "validation",
    properties: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`content` of a request body or response: `model` as application/json."""
    return {"application/json": {"schema": component(model, mode=mode, properties=properties)}}


def json_body(
    model: type[BaseModel],
    *,
    required: bool = True,
    properties: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`body=` for `openapi.definition`: the model the handler validates the body with."""
    content = json_content(model, properties=properties)
    return {"content": content, "required": required}


def json_response_of(status: int, model: type[BaseModel], description: str) -> dict[str, Any]:
    """A `response=` entry for `openapi.definition`."""
    return {
        "status": status,
        "content": json_content(model, mode="serialization"),
        "description": description,
    }


def error_responses(*statuses: int) -> list[dict[str, Any]]:
    """`response=` entries for `openapi.definition`, all with the shared error model."""
    content = json_content(ErrorBody, mode="serialization")
    return [
        {"status": status, "content": content, "description": ERROR_DESCRIPTIONS[status]}
        for status in statuses
    ]


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any] | Parameter | str]:
    """`parameter=` entries for `openapi.definition`: one query parameter per model field."""
    schema = model_schema(model)
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "schema": Schema(**{k: v for k, v in field.items() if k != "title"}),
            "location": "query",
            "required": name in required,
            **({"description": field["description"]} if "description" in field else {}),
        }
        for name, field in schema["properties"].items()
    ]


RETRY_AFTER = {
    "description": "seconds to wait before retrying",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": "requests allowed per minute to this client",
    "RateLimit-Remaining": "requests left in the current minute",
    "RateLimit-Reset": "seconds until a request is allowed again",
}


def response_headers(status: int, *, rate_limited: bool) -> dict[str, Any]:
    """The headers the middleware and the error handler put on an answer with `status`."""
    headers: dict[str, Any] = {
        "x-request-id": {
            "description": "the caller's `x-request-id` when it is sane, else one made here",
            "required": True,
            "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN},
        }
    }
    if status in (429, 503):
        headers["Retry-After"] = {**RETRY_AFTER, "required": True}
    if rate_limited and status != 401:
        for name, description in RATE_LIMIT_HEADERS.items():
            headers[name] = {
                "description": f"{description} (when the route's limit is on)",
                "required": status == 429,
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
    return headers


def _rate_limited_operations(app: Sanic) -> set[tuple[str, str]]:
    settings = app.ctx.settings
    found = set()
    for route in app.router.routes:
        name = getattr(route.ctx, "rate_limit", None)
        if name and int(getattr(settings, f"rate_limit_{name}_per_minute", 0) or 0) > 0:
            found |= {(method.lower(), route.uri) for method in route.methods}
    return found


def document(app: Sanic) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this app as configured: sanic-ext's build of the routes'
    definitions plus what the middleware adds to every answer, and /metrics' credential
    as METRICS_TOKEN sets it."""
    built = SpecificationBuilder().build(app).serialize()
    # A copy as JSON reads it (string keys): the build shares its dicts with the builder.
    spec: dict[str, Any] = orjson.loads(orjson.dumps(built, option=orjson.OPT_NON_STR_KEYS))
    spec["openapi"] = OPENAPI_VERSION
    limited = _rate_limited_operations(app)
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                response["headers"] = {
                    **response.get("headers", {}),
                    **response_headers(int(status), rate_limited=(method, path) in limited),
                }
    metrics = spec["paths"].get("/metrics", {}).get("get")
    if metrics is not None:
        _metrics_security(metrics, bool(split_secret(app.ctx.settings.metrics_token)))
    return spec


def _metrics_security(operation: dict[str, Any], token_set: bool) -> None:
    if token_set:
        operation["security"] = [{METRICS_TOKEN_SCHEME: []}]
    else:
        operation.pop("security", None)
        operation["responses"].pop("401", None)


@openapi.definition(
    summary="This document (OpenAPI 3.1)",
    response=[
        {
            "status": 200,
            "content": {"application/json": {"schema": {"type": "object"}}},
            "description": "The OpenAPI document",
        },
        *error_responses(403),
    ],
)
async def _openapi_json(request: Request) -> HTTPResponse:
    """This document."""
    return json_response(document(request.app))


def _docs_pages_read_the_same_document(request: Request) -> HTTPResponse | None:
    """The Redoc and Swagger pages under /docs read sanic-ext's copy of the document, which
    would be its OpenAPI 3.0 build: answer with this one instead."""
    if request.route is not None and request.route.name.endswith(".openapi.spec"):
        return json_response(document(request.app))
    return None


def configure(app: Sanic) -> None:
    app.extend(
        config={
            "cors": False,
            "oas": True,
            "oas_autodoc": True,
            "oas_url_prefix": "/docs",
            "oas_uri_to_json": "/openapi.json",
            "oas_ignore_head": True,
            "oas_ignore_options": True,
            **docs_ui.sanic_ext_config(),
            "health": False,
        }
    )
    spec = app.ext.openapi
    spec.describe(
        "Rules ingest service",
        version=__version__,
        description="Server-to-server intake of engagement events, Stripe webhooks and partner "
        "crawl imports. Browser requests (an `Origin` header, preflights included) are refused "
        "with 403 on every path but /health. Every error is `ErrorBody`; every answer carries "
        "`x-request-id`. Duplicate keys in a JSON object: the last one wins (as in every "
        "common JSON parser). NUL characters in any JSON string are refused with 400 "
        "(PostgreSQL text cannot hold them), and so is JSON nested deeper than 254 levels. "
        "Any route answers 431 to headers over 8 KiB and 413 to a body over 5 MiB.",
    )
    spec.add_security_scheme(APP_TOKEN_SCHEME, "apiKey", location="header", name="x-app-token")
    spec.add_security_scheme(CRON_SECRET_SCHEME, "apiKey", location="header", name="x-cron-secret")
    spec.add_security_scheme(
        STRIPE_SIGNATURE_SCHEME,
        "apiKey",
        location="header",
        name="stripe-signature",
        description="Stripe's signature of the raw body with the endpoint secret (whsec_...)",
    )
    spec.add_security_scheme(
        METRICS_TOKEN_SCHEME,
        "http",
        scheme="bearer",
        description="METRICS_TOKEN, required only when it is set",
    )
    app.add_route(_openapi_json, "/openapi.json", methods=["GET"], name="openapi_json")
    app.on_request(_docs_pages_read_the_same_document, priority=60)
    app.blueprint(docs_ui.blueprint())
