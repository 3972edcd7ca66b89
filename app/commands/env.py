"""`ingest env`: the local service's settings as `export` lines, for a shell beside it.

    eval "$(.venv/bin/ingest env)"

prints DATABASE_URL, INGEST_URL (the base URL), INGEST_APP_TOKEN, CRON_SECRET and
STRIPE_WEBHOOK_SECRET (those this shell already has are kept), and INGEST_DATA_DIR. Without a
running local service it prints what this environment configures, and needs DATABASE_URL.
"""

from __future__ import annotations

import argparse

from app.local_service import shell_exports
from app.settings import Settings


def _run(args: argparse.Namespace) -> int:
    print("\n".join(shell_exports(Settings())))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "env",
        help='export lines for a shell: eval "$(ingest env)" (database, base URL, secrets)',
    )
    parser.set_defaults(func=_run)
