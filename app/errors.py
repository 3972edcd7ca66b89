"""The service's errors. Each class's docstring is its default message.

The data layer raises these; only `app.http.errors` turns them into HTTP responses, so nothing
below the handlers imports Sanic.
"""

from __future__ import annotations

from typing import Any


class IngestError(Exception):
    """Internal error."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.details = details or []
        self.headers = headers or {}
        super().__init__(self.message)


class ConfigurationError(IngestError):
    """The service is not configured correctly."""

    code = "configuration_error"


class BadRequest(IngestError):
    """The request is malformed."""

    status = 400
    code = "bad_request"


class ValidationFailed(BadRequest):
    """The request body does not match the documented schema."""

    code = "validation_failed"


class Unauthorized(IngestError):
    """Missing or invalid credentials."""

    status = 401
    code = "unauthorized"


class BrowserForbidden(IngestError):
    """Browser requests are not accepted: this is a server-to-server API."""

    status = 403
    code = "browser_forbidden"


class NotFound(IngestError):
    """Not found."""

    status = 404
    code = "not_found"


class MethodNotAllowed(IngestError):
    """Method not allowed on this path."""

    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(IngestError):
    """The request body is too large."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(IngestError):
    """The request body must be JSON (Content-Type: application/json)."""

    status = 415
    code = "unsupported_media_type"


class RateLimited(IngestError):
    """Too many requests; retry later."""

    status = 429
    code = "rate_limited"


class DatabaseUnavailable(IngestError):
    """The database is unavailable; retry later."""

    status = 503
    code = "database_unavailable"


class DatabaseMisconfigured(DatabaseUnavailable):
    """The database connection rejects the service's statements: a pooler or server setting."""

    code = "database_misconfigured"


class MigrationError(IngestError):
    """A migration could not be applied."""

    code = "migration_error"


class ChecksumMismatch(MigrationError):
    """An already-applied migration file was changed."""

    code = "migration_checksum_mismatch"


class UnknownSource(NotFound):
    """Unknown crawl source: sources are registered by operators (`ingest sources add`)."""

    code = "unknown_source"


class SourceWithoutCurator(IngestError):
    """The crawl source has no curator to author its rules; an operator must assign one."""

    status = 409
    code = "source_without_curator"


class SourceNameTaken(IngestError):
    """A crawl source with this name already exists."""

    status = 409
    code = "source_name_taken"


class RebuildNotQueued(IngestError):
    """The search rebuild could not be queued; retry shortly."""

    status = 503
    code = "rebuild_not_queued"


class StripeSignatureInvalid(Unauthorized):
    """The Stripe-Signature header is missing or does not verify against any webhook secret."""

    code = "invalid_stripe_signature"


class StripeEventInvalid(BadRequest):
    """The signed body is not a Stripe event (JSON object with id, type, created, data)."""

    code = "invalid_stripe_event"


class StripeEventNotFound(NotFound):
    """No such Stripe event in the inbox."""

    code = "stripe_event_not_found"


class StripeEventUnmapped(IngestError):
    """The Stripe event names no payment this service knows yet; it will be retried."""

    code = "stripe_event_unmapped"


class StripeApiKeyRejected(ConfigurationError):
    """Stripe refused STRIPE_SECRET_KEY; reconciliation stops until the key is fixed."""

    code = "stripe_api_key_rejected"


class StripeApiRequestRefused(ConfigurationError):
    """Stripe refused the Events API request; retrying the same request cannot help."""

    code = "stripe_api_request_refused"


class StripeApiUnavailable(IngestError):
    """Stripe's API is rate limiting or failing; the reconciliation is retried later."""

    status = 503
    code = "stripe_api_unavailable"
