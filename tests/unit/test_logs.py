"""Log lines are JSON objects; asyncpg's reconnect warnings carry one error line, no traceback."""

from __future__ import annotations

import logging
import sys

import orjson

from app.logs import JsonFormatter, logging_config


def _record(logger_name: str, exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except type(exc):
        return logging.getLogger(logger_name).makeRecord(
            logger_name, logging.WARNING, __file__, 1, "something failed", (), sys.exc_info()
        )


def test_asyncpg_pool_warnings_are_one_line() -> None:
    config = logging_config("INFO")
    names = config["loggers"]["asyncpg.pool"]["filters"]
    filters = [config["filters"][name]["()"]() for name in names]
    record = _record("asyncpg.pool", ConnectionRefusedError(111, "Connect call failed"))
    assert all(f.filter(record) for f in filters)
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["error"] == "ConnectionRefusedError: [Errno 111] Connect call failed"
    assert "exc" not in entry


def test_other_loggers_keep_their_traceback() -> None:
    assert "filters" not in logging_config("INFO")["root"]
    entry = orjson.loads(JsonFormatter().format(_record("ingest.test", ValueError("kept"))))
    assert "Traceback" in entry["exc"] and "ValueError: kept" in entry["exc"]
