"""Grouped rules' members and flushes (:class:`~billnotify.store.base.Groups`), in memory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from billnotify.store.group_records import DueGroup, GroupFlush, GroupMember
from billnotify.store.memory_ledger import LedgerTables
from billnotify.store.memory_log import _utc


@dataclass(slots=True)
class _Group:
    opened_at: datetime
    flush_at: datetime
    flushes: int = 0


@dataclass(slots=True)
class _Groups:
    groups: dict[tuple[str, str], _Group] = field(default_factory=dict)
    members: dict[tuple[str, str], tuple[str, int, str | None]] = field(default_factory=dict)
    """(rule, event id) -> (key, seq, flush id or None)."""
    flushes: dict[str, str] = field(default_factory=dict)
    """Flush id -> the digest's JSON."""


class GroupTables(LedgerTables):
    """Groups, their members and flushes; a flush records its deliveries in the ledger."""

    def __init__(self, instance: str | None = None) -> None:
        super().__init__(instance)
        self._groups = _Groups()

    async def add_group_members(self, members: Sequence[GroupMember], now: datetime) -> int:
        """Collect members (each (rule, event) once), opening the groups they start."""
        self._live()
        state, added = self._groups, 0
        for m in members:
            if (m.rule, m.event_id) in state.members:
                continue
            state.members[(m.rule, m.event_id)] = (m.key, m.event_seq, None)
            added += 1
            if (m.rule, m.key) not in state.groups:
                state.groups[(m.rule, m.key)] = _Group(
                    _utc(now) or now, _utc(m.flush_at) or m.flush_at
                )
        return added

    async def due_groups(
        self, now: datetime, limit: int = 100, members_limit: int = 1000
    ) -> list[DueGroup]:
        """Groups whose flush time has come, soonest first, with their unflushed members."""
        self._live()
        due = sorted(
            ((g.flush_at, rule, key, g) for (rule, key), g in self._groups.groups.items()),
            key=lambda t: (t[0], t[1], t[2]),
        )
        found: list[DueGroup] = []
        for flush_at, rule, key, group in due:
            if flush_at > now or len(found) >= limit:
                break
            open_ = sorted(
                (seq, event_id)
                for (r, event_id), (k, seq, flushed) in self._groups.members.items()
                if r == rule and k == key and flushed is None
            )[:members_limit]
            members = tuple((event_id, seq) for seq, event_id in open_)
            found.append(DueGroup(rule, key, flush_at, group.flushes, members))
        return found

    async def next_group_flush_at(self) -> datetime | None:
        """When the next group flushes."""
        self._live()
        return min((g.flush_at for g in self._groups.groups.values()), default=None)

    async def flush_group(self, flush: GroupFlush, now: datetime) -> int:
        """Write one flush (or close the group); returns how many deliveries were new."""
        state, now = self._groups, _utc(now) or now
        self._live()
        group = state.groups.get((flush.rule, flush.key))
        if flush.id is None:
            waiting = any(
                r == flush.rule and k == flush.key and f is None
                for (r, _), (k, _s, f) in state.members.items()
            )
            if group is not None and not waiting:
                del state.groups[(flush.rule, flush.key)]
            return 0
        if flush.id in state.flushes:
            return 0  # written already: a flush is never written twice
        state.flushes[flush.id] = flush.digest
        for event_id in flush.event_ids:
            kept = state.members.get((flush.rule, event_id))
            if kept is not None and kept[2] is None:
                state.members[(flush.rule, event_id)] = (kept[0], kept[1], flush.id)
        if group is not None:
            group.flushes += 1
            if flush.next_flush_at is not None:
                group.flush_at = _utc(flush.next_flush_at) or flush.next_flush_at
        inserted = self._insert(flush.deliveries, now, flush.rendered)
        if inserted:
            await self._wake(self.due_changed)
        return inserted

    async def count_groups(self) -> tuple[int, int]:
        """Open groups, and members not flushed yet."""
        self._live()
        waiting = sum(1 for _, _, flushed in self._groups.members.values() if flushed is None)
        return len(self._groups.groups), waiting

    async def get_digest(self, flush_id: str) -> str | None:
        """The digest (JSON) a flush's deliveries carry."""
        self._live()
        return self._groups.flushes.get(flush_id)
