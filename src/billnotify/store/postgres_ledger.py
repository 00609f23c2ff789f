"""The delivery ledger and endpoint state, on PostgreSQL.

Attempts are claimed with ``FOR UPDATE SKIP LOCKED``: of several stores starting the
same due deliveries at once, each delivery goes to exactly one of them, and none waits
on a row another is claiming.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.errors import StoreError
from billnotify.store.postgres_base import PgBase, affected
from billnotify.store.records import (
    Attempt,
    AttemptEnd,
    Delivery,
    DueBatch,
    DueDelivery,
    NewDelivery,
)

logger = logging.getLogger(__name__)

_ACTIVE = "status IN ('pending', 'retry_scheduled', 'sending')"
"""Deliveries not settled yet (the condition of the partial index ``deliveries_active``)."""
_DUE = "status IN ('pending', 'retry_scheduled')"
"""Deliveries waiting for their next attempt (the partial index ``deliveries_due``)."""
_COLS = (
    "id, rule, action_index, action_type, event_id, event_seq, exactly_once, target, "
    "status, attempts, created_at, updated_at, next_attempt_at, last_error, "
    "last_status_code, note"
)
_INTERRUPTED = "interrupted: the process stopped while this attempt was in flight"


def _delivery(row: Sequence[Any], history: list[Attempt] | None = None) -> Delivery:
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
        created_at=row[10],
        updated_at=row[11],
        next_attempt_at=row[12],
        last_error=row[13],
        last_status_code=row[14],
        note=row[15],
        history=history or [],
    )


def _due_sql(columns: str, exclude: Collection[str]) -> tuple[str, list[Any]]:
    """Due rows in the order of ``deliveries_due``: ``$1`` now, ``$2`` the limit."""
    return (
        f"SELECT {columns} FROM deliveries WHERE {_DUE} AND next_attempt_at <= $1 "
        "AND NOT (id = ANY($3::text[])) ORDER BY next_attempt_at, event_seq LIMIT $2",
        [list(exclude)],
    )


class LedgerTables(PgBase):
    """The tables of deliveries, their attempts and disabled endpoints."""

    async def record_deliveries(
        self,
        deliveries: Sequence[NewDelivery],
        consumer: str,
        position: int,
        now: datetime,
        rendered: Mapping[str, str] | None = None,
    ) -> int:
        """Insert new deliveries and advance ``consumer`` in one transaction."""
        notes = rendered or {}
        async with self._transaction() as conn:
            status = await conn.execute(
                "INSERT INTO deliveries (id, rule, action_index, action_type, event_id, "
                "event_seq, exactly_once, target, status, next_attempt_at, created_at, "
                "updated_at, rendered) SELECT v.id, v.rule, v.action_index, v.action_type, "
                "v.event_id, v.event_seq, v.exactly_once, v.target, v.status, "
                "coalesce(v.next_attempt_at, $11), $11, $11, v.rendered FROM unnest("
                "$1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::bigint[], "
                "$7::bool[], $8::text[], $9::text[], $10::timestamptz[], $12::text[]) AS v "
                "(id, rule, action_index, action_type, event_id, event_seq, exactly_once, "
                "target, status, next_attempt_at, rendered) ON CONFLICT (id) DO NOTHING",
                [d.id for d in deliveries],
                [d.rule for d in deliveries],
                [d.action_index for d in deliveries],
                [d.action_type for d in deliveries],
                [d.event_id for d in deliveries],
                [d.event_seq for d in deliveries],
                [d.exactly_once for d in deliveries],
                [d.target for d in deliveries],
                [d.status.value for d in deliveries],
                [d.next_attempt_at for d in deliveries],
                now,
                [notes.get(d.id) for d in deliveries],
            )
            await self._set_position(conn, consumer, position)
        return affected(status)

    async def due_deliveries(
        self, now: datetime, limit: int = 100, exclude: Collection[str] = ()
    ) -> list[Delivery]:
        """Deliveries whose next attempt is due, except those in ``exclude``."""
        sql, args = _due_sql(_COLS, exclude)
        return [_delivery(r) for r in await self._fetch(sql, now, limit, *args)]

    async def read_due(
        self, now: datetime, limit: int = 100, exclude: Collection[str] = ()
    ) -> DueBatch:
        """Due deliveries with their events' JSON, and the disabled endpoints, together."""
        sql, args = _due_sql(
            "id, rule, action_index, action_type, event_id, exactly_once, target, "
            "next_attempt_at, event_seq",
            exclude,
        )
        async with self._connection() as conn, conn.transaction(readonly=True):
            due = await conn.fetch(
                f"SELECT d.*, e.body FROM ({sql}) AS d LEFT JOIN events AS e "
                "ON e.id = d.event_id ORDER BY d.next_attempt_at, d.event_seq",
                now,
                limit,
                *args,
            )
            disabled = await conn.fetch("SELECT name, reason FROM endpoints")
        return DueBatch(
            [
                DueDelivery(
                    id=r[0],
                    rule=r[1],
                    action_index=r[2],
                    action_type=r[3],
                    event_id=r[4],
                    exactly_once=r[5],
                    target=r[6],
                    event=r[9],
                )
                for r in due
            ],
            {r[0]: r[1] for r in disabled},
        )

    async def next_due_at(self) -> datetime | None:
        """When the next delivery is due."""
        value: datetime | None = await self._fetchval(
            f"SELECT next_attempt_at FROM deliveries WHERE {_DUE} "
            "ORDER BY next_attempt_at, event_seq LIMIT 1"
        )
        return value

    async def start_attempt(self, delivery_id: str, now: datetime) -> int:
        """Mark ``sending`` and open attempt N (committed before the request)."""
        async with self._transaction() as conn:
            number = await conn.fetchval(
                "UPDATE deliveries SET status = $1, attempts = attempts + 1, updated_at = $2, "
                "claimed_by = $3 WHERE id = $4 RETURNING attempts",
                DeliveryStatus.SENDING.value,
                now,
                self.instance,
                delivery_id,
            )
            if number is None:
                raise StoreError(f"unknown delivery {delivery_id}")
            await self._open_attempts(conn, [delivery_id], [int(number)], now)
        return int(number)

    async def start_attempts(self, delivery_ids: Sequence[str], now: datetime) -> dict[str, int]:
        """Start every still-due delivery of ``delivery_ids`` in one transaction.

        Rows another store is starting right now are skipped, not waited for: once it
        commits they are ``sending``, no longer due.
        """
        ids = list(dict.fromkeys(delivery_ids))
        if not ids:
            return {}
        async with self._transaction() as conn:
            rows = await conn.fetch(
                "WITH due AS (SELECT id FROM deliveries WHERE id = ANY($1::text[]) "
                f"AND {_DUE} AND next_attempt_at <= $2 FOR UPDATE SKIP LOCKED) "
                "UPDATE deliveries AS d SET status = $3, attempts = d.attempts + 1, "
                "updated_at = $2, claimed_by = $4 FROM due WHERE d.id = due.id "
                "RETURNING d.id, d.attempts",
                ids,
                now,
                DeliveryStatus.SENDING.value,
                self.instance,
            )
            numbers = {str(r[0]): int(r[1]) for r in rows}
            if numbers:
                await self._open_attempts(conn, list(numbers), list(numbers.values()), now)
        return numbers

    @staticmethod
    async def _open_attempts(
        conn: Any, ids: Sequence[str], numbers: Sequence[int], now: datetime
    ) -> None:
        await conn.execute(
            "INSERT INTO attempts (delivery_id, number, started_at) "
            "SELECT v.id, v.number, $3 FROM unnest($1::text[], $2::int[]) AS v (id, number) "
            "ON CONFLICT (delivery_id, number) DO UPDATE SET started_at = excluded.started_at, "
            "finished_at = NULL, outcome = NULL, status_code = NULL, error = NULL",
            list(ids),
            list(numbers),
            now,
        )

    async def finish_attempt(
        self,
        delivery_id: str,
        number: int,
        *,
        now: datetime,
        outcome: Outcome,
        status: DeliveryStatus,
        next_attempt_at: datetime | None = None,
        status_code: int | None = None,
        error: str | None = None,
    ) -> None:
        """Close an attempt and set the delivery's status."""
        end = AttemptEnd(
            delivery_id, number, now, outcome, status, next_attempt_at, status_code, error
        )
        await self.finish_attempts([end])

    async def finish_attempts(self, ends: Sequence[AttemptEnd]) -> None:
        """Close several attempts and set their deliveries' status in one transaction."""
        if not ends:
            return
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE attempts AS a SET finished_at = v.finished_at, outcome = v.outcome, "
                "status_code = v.status_code, error = v.error FROM unnest($1::text[], "
                "$2::int[], $3::timestamptz[], $4::text[], $5::int[], $6::text[]) AS v "
                "(delivery_id, number, finished_at, outcome, status_code, error) "
                "WHERE a.delivery_id = v.delivery_id AND a.number = v.number",
                [e.delivery_id for e in ends],
                [e.number for e in ends],
                [e.finished_at for e in ends],
                [e.outcome.value for e in ends],
                [e.status_code for e in ends],
                [e.error for e in ends],
            )
            await conn.execute(
                "UPDATE deliveries AS d SET status = v.status, "
                "next_attempt_at = v.next_attempt_at, last_error = v.error, "
                "last_status_code = v.status_code, updated_at = v.finished_at "
                "FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], "
                "$5::int[], $6::timestamptz[]) AS v "
                "(id, status, next_attempt_at, error, status_code, finished_at) "
                "WHERE d.id = v.id",
                [e.delivery_id for e in ends],
                [e.status.value for e in ends],
                [e.next_attempt_at for e in ends],
                [e.error for e in ends],
                [e.status_code for e in ends],
                [e.finished_at for e in ends],
            )

    async def recover_in_flight(self, now: datetime) -> tuple[int, int]:
        """``sending`` rows left by a crash: exactly-once -> uncertain, others -> due.

        One process per database for now: every ``sending`` row is this process's
        own, left by its previous life (with several, only a dead instance's rows,
        by ``claimed_by``, will be).
        """
        async with self._transaction() as conn:
            rows = await conn.fetch(
                "UPDATE deliveries SET status = CASE WHEN exactly_once THEN $1 ELSE $2 END, "
                "next_attempt_at = CASE WHEN exactly_once THEN next_attempt_at ELSE $3 END, "
                "last_error = $4, updated_at = $3, claimed_by = NULL "
                "WHERE status = $5 RETURNING exactly_once",
                DeliveryStatus.UNCERTAIN.value,
                DeliveryStatus.RETRY_SCHEDULED.value,
                now,
                _INTERRUPTED,
                DeliveryStatus.SENDING.value,
            )
            await conn.execute(
                "UPDATE attempts SET finished_at = $1, outcome = $2, error = $3 "
                "WHERE finished_at IS NULL",
                now,
                Outcome.UNCERTAIN.value,
                _INTERRUPTED,
            )
        uncertain = sum(1 for r in rows if r[0])
        return uncertain, len(rows) - uncertain

    async def list_deliveries(
        self, statuses: Sequence[DeliveryStatus] | None = None, limit: int = 1000
    ) -> list[Delivery]:
        """Ledger rows, newest first."""
        rows = await self._fetch(
            f"SELECT {_COLS} FROM deliveries WHERE $1::text[] IS NULL OR status = ANY($1) "
            "ORDER BY created_at DESC, event_seq DESC LIMIT $2",
            [s.value for s in statuses] if statuses else None,
            limit,
        )
        return [_delivery(r) for r in rows]

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """One delivery with its attempts."""
        async with self._connection() as conn, conn.transaction(readonly=True):
            row = await conn.fetchrow(f"SELECT {_COLS} FROM deliveries WHERE id = $1", delivery_id)
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
        return _delivery(row, history)

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
        return affected(done) > 0

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
            f"SELECT {_COLS} FROM deliveries WHERE id = ANY($1::text[])", list(ids)
        )
        return [_delivery(r) for r in rows]

    async def settled_since(
        self, statuses: Sequence[DeliveryStatus], since: datetime, limit: int = 10_000
    ) -> list[Delivery]:
        """Deliveries in ``statuses`` whose row changed at or after ``since``, oldest first."""
        rows = await self._fetch(
            f"SELECT {_COLS} FROM deliveries WHERE status = ANY($1::text[]) "
            "AND updated_at >= $2 ORDER BY updated_at LIMIT $3",
            [s.value for s in statuses],
            since,
            limit,
        )
        return [_delivery(r) for r in rows]
