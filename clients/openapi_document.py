"""Write the service's live OpenAPI document to a file (`make clients-types` runs this).

Starts the service in this process on a free loopback port, reads `GET /openapi.json` as a
caller would, and writes it with sorted keys so that a change of the document is a readable
diff. The document needs no database: the server is pointed at a closed port and starts
anyway, as it does during an outage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
from pathlib import Path
from typing import Any

import httpx


def render(document: dict[str, Any]) -> str:
    """The committed form of the document."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def live_document() -> dict[str, Any]:
    from pydantic import SecretStr
    from sanic import Sanic

    from app.server import create_app
    from app.settings import Settings

    Sanic.test_mode = True
    logging.disable(logging.ERROR)  # the unreachable database's start-up warnings
    settings = Settings(
        database_url=f"postgresql://postgres@127.0.0.1:{_closed_port()}/postgres",
        # placeholders: no request of this run is authenticated
        ingest_app_token=SecretStr("unused"),
        cron_secret=SecretStr("unused"),
        stripe_webhook_secret=SecretStr("whsec_unused"),
        log_level="ERROR",
    )
    app = create_app(settings, configure_logging=False)
    app.config.MOTD = False
    port = _closed_port()
    server = await app.create_server(
        host="127.0.0.1", port=port, return_asyncio_server=True, access_log=False
    )
    assert server is not None
    await server.startup()
    await server.before_start()
    await server.after_start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.get("/openapi.json")
            response.raise_for_status()
            document: dict[str, Any] = response.json()
            return document
    finally:
        await server.before_stop()
        await server.close()
        await server.wait_closed()
        await server.after_stop()


def main() -> int:
    target = Path(sys.argv[1])
    target.write_text(render(asyncio.run(live_document())))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
