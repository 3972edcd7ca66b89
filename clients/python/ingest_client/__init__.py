"""asyncio client of the rules ingest service."""

from ingest_client.client import (
    MAX_BATCH,
    MAX_BODY_BYTES,
    ClientStats,
    EventResult,
    EventStatus,
    IngestClient,
)
from ingest_client.errors import (
    IngestClosedError,
    IngestError,
    IngestHttpError,
    IngestNetworkError,
)

__all__ = [
    "MAX_BATCH",
    "MAX_BODY_BYTES",
    "ClientStats",
    "EventResult",
    "EventStatus",
    "IngestClient",
    "IngestClosedError",
    "IngestError",
    "IngestHttpError",
    "IngestNetworkError",
]
