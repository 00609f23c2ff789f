"""The ledger as operators, metrics and reconciliation read it, and disabled endpoints,
on SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.store import records
from billnotify.store.records import DELIVERY_COLS, DUE_STATUSES, Attempt, Delivery
from billnotify.store.sqlite_base import SqliteBase, _dt, _ts

_ACTIVE = "status IN ('pending', 'retry_scheduled', 'sending')"
"""Deliveries not settled yet: the condition of the partial index ``deliveries_active``,
which a query must repeat word for word to use it (settled rows, nearly all of them, are
not in that index, so settling a delivery removes it instead of moving it)."""
_DUE = "status IN ('pending', 'retry_scheduled')"
"""Deliveries waiting for their next attempt."""


def delivery_from_row(row: Sequence[Any], history: list[Attempt] | None = None) -> Delivery:
    """A :class:`Delivery` from a row of :data:`DELIVERY_COLS` (times in seconds)."""
    return records.delivery_from_row(row, history, _dt)


class DeliveryTables(SqliteBase):
    """Reading and settling deliveries; the endpoints table."""

    async def list_deliveries(
        self, statuses: Sequence[DeliveryStatus] | None = None, limit: int = 1000
    ) -> list[Delivery]:
        """Ledger rows, newest first."""
        if statuses:
            marks = ",".join("?" * len(statuses))
            rows = await self._fetch(
                f"SELECT {DELIVERY_COLS} FROM deliveries WHERE status IN ({marks}) "
                "ORDER BY created_at DESC, event_seq DESC LIMIT ?",
                [*(s.value for s in statuses), limit],
            )
        else:
            rows = await self._fetch(
                f"SELECT {DELIVERY_COLS} FROM deliveries "
                "ORDER BY created_at DESC, event_seq DESC LIMIT ?",
                (limit,),
            )
        return [delivery_from_row(r) for r in rows]

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """One delivery with its attempts."""
        rows = await self._fetch(
            f"SELECT {DELIVERY_COLS} FROM deliveries WHERE id = ?", (delivery_id,)
        )
        if not rows:
            return None
        attempts = await self._fetch(
            "SELECT number, started_at, finished_at, outcome, status_code, error FROM attempts "
            "WHERE delivery_id = ? ORDER BY number",
            (delivery_id,),
        )
        history = [
            Attempt(
                delivery_id=delivery_id,
                number=int(a[0]),
                started_at=_dt(a[1]) or datetime.now(UTC),
                finished_at=_dt(a[2]),
                outcome=Outcome(a[3]) if a[3] else None,
                status_code=a[4],
                error=a[5],
            )
            for a in attempts
        ]
        return delivery_from_row(rows[0], history)

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
        params = (status.value, _ts(next_attempt_at), note, now.timestamp(), error, delivery_id)

        def work(db: sqlite3.Connection) -> bool:
            changed = db.execute(
                "UPDATE deliveries SET status = ?, next_attempt_at = ?, note = ?, updated_at = ?, "
                "last_error = coalesce(?, last_error) WHERE id = ?",
                params,
            ).rowcount
            return changed > 0

        changed = await self._write(work)
        if changed and status in DUE_STATUSES:
            await self._wake(self.due_changed)
        return changed

    async def count_deliveries(self) -> dict[tuple[str, str], int]:
        """(action_type, status) -> count."""
        rows = await self._fetch(
            "SELECT action_type, status, count(*) FROM deliveries GROUP BY action_type, status"
        )
        return {(r[0], r[1]): int(r[2]) for r in rows}

    async def oldest_pending_at(self) -> datetime | None:
        """Creation time of the oldest delivery not yet settled."""
        rows = await self._fetch(f"SELECT min(created_at) FROM deliveries WHERE {_ACTIVE}")
        return _dt(rows[0][0])

    async def disable_endpoint(self, name: str, reason: str, now: datetime) -> None:
        """Mark a webhook endpoint disabled."""
        params = (name, now.timestamp(), reason)
        await self._write(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO endpoints (name, disabled_at, reason) VALUES (?, ?, ?)",
                params,
            )
        )

    async def disabled_endpoints(self) -> dict[str, str]:
        """Disabled endpoints and why."""
        rows = await self._fetch("SELECT name, reason FROM endpoints")
        return {r[0]: r[1] for r in rows}

    async def enable_endpoint(self, name: str) -> None:
        """Re-enable a disabled endpoint."""
        await self._write(lambda db: db.execute("DELETE FROM endpoints WHERE name = ?", (name,)))

    async def get_deliveries(self, ids: Sequence[str]) -> list[Delivery]:
        """Deliveries by id, without their attempt history (unknown ids are absent)."""
        found: list[Delivery] = []
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = await self._fetch(
                f"SELECT {DELIVERY_COLS} FROM deliveries WHERE id IN ({marks})", chunk
            )
            found += [delivery_from_row(r) for r in rows]
        return found

    async def settled_since(
        self, statuses: Sequence[DeliveryStatus], since: datetime, limit: int = 10_000
    ) -> list[Delivery]:
        """Deliveries in ``statuses`` whose row changed at or after ``since``, oldest first."""
        marks = ",".join("?" * len(statuses))
        rows = await self._fetch(
            f"SELECT {DELIVERY_COLS} FROM deliveries WHERE status IN ({marks}) "
            "AND updated_at >= ? ORDER BY updated_at LIMIT ?",
            [*(s.value for s in statuses), since.timestamp(), limit],
        )
        return [delivery_from_row(r) for r in rows]
