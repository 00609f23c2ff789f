"""Chained actions (:class:`~billnotify.store.base.Chains`) on PostgreSQL: the answers
kept in ``delivery_results``, and the ``waiting`` / ``skipped`` deliveries moved on."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from billnotify.deliveries.base import DeliveryStatus
from billnotify.store.postgres_base import DUE_CHANNEL, PgBase
from billnotify.store.records import DELIVERY_COLS, ChainMove, Delivery, delivery_from_row

_CHAINED = "status IN ('waiting', 'skipped')"
"""The condition of the partial index ``deliveries_chained``, repeated word for word."""


class ChainTables(PgBase):
    """The ``delivery_results`` table and the moves of chained deliveries."""

    async def keep_result(self, delivery_id: str, result: str, now: datetime) -> None:
        """Keep a delivery's answer (JSON), replacing an older one."""
        async with self._transaction() as conn:
            await conn.execute(
                "INSERT INTO delivery_results (delivery_id, result, recorded_at) "
                "VALUES ($1, $2, $3) ON CONFLICT (delivery_id) DO UPDATE "
                "SET result = excluded.result, recorded_at = excluded.recorded_at",
                delivery_id,
                result,
                now,
            )

    async def get_results(self, ids: Sequence[str]) -> dict[str, str]:
        """Delivery id -> the answer kept."""
        if not ids:
            return {}
        rows = await self._fetch(
            "SELECT delivery_id, result FROM delivery_results WHERE delivery_id = ANY($1)",
            list(ids),
        )
        return {str(r[0]): str(r[1]) for r in rows}

    async def chained_deliveries(
        self, limit: int = 500, after: tuple[datetime, str] | None = None
    ) -> list[Delivery]:
        """Deliveries ``waiting`` or ``skipped``, oldest first (past ``after``)."""
        rows = await self._fetch(
            f"SELECT {DELIVERY_COLS} FROM deliveries WHERE {_CHAINED} "
            "AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3)) "
            "ORDER BY created_at, id LIMIT $1",
            limit,
            after[0] if after else None,
            after[1] if after else "",
        )
        return [delivery_from_row(r) for r in rows]

    async def move_chained(self, moves: Sequence[ChainMove], now: datetime) -> list[str]:
        """Apply the moves whose delivery is still in an expected status, in one transaction."""
        if not moves:
            return []
        moved: list[str] = []
        due = False
        async with self._transaction() as conn:
            for m in moves:
                pending = m.status is DeliveryStatus.PENDING
                row = await conn.fetchrow(
                    "UPDATE deliveries SET status = $1, note = $2, updated_at = $3, "
                    "next_attempt_at = CASE WHEN $4 THEN $3 ELSE next_attempt_at END "
                    "WHERE id = $5 AND status = ANY($6) RETURNING id",
                    m.status.value,
                    m.note,
                    now,
                    pending,
                    m.id,
                    [s.value for s in m.expect],
                )
                if row is not None:
                    moved.append(str(row[0]))
                    due = due or pending
            if due:
                await self._notify(conn, DUE_CHANNEL)
        if due:
            await self._wake_local(self.due_changed)
        return moved
