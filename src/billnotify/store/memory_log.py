"""Snapshots, cursors, the event log and consumer positions, in memory."""

from __future__ import annotations

import asyncio
import fnmatch
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from billnotify.errors import StoreError
from billnotify.store.occurrences import candidate_ids, place, record_key
from billnotify.store.records import (
    Lease,
    LogEntry,
    Snapshot,
    SnapshotWrite,
    StoredEvent,
    default_instance,
    fenced,
    parsed_event,
)

if TYPE_CHECKING:
    from billnotify.events import CloudEvent


@dataclass(slots=True)
class _Snapshot:
    record: str
    """The record's JSON."""
    marks: frozenset[str]
    due_at: datetime | None
    version: int = 1
    dirty: bool = True


@dataclass(frozen=True, slots=True)
class _Logged:
    entry: LogEntry
    recorded_at: datetime


@dataclass(slots=True)
class _Log:
    """Snapshots, cursors, the event log and positions."""

    snapshots: dict[tuple[str, str, str], _Snapshot] = field(default_factory=dict)
    cursors: dict[tuple[str, str], str] = field(default_factory=dict)
    events: list[_Logged] = field(default_factory=list)
    bodies: dict[str, str] = field(default_factory=dict)
    """Event id -> its JSON."""
    last_seq: int = 0
    positions: dict[str, int] = field(default_factory=dict)


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


class MemoryBase:
    """The state of a :class:`~billnotify.store.memory.MemoryStore`; opening and closing.

    Args:
        instance: this process's name, recorded on the deliveries it starts.
    """

    def __init__(self, instance: str | None = None) -> None:
        self.instance = instance or default_instance()
        self.appended = asyncio.Condition()
        self.due_changed = asyncio.Condition()
        self._log = _Log()
        self._leases: dict[str, Lease] = {}
        self._open = False

    def _live(self) -> None:
        if not self._open:
            raise StoreError("the state store is not open")

    # -- lifecycle -------------------------------------------------------------------
    async def open(self) -> None:
        """Open the store (again)."""
        self._open = True

    async def close(self) -> None:
        """Close the store; the data stays for the next :meth:`open`."""
        self._open = False

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the store is open."""
        self._live()

    def _check_fence(self, fence: Lease | None) -> None:
        """Raise ``FencedError`` unless ``fence`` (if any) still names its lease's
        holder and epoch."""
        if fence is None:
            return
        held = self._leases.get(fence.name)
        if held is None or (held.holder, held.epoch) != (fence.holder, fence.epoch):
            raise fenced(fence)

    @staticmethod
    async def _wake(waiting: asyncio.Condition) -> None:
        async with waiting:
            waiting.notify_all()


class LogTables(MemoryBase):
    """What change detection and the publishers use."""

    def _snapshot(self, key: tuple[str, str, str]) -> Snapshot:
        kept = self._log.snapshots[key]
        source, entity, id_ = key
        return Snapshot(
            source=source,
            entity=entity,
            id=id_,
            record=json.loads(kept.record),
            marks=kept.marks,
            due_at=kept.due_at,
            version=kept.version,
        )

    def _keys(self, source: str, entity: str) -> list[tuple[str, str, str]]:
        """The keys of a source's entity, ordered by id."""
        self._live()
        return sorted(k for k in self._log.snapshots if k[0] == source and k[1] == entity)

    async def get_snapshots(
        self, source: str, entity: str, ids: Sequence[str]
    ) -> dict[str, Snapshot]:
        """The stored snapshots of ``ids``."""
        self._live()
        keys = [(source, entity, id_) for id_ in ids]
        return {key[2]: self._snapshot(key) for key in keys if key in self._log.snapshots}

    async def due_snapshots(
        self, source: str, entity: str, now: datetime, limit: int = 500
    ) -> list[Snapshot]:
        """Snapshots whose time-based check is due, soonest first."""
        due = [
            (due_at, key)
            for key in self._keys(source, entity)
            if (due_at := self._log.snapshots[key].due_at) is not None and due_at <= now
        ]
        due.sort(key=lambda item: item[0])
        return [self._snapshot(key) for _, key in due[:limit]]

    async def count_snapshots(self, source: str, entity: str | None = None) -> int:
        """How many records of a source (and entity) are tracked."""
        self._live()
        return sum(1 for s, e, _ in self._log.snapshots if s == source and entity in (None, e))

    async def iter_snapshots(
        self, source: str, entity: str, after_id: str = "", limit: int = 500
    ) -> list[Snapshot]:
        """A page of snapshots ordered by id."""
        keys = [key for key in self._keys(source, entity) if key[2] > after_id]
        return [self._snapshot(key) for key in keys[:limit]]

    async def dirty_snapshots(self, limit: int = 500) -> list[Snapshot]:
        """Snapshots whose retained state has not been published since they changed."""
        self._live()
        dirty = sorted(key for key, kept in self._log.snapshots.items() if kept.dirty)
        return [self._snapshot(key) for key in dirty[:limit]]

    async def clear_dirty(self, snapshots: Sequence[Snapshot]) -> None:
        """Unmark published snapshots unless they were rewritten meanwhile."""
        self._live()
        for snap in snapshots:
            kept = self._log.snapshots.get((snap.source, snap.entity, snap.id))
            if kept is not None and kept.version == snap.version:
                kept.dirty = False

    async def get_cursor(self, source: str, resource: str) -> str | None:
        """A resource's poll cursor."""
        self._live()
        return self._log.cursors.get((source, resource))

    async def commit(
        self,
        source: str,
        writes: Sequence[SnapshotWrite],
        events: Sequence[CloudEvent],
        cursor: tuple[str, str] | None = None,
        fence: Lease | None = None,
    ) -> list[StoredEvent]:
        """Snapshots, events and cursor at once; see the protocol."""
        self._live()
        self._check_fence(fence)
        # everything is made before anything is kept: a record that is not JSON changes
        # nothing, as a failed transaction would
        rows = [
            (w, json.dumps(w.record, separators=(",", ":")), frozenset(w.marks)) for w in writes
        ]
        log, now = self._log, datetime.now(UTC)
        versions: dict[str, int] = {}
        for w, record, marks in rows:
            key = (source, w.entity, w.id)
            kept = log.snapshots.get(key)
            version = kept.version + 1 if kept is not None else 1
            log.snapshots[key] = _Snapshot(record, marks, _utc(w.due_at), version)
            versions[record_key(w.entity, w.id)] = version
        keys = [(e.id, e.entity, e.object_id) for e in events]
        taken = {id_ for id_ in candidate_ids(keys, versions) if id_ in log.bodies}
        appended: list[StoredEvent] = []
        for n, id_ in place(keys, versions, taken):
            event = events[n] if id_ == events[n].id else events[n].model_copy(update={"id": id_})
            log.last_seq += 1
            entry = LogEntry(
                log.last_seq, id_, event.type, event.source_name, event.subject, event.to_json()
            )
            log.events.append(_Logged(entry, now))
            log.bodies[id_] = entry.json
            appended.append(StoredEvent(log.last_seq, event))
        if cursor is not None:
            log.cursors[(source, cursor[0])] = cursor[1]
        if appended:
            await self._wake(self.appended)
        return appended

    # -- the event log ---------------------------------------------------------------
    async def read_events(self, after_seq: int, limit: int = 500) -> list[StoredEvent]:
        """Events after ``after_seq``, in order."""
        return [
            StoredEvent(e.seq, parsed_event(e.json)) for e in await self.read_log(after_seq, limit)
        ]

    async def read_log(self, after_seq: int, limit: int = 500) -> list[LogEntry]:
        """Events after ``after_seq`` as logged, in order."""
        self._live()
        return [e.entry for e in self._log.events if e.entry.seq > after_seq][:limit]

    async def list_events(
        self,
        *,
        since: datetime | None = None,
        type_glob: str | None = None,
        limit: int = 1000,
    ) -> list[StoredEvent]:
        """Events recorded since ``since`` whose type matches ``type_glob``."""
        self._live()
        found = [
            e.entry
            for e in self._log.events
            if (since is None or e.recorded_at >= since)
            and (not type_glob or fnmatch.fnmatchcase(e.entry.type, type_glob))
        ]
        found = found[-limit:] if limit else found
        return [StoredEvent(e.seq, parsed_event(e.json)) for e in found]

    async def get_events(self, ids: Sequence[str]) -> list[StoredEvent]:
        """Events by id, in log order."""
        self._live()
        wanted = set(ids)
        return [
            StoredEvent(e.entry.seq, parsed_event(e.entry.json))
            for e in self._log.events
            if e.entry.id in wanted
        ]

    async def last_seq(self) -> int:
        """The newest seq, 0 when empty."""
        self._live()
        return self._log.last_seq

    async def get_position(self, consumer: str) -> int:
        """A consumer's position in the log."""
        self._live()
        return self._log.positions.get(consumer, 0)

    async def set_position(self, consumer: str, seq: int, fence: Lease | None = None) -> None:
        """Move a consumer's position (unless fenced off)."""
        self._live()
        self._check_fence(fence)
        self._log.positions[consumer] = seq
