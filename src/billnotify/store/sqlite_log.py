"""Snapshots, cursors, the event log and consumer positions, on SQLite."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from billnotify import jsontext
from billnotify.errors import StoreError
from billnotify.store.occurrences import candidate_ids, place, record_key
from billnotify.store.records import (
    Lease,
    LogEntry,
    Snapshot,
    SnapshotWrite,
    StoredEvent,
    marks_of,
    marks_text,
    parsed_event,
)
from billnotify.store.sqlite_base import (
    _ROWS,
    SqliteBase,
    _dt,
    _now,
    _rows_with_text,
    _ts,
    _values,
)

if TYPE_CHECKING:
    from billnotify.events import CloudEvent

logger = logging.getLogger(__name__)

SnapshotRow = tuple[str, str, str, str, float | None]
"""A snapshot as written: entity, id, record JSON, marks JSON, due_at."""
EventRow = tuple[str, str, str, str, str, str, str, str]
"""An event as logged: id, entity, object id, type, source name, subject, time, JSON."""


def commit_rows_of(
    writes: Sequence[SnapshotWrite], events: Sequence[CloudEvent]
) -> tuple[list[SnapshotRow], list[EventRow]]:
    """The rows of a commit, for :meth:`LogTables.commit_rows`."""
    snapshots = [
        (
            w.entity,
            w.id,
            jsontext.dumps(w.record),
            marks_text(w.marks),
            _ts(w.due_at),
        )
        for w in writes
    ]
    logged = [
        (e.id, e.entity, e.object_id, e.type, e.source_name, e.subject, e.time, e.to_json())
        for e in events
    ]
    return snapshots, logged


def salted_body(body: str, id_: str) -> str:
    """The logged JSON of the event ``body`` placed under the salted id ``id_`` (a new
    occurrence, :mod:`~billnotify.store.occurrences`)."""
    return parsed_event(body).model_copy(update={"id": id_}).to_json()


async def announce(
    appended: asyncio.Condition,
    events: Sequence[CloudEvent],
    placed: Sequence[tuple[int, int, str]],
) -> list[StoredEvent]:
    """The events :meth:`LogTables.commit_rows` placed, as stored; wakes those waiting
    on ``appended`` if there are any."""
    stored = [
        StoredEvent(
            seq,
            events[n] if id_ == events[n].id else events[n].model_copy(update={"id": id_}),
        )
        for n, seq, id_ in placed
    ]
    if stored:
        async with appended:
            appended.notify_all()
    return stored


def parse_log(rows: Iterable[tuple[int, str]]) -> list[StoredEvent]:
    """Events as logged (seq, JSON), parsed.

    Parsed for each reader, never kept: the rule handler reads an event once and the
    worker reads its JSON (a parsed event kept around would only give the collector
    more to scan).
    """
    return [StoredEvent(seq=int(seq), event=parsed_event(body)) for seq, body in rows]


class LogTables(SqliteBase):
    """The tables change detection and the publishers use."""

    # -- snapshots and cursors -------------------------------------------------------
    @staticmethod
    def _snapshot(row: sqlite3.Row | tuple[Any, ...]) -> Snapshot:
        source, entity, id_, record, marks, due_at, version = row
        return Snapshot(
            source=source,
            entity=entity,
            id=id_,
            record=jsontext.loads(record),
            marks=marks_of(marks),
            due_at=_dt(due_at),
            version=version,
        )

    _SNAP_COLS = "source, entity, id, record, marks, due_at, version"

    async def get_snapshots(
        self, source: str, entity: str, ids: Sequence[str]
    ) -> dict[str, Snapshot]:
        """The stored snapshots of ``ids``."""
        rows = await self.snapshot_rows(source, entity, ids)
        return {snap.id: snap for snap in map(self._snapshot, rows)}

    async def snapshot_rows(
        self, source: str, entity: str, ids: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        """:meth:`get_snapshots` as rows, not parsed (what a
        :class:`~billnotify.store.process.ProcessStore` has its child send: strings)."""
        found: list[tuple[Any, ...]] = []
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            found += await self._fetch(
                f"SELECT {self._SNAP_COLS} FROM snapshots "
                f"WHERE source = ? AND entity = ? AND id IN ({marks})",
                [source, entity, *chunk],
            )
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
        return [self._snapshot(r) for r in await self.dirty_snapshot_rows(limit)]

    async def dirty_snapshot_rows(self, limit: int = 500) -> list[tuple[Any, ...]]:
        """:meth:`dirty_snapshots` as rows, not parsed (see :meth:`snapshot_rows`)."""
        return await self._fetch(
            f"SELECT {self._SNAP_COLS} FROM snapshots WHERE dirty = 1 LIMIT ?", (limit,)
        )

    async def clear_dirty(self, snapshots: Sequence[Snapshot]) -> None:
        """Unmark published snapshots unless they were rewritten meanwhile."""
        await self.clear_dirty_keys([(s.source, s.entity, s.id, s.version) for s in snapshots])

    async def clear_dirty_keys(self, keys: Sequence[tuple[str, str, str, int]]) -> None:
        """:meth:`clear_dirty` by (source, entity, id, version): what a
        :class:`~billnotify.store.process.ProcessStore` sends, not the records.

        One ``UPDATE ... FROM (VALUES ...)`` per :data:`_ROWS` keys (SQLite 3.33): about
        half the cost of a statement per key.
        """
        if not keys:
            return

        def work(db: sqlite3.Connection) -> None:
            for start in range(0, len(keys), _ROWS):
                chunk = keys[start : start + _ROWS]
                db.execute(
                    "UPDATE snapshots SET dirty = 0 "
                    f"FROM (VALUES {_values(4, len(chunk))}) AS k "
                    "WHERE snapshots.source = k.column1 AND snapshots.entity = k.column2 "
                    "AND snapshots.id = k.column3 AND snapshots.version = k.column4",
                    [value for key in chunk for value in key],
                )

        await self._write(work)

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
        fence: Lease | None = None,
    ) -> list[StoredEvent]:
        """Snapshots, events and cursor in one transaction; see the protocol.

        The rows are made here, on the loop, and :meth:`commit_rows` writes them.
        """
        snapshots, logged = commit_rows_of(writes, events)
        placed = await self.commit_rows(source, snapshots, logged, cursor, fence)
        return await announce(self.appended, events, placed)

    async def commit_rows(
        self,
        source: str,
        snapshots: Sequence[SnapshotRow],
        events: Sequence[EventRow],
        cursor: tuple[str, str] | None = None,
        fence: Lease | None = None,
    ) -> list[tuple[int, int, str]]:
        """:meth:`commit` of rows already made; returns (index in ``events``, seq, id) of
        each event appended, in order."""
        now = _now()

        def work(db: sqlite3.Connection) -> list[tuple[int, int, str]]:
            self._check_fence(db, fence)
            versions = self._write_snapshots(db, source, snapshots, now)
            placed = self._append(db, events, now, versions)
            if cursor is not None:
                db.execute(
                    "INSERT INTO cursors (source, resource, value, updated_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (source, resource) DO UPDATE SET value = excluded.value, "
                    "updated_at = excluded.updated_at",
                    (source, cursor[0], cursor[1], now),
                )
            return placed

        return await self._write(work)

    _CHUNK = 200
    """Rows per multi-row statement."""

    def _write_snapshots(
        self,
        db: sqlite3.Connection,
        source: str,
        snapshots: Sequence[SnapshotRow],
        now: float,
    ) -> dict[str, int]:
        """Upsert snapshots; returns ``entity/id`` -> the version now stored."""
        versions: dict[str, int] = {}
        for start in range(0, len(snapshots), self._CHUNK):
            chunk = snapshots[start : start + self._CHUNK]
            rows = db.execute(
                "INSERT INTO snapshots (source, entity, id, record, marks, due_at, version, "
                "dirty, updated_at) VALUES "
                + ",".join(["(?, ?, ?, ?, ?, ?, 1, 1, ?)"] * len(chunk))
                + " ON CONFLICT (source, entity, id) DO UPDATE SET record = excluded.record, "
                "marks = excluded.marks, due_at = excluded.due_at, "
                "version = snapshots.version + 1, dirty = 1, updated_at = excluded.updated_at "
                "RETURNING entity, id, version",
                [value for row in chunk for value in (source, *row, now)],
            ).fetchall()
            for entity, id_, version in rows:
                # a record written twice in one commit returns two rows: keep the last
                key = record_key(entity, id_)
                versions[key] = max(versions.get(key, 0), int(version))
        return versions

    def _append(
        self,
        db: sqlite3.Connection,
        events: Sequence[EventRow],
        now: float,
        versions: dict[str, int],
    ) -> list[tuple[int, int, str]]:
        """Append the events whose id is new; returns (index, seq, id) of each, in order
        (:mod:`~billnotify.store.occurrences` says which, and under which id)."""
        keys = [(id_, entity, object_id) for id_, entity, object_id, *_ in events]
        candidates = candidate_ids(keys, versions)
        taken: set[str] = set()
        for start in range(0, len(candidates), 500):
            ids = candidates[start : start + 500]
            marks = ",".join("?" * len(ids))
            rows = db.execute(f"SELECT id FROM events WHERE id IN ({marks})", ids).fetchall()
            taken.update(str(r[0]) for r in rows)
        fresh: list[tuple[int, EventRow]] = []
        for n, id_ in place(keys, versions, taken):
            row = events[n]
            if id_ != row[0]:
                row = (id_, *row[1:-1], salted_body(row[-1], id_))
            fresh.append((n, row))
        placed: list[tuple[int, int, str]] = []
        for start in range(0, len(fresh), self._CHUNK):
            chunk = fresh[start : start + self._CHUNK]
            cursor = db.execute(
                "INSERT INTO events (id, type, source, subject, time, recorded_at, body) VALUES "
                + ",".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(chunk)),
                [
                    value
                    for _, (id_, _entity, _object, type_, source, subject, time, body) in chunk
                    for value in (id_, type_, source, subject, time, now, body)
                ],
            )
            # one statement, no other writer: its rows took the seqs up to the last one
            last = int(cursor.lastrowid or 0)
            first = last - len(chunk) + 1
            placed.extend((n, first + k, row[0]) for k, (n, row) in enumerate(chunk))
        return placed

    # -- the event log ---------------------------------------------------------------
    async def read_events(self, after_seq: int, limit: int = 500) -> list[StoredEvent]:
        """Events after ``after_seq``, in order."""
        return parse_log((e.seq, e.json) for e in await self.read_log(after_seq, limit))

    async def read_log(self, after_seq: int, limit: int = 500) -> list[LogEntry]:
        """Events after ``after_seq`` as logged, in order."""
        db = self._db
        sql = (
            "SELECT seq, id, type, source, subject, body FROM events WHERE seq > ? "
            "ORDER BY seq LIMIT ?"
        )
        try:
            rows = await self._call(
                lambda: _rows_with_text(
                    db, "seq, id, type, source, subject", "body", sql, (after_seq, limit)
                )
            )
        except sqlite3.Error as exc:
            raise StoreError(f"state store read failed: {exc}") from exc
        entries = [
            LogEntry(int(seq), id_, type_, source, subject, body or "")
            for (seq, id_, type_, source, subject), body in rows
        ]
        entries.sort(key=lambda entry: entry.seq)
        return entries

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
        return parse_log((seq, body) for seq, body, _ in (rows[-limit:] if limit else rows))

    async def get_events(self, ids: Sequence[str]) -> list[StoredEvent]:
        """Events by id, in log order."""
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = await self._fetch(
            f"SELECT seq, body FROM events WHERE id IN ({marks}) ORDER BY seq", list(ids)
        )
        return parse_log(rows)

    async def last_seq(self) -> int:
        """The newest seq, 0 when empty."""
        rows = await self._fetch("SELECT coalesce(max(seq), 0) FROM events")
        return int(rows[0][0])

    async def get_position(self, consumer: str) -> int:
        """A consumer's position in the log."""
        rows = await self._fetch("SELECT seq FROM positions WHERE consumer = ?", (consumer,))
        return int(rows[0][0]) if rows else 0

    async def set_position(self, consumer: str, seq: int, fence: Lease | None = None) -> None:
        """Move a consumer's position (unless fenced off)."""

        def work(db: sqlite3.Connection) -> None:
            self._check_fence(db, fence)
            self._set_position(db, consumer, seq)

        await self._write(work)
