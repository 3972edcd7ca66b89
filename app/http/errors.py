"""One place turns every exception into the JSON error model of the HTTP contract (README)."""

from __future__ import annotations

import logging
from typing import Any

from sanic import Request
from sanic.exceptions import RequestCancelled, SanicException
from sanic.handlers import ErrorHandler
from sanic.response import HTTPResponse

from app.db import MISCONFIGURATION_ERRORS, MISCONFIGURATION_HINT, UNAVAILABLE_ERRORS
from app.errors import DatabaseMisconfigured, DatabaseUnavailable, IngestError, Kind
from app.http.exceptions import BrowserForbidden, HttpRefusal
from app.http.render import json_response

logger = logging.getLogger("ingest.http")

_SANIC_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    416: "range_not_satisfiable",
    503: "service_unavailable",
}
# RFC 6585's status for headers too large (Sanic reports them as a 413, like a large body).
HEADERS_TOO_LARGE = 431
# nginx's code for "the client closed the connection before the answer": nobody reads it.
CLIENT_CLOSED = 499


# The one place where what an error means becomes an HTTP status.
STATUS_OF_KIND = {
    Kind.INVALID: 400,
    Kind.UNAUTHENTICATED: 401,
    Kind.NOT_FOUND: 404,
    Kind.CONFLICT: 409,
    Kind.UNAVAILABLE: 503,
    Kind.INTERNAL: 500,
}


def status_of(error: IngestError) -> int:
    """The HTTP status of a service error: an edge refusal's own, else its kind's."""
    if isinstance(error, HttpRefusal):
        return error.status
    return STATUS_OF_KIND[error.kind]


def error_body(code: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


def _from_sanic(request: Request, exc: SanicException) -> tuple[int, str, str]:
    status = exc.status_code
    if status in (404, 405) and request.headers.get("origin") and request.path != "/health":
        # A browser preflight (OPTIONS) or a stray browser call: refuse it like any browser request.
        refusal = BrowserForbidden()
        return refusal.status, refusal.code, refusal.message
    if status == 413 and "header" in str(exc).lower():
        limit = request.app.config.REQUEST_MAX_HEADER_SIZE
        message = f"the request headers exceed the limit of {limit} bytes"
        return HEADERS_TOO_LARGE, "request_headers_too_large", message
    if status == 413:
        limit = request.app.config.REQUEST_MAX_SIZE
        return 413, "payload_too_large", f"the request body exceeds the limit of {limit} bytes"
    message = str(exc) if status < 500 else "internal error"
    return status, _SANIC_CODES.get(status, "http_error"), message


class JsonErrorHandler(ErrorHandler):
    """Renders every error as `{"error": {"code", "message", "details"}}`, never a traceback."""

    def default(self, request: Request, exception: Exception) -> HTTPResponse:
        headers: dict[str, str] = {}
        details: list[Any] = []
        if isinstance(exception, MISCONFIGURATION_ERRORS):
            # Outside a unit of work (which records it itself): logged once, /health goes red.
            request.app.ctx.res.db.faults.record(exception)
            exception = DatabaseMisconfigured(MISCONFIGURATION_HINT)
        elif isinstance(exception, UNAVAILABLE_ERRORS) and not isinstance(exception, IngestError):
            exception = DatabaseUnavailable()
        if isinstance(exception, IngestError):
            status, code, message = status_of(exception), exception.code, exception.message
            details, headers = exception.details, dict(exception.headers)
        elif isinstance(exception, RequestCancelled):
            # The caller hung up; the request's transaction was rolled back with it.
            logger.info(
                "client closed the connection before the answer",
                extra={"request_id": getattr(request.ctx, "request_id", None)},
            )
            return json_response(
                error_body("client_closed", "the client closed the connection"),
                status=CLIENT_CLOSED,
            )
        elif isinstance(exception, SanicException):
            status, code, message = _from_sanic(request, exception)
            if status == 405:
                headers = dict(exception.headers)  # `Allow`, which RFC 9110 requires on a 405
        else:
            status, code, message = 500, "internal_error", "internal error"
        if status == 503:
            headers.setdefault("retry-after", str(request.app.ctx.settings.retry_after_s))
        if status >= 500 and not isinstance(exception, DatabaseMisconfigured):
            logger.error(
                "request failed",
                exc_info=exception if status == 500 else None,
                extra={"request_id": getattr(request.ctx, "request_id", None), "code": code},
            )
        return json_response(error_body(code, message, details), status=status, headers=headers)
