"""A private PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` into a temp folder.

Started on a free loopback port from the machine's PostgreSQL binaries (Debian keeps
them in ``/usr/lib/postgresql/NN/bin``; ``.ci/run`` installs ``postgresql`` where it is
missing), never the machine's own server. A test may stop and start it (outages). When
the tests run as root, the server runs as the ``postgres`` user, since PostgreSQL
refuses to run as root.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from servers import free_port


def pg_bin(name: str) -> str | None:
    """The path of a PostgreSQL program (``initdb``, ``pg_ctl``), or None."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def available() -> str | None:
    """Why a private server cannot be started here, or None when it can."""
    if pg_bin("initdb") is None or pg_bin("pg_ctl") is None:
        return "PostgreSQL's initdb/pg_ctl are not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


class PostgresServer:
    """One private server; :attr:`url` for a database of its own via :meth:`database`."""

    user = "billnotify"

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="billnotify-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            [*self._as, *args], capture_output=True, text=True, timeout=120, cwd=self.root
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def init(self) -> PostgresServer:
        """Create the cluster (trust authentication, loopback only) and start it."""
        self._run(
            str(pg_bin("initdb")),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        settings = (
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{self.root}'\n"
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            "max_connections = 200\n"
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(settings)
        return self.start()

    def start(self) -> PostgresServer:
        """Start (again) and wait until it accepts connections."""
        log = self.root / "server.log"
        self._run(str(pg_bin("pg_ctl")), "-D", str(self.data), "-l", str(log), "-w", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop it (``immediate`` is a crash: no checkpoint)."""
        self._run(str(pg_bin("pg_ctl")), "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        """``postgresql://billnotify@127.0.0.1:PORT/DATABASE`` (no password: trust)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A fresh, empty database of its own; returns its URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        psql = pg_bin("psql") or "psql"
        done = subprocess.run(
            [psql, self.url(), "-v", "ON_ERROR_STOP=1", "-qc", f"CREATE DATABASE {name}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"CREATE DATABASE failed: {done.stderr}")
        return self.url(name)

    def close(self) -> None:
        """Stop the server and remove its folder."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


_shared: PostgresServer | None = None


def shared() -> PostgresServer:
    """The test process's one private server, started on first use and stopped at exit;
    the calling test is skipped (with :func:`available`'s reason) where there is none.

    Tests take a fresh database of it each (:meth:`PostgresServer.database`).
    """
    global _shared
    reason = available()
    if reason:
        pytest.skip(reason)
    if _shared is None:
        _shared = PostgresServer().init()
        atexit.register(_shared.close)
    return _shared
