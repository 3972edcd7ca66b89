"""Refusals that exist only at the HTTP edge (a browser origin, a body too large, a rate
limit): they carry their status themselves. Every other error is a domain error whose kind
`app.http.errors` maps to a status."""

from __future__ import annotations

from app.errors import IngestError, Kind


class HttpRefusal(IngestError):
    """The request is refused."""

    kind = Kind.INVALID
    status: int = 400


class BrowserForbidden(HttpRefusal):
    """Browser requests are not accepted: this is a server-to-server API."""

    status = 403
    code = "browser_forbidden"


class PayloadTooLarge(HttpRefusal):
    """The request body is too large."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(HttpRefusal):
    """The request body must be JSON (Content-Type: application/json)."""

    status = 415
    code = "unsupported_media_type"


class RateLimited(HttpRefusal):
    """Too many requests; retry later."""

    status = 429
    code = "rate_limited"
