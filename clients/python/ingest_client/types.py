"""The service's request and answer bodies, as its OpenAPI document (`/openapi.json`) states
them; a test of the repository compares these with the live document."""

from typing import Any, Literal, NotRequired, TypedDict

EventType = Literal["VIEW", "COPY", "SAVE", "FORK", "VOTE"]


class Event(TypedDict):
    type: EventType
    ruleId: str
    userId: NotRequired[str | None]
    ts: NotRequired[str | None]
    idempotencyKey: NotRequired[str | None]
    ip: NotRequired[str | None]


class RejectedEvent(TypedDict):
    index: int
    reason: str


class EventIngestReport(TypedDict):
    accepted: int
    duplicates: int
    rejected: list[RejectedEvent]


class DatabaseHealth(TypedDict):
    reachable: bool
    latencyMs: float | None
    error: NotRequired[str | None]


class Health(TypedDict):
    status: Literal["ok", "degraded"]
    timestamp: str
    database: DatabaseHealth
    version: str


class CrawlItem(TypedDict):
    externalId: str
    url: str
    title: str
    summary: NotRequired[str | None]
    raw: NotRequired[dict[str, Any] | None]
    tags: NotRequired[list[str]]
    model: NotRequired[str | None]


class CrawlBatch(TypedDict):
    sourceId: str
    items: list[CrawlItem]


class RejectedItem(TypedDict):
    index: int
    reason: str


class ItemOutcome(TypedDict):
    index: int
    externalId: str
    status: Literal["created", "updated", "unchanged"]
    ruleId: str | None


class CrawlReport(TypedDict):
    sourceId: str
    created: int
    updated: int
    unchanged: int
    rejected: list[RejectedItem]
    items: list[ItemOutcome]


class RollupRequest(TypedDict, total=False):
    date: str | None
    dryRun: bool
    daysToProcess: int


class JobQueued(TypedDict):
    jobId: int
    status: Literal["queued"]
    alreadyQueued: bool


class RollupDryRun(TypedDict):
    status: Literal["dry_run"]
    runId: int | None
    endDay: str
    days: list[str]
    refreshedDays: list[str]
    skippedDays: list[str]
    dryRun: bool
    rowCounts: dict[str, int]
    durationMs: float
    stageMs: float
    applyMs: float
    top: list[dict[str, Any]]
    reasons: dict[str, list[str]]


class SearchHit(TypedDict):
    ruleId: str
    title: str
    rank: float
    headline: str


class SearchResults(TypedDict):
    query: str
    count: int
    results: list[SearchHit]
