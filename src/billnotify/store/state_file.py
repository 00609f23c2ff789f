"""The state file itself: a new one only where none exists, and never a stranger's.

SQLite opens an empty file, or creates a missing one, as a new database without a word;
on a state path that would start a new baseline and forget the delivery ledger (and
send again what it had sent). So a new state is made only for a path that does not
exist, and whole: its schema is written to ``<state>.new-<pid>`` and linked into place,
so a process killed half-way leaves no file that looks like a state. An existing path
must be billnotify's: a SQLite database whose ``meta`` table holds its schema version.
Anything else stops the start with what to do.

SQLite's ``-wal`` and ``-shm`` files beside the state are its own business: an existing
state is checked through SQLite, which reads its ``-wal``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from billnotify.errors import StoreError

HEADER = b"SQLite format 3\x00"
"""The first 16 bytes of every SQLite database file."""


def check_existing(path: Path) -> bool:
    """Whether ``path`` exists; raises when it does but cannot be a billnotify state.

    Raises:
        StoreError: the file is empty, unreadable, or not a SQLite database.
    """
    try:
        with path.open("rb") as file:
            head = file.read(len(HEADER))
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StoreError(f"cannot open state store {path}: {exc}") from exc
    if not head:
        wal = Path(f"{path}-wal")
        kept = (
            f"; keep {wal.name} ({wal.stat().st_size} bytes) with it if you restore"
            if wal.exists() and wal.stat().st_size
            else ""
        )
        raise StoreError(
            f"the state file {path} is empty (0 bytes): it holds no event log and no "
            "delivery ledger, and starting on it would take a new baseline and forget what "
            "was sent. Restore it from a backup; or, to start afresh with a new baseline, "
            f"delete it{kept}"
        )
    if head != HEADER:
        raise StoreError(
            f"the state file {path} is not a SQLite database, so not a billnotify state: "
            "check [service] state in the config; move the file away to start afresh with "
            "a new baseline"
        )
    return True


def check_marker(db: sqlite3.Connection, path: str | Path, version: int) -> None:
    """Raise unless ``db`` carries billnotify's schema version, at most ``version``.

    Raises:
        StoreError: a SQLite database of something else, or of a newer billnotify.
    """
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as exc:
        if "no such table" not in str(exc):
            raise StoreError(f"cannot read the state file {path}: {exc}") from exc
        row = None
    if row is None:
        raise StoreError(
            f"the state file {path} is a SQLite database but not a billnotify state (no "
            "schema version in its 'meta' table): check [service] state in the config; "
            "move the file away to start afresh with a new baseline"
        )
    try:
        found = int(row[0])
    except ValueError:
        found = -1
    if not 0 < found <= version:
        raise StoreError(
            f"the state file {path} has schema version {row[0]!r}; this billnotify "
            f"understands up to {version}: run the billnotify that wrote it, or a newer one"
        )


def create(path: Path, schema: str, version: int) -> None:
    """Make a new state at ``path`` whole, or not at all (see the module docstring).

    A state another process created meanwhile is left as it is.

    Raises:
        StoreError: the folder or the file cannot be written.
    """
    temporary = path.with_name(f"{path.name}.new-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(temporary)
        db = sqlite3.connect(str(temporary), isolation_level=None)
        try:
            db.executescript(
                f"BEGIN;\n{schema}\n"
                f"INSERT INTO meta (key, value) VALUES ('schema_version', '{int(version)}');\n"
                "COMMIT;"
            )
        finally:
            db.close()
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not path.exists():
                os.rename(temporary, path)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open state store {path}: cannot create it: {exc}") from exc
    finally:
        _remove(temporary)


def _remove(database: Path) -> None:
    for leftover in (database, Path(f"{database}-journal")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
