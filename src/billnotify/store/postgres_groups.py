"""Grouped rules' members and flushes (:class:`~billnotify.store.base.Groups`), on
PostgreSQL: the tables of ``store/sqlite_groups.py``, with the same one-transaction
flush (digest, members, deliveries, next flush time)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from billnotify.store.group_records import DueGroup, GroupFlush, GroupMember
from billnotify.store.postgres_base import DUE_CHANNEL, PgBase, affected
from billnotify.store.postgres_ledger import insert_deliveries


class GroupTables(PgBase):
    """Groups, their members and flushes; a flush records its deliveries in the ledger."""

    async def add_group_members(self, members: Sequence[GroupMember], now: datetime) -> int:
        """Collect members (each (rule, event) once), opening the groups they start."""
        if not members:
            return 0
        async with self._transaction() as conn:
            added = await conn.fetch(
                "INSERT INTO group_members (rule, event_id, key, event_seq) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) "
                "ON CONFLICT (rule, event_id) DO NOTHING RETURNING rule, key",
                [m.rule for m in members],
                [m.event_id for m in members],
                [m.key for m in members],
                [m.event_seq for m in members],
            )
            opened = {(r["rule"], r["key"]) for r in added}
            first: dict[tuple[str, str], datetime] = {}
            for m in members:
                if (m.rule, m.key) in opened:
                    first.setdefault((m.rule, m.key), m.flush_at)
            if first:
                await conn.execute(
                    "INSERT INTO rule_groups (rule, key, opened_at, flush_at) "
                    "SELECT r, k, $3, f FROM unnest($1::text[], $2::text[], $4::timestamptz[]) "
                    "AS v (r, k, f) ON CONFLICT (rule, key) DO NOTHING",
                    [rule for rule, _ in first],
                    [key for _, key in first],
                    now,
                    list(first.values()),
                )
            return len(added)

    async def due_groups(
        self, now: datetime, limit: int = 100, members_limit: int = 1000
    ) -> list[DueGroup]:
        """Groups whose flush time has come, soonest first, with their unflushed members."""
        found: list[DueGroup] = []
        async with self._connection() as conn:
            for g in await conn.fetch(
                "SELECT rule, key, flush_at, flushes FROM rule_groups WHERE flush_at <= $1 "
                "ORDER BY flush_at, rule, key LIMIT $2",
                now,
                limit,
            ):
                members = await conn.fetch(
                    "SELECT event_id, event_seq FROM group_members WHERE rule = $1 "
                    "AND key = $2 AND flush_id IS NULL ORDER BY event_seq LIMIT $3",
                    g["rule"],
                    g["key"],
                    members_limit,
                )
                found.append(
                    DueGroup(
                        g["rule"],
                        g["key"],
                        g["flush_at"],
                        int(g["flushes"]),
                        tuple((m["event_id"], int(m["event_seq"])) for m in members),
                    )
                )
        return found

    async def next_group_flush_at(self) -> datetime | None:
        """When the next group flushes."""
        value: datetime | None = await self._fetchval("SELECT min(flush_at) FROM rule_groups")
        return value

    async def flush_group(self, flush: GroupFlush, now: datetime) -> int:
        """Write one flush (or close the group); returns how many deliveries were new."""
        if flush.id is None:
            async with self._transaction() as conn:
                await conn.execute(
                    "DELETE FROM rule_groups WHERE rule = $1 AND key = $2 AND NOT EXISTS ("
                    "SELECT 1 FROM group_members WHERE rule = $1 AND key = $2 "
                    "AND flush_id IS NULL)",
                    flush.rule,
                    flush.key,
                )
            return 0
        deliveries = flush.deliveries
        async with self._transaction() as conn:
            written = await conn.execute(
                "INSERT INTO group_flushes (id, rule, key, digest, created_at) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                flush.id,
                flush.rule,
                flush.key,
                flush.digest,
                now,
            )
            if not affected(written):
                return 0  # written already: a flush is never written twice
            await conn.execute(
                "UPDATE group_members SET flush_id = $1 WHERE rule = $2 "
                "AND event_id = ANY($3::text[]) AND flush_id IS NULL",
                flush.id,
                flush.rule,
                list(flush.event_ids),
            )
            await conn.execute(
                "UPDATE rule_groups SET flushes = flushes + 1, "
                "flush_at = coalesce($1, flush_at) WHERE rule = $2 AND key = $3",
                flush.next_flush_at,
                flush.rule,
                flush.key,
            )
            inserted = await insert_deliveries(conn, deliveries, now, flush.rendered)
            if inserted:
                await self._notify(conn, DUE_CHANNEL)
        if inserted:
            await self._wake_local(self.due_changed)
        return inserted

    async def count_groups(self) -> tuple[int, int]:
        """Open groups, and members not flushed yet."""
        rows = await self._fetch(
            "SELECT (SELECT count(*) FROM rule_groups) AS open, "
            "(SELECT count(*) FROM group_members WHERE flush_id IS NULL) AS waiting"
        )
        return int(rows[0]["open"]), int(rows[0]["waiting"])

    async def get_digest(self, flush_id: str) -> str | None:
        """The digest (JSON) a flush's deliveries carry."""
        value: str | None = await self._fetchval(
            "SELECT digest FROM group_flushes WHERE id = $1", flush_id
        )
        return value
