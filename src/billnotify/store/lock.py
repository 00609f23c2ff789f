"""The state's lock: one running service per SQLite state file.

Two services on one state file would both poll, record the same change under their own
event ids and send it twice. ``billnotify run`` therefore holds an exclusive ``flock`` on
``<state>.lock`` for as long as it runs, with who it is written inside. The operating
system drops the lock when the process ends, however it ends (a SIGKILLed holder never
blocks a restart), so the file's presence means nothing: only a live lock does.

Commands that only read the state (``events``, ``deliveries``, ``status``) or edit the
ledger in a transaction of their own (``deliveries retry|resolve``, ``replay``) do not take
it: SQLite serialises their writes with the service's, and the service picks up what they
changed. Several services are for the PostgreSQL store (SPEC §7.1), not for one file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from billnotify.errors import StoreError


class StateLockedError(StoreError):
    """Another live process holds the state; ``holder`` is what it wrote about itself."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


def lock_path(state: str | Path) -> Path:
    """The lock file beside ``state``: ``<state>.lock``."""
    return Path(f"{state}.lock")


class StateLock:
    """An exclusive, process-lifetime lock on a state file (see the module docstring).

    Args:
        state: the state file the lock guards.
        holder: what a refused process is told about this one (pid, host and start
            time are added).
    """

    def __init__(self, state: str | Path, holder: dict[str, Any] | None = None) -> None:
        self.path = lock_path(state)
        self.state = Path(state)
        self.holder: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            **(holder or {}),
        }
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or say who has it.

        Raises:
            StateLockedError: a live process holds it.
            StoreError: the lock file cannot be created (the folder is not writable).
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create the state lock {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _wait_for_holder(self.path)
            raise StateLockedError(
                f"the state {self.state} is in use by another billnotify process "
                f"({describe(holder)}); one SQLite state serves one process: stop that one "
                "first, or give this one a state of its own",
                holder,
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot lock the state lock {self.path}: {exc}") from exc
        self._fd = fd
        self.holder["since"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            # who holds it is a courtesy for the next one: a full disk must not stop us
            data = (json.dumps(self.holder) + "\n").encode()
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        except OSError:
            pass

    def release(self) -> None:
        """Drop the lock (the process ending drops it too)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def read_holder(path: Path) -> dict[str, Any]:
    """What the holder of the lock at ``path`` wrote about itself ({} if unreadable)."""
    try:
        value = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _wait_for_holder(path: Path, patience: float = 1.0) -> dict[str, Any]:
    """:func:`read_holder`, given a holder that has just taken the lock time to write."""
    deadline = time.monotonic() + patience
    while not (holder := read_holder(path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return holder


def describe(holder: dict[str, Any]) -> str:
    """``pid 123 on host x, service "billnotify", http 127.0.0.1:9464, since T``."""
    if not holder:
        return "holder unknown: it has not written its name yet"
    parts = [f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"]
    if holder.get("instance"):
        parts.append(f"instance {holder['instance']!r}")
    if holder.get("service"):
        parts.append(f"service {holder['service']!r}")
    if holder.get("http"):
        parts.append(f"http {holder['http']}")
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    return ", ".join(parts)
