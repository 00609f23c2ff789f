"""Chained actions (:class:`~billnotify.store.base.Chains`) on SQLite: the answers kept
in ``delivery_results``, and the ``waiting`` / ``skipped`` deliveries moved on."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime

from billnotify.deliveries.base import DeliveryStatus
from billnotify.store.records import DELIVERY_COLS, ChainMove, Delivery
from billnotify.store.sqlite_base import SqliteBase
from billnotify.store.sqlite_deliveries import delivery_from_row

_CHAINED = "status IN ('waiting', 'skipped')"
"""The condition of the partial index ``deliveries_chained``, repeated word for word."""


class ChainTables(SqliteBase):
    """The ``delivery_results`` table and the moves of chained deliveries."""

    async def keep_result(self, delivery_id: str, result: str, now: datetime) -> None:
        """Keep a delivery's answer (JSON), replacing an older one."""
        params = (delivery_id, result, now.timestamp())
        await self._write(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO delivery_results (delivery_id, result, recorded_at) "
                "VALUES (?, ?, ?)",
                params,
            )
        )

    async def get_results(self, ids: Sequence[str]) -> dict[str, str]:
        """Delivery id -> the answer kept."""
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = await self._fetch(
                f"SELECT delivery_id, result FROM delivery_results WHERE delivery_id IN ({marks})",
                chunk,
            )
            found.update((str(r[0]), str(r[1])) for r in rows)
        return found

    async def chained_deliveries(
        self, limit: int = 500, after: tuple[datetime, str] | None = None
    ) -> list[Delivery]:
        """Deliveries ``waiting`` or ``skipped``, oldest first (past ``after``)."""
        since, last = (after[0].timestamp(), after[1]) if after else (float("-inf"), "")
        rows = await self._fetch(
            f"SELECT {DELIVERY_COLS} FROM deliveries WHERE {_CHAINED} "
            "AND created_at >= ? AND (created_at > ? OR id > ?) "
            "ORDER BY created_at, id LIMIT ?",
            (since, since, last, limit),
        )
        return [delivery_from_row(r) for r in rows]

    async def move_chained(self, moves: Sequence[ChainMove], now: datetime) -> list[str]:
        """Apply the moves whose delivery is still in an expected status, in one transaction."""
        if not moves:
            return []
        ts = now.timestamp()
        statements = [
            (
                "UPDATE deliveries SET status = ?, note = ?, updated_at = ?, "
                "next_attempt_at = CASE WHEN ? THEN ? ELSE next_attempt_at END "
                f"WHERE id = ? AND status IN ({','.join('?' * len(m.expect))}) RETURNING id",
                (
                    m.status.value,
                    m.note,
                    ts,
                    int(m.status is DeliveryStatus.PENDING),
                    ts,
                    m.id,
                    *(s.value for s in m.expect),
                ),
            )
            for m in moves
        ]

        def work(db: sqlite3.Connection) -> list[str]:
            moved: list[str] = []
            for sql, params in statements:
                moved += [str(row[0]) for row in db.execute(sql, params).fetchall()]
            return moved

        moved = await self._write(work)
        if any(m.status is DeliveryStatus.PENDING and m.id in moved for m in moves):
            await self._wake(self.due_changed)
        return moved
