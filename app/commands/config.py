"""`ingest config`: the effective configuration, secrets masked.

Beside a running local service, what the environment lacks (the database, the generated
secrets) is shown as that service's, and marked so.
"""

from __future__ import annotations

import argparse
import re

from pydantic import SecretStr

from app import local_service, stripe_reconcile
from app.credentials import fingerprint
from app.settings import Settings, split_secret


def _mask_url(url: str) -> str:
    return re.sub(r"://([^:/@]+):([^@]*)@", r"://\1:****@", url)


LOCAL_MARK = "  (the running local service's)"


def describe(
    settings: Settings, *, from_local: frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    """(ENV_NAME, shown value) for every setting; secrets appear as counts and fingerprints;
    the names in `from_local` are marked as the running local service's."""
    rows = []
    for name, field in type(settings).model_fields.items():
        env = (field.alias or name).upper()
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            parts = split_secret(value)
            shown = (
                f"set ({len(parts)} value(s): " + ", ".join(fingerprint(p) for p in parts) + ")"
                if parts
                else "set (empty)"
            )
        elif value is None:
            shown = "unset"
        elif name.endswith("database_url") or name == "stripe_api_base":
            shown = _mask_url(str(value))
        else:
            shown = str(value)
        rows.append((env, shown + (LOCAL_MARK if env in from_local else "")))
    return rows


def _run(args: argparse.Namespace) -> int:
    settings, from_local = local_service.operator_settings(Settings())
    for env, shown in describe(settings, from_local=frozenset(from_local)):
        print(f"{env:<32} {shown}")
    print(f"\nStripe reconciliation: {stripe_reconcile.describe(settings)}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config", help="print the effective configuration (secrets masked)"
    )
    parser.set_defaults(func=_run)
