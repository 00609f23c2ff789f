"""The SQLite store's connection: one file in WAL mode, on a thread of its own.

The connection lives on one thread; every store call is a single trip to it. A write is
a ``BEGIN IMMEDIATE ... COMMIT`` transaction run whole in that trip, so "snapshot
update + event append + cursor advance" either all happen or none do, whatever kills the
process, and a read (a trip of its own) never sees the inside of a transaction. One trip
per transaction, not one per statement, keeps a busy event loop from stretching a
transaction (and everything queued behind it) by a loop iteration per statement.
The thread, and its group commit, are in ``sqlite_thread.py``; a process that does
nothing but the store (the store's child) runs the same calls on its event loop instead
(``on_loop=True``: ``LoopRunner``, no thread and no hand-off back to the loop).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from billnotify import jsontext
from billnotify.errors import StoreError
from billnotify.store import state_file
from billnotify.store.records import Lease, default_instance, fenced
from billnotify.store.schema import SCHEMA, SCHEMA_VERSION, UPGRADES
from billnotify.store.sqlite_thread import LoopRunner, StoreThread

logger = logging.getLogger(__name__)

T = TypeVar("T")

_WAL_PAGES = 256
"""Pages in the WAL (1 MiB) that make the next commit checkpoint it (SQLite: 1000): a
state on a small volume must not need 4 MB of WAL beside it."""
_WAL_KEEP = 1 << 20
"""Bytes of WAL file kept after a checkpoint (``journal_size_limit``)."""
_ROOM = 1 << 20
"""Free bytes on the state's file system below which the store is not ready."""


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _dt(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _now() -> float:
    return datetime.now(UTC).timestamp()


_ROWS = 200
"""Rows per multi-row statement (13 columns x 200 stays far below SQLite's 32766 variables)."""


def _values(columns: int, rows: int) -> str:
    """The placeholders of a multi-row ``VALUES`` list: ``(?, ?), (?, ?)``.

    One statement for many rows is one step of the SQLite engine; ``executemany`` is one
    step per row, and each step hands the interpreter lock to the event loop and back
    (which, while the loop is busy, is most of what a store call takes).
    """
    row = "(" + ", ".join("?" * columns) + ")"
    return ", ".join([row] * rows)


def _json_rows(
    db: sqlite3.Connection, columns: str, sql: str, params: Iterable[Any] = ()
) -> list[list[Any]]:
    """The ``columns`` of the rows of ``sql``, read in one step of the engine.

    ``fetchall`` steps the engine once per row (see :func:`_values`); the rows folded
    into one JSON array take one step. For text and integer columns only: JSON renders a
    REAL with 15 significant digits. The order of the rows is not kept.
    """
    (text,) = db.execute(
        f"SELECT json_group_array(json_array({columns})) FROM ({sql})", tuple(params)
    ).fetchone()
    rows: list[list[Any]] = jsontext.loads(text)
    return rows


_SEPARATOR = "\x1e"
"""Between the texts of :func:`_rows_with_text`: a control character, which JSON text
(an event as logged) never holds unescaped."""


def _rows_with_text(
    db: sqlite3.Connection, columns: str, text: str, sql: str, params: Iterable[Any] = ()
) -> list[tuple[list[Any], str | None]]:
    """:func:`_json_rows`, and beside each row its ``text`` column (a JSON document, or
    NULL), read in the same step but not escaped into the JSON and parsed out again.

    Both aggregates see the rows in the same order; an empty text stands for NULL.
    """
    rows_json, texts = db.execute(
        f"SELECT json_group_array(json_array({columns})), "
        f"group_concat(coalesce({text}, ''), ?) FROM ({sql})",
        (_SEPARATOR, *params),
    ).fetchone()
    rows: list[list[Any]] = jsontext.loads(rows_json)
    if not rows:
        return []
    parts = texts.split(_SEPARATOR)
    if len(parts) != len(rows):
        raise sqlite3.DataError(f"a {text} holds the separator: {len(parts)} for {len(rows)}")
    return [(row, part or None) for row, part in zip(rows, parts, strict=True)]


def _bring_up_to_date(conn: sqlite3.Connection) -> None:
    """Apply :data:`SCHEMA` and the upgrades the state lacks, in one transaction, and
    mark it with :data:`SCHEMA_VERSION` (a new state is marked already)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        found = int(row[0]) if row else SCHEMA_VERSION
        for statement in filter(str.strip, SCHEMA.split(";")):
            conn.execute(statement)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            conn.execute(UPGRADES[version])
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if found != SCHEMA_VERSION:
        logger.info("state schema %d -> %d", found, SCHEMA_VERSION)


class SqliteBase:
    """The connection, its thread and transactions; the tables live in subclasses.

    Args:
        path: the database file (created with its folder if missing), or ``":memory:"``.
        instance: this process's name, recorded on the deliveries it starts (default
            ``hostname-pid``).
        on_loop: run the SQLite work on the event loop's thread (:class:`LoopRunner`),
            for a process that does nothing but the store; default its own thread.
    """

    def __init__(
        self, path: str | Path, instance: str | None = None, *, on_loop: bool = False
    ) -> None:
        self.path = path
        self.instance = instance or default_instance()
        self._on_loop = on_loop
        self.appended = asyncio.Condition()
        self.due_changed = asyncio.Condition()
        self._conn: sqlite3.Connection | None = None
        self._thread: StoreThread | LoopRunner | None = None

    # -- lifecycle -------------------------------------------------------------------
    async def open(self) -> None:
        """Open the file (a new state only where none exists), switch on WAL and bring
        the schema up to date.

        Raises:
            StoreError: the file cannot be opened, or is not a billnotify state (see
                :mod:`billnotify.store.state_file`).
        """
        self._thread = LoopRunner(self._idle) if self._on_loop else StoreThread(self._idle)
        self._thread.start()
        try:
            self._conn = await self._call(self._connect)
        except (sqlite3.Error, StoreError) as exc:
            self._thread.stop()
            self._thread = None
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open state store {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        memory = str(self.path) == ":memory:"
        if not memory and not state_file.check_existing(Path(self.path)):
            state_file.create(Path(self.path), SCHEMA, SCHEMA_VERSION)
        conn = sqlite3.connect(str(self.path), isolation_level=None)
        try:
            if not memory:
                state_file.check_marker(conn, self.path, SCHEMA_VERSION)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            # the WAL is cut back to this after each checkpoint instead of keeping its
            # largest size, and checkpointed every this many pages while writes go on
            conn.execute(f"PRAGMA journal_size_limit={_WAL_KEEP}")
            conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_PAGES}")
            _bring_up_to_date(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _idle(self) -> bool:
        """On the store's thread, when no call came for a while: empty the WAL.

        Only after writes, and without waiting for a reader (another process's read
        keeps the WAL until the next idle moment).
        """
        conn = self._conn
        if conn is None or conn.in_transaction:
            return True
        try:
            conn.execute("PRAGMA busy_timeout=0")
            try:
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                conn.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as exc:  # a full disk: the next idle moment tries again
            logger.debug("checkpoint of %s failed: %s", self.path, exc)
            return False
        return not busy

    async def close(self) -> None:
        """Close the connection (after every call already made has run)."""
        conn, self._conn = self._conn, None
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            if conn is not None:
                await thread.call(conn.close)
        finally:
            thread.stop()

    async def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the store's thread, one call at a time, in order.

        Calls are queued as they are made, not one caller after the other: the thread
        runs them back to back while the event loop is busy, and each caller resumes in
        the order of the calls, so whoever reads after a write returned also sees what the
        writer did next in memory. ``fn`` must take what it works on with it, not read it
        from the loop's objects when it runs.
        """
        if self._thread is None:
            raise StoreError("the state store is not open")
        return await self._thread.call(fn)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the state store is not open")
        return self._conn

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in a ``BEGIN IMMEDIATE ... COMMIT`` transaction.

        The transaction runs in one trip to the store's thread, shared with the writes
        queued right behind this one. If ``work`` raises or the commit fails, everything
        it did is rolled back (and the others are committed without it). ``work`` may run
        twice: it must only act on the connection.
        """
        db = self._db
        if self._thread is None:
            raise StoreError("the state store is not open")
        try:
            return await self._thread.write(db, work)
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise StoreError(f"disk full: cannot write the state file {self.path}") from exc
            raise StoreError(f"state store write failed: {exc}") from exc

    async def _fetch(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        db, args = self._db, tuple(params)
        try:
            return await self._call(lambda: db.execute(sql, args).fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"state store read failed: {exc}") from exc

    async def ping(self) -> None:
        """Write to the store to prove it is writable, with room to go on.

        Raises:
            StoreError: the write failed, or the state's file system has less than
                :data:`_ROOM` left (``disk full: ...``); small writes may still fit
                in the WAL while a poll's do not.
        """
        if str(self.path) != ":memory:":
            try:
                fs = os.statvfs(Path(self.path).parent)
            except OSError:
                pass
            else:
                free = fs.f_bavail * fs.f_frsize
                if free < _ROOM:
                    raise StoreError(
                        f"disk full: {free // 1024} KiB free for the state file {self.path}"
                    )
        value = str(_now())
        await self._write(
            lambda db: db.execute(
                "INSERT INTO meta (key, value) VALUES ('ping', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (value,),
            )
        )

    @staticmethod
    def _check_fence(db: sqlite3.Connection, fence: Lease | None) -> None:
        """In a write: raise ``FencedError`` unless ``fence`` (if any) still names its
        lease's holder and epoch (the transaction then writes nothing)."""
        if (
            fence is not None
            and not db.execute(
                "SELECT 1 FROM leases WHERE name = ? AND holder = ? AND epoch = ?",
                (fence.name, fence.holder, fence.epoch),
            ).fetchone()
        ):
            raise fenced(fence)

    @staticmethod
    async def _wake(waiting: asyncio.Condition) -> None:
        async with waiting:
            waiting.notify_all()

    @staticmethod
    def _set_position(db: sqlite3.Connection, consumer: str, seq: int) -> None:
        db.execute(
            "INSERT INTO positions (consumer, seq) VALUES (?, ?) "
            "ON CONFLICT (consumer) DO UPDATE SET seq = excluded.seq",
            (consumer, seq),
        )
