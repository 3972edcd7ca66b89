"""The service's errors. Each class's docstring is its default message.

Every error has a stable `code` (the wire's `error.code`) and a `kind` that says what went
wrong in the domain's terms: the input can never succeed, something named does not exist, it
conflicts with what is stored, a dependency is unavailable, or an internal fault. Only
`app.http.errors` turns a kind into an HTTP status; the job retry policy (`jobs/resources.py`)
reads the kind too: retrying cannot help a job whose arguments are invalid. Nothing here
imports Sanic.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """What an error means, independent of how it is reported."""

    INVALID = "invalid"  # the input is wrong: the same call can never succeed
    UNAUTHENTICATED = "unauthenticated"  # missing or wrong credentials
    NOT_FOUND = "not_found"  # it names something that does not exist
    CONFLICT = "conflict"  # it contradicts what is stored
    UNAVAILABLE = "unavailable"  # a dependency cannot answer now: retry later
    INTERNAL = "internal"  # a fault of the service or its configuration

    @property
    def retriable(self) -> bool:
        """Whether the same call may succeed later."""
        return self in (Kind.UNAVAILABLE, Kind.INTERNAL)


class IngestError(Exception):
    """Internal error."""

    kind: Kind = Kind.INTERNAL
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

    kind = Kind.INVALID
    code = "bad_request"


class ValidationFailed(BadRequest):
    """The request body does not match the documented schema."""

    code = "validation_failed"


class Unauthorized(IngestError):
    """Missing or invalid credentials."""

    kind = Kind.UNAUTHENTICATED
    code = "unauthorized"


class NotFound(IngestError):
    """Not found."""

    kind = Kind.NOT_FOUND
    code = "not_found"


class DatabaseUnavailable(IngestError):
    """The database is unavailable; retry later."""

    kind = Kind.UNAVAILABLE
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

    kind = Kind.CONFLICT
    code = "source_without_curator"


class SourceNameTaken(IngestError):
    """A crawl source with this name already exists."""

    kind = Kind.CONFLICT
    code = "source_name_taken"


class RebuildNotQueued(IngestError):
    """The search rebuild could not be queued; retry shortly."""

    kind = Kind.UNAVAILABLE
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

    kind = Kind.UNAVAILABLE
    code = "stripe_api_unavailable"
