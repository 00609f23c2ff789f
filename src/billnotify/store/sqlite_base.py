"""The SQLite store's connection: one file in WAL mode, on a thread of its own.

The connection lives on one thread; every store call is a single trip to it. A write is
one ``BEGIN IMMEDIATE ... COMMIT`` transaction run whole in that trip, so "snapshot
update + event append + cursor advance" either all happen or none do, whatever kills the
process, and a read (a trip of its own) never sees the inside of a transaction. One trip
per transaction, not one per statement, keeps a busy event loop from stretching a
transaction (and everything queued behind it) by a loop iteration per statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from billnotify.errors import StoreError
from billnotify.store.schema import SCHEMA, SCHEMA_VERSION

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _StoreThread(threading.Thread):
    """The one thread that touches the SQLite connection: runs calls in order.

    A call is a queue put one way and a ``call_soon_threadsafe`` back, lighter than an
    executor's futures, which matters at one call per transaction.
    """

    def __init__(self) -> None:
        super().__init__(name="billnotify-store", daemon=True)
        self._calls: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]] | None
        ] = queue.SimpleQueue()

    def call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``fn``; the future resolves on the caller's loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, fn))
        return future

    def stop(self) -> None:
        """Finish the calls already queued, then end."""
        self._calls.put(None)

    def run(self) -> None:
        while (item := self._calls.get()) is not None:
            loop, future, fn = item
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn()
            except BaseException as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # the caller's loop is closed: no one waits
                loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _dt(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _now() -> float:
    return datetime.now(UTC).timestamp()


class SqliteBase:
    """The connection, its thread and transactions; the tables live in subclasses.

    Args:
        path: the database file (created with its folder if missing), or ``":memory:"``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self.appended = asyncio.Condition()
        self._conn: sqlite3.Connection | None = None
        self._thread: _StoreThread | None = None
        self._lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------
    async def open(self) -> None:
        """Open the file, switch on WAL and create the schema."""
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._thread = _StoreThread()
        self._thread.start()
        try:
            self._conn = await self._call(self._connect)
        except sqlite3.Error as exc:
            self._thread.stop()
            self._thread = None
            raise StoreError(f"cannot open state store {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.executescript(SCHEMA)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        except BaseException:
            conn.close()
            raise
        return conn

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

        The lock makes a call wait until the previous caller has resumed, not only until
        its statements ran: whoever reads a value after a write returned also sees what
        the writer did next in memory (as the callers of the aiosqlite store did).
        """
        async with self._lock:
            if self._thread is None:
                raise StoreError("the state store is not open")
            return await self._thread.call(fn)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the state store is not open")
        return self._conn

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` as one ``BEGIN IMMEDIATE ... COMMIT`` transaction.

        The whole transaction runs in one trip to the store's thread. If ``work`` raises
        or the commit fails, everything it did is rolled back.
        """
        db = self._db

        def transaction() -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return result

        try:
            return await self._call(transaction)
        except sqlite3.Error as exc:
            raise StoreError(f"state store write failed: {exc}") from exc

    async def _fetch(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        db, args = self._db, tuple(params)
        try:
            return await self._call(lambda: db.execute(sql, args).fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"state store read failed: {exc}") from exc

    async def ping(self) -> None:
        """Write to the store to prove it is writable."""
        value = str(_now())
        await self._write(
            lambda db: db.execute(
                "INSERT INTO meta (key, value) VALUES ('ping', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (value,),
            )
        )

    @staticmethod
    def _set_position(db: sqlite3.Connection, consumer: str, seq: int) -> None:
        db.execute(
            "INSERT INTO positions (consumer, seq) VALUES (?, ?) "
            "ON CONFLICT (consumer) DO UPDATE SET seq = excluded.seq",
            (consumer, seq),
        )
