"""The documentation pages work without internet: every file they load comes from the service
(the installed openapi-ui-bundles package), and a real browser that can reach nothing but the
service renders both."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from html.parser import HTMLParser

import httpx
import pytest

from tests.conftest import RunningServer

PAGES = ("/docs", "/docs/redoc", "/docs/swagger")
# What each page shows once its script has read /openapi.json and rendered it.
RENDERED = "Store a batch of engagement events"


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (tag, name) in {("script", "src"), ("link", "href"), ("img", "src")}:
                self.urls.append(value)
            if value and (tag, name) == ("redoc", "spec-url"):
                self.urls.append(value)


@pytest.mark.parametrize("page", PAGES)
async def test_every_asset_of_the_page_comes_from_the_service(
    http: httpx.AsyncClient, page: str
) -> None:
    response = await http.get(page)
    assert response.status_code == 200
    assert "http://" not in response.text and "https://" not in response.text
    parser = _Assets()
    parser.feed(response.text)
    assert len(parser.urls) >= 2, parser.urls  # a script, and a stylesheet or the document
    for url in parser.urls:
        assert url.startswith("/"), url  # this service, not a CDN
        asset = await http.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 500, url


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    _chromium() is None,
    reason="Chromium is not installed (Debian: apt-get install chromium); the pages' assets "
    "are still checked by test_every_asset_of_the_page_comes_from_the_service",
)
@pytest.mark.parametrize("page", ["/docs", "/docs/swagger"])
async def test_a_browser_that_reaches_only_the_service_renders_the_page(
    server: RunningServer, page: str
) -> None:
    """Headless Chromium with every host name but 127.0.0.1 unresolvable: a CDN file or a web
    font would be missing, and the rendered DOM shows the document's operations."""
    profile = tempfile.mkdtemp(prefix="ingest-chromium-")
    try:
        process = await asyncio.create_subprocess_exec(
            str(_chromium()),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=15000",
            "--dump-dom",
            f"{server.url}{page}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        dom, _ = await asyncio.wait_for(process.communicate(), timeout=90)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert process.returncode == 0
    text = dom.decode()
    assert RENDERED in text, text[:2000]
    assert "/ingest/stripe/webhook" in text
