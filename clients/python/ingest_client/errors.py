"""Errors of the ingest client. Every failure the client reports is one of these."""

from __future__ import annotations

from typing import Any

RETRIABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


class IngestError(Exception):
    """The ingest service could not be reached or refused the request."""

    retriable: bool = False


class IngestHttpError(IngestError):
    """The service answered with an error status (its JSON error model, when it sent one)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[Any] | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.request_id = request_id
        self.retry_after_s = retry_after_s
        self.retriable = status in RETRIABLE_STATUSES


class IngestNetworkError(IngestError):
    """No answer: connection refused or reset, DNS, or no answer within the request timeout."""

    retriable = True


class IngestClosedError(IngestError):
    """The client was closed before the events could be delivered."""
