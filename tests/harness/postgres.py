"""A real PostgreSQL server for tests, started from Debian's binaries.

Why not pytest-postgresql: its process fixture fails as root, and we also want to stop and
restart the server in fault tests. Root cannot run ``initdb``, so as root every server binary
runs as the ``postgres`` user through ``runuser``; as any other user it runs directly.

Host connections (127.0.0.1) use scram-sha-256 for a role with a real password, so tests can
check that the password never leaks; the unix socket uses trust for the superuser.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2  # type: ignore[import-untyped]

ROLE = "kubetune"
PASSWORD = "pg-Secret-7c1f9e"  # deliberately distinctive so leak checks can grep for it


class PostgresUnavailableError(RuntimeError):
    """The PostgreSQL server binaries are not installed on this machine."""


def find_bindir() -> Path:
    """Where ``initdb``/``pg_ctl`` live (Debian keeps them off the PATH)."""
    candidates: list[Path] = []
    env = os.environ.get("KUBETUNE_PG_BINDIR")
    if env:
        candidates.append(Path(env))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], check=True, capture_output=True, text=True
            ).stdout.strip()
            candidates.append(Path(out))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    raise PostgresUnavailableError("initdb/pg_ctl not found (apt-get install postgresql)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    """One throw-away PostgreSQL cluster; use :meth:`start`, :meth:`stop`, :meth:`restart`."""

    bindir: Path = field(default_factory=find_bindir)
    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kubetune-pg-")))
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socketdir(self) -> Path:
        return self.root / "sock"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    def _as_owner(self, argv: Sequence[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return list(argv)

    def _run(self, argv: Sequence[str]) -> None:
        proc = subprocess.run(self._as_owner(argv), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(
                f"{argv[0]} failed ({proc.returncode}): {proc.stderr}{proc.stdout}\n{log[-2000:]}"
            )

    def init(self) -> None:
        self.socketdir.mkdir(parents=True, exist_ok=True)
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.logfile.touch()
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            for path in (self.root, self.socketdir, self.datadir, self.logfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "--no-sync",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ]
        )

    def start(self) -> None:
        options = f"-F -p {self.port} -k {self.socketdir} -c listen_addresses=127.0.0.1"
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-o",
                options,
                "-w",
                "start",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``mode="immediate"`` is a crash (no shutdown checkpoint)."""
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"])

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def is_running(self) -> bool:
        proc = subprocess.run(
            self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "status"]),
            capture_output=True,
            check=False,
        )
        return proc.returncode == 0

    def admin_connect(self, dbname: str = "postgres") -> psycopg2.extensions.connection:
        conn = psycopg2.connect(
            host=str(self.socketdir), port=self.port, user="postgres", dbname=dbname
        )
        conn.autocommit = True
        return conn

    def bootstrap(self) -> None:
        """Create the password-protected test role (run once after the first start)."""
        with contextlib.closing(self.admin_connect()) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD %s", (PASSWORD,))
            cur.execute(f"CREATE DATABASE {ROLE} OWNER {ROLE}")

    def url(self, dbname: str = ROLE, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix: str = "t") -> str:
        """A fresh empty database owned by the test role; returns its name."""
        name = f"{prefix}_{os.getpid()}_{next(self._counter)}"
        with contextlib.closing(self.admin_connect()) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}" OWNER {ROLE}')
        return name

    def drop_database(self, name: str) -> None:
        with contextlib.closing(self.admin_connect()) as conn, conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def cleanup(self) -> None:
        with contextlib.suppress(RuntimeError):
            if self.is_running():
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PostgresServer:
    """Init, start and bootstrap a server; :class:`PostgresUnavailableError` if not installed."""
    server = PostgresServer()
    try:
        server.init()
        server.start()
        server.bootstrap()
    except BaseException:
        server.cleanup()
        raise
    atexit.register(server.cleanup)  # also on Ctrl-C; cleanup is idempotent
    return server
