"""The delivery ledger as the rule handler and the worker drive it, on PostgreSQL.

Attempts are claimed with ``FOR UPDATE SKIP LOCKED``: of several stores starting the
same due deliveries at once, each delivery goes to exactly one of them, and none waits
on a row another is claiming; a ``sending`` row names its claimant (``claimed_by``), so
the rows of a dead instance are recovered, once, by whoever sweeps first. A change that
makes work due sends ``NOTIFY billnotify_due`` in its transaction
(:attr:`~billnotify.store.postgres_base.PgBase.due_changed`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.errors import StoreError
from billnotify.store.postgres_base import DUE_CHANNEL, affected
from billnotify.store.postgres_deliveries import DeliveryTables
from billnotify.store.records import (
    DELIVERY_COLS,
    DUE_STATUSES,
    INTERRUPTED,
    AttemptEnd,
    Delivery,
    DueBatch,
    DueDelivery,
    NewDelivery,
    delivery_from_row,
)

logger = logging.getLogger(__name__)

_DUE = "status IN ('pending', 'retry_scheduled')"
"""Deliveries waiting for their next attempt (the partial index ``deliveries_due``)."""


def _due_sql(columns: str, exclude: Collection[str]) -> tuple[str, list[Any]]:
    """Due rows in the order of ``deliveries_due``: ``$1`` now, ``$2`` the limit."""
    return (
        f"SELECT {columns} FROM deliveries WHERE {_DUE} AND next_attempt_at <= $1 "
        "AND NOT (id = ANY($3::text[])) ORDER BY next_attempt_at, event_seq LIMIT $2",
        [list(exclude)],
    )


class LedgerTables(DeliveryTables):
    """Recording deliveries, reading what is due, opening and closing attempts."""

    async def record_deliveries(
        self,
        deliveries: Sequence[NewDelivery],
        consumer: str,
        position: int,
        now: datetime,
        rendered: Mapping[str, str] | None = None,
    ) -> int:
        """Insert new deliveries and advance ``consumer`` in one transaction."""
        async with self._transaction() as conn:
            inserted = await insert_deliveries(conn, deliveries, now, rendered or {})
            await self._set_position(conn, consumer, position)
            if inserted:
                await self._notify(conn, DUE_CHANNEL)
        if inserted:
            await self._wake_local(self.due_changed)
        return inserted

    async def due_deliveries(
        self, now: datetime, limit: int = 100, exclude: Collection[str] = ()
    ) -> list[Delivery]:
        """Deliveries whose next attempt is due, except those in ``exclude``."""
        sql, args = _due_sql(DELIVERY_COLS, exclude)
        return [delivery_from_row(r) for r in await self._fetch(sql, now, limit, *args)]

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
        due = any(e.status in DUE_STATUSES for e in ends)
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
            if due:
                await self._notify(conn, DUE_CHANNEL)
        if due:
            await self._wake_local(self.due_changed)

    async def recover_in_flight(
        self,
        now: datetime,
        *,
        instance: str | None = None,
        live: Collection[str] | None = None,
    ) -> tuple[int, int]:
        """``sending`` rows of a process that died: exactly-once -> uncertain, others
        -> due (see the protocol for which).

        The rows are taken ``FOR UPDATE SKIP LOCKED`` and must still be ``sending``:
        of several instances sweeping at once, each row is recovered by one.
        """
        async with self._transaction() as conn:
            rows = await conn.fetch(
                "WITH lost AS (SELECT id FROM deliveries WHERE status = $5 "
                "AND (($6::text IS NULL AND $7::text[] IS NULL) OR claimed_by = $6 "
                "OR ($7::text[] IS NOT NULL AND (claimed_by IS NULL "
                "OR NOT claimed_by = ANY($7::text[])))) FOR UPDATE SKIP LOCKED) "
                "UPDATE deliveries AS d "
                "SET status = CASE WHEN d.exactly_once THEN $1 ELSE $2 END, "
                "next_attempt_at = CASE WHEN d.exactly_once THEN d.next_attempt_at ELSE $3 END, "
                "last_error = $4, updated_at = $3, claimed_by = NULL FROM lost "
                "WHERE d.id = lost.id AND d.status = $5 RETURNING d.id, d.exactly_once",
                DeliveryStatus.UNCERTAIN.value,
                DeliveryStatus.RETRY_SCHEDULED.value,
                now,
                INTERRUPTED,
                DeliveryStatus.SENDING.value,
                instance,
                None if live is None else list(live),
            )
            await conn.execute(
                "UPDATE attempts SET finished_at = $1, outcome = $2, error = $3 "
                "WHERE finished_at IS NULL AND delivery_id = ANY($4::text[])",
                now,
                Outcome.UNCERTAIN.value,
                INTERRUPTED,
                [r[0] for r in rows],
            )
            uncertain = sum(1 for r in rows if r[1])
            if len(rows) > uncertain:
                await self._notify(conn, DUE_CHANNEL)
        if len(rows) > uncertain:
            await self._wake_local(self.due_changed)
        return uncertain, len(rows) - uncertain


async def insert_deliveries(
    conn: Any, deliveries: Sequence[NewDelivery], now: datetime, rendered: Mapping[str, str]
) -> int:
    """Insert new deliveries on ``conn`` (in the caller's transaction), each with its
    rendered summary if any; one whose id is there already stays as it is. How many
    were new."""
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
        [rendered.get(d.id) for d in deliveries],
    )
    return affected(status)
