"""The OpenAPI document (sanic-ext), built from the pydantic models the handlers validate with.

Served at /openapi.json (and /docs/openapi.json beside the Redoc/Swagger pages under /docs).
Routes describe themselves with `sanic_ext.openapi.definition`, using the helpers here:
`json_content` (a pydantic model as a component, converted to OpenAPI 3.0), `query_parameters`,
`error_responses` (the shared error model) and the credential schemes.

sanic-ext's own conversion of a pydantic class reads type hints (field names instead of
aliases, no constraints), so models are registered as components from pydantic's JSON Schema
instead, rewritten where OpenAPI 3.0 differs from JSON Schema (`nullable`, `enum` for `const`,
boolean `exclusiveMinimum`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaMode
from sanic import Request, Sanic
from sanic.response import HTTPResponse
from sanic_ext import openapi
from sanic_ext.extensions.openapi.builders import SpecificationBuilder
from sanic_ext.extensions.openapi.definitions import Parameter
from sanic_ext.extensions.openapi.types import Schema

from app import __version__
from app.http.render import json_response

APP_TOKEN_SCHEME = "appToken"  # noqa: S105 (a scheme name, not a secret)
CRON_SECRET_SCHEME = "cronSecret"  # noqa: S105
STRIPE_SIGNATURE_SCHEME = "stripeSignature"
METRICS_TOKEN_SCHEME = "metricsToken"  # noqa: S105

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


class ResponseModel(BaseModel):
    """Base of documented answers: camelCase on the wire, and nothing undocumented."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


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


# --- pydantic JSON Schema -> OpenAPI 3.0 schema ------------------------------------------


def _without_null(options: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    kept = [option for option in options if option.get("type") != "null"]
    return kept, len(kept) != len(options)


def oas30(schema: Any) -> Any:
    """Rewrite a JSON Schema (pydantic's dialect) into the OpenAPI 3.0 schema dialect."""
    if isinstance(schema, list):
        return [oas30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: oas30(value) for key, value in schema.items() if key != "examples"}
    for combinator in ("anyOf", "oneOf"):
        if combinator in out:
            options, nullable = _without_null(out[combinator])
            if nullable:
                out["nullable"] = True
            if len(options) == 1 and "$ref" not in options[0]:
                del out[combinator]
                out = {**options[0], **out}
            else:
                out[combinator] = options
    if "const" in out:
        out["enum"] = [out.pop("const")]
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out[bound], bool):
            out[inclusive] = out[bound]
            out[bound] = True
    return out


def model_schema(model: type[BaseModel], *, mode: JsonSchemaMode = "validation") -> dict[str, Any]:
    """The model's schema in the OpenAPI 3.0 dialect, its sub-models as component references."""
    raw = model.model_json_schema(
        ref_template="#/components/schemas/{model}",
        mode=mode,
    )
    spec = SpecificationBuilder()
    for name, sub in raw.pop("$defs", {}).items():
        spec.add_component("schemas", name, oas30(sub))
    return oas30(raw)


def component(
    model: type[BaseModel],
    *,
    mode: JsonSchemaMode = "validation",
    properties: dict[str, dict[str, Any]] | None = None,
) -> dict[str, str]:
    """Register `model` as a schema component and return a reference to it.

    `properties` overrides the documentation of some fields (merged into pydantic's), for
    fields the handler validates more closely than the model (events and crawl items, each
    checked on its own)."""
    schema = model_schema(model, mode=mode)
    for name, extra in (properties or {}).items():
        schema["properties"][name] = {**schema["properties"][name], **extra}
    SpecificationBuilder().add_component("schemas", model.__name__, schema)
    return ref(model)


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


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


@openapi.definition(
    summary="This document (OpenAPI 3.0)",
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
    return json_response(SpecificationBuilder().build(request.app).serialize())


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
