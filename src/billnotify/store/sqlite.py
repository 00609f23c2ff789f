"""The default state store: one SQLite file in WAL mode, on a thread of its own.

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
import fnmatch
import json
import logging
import queue
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from billnotify.errors import StoreError
from billnotify.events import CloudEvent
from billnotify.store.base import (
    Attempt,
    AttemptEnd,
    Delivery,
    DeliveryStatus,
    NewDelivery,
    Outcome,
    Snapshot,
    SnapshotWrite,
    StoredEvent,
)
from billnotify.store.schema import SCHEMA, SCHEMA_VERSION

logger = logging.getLogger(__name__)

T = TypeVar("T")

_ACTIVE = (DeliveryStatus.PENDING, DeliveryStatus.RETRY_SCHEDULED, DeliveryStatus.SENDING)
_PARSED_EVENTS = 1024
"""Parsed events kept by seq (the newest read): enough for the worker to find the ones
the rule handler just read, few enough not to grow the heap the collector scans."""


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


class SqliteStore:
    """:class:`~billnotify.store.base.Store` on a SQLite file.

    Args:
        path: the database file (created with its folder if missing), or ``":memory:"``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self.appended = asyncio.Condition()
        self._conn: sqlite3.Connection | None = None
        self._thread: _StoreThread | None = None
        self._lock = asyncio.Lock()
        self._parsed: OrderedDict[int, CloudEvent] = OrderedDict()

    # -- lifecycle -------------------------------------------------------------------
    async def open(self) -> None:
        """Open the file, switch on WAL and create the schema."""
        self._parsed.clear()
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

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

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

    # -- snapshots and cursors -------------------------------------------------------
    @staticmethod
    def _snapshot(row: sqlite3.Row | tuple[Any, ...]) -> Snapshot:
        source, entity, id_, record, marks, due_at, version = row
        return Snapshot(
            source=source,
            entity=entity,
            id=id_,
            record=json.loads(record),
            marks=frozenset(json.loads(marks)),
            due_at=_dt(due_at),
            version=version,
        )

    _SNAP_COLS = "source, entity, id, record, marks, due_at, version"

    async def get_snapshots(
        self, source: str, entity: str, ids: Sequence[str]
    ) -> dict[str, Snapshot]:
        """The stored snapshots of ``ids``."""
        found: dict[str, Snapshot] = {}
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = await self._fetch(
                f"SELECT {self._SNAP_COLS} FROM snapshots "
                f"WHERE source = ? AND entity = ? AND id IN ({marks})",
                [source, entity, *chunk],
            )
            for row in rows:
                snap = self._snapshot(row)
                found[snap.id] = snap
        return found

    async def due_snapshots(
        self, source: str, entity: str, now: datetime, limit: int = 500
    ) -> list[Snapshot]:
        """Snapshots whose time-based check is due."""
        rows = await self._fetch(
            f"SELECT {self._SNAP_COLS} FROM snapshots WHERE source = ? AND entity = ? "
            "AND due_at IS NOT NULL AND due_at <= ? ORDER BY due_at LIMIT ?",
            (source, entity, now.timestamp(), limit),
        )
        return [self._snapshot(r) for r in rows]

    async def count_snapshots(self, source: str, entity: str | None = None) -> int:
        """How many records of a source (and entity) are tracked."""
        if entity is None:
            rows = await self._fetch("SELECT count(*) FROM snapshots WHERE source = ?", (source,))
        else:
            rows = await self._fetch(
                "SELECT count(*) FROM snapshots WHERE source = ? AND entity = ?", (source, entity)
            )
        return int(rows[0][0])

    async def iter_snapshots(
        self, source: str, entity: str, after_id: str = "", limit: int = 500
    ) -> list[Snapshot]:
        """A page of snapshots ordered by id."""
        rows = await self._fetch(
            f"SELECT {self._SNAP_COLS} FROM snapshots WHERE source = ? AND entity = ? "
            "AND id > ? ORDER BY id LIMIT ?",
            (source, entity, after_id, limit),
        )
        return [self._snapshot(r) for r in rows]

    async def dirty_snapshots(self, limit: int = 500) -> list[Snapshot]:
        """Snapshots whose retained state has not been published since they changed."""
        rows = await self._fetch(
            f"SELECT {self._SNAP_COLS} FROM snapshots WHERE dirty = 1 LIMIT ?", (limit,)
        )
        return [self._snapshot(r) for r in rows]

    async def clear_dirty(self, snapshots: Sequence[Snapshot]) -> None:
        """Unmark published snapshots unless they were rewritten meanwhile."""
        if not snapshots:
            return
        rows = [(s.source, s.entity, s.id, s.version) for s in snapshots]
        await self._write(
            lambda db: db.executemany(
                "UPDATE snapshots SET dirty = 0 "
                "WHERE source = ? AND entity = ? AND id = ? AND version = ?",
                rows,
            )
        )

    async def get_cursor(self, source: str, resource: str) -> str | None:
        """A resource's poll cursor."""
        rows = await self._fetch(
            "SELECT value FROM cursors WHERE source = ? AND resource = ?", (source, resource)
        )
        return str(rows[0][0]) if rows else None

    async def commit(
        self,
        source: str,
        writes: Sequence[SnapshotWrite],
        events: Sequence[CloudEvent],
        cursor: tuple[str, str] | None = None,
    ) -> list[StoredEvent]:
        """Snapshots, events and cursor in one transaction; see the protocol."""
        now = _now()

        def work(db: sqlite3.Connection) -> list[StoredEvent]:
            versions = self._write_snapshots(db, source, writes, now)
            appended = self._append(db, events, now, versions)
            if cursor is not None:
                db.execute(
                    "INSERT INTO cursors (source, resource, value, updated_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (source, resource) DO UPDATE SET value = excluded.value, "
                    "updated_at = excluded.updated_at",
                    (source, cursor[0], cursor[1], now),
                )
            return appended

        appended = await self._write(work)
        if appended:
            async with self.appended:
                self.appended.notify_all()
        return appended

    _CHUNK = 200
    """Rows per multi-row statement."""

    def _write_snapshots(
        self,
        db: sqlite3.Connection,
        source: str,
        writes: Sequence[SnapshotWrite],
        now: float,
    ) -> dict[str, int]:
        """Upsert snapshots; returns ``entity/id`` -> the version now stored."""
        versions: dict[str, int] = {}
        for start in range(0, len(writes), self._CHUNK):
            chunk = writes[start : start + self._CHUNK]
            rows = db.execute(
                "INSERT INTO snapshots (source, entity, id, record, marks, due_at, version, "
                "dirty, updated_at) VALUES "
                + ",".join(["(?, ?, ?, ?, ?, ?, 1, 1, ?)"] * len(chunk))
                + " ON CONFLICT (source, entity, id) DO UPDATE SET record = excluded.record, "
                "marks = excluded.marks, due_at = excluded.due_at, "
                "version = snapshots.version + 1, dirty = 1, updated_at = excluded.updated_at "
                "RETURNING entity, id, version",
                [
                    value
                    for write in chunk
                    for value in (
                        source,
                        write.entity,
                        write.id,
                        json.dumps(write.record, separators=(",", ":")),
                        json.dumps(sorted(write.marks)),
                        _ts(write.due_at),
                        now,
                    )
                ],
            ).fetchall()
            for entity, id_, version in rows:
                # a record written twice in one commit returns two rows: keep the last
                key = f"{entity}/{id_}"
                versions[key] = max(versions.get(key, 0), int(version))
        return versions

    def _append(
        self,
        db: sqlite3.Connection,
        events: Sequence[CloudEvent],
        now: float,
        versions: dict[str, int],
    ) -> list[StoredEvent]:
        """Append the events whose id is new; returns them with their seq, in order."""
        candidates: list[str] = []
        for event in events:
            candidates.append(event.id)
            version = versions.get(f"{event.entity}/{event.object_id}")
            if version is not None:
                candidates.append(f"{event.id}_{version}")
        taken: set[str] = set()
        for start in range(0, len(candidates), 500):
            ids = candidates[start : start + 500]
            marks = ",".join("?" * len(ids))
            rows = db.execute(f"SELECT id FROM events WHERE id IN ({marks})", ids).fetchall()
            taken.update(str(r[0]) for r in rows)
        fresh: list[CloudEvent] = []
        for event in events:
            if event.id in taken:
                # The same transition happened again (A->B->A->B): a new occurrence, so
                # salt the id with the snapshot version committed in this same
                # transaction, which a crash-and-retry reproduces exactly.
                version = versions.get(f"{event.entity}/{event.object_id}")
                if version is None:
                    continue
                event = event.model_copy(update={"id": f"{event.id}_{version}"})
                if event.id in taken:
                    continue
            taken.add(event.id)
            fresh.append(event)
        seqs: dict[str, int] = {}
        for start in range(0, len(fresh), self._CHUNK):
            chunk = fresh[start : start + self._CHUNK]
            rows = db.execute(
                "INSERT INTO events (id, type, source, subject, time, recorded_at, body) VALUES "
                + ",".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
                + " RETURNING id, seq",
                [
                    value
                    for event in chunk
                    for value in (
                        event.id,
                        event.type,
                        event.source_name,
                        event.subject,
                        event.time,
                        now,
                        event.to_json(),
                    )
                ],
            ).fetchall()
            seqs.update((str(r[0]), int(r[1])) for r in rows)
        return [StoredEvent(seq=seqs[event.id], event=event) for event in fresh]

    # -- the event log ---------------------------------------------------------------
    def _stored(self, rows: Iterable[sqlite3.Row]) -> list[StoredEvent]:
        # A logged event never changes, so the one parsed for a reader (the rule handler)
        # serves the next (the delivery worker) without parsing the JSON again. Events are
        # frozen models, shared read-only.
        parsed = self._parsed
        stored: list[StoredEvent] = []
        for row in rows:
            seq = int(row[0])
            event = parsed.get(seq)
            if event is None:
                event = parsed[seq] = CloudEvent.from_json(row[1])
                if len(parsed) > _PARSED_EVENTS:
                    parsed.popitem(last=False)
            stored.append(StoredEvent(seq=seq, event=event))
        return stored

    async def read_events(self, after_seq: int, limit: int = 500) -> list[StoredEvent]:
        """Events after ``after_seq``, in order."""
        rows = await self._fetch(
            "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        )
        return self._stored(rows)

    async def list_events(
        self,
        *,
        since: datetime | None = None,
        type_glob: str | None = None,
        limit: int = 1000,
    ) -> list[StoredEvent]:
        """Events recorded since ``since`` whose type matches ``type_glob``."""
        sql = "SELECT seq, body, type FROM events WHERE recorded_at >= ? ORDER BY seq"
        rows = await self._fetch(sql, (_ts(since) or 0.0,))
        if type_glob:
            rows = [r for r in rows if fnmatch.fnmatchcase(r[2], type_glob)]
        return self._stored(rows[-limit:] if limit else rows)

    async def get_events(self, ids: Sequence[str]) -> list[StoredEvent]:
        """Events by id, in log order."""
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = await self._fetch(
            f"SELECT seq, body FROM events WHERE id IN ({marks}) ORDER BY seq", list(ids)
        )
        return self._stored(rows)

    async def last_seq(self) -> int:
        """The newest seq, 0 when empty."""
        rows = await self._fetch("SELECT coalesce(max(seq), 0) FROM events")
        return int(rows[0][0])

    async def get_position(self, consumer: str) -> int:
        """A consumer's position in the log."""
        rows = await self._fetch("SELECT seq FROM positions WHERE consumer = ?", (consumer,))
        return int(rows[0][0]) if rows else 0

    async def set_position(self, consumer: str, seq: int) -> None:
        """Move a consumer's position."""
        await self._write(lambda db: self._set_position(db, consumer, seq))

    @staticmethod
    def _set_position(db: sqlite3.Connection, consumer: str, seq: int) -> None:
        db.execute(
            "INSERT INTO positions (consumer, seq) VALUES (?, ?) "
            "ON CONFLICT (consumer) DO UPDATE SET seq = excluded.seq",
            (consumer, seq),
        )

    # -- the delivery ledger ---------------------------------------------------------
    _DELIVERY_COLS = (
        "id, rule, action_index, action_type, event_id, event_seq, exactly_once, target, "
        "status, attempts, created_at, updated_at, next_attempt_at, last_error, "
        "last_status_code, note"
    )

    @staticmethod
    def _delivery(
        row: sqlite3.Row | tuple[Any, ...], history: list[Attempt] | None = None
    ) -> Delivery:
        return Delivery(
            id=row[0],
            rule=row[1],
            action_index=int(row[2]),
            action_type=row[3],
            event_id=row[4],
            event_seq=int(row[5]),
            exactly_once=bool(row[6]),
            target=row[7],
            status=DeliveryStatus(row[8]),
            attempts=int(row[9]),
            created_at=_dt(row[10]) or datetime.now(UTC),
            updated_at=_dt(row[11]) or datetime.now(UTC),
            next_attempt_at=_dt(row[12]),
            last_error=row[13],
            last_status_code=row[14],
            note=row[15],
            history=history or [],
        )

    async def record_deliveries(
        self,
        deliveries: Sequence[NewDelivery],
        consumer: str,
        position: int,
        now: datetime,
        rendered: Mapping[str, str] | None = None,
    ) -> int:
        """Insert new deliveries and advance ``consumer`` in one transaction.

        Args:
            rendered: optional delivery id -> JSON of what would be sent (dry runs).
        """
        ts = now.timestamp()

        def work(db: sqlite3.Connection) -> int:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO deliveries (id, rule, action_index, action_type, event_id, "
                "event_seq, exactly_once, target, status, next_attempt_at, created_at, "
                "updated_at, rendered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        d.id,
                        d.rule,
                        d.action_index,
                        d.action_type,
                        d.event_id,
                        d.event_seq,
                        int(d.exactly_once),
                        d.target,
                        d.status.value,
                        _ts(d.next_attempt_at) if d.next_attempt_at else ts,
                        ts,
                        ts,
                        (rendered or {}).get(d.id),
                    )
                    for d in deliveries
                ],
            )
            inserted = db.total_changes - before
            self._set_position(db, consumer, position)
            return inserted

        return await self._write(work)

    async def due_deliveries(
        self, now: datetime, limit: int = 100, exclude: Collection[str] = ()
    ) -> list[Delivery]:
        """Deliveries whose next attempt is due, except those in ``exclude``."""
        # One ordered index range per status, merged: ``status IN (...)`` would read and
        # sort every due row to return the first ``limit``.
        skip = list(exclude)
        branch = (
            f"SELECT * FROM (SELECT {self._DELIVERY_COLS} FROM deliveries WHERE status = ? "
            f"AND next_attempt_at <= ? AND id NOT IN ({','.join('?' * len(skip))}) "
            "ORDER BY next_attempt_at, event_seq LIMIT ?)"
        )
        ts = now.timestamp()
        rows = await self._fetch(
            f"{branch} UNION ALL {branch} ORDER BY next_attempt_at, event_seq LIMIT ?",
            (
                *(DeliveryStatus.PENDING, ts, *skip, limit),
                *(DeliveryStatus.RETRY_SCHEDULED, ts, *skip, limit),
                limit,
            ),
        )
        return [self._delivery(r) for r in rows]

    async def next_due_at(self) -> datetime | None:
        """When the next delivery is due."""
        rows = await self._fetch(
            "SELECT min(next_attempt_at) FROM deliveries WHERE status IN (?, ?)",
            (DeliveryStatus.PENDING, DeliveryStatus.RETRY_SCHEDULED),
        )
        return _dt(rows[0][0])

    async def start_attempt(self, delivery_id: str, now: datetime) -> int:
        """Mark ``sending`` and open attempt N (committed before the request)."""
        ts = now.timestamp()

        def work(db: sqlite3.Connection) -> int | None:
            row = db.execute(
                "UPDATE deliveries SET status = ?, attempts = attempts + 1, updated_at = ? "
                "WHERE id = ? RETURNING attempts",
                (DeliveryStatus.SENDING, ts, delivery_id),
            ).fetchone()
            if row is None:
                return None
            number = int(row[0])
            db.execute(
                "INSERT OR REPLACE INTO attempts (delivery_id, number, started_at) VALUES (?, ?, ?)",
                (delivery_id, number, ts),
            )
            return number

        number = await self._write(work)
        if number is None:
            raise StoreError(f"unknown delivery {delivery_id}")
        return number

    async def start_attempts(self, delivery_ids: Sequence[str], now: datetime) -> dict[str, int]:
        """Start every still-due delivery of ``delivery_ids`` in one transaction."""
        ts = now.timestamp()
        ids = list(dict.fromkeys(delivery_ids))
        if not ids:
            return {}

        def work(db: sqlite3.Connection) -> dict[str, int]:
            numbers: dict[str, int] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    "UPDATE deliveries SET status = ?, attempts = attempts + 1, updated_at = ? "
                    # '+': look rows up by id, not through the due index (every due row)
                    f"WHERE id IN ({marks}) AND +status IN (?, ?) AND +next_attempt_at <= ? "
                    "RETURNING id, attempts",
                    (
                        DeliveryStatus.SENDING,
                        ts,
                        *chunk,
                        DeliveryStatus.PENDING,
                        DeliveryStatus.RETRY_SCHEDULED,
                        ts,
                    ),
                ).fetchall()
                numbers.update((str(r[0]), int(r[1])) for r in rows)
            db.executemany(
                "INSERT OR REPLACE INTO attempts (delivery_id, number, started_at) VALUES (?, ?, ?)",
                [(id_, number, ts) for id_, number in numbers.items()],
            )
            return numbers

        return await self._write(work)

    async def finish_attempt(
        self,
        delivery_id: str,
        number: int,
        *,
        now: datetime,
        outcome: Outcome,
        status: DeliveryStatus,
        next_attempt_at: datetime | None = None,
        status_code: int | None = None,
        error: str | None = None,
    ) -> None:
        """Close an attempt and set the delivery's status."""
        await self.finish_attempts(
            [
                AttemptEnd(
                    delivery_id,
                    number,
                    finished_at=now,
                    outcome=outcome,
                    status=status,
                    next_attempt_at=next_attempt_at,
                    status_code=status_code,
                    error=error,
                )
            ]
        )

    async def finish_attempts(self, ends: Sequence[AttemptEnd]) -> None:
        """Close several attempts and set their deliveries' status in one transaction."""
        if not ends:
            return

        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE attempts SET finished_at = ?, outcome = ?, status_code = ?, error = ? "
                "WHERE delivery_id = ? AND number = ?",
                [
                    (
                        e.finished_at.timestamp(),
                        e.outcome.value,
                        e.status_code,
                        e.error,
                        e.delivery_id,
                        e.number,
                    )
                    for e in ends
                ],
            )
            db.executemany(
                "UPDATE deliveries SET status = ?, next_attempt_at = ?, last_error = ?, "
                "last_status_code = ?, updated_at = ? WHERE id = ?",
                [
                    (
                        e.status.value,
                        _ts(e.next_attempt_at),
                        e.error,
                        e.status_code,
                        e.finished_at.timestamp(),
                        e.delivery_id,
                    )
                    for e in ends
                ],
            )

        await self._write(work)

    async def recover_in_flight(self, now: datetime) -> tuple[int, int]:
        """``sending`` rows left by a crash: exactly-once -> uncertain, others -> due."""
        ts = now.timestamp()
        note = "interrupted: the process stopped while this attempt was in flight"

        def work(db: sqlite3.Connection) -> tuple[int, int]:
            before = db.total_changes
            db.execute(
                "UPDATE deliveries SET status = ?, last_error = ?, updated_at = ? "
                "WHERE status = ? AND exactly_once = 1",
                (DeliveryStatus.UNCERTAIN, note, ts, DeliveryStatus.SENDING),
            )
            uncertain = db.total_changes - before
            db.execute(
                "UPDATE deliveries SET status = ?, next_attempt_at = ?, last_error = ?, "
                "updated_at = ? WHERE status = ? AND exactly_once = 0",
                (DeliveryStatus.RETRY_SCHEDULED, ts, note, ts, DeliveryStatus.SENDING),
            )
            rescheduled = db.total_changes - before - uncertain
            db.execute(
                "UPDATE attempts SET finished_at = ?, outcome = ?, error = ? "
                "WHERE finished_at IS NULL",
                (ts, Outcome.UNCERTAIN.value, note),
            )
            return uncertain, rescheduled

        return await self._write(work)

    async def list_deliveries(
        self, statuses: Sequence[DeliveryStatus] | None = None, limit: int = 1000
    ) -> list[Delivery]:
        """Ledger rows, newest first."""
        if statuses:
            marks = ",".join("?" * len(statuses))
            rows = await self._fetch(
                f"SELECT {self._DELIVERY_COLS} FROM deliveries WHERE status IN ({marks}) "
                "ORDER BY created_at DESC, event_seq DESC LIMIT ?",
                [*(s.value for s in statuses), limit],
            )
        else:
            rows = await self._fetch(
                f"SELECT {self._DELIVERY_COLS} FROM deliveries "
                "ORDER BY created_at DESC, event_seq DESC LIMIT ?",
                (limit,),
            )
        return [self._delivery(r) for r in rows]

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """One delivery with its attempts."""
        rows = await self._fetch(
            f"SELECT {self._DELIVERY_COLS} FROM deliveries WHERE id = ?", (delivery_id,)
        )
        if not rows:
            return None
        attempts = await self._fetch(
            "SELECT number, started_at, finished_at, outcome, status_code, error FROM attempts "
            "WHERE delivery_id = ? ORDER BY number",
            (delivery_id,),
        )
        history = [
            Attempt(
                delivery_id=delivery_id,
                number=int(a[0]),
                started_at=_dt(a[1]) or datetime.now(UTC),
                finished_at=_dt(a[2]),
                outcome=Outcome(a[3]) if a[3] else None,
                status_code=a[4],
                error=a[5],
            )
            for a in attempts
        ]
        return self._delivery(rows[0], history)

    async def get_rendered(self, delivery_id: str) -> str | None:
        """What a dry-run delivery would have sent (JSON), if recorded."""
        rows = await self._fetch("SELECT rendered FROM deliveries WHERE id = ?", (delivery_id,))
        return rows[0][0] if rows else None

    async def set_delivery_status(
        self,
        delivery_id: str,
        status: DeliveryStatus,
        *,
        now: datetime,
        next_attempt_at: datetime | None = None,
        note: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Change a delivery's status without an attempt."""
        params = (status.value, _ts(next_attempt_at), note, now.timestamp(), error, delivery_id)

        def work(db: sqlite3.Connection) -> bool:
            changed = db.execute(
                "UPDATE deliveries SET status = ?, next_attempt_at = ?, note = ?, updated_at = ?, "
                "last_error = coalesce(?, last_error) WHERE id = ?",
                params,
            ).rowcount
            return changed > 0

        return await self._write(work)

    async def count_deliveries(self) -> dict[tuple[str, str], int]:
        """(action_type, status) -> count."""
        rows = await self._fetch(
            "SELECT action_type, status, count(*) FROM deliveries GROUP BY action_type, status"
        )
        return {(r[0], r[1]): int(r[2]) for r in rows}

    async def oldest_pending_at(self) -> datetime | None:
        """Creation time of the oldest delivery not yet settled."""
        marks = ",".join("?" * len(_ACTIVE))
        rows = await self._fetch(
            f"SELECT min(created_at) FROM deliveries WHERE status IN ({marks})",
            [s.value for s in _ACTIVE],
        )
        return _dt(rows[0][0])

    async def disable_endpoint(self, name: str, reason: str, now: datetime) -> None:
        """Mark a webhook endpoint disabled."""
        params = (name, now.timestamp(), reason)
        await self._write(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO endpoints (name, disabled_at, reason) VALUES (?, ?, ?)",
                params,
            )
        )

    async def disabled_endpoints(self) -> dict[str, str]:
        """Disabled endpoints and why."""
        rows = await self._fetch("SELECT name, reason FROM endpoints")
        return {r[0]: r[1] for r in rows}

    async def enable_endpoint(self, name: str) -> None:
        """Re-enable a disabled endpoint."""
        await self._write(lambda db: db.execute("DELETE FROM endpoints WHERE name = ?", (name,)))
