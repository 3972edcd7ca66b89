"""The documented `Event` schema and intake's own checks give the same verdict on any event.

Intake validates each event with hand-written checks (`app.events.prepare_batch`, kept plain
for speed) after the body-wide refusal of NUL characters (`app.http.render.unstorable`); the
OpenAPI document describes an event with the `Event` model of the events blueprint. Here both
judge the same generated events, well-formed ones and near misses alike, with a JSON Schema
validator that checks formats. The one rule a schema cannot state is the clock: `ts` at most
30 days old and 5 minutes ahead (the schema's description says so), so those two rejections
count as schema-valid events here.
"""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import jsonschema_rs
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.blueprints.events import Event
from app.client_ip import IpHasher
from app.events import EVENT_TYPES, prepare_batch
from app.http.openapi import JSON_VALUE, JSON_VALUE_SCHEMA, model_schema
from app.http.render import unstorable

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CLOCK_REASONS = {"ts_too_old", "ts_in_future"}
EXAMPLES = 600


@pytest.fixture(scope="module")
def event_schema() -> Any:
    """A validator of the `Event` component, its references resolved as in the document."""
    schemas = {"Event": model_schema(Event), JSON_VALUE: JSON_VALUE_SCHEMA}
    return jsonschema_rs.validator_for(
        {"$ref": "#/components/schemas/Event", "components": {"schemas": schemas}},
        validate_formats=True,
    )


def intake_accepts(event: Any) -> bool:
    """Whether intake takes the event (a clock rejection aside), as a request of one event."""
    body = json.dumps({"events": [event]}).encode()
    try:
        data = orjson.loads(body)  # as `app.http.render.read_json` reads it
    except orjson.JSONDecodeError:
        return False  # the whole request is a 400
    if unstorable(body, data) is not None:
        return False  # so is this one
    batch = prepare_batch(data["events"], now=NOW, request_ip_hash="caller", hasher=IpHasher("k"))
    return all(reason in CLOCK_REASONS for _, reason in batch.rejected)


def _stamp(moment: datetime, style: int) -> str:
    text = moment.isoformat()
    return [
        text,
        text.replace("+00:00", "Z"),
        text.replace("T", " "),
        text.replace("T", "t").replace("+00:00", "z"),
        moment.strftime("%Y-%m-%dT%H:%M%z"),
        moment.strftime("%Y%m%dT%H%M%SZ"),
        moment.replace(tzinfo=None).isoformat(),
        text.replace("+00:00", ".1234567+00:00") if "." not in text else text,
        text[:10],
        text.replace(":00+00:00", ":60+00:00"),
        moment.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat(),
        text.replace("+00:00", "+05:30:15"),
        text.replace("+00:00", ".+00:00") if "." not in text else text,
        text.replace("+00:00", ",5Z") if "." not in text else text,
        text.replace("+00:00", "z"),
        text.replace("2", "\u0662"),  # an Arabic-Indic digit two
        text.replace("+00:00", "+0000"),
        text.replace("+00:00", "+05"),
        text.replace(":00+", "+"),
    ][style]


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` three times in four: most generated events pass, and each field is the one
    problem of many that do not."""
    return st.integers(0, 3).flatmap(lambda pick: good if pick else bad)


moments = st.datetimes(
    min_value=datetime(2026, 11, 2), max_value=datetime(2026, 12, 1, 12), timezones=st.just(UTC)
)
junk = st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.just([])
good_ids = st.from_regex(r"[A-Za-z0-9_\-]{1,12}", fullmatch=True) | st.just("r" * 128)
bad_ids = st.sampled_from(["", "rul 1", "rul_1\n", "r" * 129, "rül", "rul\x00"]) | junk
good_ips = st.ip_addresses().map(str)
bad_ips = st.sampled_from(
    [" 203.0.113.7", "203.0.113.7 ", "01.2.3.4", "999.1.1.1", "fe80::1%eth0", "1.2.3", "",
     "localhost", "::1\n", "::ffff:1.2.3.4"]
) | junk  # fmt: skip
FIELDS = {
    "type": mostly(st.sampled_from(sorted(EVENT_TYPES)), st.sampled_from(["view", ""]) | junk),
    "ruleId": mostly(good_ids, bad_ids),
    "userId": mostly(good_ids | st.none(), bad_ids),
    "ts": mostly(
        st.builds(_stamp, moments, st.integers(0, 1)) | st.none(),
        st.builds(_stamp, moments, st.integers(2, 18)) | junk,
    ),
    "idempotencyKey": mostly(
        st.text(min_size=1, max_size=20) | st.just("k" * 128) | st.none(),
        st.sampled_from(["", "k" * 129]) | junk,
    ),
    "ip": mostly(good_ips | st.none(), bad_ips),
}
extras = st.dictionaries(
    st.text(string.ascii_letters + "\x00", max_size=4).filter(lambda k: k not in FIELDS),
    st.none() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(string.printable + "\x00", max_size=4),
    max_size=2,
)  # fmt: skip


@st.composite
def events(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(junk)  # not an object at all
    event = {name: draw(value) for name, value in FIELDS.items() if draw(st.integers(0, 5))}
    return {**draw(mostly(st.just({}), extras)), **event}


EDGE_EVENTS = [
    {"type": "VIEW", "ruleId": "rul_1", "ts": "2026-11-30T10:00:00Z"},
    {"type": "VIEW", "ruleId": "rul_1", "ts": "2026-11-30T10:00:00.5+01:00"},
    {"type": "VIEW", "ruleId": "rul_1", "ts": "2026-11-30 10:00:00+00:00"},
    {"type": "VIEW", "ruleId": "rul_1", "ts": "2026-11-30T10:00:00"},
    {"type": "VIEW", "ruleId": "rul_1", "ip": "fe80::1%eth0"},
    {"type": "VIEW", "ruleId": "rul_1\n"},
    {"type": "VIEW", "ruleId": "rul_1", "note\x00": 1},
]


def test_the_documented_event_is_what_intake_accepts(event_schema: Any) -> None:
    verdicts: list[bool] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(event=events())
    def same_verdict(event: Any) -> None:
        verdict = intake_accepts(event)
        assert event_schema.is_valid(event) == verdict, event
        verdicts.append(verdict)

    for edge in EDGE_EVENTS:
        same_verdict.hypothesis.inner_test(edge)  # type: ignore[attr-defined]
    same_verdict()
    # The generated events are of both kinds, not only rejections.
    assert min(verdicts.count(True), verdicts.count(False)) > EXAMPLES // 10, verdicts.count(True)
