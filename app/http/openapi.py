"""The OpenAPI document (sanic-ext), built from the pydantic models the handlers validate with.

Served at /openapi.json (and /docs/openapi.json beside the Redoc/Swagger pages under /docs).
Routes describe themselves with `sanic_ext.openapi` decorators; this module adds what is shared:
the credential schemes and the error model.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from sanic import Request, Sanic
from sanic.response import HTTPResponse
from sanic_ext.extensions.openapi.builders import SpecificationBuilder

from app import __version__
from app.http.render import json_response

APP_TOKEN_SCHEME = "appToken"  # noqa: S105 (a scheme name, not a secret)
CRON_SECRET_SCHEME = "cronSecret"  # noqa: S105
STRIPE_SIGNATURE_SCHEME = "stripeSignature"


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable error code")
    message: str = Field(description="what went wrong, for a person")
    details: list[Any] = Field(default_factory=list, description="field errors, when any")


class ErrorBody(BaseModel):
    """Every error answer of the service."""

    error: ErrorDetail


def error_responses(*statuses: int) -> list[dict[int, dict[str, type[BaseModel]]]]:
    """`response=` entries for `openapi.definition`, all with the shared error model."""
    return [{status: {"application/json": ErrorBody}} for status in statuses]


async def _openapi_json(request: Request) -> HTTPResponse:
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
        "crawl imports. Browser requests (an Origin header) are refused.",
    )
    spec.add_security_scheme(APP_TOKEN_SCHEME, "apiKey", location="header", name="x-app-token")
    spec.add_security_scheme(CRON_SECRET_SCHEME, "apiKey", location="header", name="x-cron-secret")
    spec.add_security_scheme(
        STRIPE_SIGNATURE_SCHEME, "apiKey", location="header", name="stripe-signature"
    )
    app.add_route(_openapi_json, "/openapi.json", methods=["GET"], name="openapi_json")
