"""Grouped rules' members and flushes (:class:`~billnotify.store.base.Groups`), on SQLite.

Tables ``rule_groups`` (one row per open group: its next flush time), ``group_members``
(each collected (rule, event), with the flush that took it) and ``group_flushes`` (each
flush's digest, which its deliveries carry). A flush writes its digest, marks its
members, inserts its deliveries and moves the group's next flush in ONE transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime

from billnotify.errors import StoreError
from billnotify.store.group_records import DueGroup, GroupFlush, GroupMember
from billnotify.store.sqlite_base import SqliteBase, _dt, _ts
from billnotify.store.sqlite_ledger import delivery_chunks, insert_deliveries


class GroupTables(SqliteBase):
    """Groups, their members and flushes; a flush records its deliveries in the ledger."""

    async def add_group_members(self, members: Sequence[GroupMember], now: datetime) -> int:
        """Collect members (each (rule, event) once), opening the groups they start."""
        rows = [(m.rule, m.event_id, m.key, m.event_seq, _ts(m.flush_at)) for m in members]
        ts = now.timestamp()

        def work(db: sqlite3.Connection) -> int:
            added = 0
            for rule, event_id, key, seq, flush_at in rows:
                cur = db.execute(
                    "INSERT OR IGNORE INTO group_members (rule, event_id, key, event_seq) "
                    "VALUES (?, ?, ?, ?)",
                    (rule, event_id, key, seq),
                )
                if cur.rowcount:
                    added += 1
                    db.execute(
                        "INSERT OR IGNORE INTO rule_groups (rule, key, opened_at, flush_at) "
                        "VALUES (?, ?, ?, ?)",
                        (rule, key, ts, flush_at),
                    )
            return added

        return await self._write(work) if rows else 0

    async def due_groups(
        self, now: datetime, limit: int = 100, members_limit: int = 1000
    ) -> list[DueGroup]:
        """Groups whose flush time has come, soonest first, with their unflushed members."""
        ts, db = now.timestamp(), self._db

        def read() -> list[DueGroup]:
            found: list[DueGroup] = []
            for rule, key, flush_at, flushes in db.execute(
                "SELECT rule, key, flush_at, flushes FROM rule_groups WHERE flush_at <= ? "
                "ORDER BY flush_at, rule, key LIMIT ?",
                (ts, limit),
            ).fetchall():
                members = db.execute(
                    "SELECT event_id, event_seq FROM group_members WHERE rule = ? AND key = ? "
                    "AND flush_id IS NULL ORDER BY event_seq LIMIT ?",
                    (rule, key, members_limit),
                ).fetchall()
                when = _dt(flush_at)
                assert when is not None
                found.append(
                    DueGroup(rule, key, when, int(flushes), tuple((e, int(s)) for e, s in members))
                )
            return found

        try:
            return await self._call(read)
        except sqlite3.Error as exc:
            raise StoreError(f"state store read failed: {exc}") from exc

    async def next_group_flush_at(self) -> datetime | None:
        """When the next group flushes."""
        rows = await self._fetch("SELECT min(flush_at) FROM rule_groups")
        return _dt(rows[0][0]) if rows else None

    async def flush_group(self, flush: GroupFlush, now: datetime) -> int:
        """Write one flush (or close the group); returns how many deliveries were new."""
        ts = now.timestamp()
        delivery_rows = delivery_chunks(flush.deliveries, now, flush.rendered)
        members = [(flush.id, flush.rule, event_id) for event_id in flush.event_ids]
        next_at = _ts(flush.next_flush_at)

        def close(db: sqlite3.Connection) -> int:
            db.execute(
                "DELETE FROM rule_groups WHERE rule = ? AND key = ? AND NOT EXISTS ("
                "SELECT 1 FROM group_members WHERE rule = ? AND key = ? AND flush_id IS NULL)",
                (flush.rule, flush.key, flush.rule, flush.key),
            )
            return 0

        def work(db: sqlite3.Connection) -> int:
            if not db.execute(
                "INSERT OR IGNORE INTO group_flushes (id, rule, key, digest, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (flush.id, flush.rule, flush.key, flush.digest, ts),
            ).rowcount:
                return 0  # written already: a flush is never written twice
            db.executemany(
                "UPDATE group_members SET flush_id = ? WHERE rule = ? AND event_id = ? "
                "AND flush_id IS NULL",
                members,
            )
            db.execute(
                "UPDATE rule_groups SET flushes = flushes + 1, flush_at = coalesce(?, flush_at) "
                "WHERE rule = ? AND key = ?",
                (next_at, flush.rule, flush.key),
            )
            return insert_deliveries(db, delivery_rows)

        if flush.id is None:
            return await self._write(close)
        inserted = await self._write(work)
        if inserted:
            await self._wake(self.due_changed)
        return inserted

    async def count_groups(self) -> tuple[int, int]:
        """Open groups, and members not flushed yet (the partial index of open members)."""
        rows = await self._fetch(
            "SELECT (SELECT count(*) FROM rule_groups), "
            "(SELECT count(*) FROM group_members WHERE flush_id IS NULL)"
        )
        return int(rows[0][0]), int(rows[0][1])

    async def get_digest(self, flush_id: str) -> str | None:
        """The digest (JSON) a flush's deliveries carry."""
        rows = await self._fetch("SELECT digest FROM group_flushes WHERE id = ?", (flush_id,))
        return str(rows[0][0]) if rows else None
