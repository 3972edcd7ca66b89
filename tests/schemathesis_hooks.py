"""Hooks for the `schemathesis run` that tests/acceptance/test_openapi_fuzz.py starts
(SCHEMATHESIS_HOOKS).

The run is the one a stranger makes (`schemathesis run <url>/openapi.json --checks all` with
the credentials as headers), plus what only the suite can do, set through the environment:

- FUZZ_WEBHOOK_SECRET: webhook requests are signed with this secret over the exact bytes
  sent, as Stripe signs (an auth provider: schemathesis' own probes without the credential
  or with a wrong one go as they are, and are refused).
- FUZZ_SOURCE_ID: every other crawl request names this registered source (the others an
  unknown one), so that the import path is reached, not only the 404.
- FUZZ_STATUS_LOG: every answer is appended to this file as `METHOD PATH STATUS`, so that the
  test can tell that the success paths were reached.

There is no deliberate exception: every finding fails the run.
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
