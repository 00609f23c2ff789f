"""The delivery ledger as operators, metrics and reconciliation read and settle it, and
disabled endpoints, on PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.store.postgres_base import DUE_CHANNEL, PgBase, affected
from billnotify.store.records import (
    DELIVERY_COLS,
    DUE_STATUSES,
    Attempt,
    Delivery,
    delivery_from_row,
)

_ACTIVE = "status IN ('pending', 'retry_scheduled', 'sending')"
"""Deliveries not settled yet (the condition of the partial index ``deliveries_active``)."""


class DeliveryTables(PgBase):
    """Reading and settling deliveries; the endpoints table."""

    async def list_deliveries(
        self, statuses: Sequence[DeliveryStatus] | None = None, limit: int = 1000
    ) -> list[Delivery]:
        """Ledger rows, newest first."""
        rows = await self._fetch(
            f"SELECT {DELIVERY_COLS} FROM deliveries WHERE $1::text[] IS NULL OR status = ANY($1) "
            "ORDER BY created_at DESC, event_seq DESC LIMIT $2",
            [s.value for s in statuses] if statuses else None,
            limit,
        )
        return [delivery_from_row(r) for r in rows]

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """One delivery with its attempts."""
        async with self._connection() as conn, conn.transaction(readonly=True):
            row = await conn.fetchrow(
                f"SELECT {DELIVERY_COLS} FROM deliveries WHERE id = $1", delivery_id
            )
            attempts = await conn.fetch(
                "SELECT number, started_at, finished_at, outcome, status_code, error "
                "FROM attempts WHERE delivery_id = $1 ORDER BY number",
                delivery_id,
            )
        if row is None:
            return None
        history = [
            Attempt(
                delivery_id=delivery_id,
                number=int(a[0]),
                started_at=a[1],
                finished_at=a[2],
                outcome=Outcome(a[3]) if a[3] else None,
                status_code=a[4],
                error=a[5],
            )
            for a in attempts
        ]
        return delivery_from_row(row, history)

    async def get_rendered(self, delivery_id: str) -> str | None:
        """What a dry-run delivery would have sent (JSON), if recorded."""
        value: str | None = await self._fetchval(
            "SELECT rendered FROM deliveries WHERE id = $1", delivery_id
        )
        return value

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
        async with self._transaction() as conn:
            done = await conn.execute(
                "UPDATE deliveries SET status = $1, next_attempt_at = $2, note = $3, "
                "updated_at = $4, last_error = coalesce($5, last_error) WHERE id = $6",
                status.value,
                next_attempt_at,
                note,
                now,
                error,
                delivery_id,
            )
            changed = affected(done) > 0
            if changed and status in DUE_STATUSES:
                await self._notify(conn, DUE_CHANNEL)
        if changed and status in DUE_STATUSES:
            await self._wake_local(self.due_changed)
        return changed

    async def count_deliveries(self) -> dict[tuple[str, str], int]:
        """(action_type, status) -> count."""
        rows = await self._fetch(
            "SELECT action_type, status, count(*) FROM deliveries GROUP BY action_type, status"
        )
        return {(r[0], r[1]): int(r[2]) for r in rows}

    async def oldest_pending_at(self) -> datetime | None:
        """Creation time of the oldest delivery not yet settled."""
        value: datetime | None = await self._fetchval(
            f"SELECT min(created_at) FROM deliveries WHERE {_ACTIVE}"
        )
        return value

    async def disable_endpoint(self, name: str, reason: str, now: datetime) -> None:
        """Mark a webhook endpoint disabled."""
        async with self._transaction() as conn:
            await conn.execute(
                "INSERT INTO endpoints (name, disabled_at, reason) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO UPDATE SET disabled_at = excluded.disabled_at, "
                "reason = excluded.reason",
                name,
                now,
                reason,
            )

    async def disabled_endpoints(self) -> dict[str, str]:
        """Disabled endpoints and why."""
        return {r[0]: r[1] for r in await self._fetch("SELECT name, reason FROM endpoints")}

    async def enable_endpoint(self, name: str) -> None:
        """Re-enable a disabled endpoint."""
        async with self._transaction() as conn:
            await conn.execute("DELETE FROM endpoints WHERE name = $1", name)

    async def get_deliveries(self, ids: Sequence[str]) -> list[Delivery]:
        """Deliveries by id, without their attempt history (unknown ids are absent)."""
        rows = await self._fetch(
            f"SELECT {DELIVERY_COLS} FROM deliveries WHERE id = ANY($1::text[])", list(ids)
        )
        return [delivery_from_row(r) for r in rows]

    async def settled_since(
        self, statuses: Sequence[DeliveryStatus], since: datetime, limit: int = 10_000
    ) -> list[Delivery]:
        """Deliveries in ``statuses`` whose row changed at or after ``since``, oldest first."""
        rows = await self._fetch(
            f"SELECT {DELIVERY_COLS} FROM deliveries WHERE status = ANY($1::text[]) "
            "AND updated_at >= $2 ORDER BY updated_at LIMIT $3",
            [s.value for s in statuses],
            since,
            limit,
        )
        return [delivery_from_row(r) for r in rows]
