"""The ingest service's asyncio client.

`track()` queues engagement events and sends them in batches (by size and by time), with an
idempotency key per event, retries with backoff and a bounded queue; typed calls cover the other
endpoints. The same rules as the TypeScript client in this repository.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar, cast

import httpx

from ingest_client.errors import (
    RETRIABLE_STATUSES,
    IngestClosedError,
    IngestError,
    IngestHttpError,
    IngestNetworkError,
)
from ingest_client.types import (
    CrawlBatch,
    CrawlReport,
    Event,
    EventIngestReport,
    Health,
    JobQueued,
    RollupDryRun,
    RollupRequest,
    SearchResults,
)

MAX_BATCH = 500
MAX_BODY_BYTES = 1024 * 1024

EventStatus = Literal[
    "accepted", "duplicate", "accepted_or_duplicate", "rejected", "failed", "dropped"
]
T = TypeVar("T")


@dataclass(frozen=True)
class EventResult:
    """What became of one event (the statuses are described in the client's README)."""

    event: dict[str, Any]
    status: EventStatus
    reason: str | None = None
    error: IngestError | None = None
    attempts: int = 0


@dataclass
class ClientStats:
    queued: int = 0
    in_flight_batches: int = 0
    tracked: int = 0
    accepted: int = 0
    duplicate: int = 0
    accepted_or_duplicate: int = 0
    rejected: int = 0
    failed: int = 0
    dropped: int = 0
    batches: int = 0
    requests: int = 0
    retries: dict[str, int] = field(default_factory=dict)  # by cause: "network", "429", ...


@dataclass(eq=False)
class _Batch:
    first_seq: int
    events: list[dict[str, Any]]
    reported: int = 0  # events[:reported] have their result (halves of a split batch go in order)
    task: asyncio.Task[None] | None = None


@dataclass
class _Answer:
    value: Any = None
    error: IngestError | None = None
    attempts: int = 0


class IngestClient:
    """Batched, retried delivery of events to `POST /ingest/events`, plus the other calls.

    Use it inside a running event loop, ideally as `async with IngestClient(...) as client:`
    (leaving the block closes it: what is queued is delivered within `close_deadline_s`).
    """

    def __init__(
        self,
        base_url: str,
        *,
        app_token: str | None = None,
        cron_secret: str | None = None,
        flush_at: int = 100,
        flush_interval_s: float = 1.0,
        max_queue_size: int = 10_000,
        max_in_flight: int = 4,
        max_attempts: int = 8,
        initial_backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
        request_timeout_s: float = 10.0,
        close_deadline_s: float = 10.0,
        on_result: Callable[[EventResult], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not 1 <= flush_at <= MAX_BATCH:
            raise ValueError(f"flush_at must be from 1 to {MAX_BATCH} (got {flush_at})")
        self.stats = ClientStats()
        self._app_token, self._cron_secret = app_token, cron_secret
        self._flush_at, self._flush_interval_s = flush_at, flush_interval_s
        self._max_queue_size, self._max_in_flight = max_queue_size, max(1, max_in_flight)
        self._max_attempts = max(1, max_attempts)
        self._initial_backoff_s, self._max_backoff_s = initial_backoff_s, max_backoff_s
        self._close_deadline_s = close_deadline_s
        self._on_result = on_result
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=request_timeout_s,
            transport=transport,
            limits=httpx.Limits(max_connections=self._max_in_flight + 4),
        )
        self._queue: list[tuple[int, dict[str, Any]]] = []
        self._in_flight: set[_Batch] = set()
        self._next_seq = 0
        self._forced_through = -1
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._closing = False
        self._stopped = asyncio.Event()

    async def __aenter__(self) -> IngestClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- events ------------------------------------------------------------------------

    def track(self, event: Event | Mapping[str, Any]) -> bool:
        """Queue one event: sent within `flush_interval_s`, or at once when `flush_at` are
        queued. False (and a `dropped` result) when the queue is full or the client closing."""
        sent = _to_sent(event)
        self.stats.tracked += 1
        if self._closing or len(self._queue) >= self._max_queue_size:
            reason = "closed" if self._closing else "queue_full"
            self._report(EventResult(sent, "dropped", reason=reason))
            return False
        self._queue.append((self._next_seq, sent))
        self._next_seq += 1
        self.stats.queued = len(self._queue)
        if len(self._queue) >= self._flush_at:
            self._pump()
        elif self._timer is None:
            self._arm_timer()
        return True

    async def flush(self) -> None:
        """Send everything queued now; return when each of those events has its result."""
        through = self._next_seq - 1
        if through < 0:
            return
        self._forced_through = max(self._forced_through, through)
        settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((through, settled))
        self._pump()
        self._settle_waiters()
        await settled

    async def aclose(self, deadline_s: float | None = None) -> ClientStats:
        """Stop taking events and deliver what is queued within the deadline; whatever is
        still undelivered then (queued, waiting for a retry, or in flight) is `failed`."""
        if self._closing and self._stopped.is_set():
            return self.stats
        self._closing = True
        self._cancel_timer()
        deadline = self._close_deadline_s if deadline_s is None else deadline_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), deadline)
        self._stopped.set()
        abandoned, self._queue = self._queue, []
        self.stats.queued = 0
        for _, event in abandoned:
            self._report(EventResult(event, "failed", error=IngestClosedError()))
        tasks = [b.task for b in self._in_flight if b.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._settle_waiters()
        await self._http.aclose()
        return self.stats

    def _arm_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._flush_interval_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._forced_through = max(self._forced_through, self._next_seq - 1)
        self._pump()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None

    def _pump(self) -> None:
        """Start batches while slots are free: full ones, and partial ones up to the last
        forced (flushed or timed-out) event."""
        while (
            len(self._in_flight) < self._max_in_flight
            and self._queue
            and not self._stopped.is_set()
        ):
            if len(self._queue) < self._flush_at and self._queue[0][0] > self._forced_through:
                break
            items, self._queue = self._queue[: self._flush_at], self._queue[self._flush_at :]
            self.stats.queued = len(self._queue)
            batch = _Batch(items[0][0], [event for _, event in items])
            batch.task = asyncio.create_task(self._run_batch(batch))
            self._in_flight.add(batch)
            self.stats.in_flight_batches = len(self._in_flight)
            self.stats.batches += 1
        if self._queue and self._timer is None and not self._closing:
            self._arm_timer()

    async def _run_batch(self, batch: _Batch) -> None:
        try:
            await self._deliver(batch, batch.events)
        except asyncio.CancelledError:
            self._fail_rest(batch, IngestClosedError())
            raise
        except Exception as exc:  # a bug must not lose the events silently: report them
            self._fail_rest(batch, IngestError(f"{type(exc).__name__}: {exc}"))
        finally:
            self._in_flight.discard(batch)
            self.stats.in_flight_batches = len(self._in_flight)
            self._settle_waiters()
            self._pump()

    def _fail_rest(self, batch: _Batch, error: IngestError) -> None:
        for event in batch.events[batch.reported :]:
            self._report(EventResult(event, "failed", error=error))
        batch.reported = len(batch.events)

    def _settle_waiters(self) -> None:
        pending = [b.first_seq for b in self._in_flight] + [s for s, _ in self._queue[:1]]
        lowest = min(pending, default=self._next_seq)
        keep = []
        for through, future in self._waiters:
            if through < lowest or self._stopped.is_set():
                if not future.done():
                    future.set_result(None)
            else:
                keep.append((through, future))
        self._waiters = keep

    async def _deliver(self, batch: _Batch, events: list[dict[str, Any]]) -> None:
        """One batch, split in halves while its body is over the service's limit."""
        body = json.dumps({"events": events}, separators=(",", ":")).encode()
        if len(events) > 1 and len(body) > MAX_BODY_BYTES:
            half = (len(events) + 1) // 2
            await self._deliver(batch, events[:half])
            await self._deliver(batch, events[half:])
            return
        answer = await self._request("POST", "/ingest/events", content=body, accept=(202,))
        batch.reported += len(events)
        if answer.error is not None:
            for event in events:
                failed = EventResult(event, "failed", error=answer.error, attempts=answer.attempts)
                self._report(failed)
            return
        self._report_batch(events, cast(EventIngestReport, answer.value), answer.attempts)

    def _report_batch(
        self, events: list[dict[str, Any]], answer: EventIngestReport, attempts: int
    ) -> None:
        reasons = {r["index"]: r["reason"] for r in answer["rejected"]}
        rest: EventStatus = (
            "accepted"
            if answer["duplicates"] == 0
            else "duplicate"
            if answer["accepted"] == 0
            else "accepted_or_duplicate"
        )
        for index, event in enumerate(events):
            reason = reasons.get(index)
            if reason is None:
                self._report(EventResult(event, rest, attempts=attempts))
            else:
                self._report(EventResult(event, "rejected", reason=reason, attempts=attempts))

    def _report(self, result: EventResult) -> None:
        setattr(self.stats, result.status, getattr(self.stats, result.status) + 1)
        if self._on_result is None:
            return
        with contextlib.suppress(Exception):  # a caller's callback must not break delivery
            self._on_result(result)

    # --- the other endpoints -----------------------------------------------------------

    async def health(self) -> Health:
        """`GET /health`: the answer for 200 and 503 alike (not retried)."""
        return cast(
            Health,
            await self._call("GET", "/health", accept=(200, 503), attempts=1, credential=None),
        )

    async def import_crawl(self, batch: CrawlBatch) -> CrawlReport:
        """`POST /ingest/crawl` (retried: the import is idempotent)."""
        return cast(
            CrawlReport,
            await self._call("POST", "/ingest/crawl", json_body=batch, credential="app"),
        )

    async def trigger_rollup(
        self, request: RollupRequest | None = None
    ) -> JobQueued | RollupDryRun:
        """`POST /cron/rollup`: the queued job (202), or a dry run's report (200)."""
        answer = await self._call(
            "POST", "/cron/rollup", json_body=request or {}, credential="cron", accept=(200, 202)
        )
        return cast(JobQueued | RollupDryRun, answer)

    async def rebuild_search(self) -> JobQueued:
        """`POST /cron/rebuild-search`: queue a rebuild of the search index."""
        return cast(
            JobQueued,
            await self._call("POST", "/cron/rebuild-search", credential="cron", accept=(202,)),
        )

    async def search(self, q: str, *, limit: int | None = None) -> SearchResults:
        """`GET /internal/search`: rules matching `q`, best first."""
        params: dict[str, str | int] = {"q": q} | ({"limit": limit} if limit is not None else {})
        return cast(
            SearchResults,
            await self._call("GET", "/internal/search", params=params, credential="app"),
        )

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        accept: tuple[int, ...] = (200,),
        **options: Any,
    ) -> Any:
        content = None if json_body is None else json.dumps(json_body).encode()
        answer = await self._request(method, path, content=content, accept=accept, **options)
        if answer.error is not None:
            raise answer.error
        return answer.value

    # --- one request, with retries -----------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        accept: tuple[int, ...],
        credential: Literal["app", "cron"] | None = "app",
        params: dict[str, str | int] | None = None,
        attempts: int | None = None,
    ) -> _Answer:
        limit = attempts or self._max_attempts
        headers = self._headers(credential, has_body=content is not None)
        error: IngestError = IngestClosedError()
        for attempt in range(1, limit + 1):
            if attempt > 1:
                self._count_retry(error)
            answer = await self._once(method, path, content, headers, params, accept)
            if answer.error is None:
                return _Answer(answer.value, attempts=attempt)
            error = answer.error
            if not error.retriable or attempt == limit:
                break
            if not await self._sleep(self._delay_s(error, attempt)):
                return _Answer(error=IngestClosedError(), attempts=attempt)
        return _Answer(error=error, attempts=attempt)

    def _headers(self, credential: str | None, *, has_body: bool) -> dict[str, str]:
        headers = {"accept": "application/json"}
        if has_body:
            headers["content-type"] = "application/json"
        if credential == "app" and self._app_token is not None:
            headers["x-app-token"] = self._app_token
        if credential == "cron" and self._cron_secret is not None:
            headers["x-cron-secret"] = self._cron_secret
        return headers

    async def _once(
        self,
        method: str,
        path: str,
        content: bytes | None,
        headers: dict[str, str],
        params: dict[str, str | int] | None,
        accept: tuple[int, ...],
    ) -> _Answer:
        self.stats.requests += 1
        try:
            response = await self._http.request(
                method, path, content=content, headers=headers, params=params
            )
        except httpx.TransportError as exc:
            return _Answer(error=IngestNetworkError(f"request failed: {exc!r}"))
        if response.status_code not in accept:
            return _Answer(error=_http_error(response))
        try:
            return _Answer(response.json())
        except ValueError:
            return _Answer(error=IngestNetworkError(f"answer {response.status_code} is not JSON"))

    def _delay_s(self, error: IngestError, attempt: int) -> float:
        """`Retry-After` when the service gave one, else exponential backoff with jitter."""
        if isinstance(error, IngestHttpError) and error.retry_after_s is not None:
            return error.retry_after_s
        ceiling = min(self._max_backoff_s, self._initial_backoff_s * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.random() * ceiling / 2

    async def _sleep(self, seconds: float) -> bool:
        """Wait; False when the client was stopped first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)
        return not self._stopped.is_set()

    def _count_retry(self, error: IngestError) -> None:
        cause = str(error.status) if isinstance(error, IngestHttpError) else "network"
        self.stats.retries[cause] = self.stats.retries.get(cause, 0) + 1


def _to_sent(event: Event | Mapping[str, Any]) -> dict[str, Any]:
    sent = dict(event)
    if isinstance(sent.get("ts"), datetime):
        sent["ts"] = sent["ts"].isoformat()
    if sent.get("idempotencyKey") is None:
        sent["idempotencyKey"] = str(uuid.uuid4())
    return sent


def _http_error(response: httpx.Response) -> IngestHttpError:
    code, message, details = "http_error", response.reason_phrase or "error", []
    try:
        body = response.json()["error"]
        code, message, details = body["code"], body["message"], body.get("details", [])
    except (ValueError, KeyError, TypeError):
        pass  # not the service's error model (a proxy's page, say): keep the status line
    retry_after: float | None = None
    if response.status_code in RETRIABLE_STATUSES:
        with contextlib.suppress(TypeError, ValueError):
            retry_after = max(0.0, float(response.headers.get("retry-after")))
    return IngestHttpError(
        response.status_code,
        code,
        message,
        details=details,
        request_id=response.headers.get("x-request-id"),
        retry_after_s=retry_after,
    )
