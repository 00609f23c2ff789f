"""Deleted and restored records (SPEC §7.5): which known ids the platform stopped
listing, which came back, and the events they make. Pure, no I/O.

A record the platform no longer lists keeps its snapshot, marked :data:`DELETED`, so its
last known state stays at hand (``data.object`` of ``{entity}.deleted``) and its return is
recognised (``{entity}.restored``). A deleted snapshot has no ``due_at``: a deleted task
never stalls, a deleted invoice never goes overdue.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from billnotify.events import CloudEvent, build_event, canonical_json
from billnotify.hashing import digest
from billnotify.sources.detect import Detection, Draft
from billnotify.store.records import Snapshot, SnapshotWrite

DELETED = "deleted"
"""The snapshot mark of a record the platform no longer lists."""


@dataclass(frozen=True)
class Known:
    """What the reconcile needs of one snapshot before it lists the platform."""

    deleted: bool
    version: int


@dataclass(frozen=True)
class IdDiff:
    """The outcome of comparing the known ids with a complete listing.

    Attributes:
        gone: known, not marked deleted, and not listed: deleted on the platform.
        back: marked deleted, and listed again: restored.
    """

    gone: list[str] = field(default_factory=list)
    back: list[str] = field(default_factory=list)


def known_from(snapshot: Snapshot) -> Known:
    """The part of a snapshot the reconcile remembers while it lists."""
    return Known(DELETED in snapshot.marks, snapshot.version)


def diff_ids(known: Mapping[str, Known], listed: Collection[str]) -> IdDiff:
    """Compare the ids the service knows with the ids of one COMPLETE listing.

    Only call it with a listing that ran to its last (empty) page: an id missing from
    a listing that stopped half way is not deleted.
    """
    gone = sorted(
        (rid for rid, k in known.items() if not k.deleted and rid not in listed), key=_order
    )
    back = sorted((rid for rid, k in known.items() if k.deleted and rid in listed), key=_order)
    return IdDiff(gone, back)


def _order(rid: str) -> tuple[int, int | str]:
    return (0, int(rid)) if rid.isdigit() else (1, rid)


def deleted_draft(entity: str, record: dict[str, Any]) -> Draft:
    """``{entity}.deleted`` with the last known record.

    Its key is the record's digest: the same deletion found twice (a crash before the
    commit, a second instance) has the same id, and a later deletion of the same record
    after a restore is a new occurrence (the log salts it with the snapshot version).
    """
    return Draft(f"{entity}.deleted", digest("deleted", canonical_json(record)), {"object": record})


def restored_draft(entity: str, previous: dict[str, Any], current: dict[str, Any]) -> Draft:
    """``{entity}.restored`` with the record as listed now."""
    key = digest("restored", canonical_json(previous), canonical_json(current))
    return Draft(f"{entity}.restored", key, {"object": current})


def with_restored(
    entity: str, previous: dict[str, Any], current: dict[str, Any], found: Detection
) -> Detection:
    """A detection for a record that was marked deleted: ``restored`` first, then any
    change it came back with (``found``, detected without the mark)."""
    drafts = [restored_draft(entity, previous, current), *found.drafts]
    return Detection(drafts, found.marks - {DELETED}, found.due_at)


def deletions(
    source: str, entity: str, snapshots: Collection[Snapshot], *, now: datetime
) -> tuple[list[SnapshotWrite], list[CloudEvent]]:
    """The snapshot writes (marked deleted, nothing due) and the ``{entity}.deleted``
    events for records the platform no longer lists."""
    writes: list[SnapshotWrite] = []
    events: list[CloudEvent] = []
    for snap in snapshots:
        draft = deleted_draft(entity, snap.record)
        writes.append(SnapshotWrite(entity, snap.id, snap.record, snap.marks | {DELETED}, None))
        events.append(
            build_event(
                source=source,
                entity=entity,
                object_id=snap.id,
                type_=draft.type,
                key=draft.key,
                time=now,
                data=draft.data,
            )
        )
    return writes, events
