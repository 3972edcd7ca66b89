"""Crawl intake: partner sources bulk-import rules, one rule per (source, external id).

Items are validated one by one (an invalid item is rejected, the others go on), normalised,
and hashed; the database work is one set-based statement per batch that skips unchanged
items without writing and upserts the rule and the crawl item of new and changed ones.
Sources are registered by operators (app/crawl_sources.py); the source's curator is the
author of the rules it imports.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import asyncpg
import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from app import audit, metrics
from app.errors import SourceWithoutCurator, UnknownSource
from app.events import ID_PATTERN
from app.sql import queries
from app.wire import WireModel

MAX_ITEMS = 200
MAX_BODY_BYTES = 5 * 1024 * 1024
MAX_URL_CHARS = 2048
MAX_TITLE_CHARS = 300
MAX_SUMMARY_CHARS = 2000
MAX_RAW_BYTES = 64 * 1024
MAX_EXTERNAL_ID_CHARS = 512
# Source ids are site-style ids (`ingest sources add` makes `src_<hex>`), matched as sent.
SOURCE_ID = f"^{ID_PATTERN}$"
MAX_TAGS = 20
MAX_TAG_CHARS = 64
MAX_MODEL_CHARS = 100
# Bumped only if the canonical form below changes (every stored item would then "change").
HASH_VERSION = "v1"


def _text(value: Any) -> Any:
    """NFC, trimmed. NUL is refused here: PostgreSQL text cannot hold it."""
    if not isinstance(value, str):
        return value
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return unicodedata.normalize("NFC", value).strip()


def _line(value: Any) -> Any:
    """One line: inner runs of whitespace (newlines included) become one space."""
    value = _text(value)
    return " ".join(value.split()) if isinstance(value, str) else value


def _block(value: Any) -> Any:
    """Multi-line text with Unix line endings."""
    value = _text(value)
    return value.replace("\r\n", "\n").replace("\r", "\n") if isinstance(value, str) else value


def _external_id(value: Any) -> Any:
    """Partners often key items by a database integer: accept it as its decimal string."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return _line(value)


def _no_tags(value: Any) -> Any:
    return [] if value is None else value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    if any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise ValueError("must not contain whitespace or control characters")
    return value


def _distinct_tags(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tag.lower() for tag in tags))


def _no_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, dict):
        return all(_no_nul(k) and _no_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_no_nul(v) for v in value)
    return True


ExternalId = Annotated[
    str, BeforeValidator(_external_id), Field(min_length=1, max_length=MAX_EXTERNAL_ID_CHARS)
]
HttpUrl = Annotated[
    str,
    BeforeValidator(_text),
    Field(min_length=1, max_length=MAX_URL_CHARS),
    AfterValidator(_http_url),
]
Title = Annotated[str, BeforeValidator(_line), Field(min_length=1, max_length=MAX_TITLE_CHARS)]
Summary = Annotated[str, BeforeValidator(_block), Field(max_length=MAX_SUMMARY_CHARS)]
Tag = Annotated[str, BeforeValidator(_line), Field(min_length=1, max_length=MAX_TAG_CHARS)]
ModelName = Annotated[str, BeforeValidator(_line), Field(max_length=MAX_MODEL_CHARS)]


class CrawlItem(BaseModel):
    """One item as a partner sends it, validated and normalised. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    external_id: ExternalId = Field(alias="externalId")
    url: HttpUrl
    title: Title
    summary: Summary | None = None
    tags: Annotated[
        list[Tag],
        BeforeValidator(_no_tags),
        Field(max_length=MAX_TAGS),
        AfterValidator(_distinct_tags),
    ] = []
    model: ModelName | None = None
    raw: dict[str, Any] | None = None

    @field_validator("raw")
    @classmethod
    def _raw_fits(cls, raw: dict[str, Any] | None) -> dict[str, Any] | None:
        if raw is None:
            return None
        if len(orjson.dumps(raw)) > MAX_RAW_BYTES:
            raise ValueError(f"must be at most {MAX_RAW_BYTES} bytes as JSON")
        if not _no_nul(raw):
            raise ValueError("must not contain NUL characters")
        return raw

    def canonical(self) -> dict[str, Any]:
        """The stored fields; what the content hash covers (the external id is the key)."""
        return {
            "url": self.url,
            "title": self.title,
            "summary": self.summary or None,
            "tags": self.tags,
            "model": self.model or None,
            "raw": self.raw,
        }

    def content_hash(self) -> str:
        """SHA-256 of the canonical form as JSON with sorted keys, at every depth."""
        encoded = orjson.dumps(self.canonical(), option=orjson.OPT_SORT_KEYS)
        return f"{HASH_VERSION}:{hashlib.sha256(encoded).hexdigest()}"

    def as_row(self) -> dict[str, Any]:
        return {
            "external_id": self.external_id,
            **self.canonical(),
            "content_hash": self.content_hash(),
        }


class CrawlBatch(BaseModel):
    """The request envelope. Items stay raw here: each is validated on its own."""

    model_config = ConfigDict(extra="ignore")

    source_id: str = Field(alias="sourceId", pattern=SOURCE_ID)
    items: list[Any] = Field(min_length=1, max_length=MAX_ITEMS)


# An item refused, by its position in the request. (Wire models carry no docstring: it would
# become their description in the OpenAPI document.)
class RejectedItem(WireModel):
    index: int = Field(description="position in `items`")
    reason: str = Field(description="the item's field errors, or a duplicate externalId")


@dataclass(frozen=True)
class ValidatedItems:
    accepted: list[tuple[int, CrawlItem]]
    rejected: list[RejectedItem]


class ItemOutcome(WireModel):
    index: int
    external_id: str
    status: Literal["created", "updated", "unchanged"]
    rule_id: str | None


class CrawlReport(WireModel):
    source_id: str
    created: int
    updated: int
    unchanged: int
    rejected: list[RejectedItem]
    items: list[ItemOutcome]

    def counts(self) -> dict[str, int]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": len(self.rejected),
        }


def rejection_reason(exc: ValidationError) -> str:
    """Pydantic's errors as one readable line: `title: String should have at most ...`."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in err["loc"]) or "item"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def validate_items(raw_items: Sequence[Any]) -> ValidatedItems:
    """Validate each item alone; a repeated external id is rejected for the later copy."""
    accepted: list[tuple[int, CrawlItem]] = []
    rejected: list[RejectedItem] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(raw_items):
        try:
            item = CrawlItem.model_validate(raw)
        except ValidationError as exc:
            rejected.append(RejectedItem(index=index, reason=rejection_reason(exc)))
            continue
        if item.external_id in first_index:
            first = first_index[item.external_id]
            reason = f"duplicate externalId in this request (see {first})"
            rejected.append(RejectedItem(index=index, reason=reason))
            continue
        first_index[item.external_id] = index
        accepted.append((index, item))
    return ValidatedItems(accepted, rejected)


async def _curator_of(conn: asyncpg.Connection, source_id: str) -> str:
    source = await queries.crawl_get_source(conn, source_id=source_id)
    if source is None:
        raise UnknownSource(
            f"unknown crawl source {source_id!r}: an operator registers sources with "
            "`ingest sources add <name> --curator <userId>`"
        )
    if source["curator_id"] is None:
        raise SourceWithoutCurator(
            f"crawl source {source_id!r} has no curator to author its rules: an operator "
            f"must assign one with `ingest sources set-curator {source_id} <userId>`"
        )
    return str(source["curator_id"])


async def import_items(
    conn: asyncpg.Connection,
    *,
    source_id: str,
    items: ValidatedItems,
    actor: str,
    request_id: str | None = None,
) -> CrawlReport:
    """Upsert the accepted items of one batch and audit it: three statements, any batch size."""
    curator_id = await _curator_of(conn, source_id)
    outcomes = await _upsert(conn, source_id=source_id, curator_id=curator_id, items=items)
    report = CrawlReport(
        source_id=source_id,
        created=sum(o.status == "created" for o in outcomes),
        updated=sum(o.status == "updated" for o in outcomes),
        unchanged=sum(o.status == "unchanged" for o in outcomes),
        rejected=items.rejected,
        items=outcomes,
    )
    await audit.record(
        conn,
        actor=actor,
        action="crawl.import",
        subject=source_id,
        request_id=request_id,
        details={"items": len(items.accepted) + len(items.rejected), **report.counts()},
    )
    for outcome, count in report.counts().items():
        if count:
            metrics.CRAWL_ITEMS.labels(outcome).inc(count)
    return report


async def _upsert(
    conn: asyncpg.Connection, *, source_id: str, curator_id: str, items: ValidatedItems
) -> list[ItemOutcome]:
    """One statement for the whole batch; outcomes in request order."""
    if not items.accepted:
        return []
    index_of = {item.external_id: index for index, item in items.accepted}
    rows = queries.crawl_upsert_items(
        conn,
        source_id=source_id,
        curator_id=curator_id,
        items=[item.as_row() for _, item in items.accepted],
    )
    outcomes = [
        ItemOutcome(
            index=index_of[r["external_id"]],
            external_id=r["external_id"],
            status=r["outcome"],
            rule_id=r["rule_id"],
        )
        async for r in rows
    ]
    return sorted(outcomes, key=lambda o: o.index)
