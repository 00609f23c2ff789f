"""The delivery ledger as the rule handler and the worker drive it, on SQLite."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.errors import StoreError
from billnotify.store.records import (
    DELIVERY_COLS,
    DUE_STATUSES,
    INTERRUPTED,
    AttemptEnd,
    Delivery,
    DueBatch,
    DueDelivery,
    NewDelivery,
)
from billnotify.store.sqlite_base import (
    _ROWS,
    SqliteBase,
    _dt,
    _json_rows,
    _rows_with_text,
    _ts,
    _values,
)
from billnotify.store.sqlite_deliveries import (
    _ACTIVE,
    _DUE,
    delivery_from_row,
)

logger = logging.getLogger(__name__)


class LedgerTables(SqliteBase):
    """Recording deliveries, reading what is due, opening and closing attempts."""

    async def record_deliveries(
        self,
        deliveries: Sequence[NewDelivery],
        consumer: str,
        position: int,
        now: datetime,
        rendered: Mapping[str, str] | None = None,
    ) -> int:
        """Insert new deliveries and advance ``consumer`` in one transaction.

        Args:
            rendered: optional delivery id -> JSON of what would be sent (dry runs).
        """
        # the rows are made here, on the loop: the store's thread only runs statements
        chunks = delivery_chunks(deliveries, now, rendered or {})

        def work(db: sqlite3.Connection) -> int:
            inserted = insert_deliveries(db, chunks)
            self._set_position(db, consumer, position)
            return inserted

        inserted = await self._write(work)
        if inserted:
            await self._wake(self.due_changed)
        return inserted

    def _due_query(
        self, columns: str, now: datetime, limit: int, exclude: Collection[str]
    ) -> tuple[str, tuple[Any, ...]]:
        # the active index in its order, past the rows in flight (``sending``), which
        # are few: no sort, and the first ``limit`` rows end the scan
        skip = list(exclude)
        return (
            f"SELECT {columns}, next_attempt_at AS due_at, event_seq AS seq FROM deliveries "
            f"WHERE {_ACTIVE} AND {_DUE} AND next_attempt_at <= ? "
            f"AND id NOT IN ({','.join('?' * len(skip))}) "
            "ORDER BY next_attempt_at, event_seq LIMIT ?",
            (now.timestamp(), *skip, limit),
        )

    async def due_deliveries(
        self, now: datetime, limit: int = 100, exclude: Collection[str] = ()
    ) -> list[Delivery]:
        """Deliveries whose next attempt is due, except those in ``exclude``."""
        rows = await self._fetch(*self._due_query(DELIVERY_COLS, now, limit, exclude))
        return [delivery_from_row(r) for r in rows]

    async def read_due(
        self, now: datetime, limit: int = 100, exclude: Collection[str] = ()
    ) -> DueBatch:
        """Due deliveries with their events' JSON, and the disabled endpoints, in one trip."""
        db = self._db
        sql, params = self._due_query(
            "id, rule, action_index, action_type, event_id, exactly_once, target",
            now,
            limit,
            exclude,
        )

        def read() -> tuple[list[tuple[list[Any], str | None]], list[Any]]:
            due = _rows_with_text(
                db,
                "id, rule, action_index, action_type, event_id, exactly_once, target, n",
                "body",
                f"SELECT d.*, e.body, row_number() OVER (ORDER BY d.due_at, d.seq) AS n "
                f"FROM ({sql}) AS d LEFT JOIN events AS e ON e.id = d.event_id",
                params,
            )
            return due, db.execute("SELECT name, reason FROM endpoints").fetchall()

        try:
            due, disabled = await self._call(read)
        except sqlite3.Error as exc:
            raise StoreError(f"state store read failed: {exc}") from exc
        # the tuples are made here, on the loop: the store's thread only runs statements
        due.sort(key=lambda item: int(item[0][7]))
        return DueBatch(
            [
                DueDelivery(
                    id=row[0],
                    rule=row[1],
                    action_index=row[2],
                    action_type=row[3],
                    event_id=row[4],
                    exactly_once=bool(row[5]),
                    target=row[6],
                    event=body,
                )
                for row, body in due
            ],
            dict(disabled),
        )

    async def next_due_at(self) -> datetime | None:
        """When the next delivery is due."""
        rows = await self._fetch(
            f"SELECT next_attempt_at FROM deliveries WHERE {_ACTIVE} AND {_DUE} "
            "ORDER BY next_attempt_at, event_seq LIMIT 1"
        )
        return _dt(rows[0][0]) if rows else None

    async def start_attempt(self, delivery_id: str, now: datetime) -> int:
        """Mark ``sending`` and open attempt N (committed before the request)."""
        ts = now.timestamp()

        def work(db: sqlite3.Connection) -> int | None:
            row = db.execute(
                "UPDATE deliveries SET status = ?, attempts = attempts + 1, updated_at = ?, "
                "claimed_by = ? WHERE id = ? RETURNING attempts",
                (DeliveryStatus.SENDING, ts, self.instance, delivery_id),
            ).fetchone()
            if row is None:
                return None
            number = int(row[0])
            db.execute(
                "INSERT OR REPLACE INTO attempts (delivery_id, number, started_at) VALUES (?, ?, ?)",
                (delivery_id, number, ts),
            )
            return number

        number = await self._write(work)
        if number is None:
            raise StoreError(f"unknown delivery {delivery_id}")
        return number

    async def start_attempts(self, delivery_ids: Sequence[str], now: datetime) -> dict[str, int]:
        """Start every still-due delivery of ``delivery_ids`` in one transaction."""
        ts, instance = now.timestamp(), self.instance
        ids = list(dict.fromkeys(delivery_ids))
        if not ids:
            return {}

        def work(db: sqlite3.Connection) -> dict[str, int]:
            numbers: dict[str, int] = {}
            for first in range(0, len(ids), 500):
                chunk = ids[first : first + 500]
                marks = ",".join("?" * len(chunk))
                # still due: the rows to start, and the number their attempt gets
                due = _json_rows(
                    db,
                    "id, attempts",
                    # '+': look rows up by id, not through the due index (every due row)
                    f"SELECT id, attempts FROM deliveries WHERE id IN ({marks}) "
                    "AND +status IN (?, ?) AND +next_attempt_at <= ?",
                    (*chunk, DeliveryStatus.PENDING, DeliveryStatus.RETRY_SCHEDULED, ts),
                )
                if not due:
                    continue
                starting = [str(row[0]) for row in due]
                db.execute(
                    "UPDATE deliveries SET status = ?, attempts = attempts + 1, updated_at = ?, "
                    f"claimed_by = ? WHERE id IN ({','.join('?' * len(starting))})",
                    (DeliveryStatus.SENDING, ts, instance, *starting),
                )
                numbers.update((str(row[0]), int(row[1]) + 1) for row in due)
            started = list(numbers.items())
            for first in range(0, len(started), _ROWS):
                opened = started[first : first + _ROWS]
                db.execute(
                    "INSERT OR REPLACE INTO attempts (delivery_id, number, started_at) "
                    f"VALUES {_values(3, len(opened))}",
                    [value for id_, number in opened for value in (id_, number, ts)],
                )
            return numbers

        return await self._write(work)

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
        await self.finish_attempts(
            [
                AttemptEnd(
                    delivery_id,
                    number,
                    finished_at=now,
                    outcome=outcome,
                    status=status,
                    next_attempt_at=next_attempt_at,
                    status_code=status_code,
                    error=error,
                )
            ]
        )

    async def finish_attempts(self, ends: Sequence[AttemptEnd]) -> None:
        """Close several attempts and set their deliveries' status in one transaction."""
        if not ends:
            return

        # one statement per table and chunk, each row found by its primary key; the
        # rows are made here, on the loop: the store's thread only runs statements
        chunks = []
        for start in range(0, len(ends), _ROWS):
            chunk = ends[start : start + _ROWS]
            attempts: list[Any] = []
            deliveries: list[Any] = []
            for e in chunk:
                finished = e.finished_at.timestamp()
                attempts += (
                    e.delivery_id,
                    e.number,
                    finished,
                    e.outcome.value,
                    e.status_code,
                    e.error,
                )
                deliveries += (
                    e.delivery_id,
                    e.status.value,
                    _ts(e.next_attempt_at),
                    e.error,
                    e.status_code,
                    finished,
                )
            chunks.append((_values(6, len(chunk)), attempts, deliveries))

        def work(db: sqlite3.Connection) -> None:
            for marks, attempts, deliveries in chunks:
                db.execute(
                    "WITH v (delivery_id, number, finished_at, outcome, status_code, error) AS "
                    f"(VALUES {marks}) "
                    "UPDATE attempts SET finished_at = v.finished_at, outcome = v.outcome, "
                    "status_code = v.status_code, error = v.error FROM v "
                    "WHERE attempts.delivery_id = v.delivery_id AND attempts.number = v.number",
                    attempts,
                )
                db.execute(
                    "WITH v (id, status, next_attempt_at, last_error, last_status_code, "
                    f"updated_at) AS (VALUES {marks}) "
                    "UPDATE deliveries SET status = v.status, next_attempt_at = v.next_attempt_at, "
                    "last_error = v.last_error, last_status_code = v.last_status_code, "
                    "updated_at = v.updated_at FROM v WHERE deliveries.id = v.id",
                    deliveries,
                )

        await self._write(work)
        if any(e.status in DUE_STATUSES for e in ends):
            await self._wake(self.due_changed)

    async def recover_in_flight(
        self,
        now: datetime,
        *,
        instance: str | None = None,
        live: Collection[str] | None = None,
    ) -> tuple[int, int]:
        """``sending`` rows of a process that died: exactly-once -> uncertain, others
        -> due (see the protocol for which)."""
        ts = now.timestamp()
        whose = (instance, None if live is None else json.dumps(sorted(live)))

        def work(db: sqlite3.Connection) -> list[tuple[str, int]]:
            # one writer at a time: a row recovered here is no longer ``sending`` for
            # the next
            recovered: list[tuple[str, int]] = db.execute(
                "UPDATE deliveries SET status = CASE WHEN exactly_once THEN ?1 ELSE ?2 END, "
                "next_attempt_at = CASE WHEN exactly_once THEN next_attempt_at ELSE ?3 END, "
                f"last_error = ?4, updated_at = ?3, claimed_by = NULL WHERE {_ACTIVE} "
                "AND status = ?5 AND ((?6 IS NULL AND ?7 IS NULL) OR claimed_by = ?6 "
                "OR (?7 IS NOT NULL AND (claimed_by IS NULL "
                "OR claimed_by NOT IN (SELECT value FROM json_each(?7))))) "
                "RETURNING id, exactly_once",
                (
                    DeliveryStatus.UNCERTAIN,
                    DeliveryStatus.RETRY_SCHEDULED,
                    ts,
                    INTERRUPTED,
                    DeliveryStatus.SENDING,
                    *whose,
                ),
            ).fetchall()
            db.execute(
                "UPDATE attempts SET finished_at = ?, outcome = ?, error = ? "
                "WHERE finished_at IS NULL AND delivery_id IN (SELECT value FROM json_each(?))",
                (ts, Outcome.UNCERTAIN.value, INTERRUPTED, json.dumps([r[0] for r in recovered])),
            )
            return recovered

        recovered = await self._write(work)
        uncertain = sum(1 for _, once in recovered if once)
        if len(recovered) > uncertain:
            await self._wake(self.due_changed)
        return uncertain, len(recovered) - uncertain

    async def get_rendered(self, delivery_id: str) -> str | None:
        """What a dry-run delivery would have sent (JSON), if recorded."""
        rows = await self._fetch("SELECT rendered FROM deliveries WHERE id = ?", (delivery_id,))
        return rows[0][0] if rows else None


def delivery_chunks(
    deliveries: Sequence[NewDelivery], now: datetime, rendered: Mapping[str, str]
) -> list[tuple[str, list[Any]]]:
    """The rows of new deliveries for :func:`insert_deliveries`, as (placeholders,
    values) of up to ``_ROWS`` rows each, with each one's rendered summary if any."""
    ts = now.timestamp()
    chunks = []
    for start in range(0, len(deliveries), _ROWS):
        chunk = deliveries[start : start + _ROWS]
        values: list[Any] = []
        for d in chunk:
            id_ = d.id
            values += (
                id_,
                d.rule,
                d.action_index,
                d.action_type,
                d.event_id,
                d.event_seq,
                int(d.exactly_once),
                d.target,
                d.status.value,
                _ts(d.next_attempt_at) if d.next_attempt_at else ts,
                ts,
                ts,
                rendered.get(id_),
            )
        chunks.append((_values(13, len(chunk)), values))
    return chunks


def insert_deliveries(db: sqlite3.Connection, chunks: list[tuple[str, list[Any]]]) -> int:
    """Insert the rows of :func:`delivery_chunks` (in the caller's transaction); one whose
    id is there already stays as it is. How many were new."""
    before = db.total_changes
    for marks, values in chunks:
        db.execute(
            "INSERT OR IGNORE INTO deliveries (id, rule, action_index, action_type, "
            "event_id, event_seq, exactly_once, target, status, next_attempt_at, "
            f"created_at, updated_at, rendered) VALUES {marks}",
            values,
        )
    return db.total_changes - before
