"""A stand-in for Stripe's Events API, for tests only: a real HTTP server on 127.0.0.1.

It serves `GET /v1/events` in Stripe's documented list format (`object: "list"`, `data`,
`has_more`, newest first, `starting_after` cursors, the `types` and `created[gte|lte]`
filters, `limit`) and answers errors with Stripe's error bodies (`{"error": {"type",
"message", "code"}}`): 401 for a key it does not know, and whatever a test queues (429,
5xx). The service reaches it only through stripe-python's configured API base
(`STRIPE_API_BASE`). Every request is recorded so a test can check what was asked.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

API_KEY = "sk_test_standin_0123456789abcdef"

ERRORS = {
    401: ("invalid_request_error", None, "Invalid API Key provided: sk_test_****cdef"),
    403: (
        "invalid_request_error",
        "secret_key_required",
        "The provided key does not have the required permissions",
    ),
    429: ("invalid_request_error", "rate_limit", "Too many requests hit the API too quickly."),
    500: ("api_error", None, "An unknown error occurred"),
    503: ("api_error", None, "The service is temporarily unavailable"),
}


@dataclass
class Recorded:
    path: str
    params: dict[str, Any]
    authorization: str | None


@dataclass
class EventsApi:
    """What the stand-in holds: events, queued error answers, and the requests it saw."""

    url: str = ""
    page_size: int = 100
    events: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    failures: deque[int] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, *events: dict[str, Any]) -> None:
        with self.lock:
            self.events.extend(events)

    def fail_next(self, status: int, *, times: int = 1) -> None:
        """The next `times` requests get this status with Stripe's error body."""
        with self.lock:
            self.failures.extend([status] * times)

    def list_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/v1/events"]

    # --- serving ---------------------------------------------------------------------

    def answer(self, path: str, params: dict[str, Any], authorization: str | None) -> tuple:
        with self.lock:
            self.requests.append(Recorded(path, params, authorization))
            if authorization != f"Bearer {API_KEY}":
                return error(401)
            if self.failures:
                return error(self.failures.popleft())
            if path != "/v1/events":
                return error(404, message=f"Unrecognized request URL (GET: {path})")
            return 200, {}, self._page(params)

    def _page(self, params: dict[str, Any]) -> dict[str, Any]:
        types = params.get("types") or []
        created = params.get("created") or {}
        found = [
            e
            for e in self.events
            if (not types or e["type"] in types)
            and e["created"] >= int(created.get("gte", -(2**62)))
            and e["created"] <= int(created.get("lte", 2**62))
        ]
        found.sort(key=lambda e: (e["created"], e["id"]), reverse=True)
        after = params.get("starting_after")
        if after is not None:
            ids = [e["id"] for e in found]
            found = found[ids.index(after) + 1 :] if after in ids else []
        limit = min(int(params.get("limit", 10)), self.page_size)
        return {
            "object": "list",
            "url": "/v1/events",
            "has_more": len(found) > limit,
            "data": found[:limit],
        }


def error(status: int, *, message: str | None = None) -> tuple:
    kind, code, default = ERRORS.get(status, ("invalid_request_error", None, "Not found"))
    body: dict[str, Any] = {"type": kind, "message": message or default}
    if code:
        body["code"] = code
    return status, {"request-id": f"req_standin_{time.monotonic_ns()}"}, {"error": body}


def parse_params(query: str) -> dict[str, Any]:
    """Stripe's form encoding back into values: `types[0]=a`, `created[gte]=1`, `limit=3`."""
    params: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        match = re.fullmatch(r"(\w+)\[(\w*)\]", key)
        if match is None:
            params[key] = value
        elif match.group(2).isdigit() or match.group(2) == "":
            params.setdefault(match.group(1), []).append(value)
        else:
            params.setdefault(match.group(1), {})[match.group(2)] = value
    return params


def _handler(api: EventsApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            status, headers, body = api.answer(
                parts.path, parse_params(parts.query), self.headers.get("authorization")
            )
            payload = orjson.dumps(body)
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@contextlib.contextmanager
def running_events_api() -> Iterator[EventsApi]:
    """A running stand-in on a free loopback port, stopped on exit."""
    api = EventsApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    server.daemon_threads = True
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
