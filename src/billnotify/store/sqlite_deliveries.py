"""The ledger as operators, metrics and reconciliation read it, and disabled endpoints,
on SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.store.records import Attempt, Delivery
from billnotify.store.sqlite_base import SqliteBase, _dt, _ts

_ACTIVE = "status IN ('pending', 'retry_scheduled', 'sending')"
"""Deliveries not settled yet: the condition of the partial index ``deliveries_active``,
which a query must repeat word for word to use it (settled rows, nearly all of them, are
not in that index, so settling a delivery removes it instead of moving it)."""
_DUE = "status IN ('pending', 'retry_scheduled')"
"""Deliveries waiting for their next attempt."""


DELIVERY_COLS = (
    "id, rule, action_index, action_type, event_id, event_seq, exactly_once, target, "
    "status, attempts, created_at, updated_at, next_attempt_at, last_error, "
    "last_status_code, note"
)
"""The columns :func:`delivery_from_row` reads, in its order."""


def delivery_from_row(
    row: sqlite3.Row | tuple[Any, ...], history: list[Attempt] | None = None
) -> Delivery:
    """A :class:`Delivery` from a row of :data:`DELIVERY_COLS`."""
    return Delivery(
        id=row[0],
        rule=row[1],
        action_index=int(row[2]),
        action_type=row[3],
        event_id=row[4],
        event_seq=int(row[5]),
        exactly_once=bool(row[6]),
        target=row[7],
        status=DeliveryStatus(row[8]),
        attempts=int(row[9]),
        created_at=_dt(row[10]) or datetime.now(UTC),
        updated_at=_dt(row[11]) or datetime.now(UTC),
        next_attempt_at=_dt(row[12]),
        last_error=row[13],
        last_status_code=row[14],
        note=row[15],
        history=history or [],
    )


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

        return await self._write(work)

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
