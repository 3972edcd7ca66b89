"""HTTP helpers for tests that need more than httpx offers."""

from __future__ import annotations

import asyncio

import httpx
import orjson

from tests.conftest import APP_HEADERS, CRON_HEADERS


async def announce(http: httpx.AsyncClient, path: str, content_length: int) -> tuple[int, dict]:
    """Send only the head of a POST announcing `content_length` bytes (a body over the
    server-wide limit is refused before it is read, and the connection closed)."""
    reader, writer = await asyncio.open_connection(http.base_url.host, http.base_url.port)
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {http.base_url.host}\r\n"
        f"x-app-token: {APP_HEADERS['x-app-token']}\r\n"
        f"x-cron-secret: {CRON_HEADERS['x-cron-secret']}\r\n"
        f"content-type: application/json\r\ncontent-length: {content_length}\r\n\r\n"
    )
    writer.write(head.encode())
    await writer.drain()
    try:
        response = await asyncio.wait_for(reader.read(65536), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
    head_part, _, body = response.partition(b"\r\n\r\n")
    return int(head_part.split(b" ", 2)[1]), orjson.loads(body)
