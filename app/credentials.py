"""Shared-secret credentials, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac


def matches_any(presented: str | None, accepted: tuple[str, ...]) -> str | None:
    """The accepted secret equal to `presented`, or None.

    Every accepted value is compared (no early exit), each with `hmac.compare_digest`, so the
    time taken does not reveal which value, or how much of one, matched.
    """
    if not presented or not accepted:
        return None
    # Header bytes that are not UTF-8 reach us as surrogate escapes: compare the bytes as sent.
    given = presented.encode("utf-8", "surrogateescape")
    found = None
    for secret in accepted:
        if hmac.compare_digest(given, secret.encode()):
            found = secret
    return found


def fingerprint(secret: str) -> str:
    """A short, stable, non-reversible name for a secret, for audit rows and rate-limit keys."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]
