"""`ingest reset-local`: delete local mode's data folder (the embedded cluster, its database,
the generated secrets), for a fresh start. `make reset-data` runs it.

It refuses while an `ingest run` owns the folder, and stops a cluster that a killed run left
running first. As root the cluster's files belong to the system user `embedded_postgres`;
root may delete them, which is why this is a command and not a bare `rm -rf .data`.
"""

from __future__ import annotations

import argparse
import shutil

from app import local
from app.settings import Settings


def _run(args: argparse.Namespace) -> int:
    data_dir = Settings().data_dir
    if not data_dir.exists():
        print(f"{data_dir} does not exist: nothing to reset")
        return 0
    if not args.yes:
        raise SystemExit(
            f"ingest reset-local: this deletes {data_dir} (the local database and its "
            "generated secrets); run it again with --yes"
        )
    with local.own_data_dir(data_dir):  # refused while an `ingest run` holds it
        local.EmbeddedCluster.in_data_dir(data_dir).stop()
        shutil.rmtree(data_dir)
    print(f"deleted {data_dir}: the next `make run` starts with a new database and new secrets")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reset-local", help="delete local mode's data folder (.data) for a fresh start"
    )
    parser.add_argument("--yes", action="store_true", help="really delete it")
    parser.set_defaults(func=_run)
