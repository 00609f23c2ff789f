"""Snapshots, cursors, the event log and consumer positions, on PostgreSQL."""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from billnotify.store.occurrences import candidate_ids, place, record_key
from billnotify.store.postgres_base import PgBase, now
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

if TYPE_CHECKING:
    from billnotify.events import CloudEvent

logger = logging.getLogger(__name__)

_SNAP_COLS = "source, entity, id, record, marks, due_at, version"


def _snapshot(row: Sequence[Any]) -> Snapshot:
    source, entity, id_, record, marks, due_at, version = row
    return Snapshot(
        source=source,
        entity=entity,
        id=id_,
        record=json.loads(record),
        marks=marks_of(marks),
        due_at=due_at,
        version=version,
    )


def _stored(rows: Iterable[Sequence[Any]]) -> list[StoredEvent]:
    return [StoredEvent(seq=int(row[0]), event=parsed_event(row[1])) for row in rows]


class LogTables(PgBase):
    """The tables change detection and the publishers use."""

    # -- snapshots and cursors -------------------------------------------------------
    async def get_snapshots(
        self, source: str, entity: str, ids: Sequence[str]
    ) -> dict[str, Snapshot]:
        """The stored snapshots of ``ids``."""
        rows = await self._fetch(
            f"SELECT {_SNAP_COLS} FROM snapshots "
            "WHERE source = $1 AND entity = $2 AND id = ANY($3::text[])",
            source,
            entity,
            list(ids),
        )
        return {snap.id: snap for snap in map(_snapshot, rows)}

    async def due_snapshots(
        self, source: str, entity: str, now: datetime, limit: int = 500
    ) -> list[Snapshot]:
        """Snapshots whose time-based check is due."""
        rows = await self._fetch(
            f"SELECT {_SNAP_COLS} FROM snapshots WHERE source = $1 AND entity = $2 "
            "AND due_at IS NOT NULL AND due_at <= $3 ORDER BY due_at LIMIT $4",
            source,
            entity,
            now,
            limit,
        )
        return [_snapshot(r) for r in rows]

    async def count_snapshots(self, source: str, entity: str | None = None) -> int:
        """How many records of a source (and entity) are tracked."""
        return int(
            await self._fetchval(
                "SELECT count(*) FROM snapshots WHERE source = $1 "
                "AND ($2::text IS NULL OR entity = $2)",
                source,
                entity,
            )
        )

    async def iter_snapshots(
        self, source: str, entity: str, after_id: str = "", limit: int = 500
    ) -> list[Snapshot]:
        """A page of snapshots ordered by id."""
        rows = await self._fetch(
            f"SELECT {_SNAP_COLS} FROM snapshots WHERE source = $1 AND entity = $2 "
            "AND id > $3 ORDER BY id LIMIT $4",
            source,
            entity,
            after_id,
            limit,
        )
        return [_snapshot(r) for r in rows]

    async def dirty_snapshots(self, limit: int = 500) -> list[Snapshot]:
        """Snapshots whose retained state has not been published since they changed."""
        rows = await self._fetch(f"SELECT {_SNAP_COLS} FROM snapshots WHERE dirty LIMIT $1", limit)
        return [_snapshot(r) for r in rows]

    async def clear_dirty(self, snapshots: Sequence[Snapshot]) -> None:
        """Unmark published snapshots unless they were rewritten meanwhile."""
        if not snapshots:
            return
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE snapshots AS s SET dirty = FALSE "
                "FROM unnest($1::text[], $2::text[], $3::text[], $4::int[]) "
                "AS v (source, entity, id, version) WHERE s.source = v.source "
                "AND s.entity = v.entity AND s.id = v.id AND s.version = v.version",
                [s.source for s in snapshots],
                [s.entity for s in snapshots],
                [s.id for s in snapshots],
                [s.version for s in snapshots],
            )

    async def get_cursor(self, source: str, resource: str) -> str | None:
        """A resource's poll cursor."""
        value = await self._fetchval(
            "SELECT value FROM cursors WHERE source = $1 AND resource = $2", source, resource
        )
        return None if value is None else str(value)

    async def commit(
        self,
        source: str,
        writes: Sequence[SnapshotWrite],
        events: Sequence[CloudEvent],
        cursor: tuple[str, str] | None = None,
        fence: Lease | None = None,
    ) -> list[StoredEvent]:
        """Snapshots, events and cursor in one transaction; see the protocol."""
        at = now()
        async with self._transaction() as conn:
            await self._check_fence(conn, fence)
            versions = await self._write_snapshots(conn, source, writes, at)
            appended = await self._append(conn, events, at, versions) if events else []
            if cursor is not None:
                await conn.execute(
                    "INSERT INTO cursors (source, resource, value, updated_at) "
                    "VALUES ($1, $2, $3, $4) ON CONFLICT (source, resource) DO UPDATE "
                    "SET value = excluded.value, updated_at = excluded.updated_at",
                    source,
                    cursor[0],
                    cursor[1],
                    at,
                )
        if appended:
            await self._notify_local()
        return appended

    @staticmethod
    async def _write_snapshots(
        conn: Any, source: str, writes: Sequence[SnapshotWrite], at: datetime
    ) -> dict[str, int]:
        """Upsert snapshots; returns ``entity/id`` -> the version now stored.

        A record written n times in one commit is one row whose version moves by n
        (PostgreSQL's upsert may touch a row once per statement); its last write wins.
        """
        last: dict[tuple[str, str], tuple[SnapshotWrite, int]] = {}
        for w in writes:
            seen = last.get((w.entity, w.id))
            last[(w.entity, w.id)] = (w, seen[1] + 1 if seen else 1)
        if not last:
            return {}
        rows = await conn.fetch(
            "INSERT INTO snapshots (source, entity, id, record, marks, due_at, version, "
            "dirty, updated_at) SELECT $1, v.entity, v.id, v.record, v.marks, v.due_at, "
            "v.times, TRUE, $7 FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], "
            "$6::timestamptz[], $8::int[]) AS v (entity, id, record, marks, due_at, times) "
            "ON CONFLICT (source, entity, id) DO UPDATE SET record = excluded.record, "
            "marks = excluded.marks, due_at = excluded.due_at, "
            "version = snapshots.version + excluded.version, dirty = TRUE, "
            "updated_at = excluded.updated_at RETURNING entity, id, version",
            source,
            [w.entity for w, _ in last.values()],
            [w.id for w, _ in last.values()],
            [json.dumps(w.record, separators=(",", ":")) for w, _ in last.values()],
            [marks_text(w.marks) for w, _ in last.values()],
            [w.due_at for w, _ in last.values()],
            at,
            [times for _, times in last.values()],
        )
        return {record_key(entity, id_): int(version) for entity, id_, version in rows}

    async def _append(
        self,
        conn: Any,
        events: Sequence[CloudEvent],
        at: datetime,
        versions: dict[str, int],
    ) -> list[StoredEvent]:
        """Append the events whose id is new, with the log head locked until commit."""
        head = int(await conn.fetchval("SELECT seq FROM log_head FOR UPDATE"))
        keys = [(e.id, e.entity, e.object_id) for e in events]
        rows = await conn.fetch(
            "SELECT id FROM events WHERE id = ANY($1::text[])", candidate_ids(keys, versions)
        )
        fresh = [
            (n, events[n] if id_ == events[n].id else events[n].model_copy(update={"id": id_}))
            for n, id_ in place(keys, versions, {str(r[0]) for r in rows})
        ]
        if not fresh:
            return []
        appended = [StoredEvent(head + k, event) for k, (_, event) in enumerate(fresh, 1)]
        await conn.execute(
            "INSERT INTO events (seq, id, type, source, subject, time, recorded_at, body) "
            "SELECT v.seq, v.id, v.type, v.source, v.subject, v.time, $7, v.body "
            "FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], "
            "$6::text[], $8::text[]) AS v (seq, id, type, source, subject, time, body)",
            [s.seq for s in appended],
            [s.event.id for s in appended],
            [s.event.type for s in appended],
            [s.event.source_name for s in appended],
            [s.event.subject for s in appended],
            [s.event.time for s in appended],
            at,
            [s.event.to_json() for s in appended],
        )
        await conn.execute("UPDATE log_head SET seq = $1", appended[-1].seq)
        await self._notify(conn)
        return appended

    # -- the event log ---------------------------------------------------------------
    async def read_events(self, after_seq: int, limit: int = 500) -> list[StoredEvent]:
        """Events after ``after_seq``, in order."""
        return _stored((e.seq, e.json) for e in await self.read_log(after_seq, limit))

    async def read_log(self, after_seq: int, limit: int = 500) -> list[LogEntry]:
        """Events after ``after_seq`` as logged, in order."""
        rows = await self._fetch(
            "SELECT seq, id, type, source, subject, body FROM events WHERE seq > $1 "
            "ORDER BY seq LIMIT $2",
            after_seq,
            limit,
        )
        return [LogEntry(int(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]

    async def list_events(
        self,
        *,
        since: datetime | None = None,
        type_glob: str | None = None,
        limit: int = 1000,
    ) -> list[StoredEvent]:
        """Events recorded since ``since`` whose type matches ``type_glob``."""
        rows = await self._fetch(
            "SELECT seq, body, type FROM events "
            "WHERE $1::timestamptz IS NULL OR recorded_at >= $1 ORDER BY seq",
            since,
        )
        if type_glob:
            rows = [r for r in rows if fnmatch.fnmatchcase(r[2], type_glob)]
        return _stored(rows[-limit:] if limit else rows)

    async def get_events(self, ids: Sequence[str]) -> list[StoredEvent]:
        """Events by id, in log order."""
        if not ids:
            return []
        rows = await self._fetch(
            "SELECT seq, body FROM events WHERE id = ANY($1::text[]) ORDER BY seq", list(ids)
        )
        return _stored(rows)

    async def last_seq(self) -> int:
        """The newest seq, 0 when empty."""
        return int(await self._fetchval("SELECT seq FROM log_head"))

    async def get_position(self, consumer: str) -> int:
        """A consumer's position in the log."""
        seq = await self._fetchval("SELECT seq FROM positions WHERE consumer = $1", consumer)
        return 0 if seq is None else int(seq)

    async def set_position(self, consumer: str, seq: int, fence: Lease | None = None) -> None:
        """Move a consumer's position (unless fenced off)."""
        async with self._transaction() as conn:
            await self._check_fence(conn, fence)
            await self._set_position(conn, consumer, seq)
