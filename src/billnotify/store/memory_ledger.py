"""The delivery ledger and disabled endpoints, in memory."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.errors import StoreError
from billnotify.store.memory_log import MemoryBase, _utc
from billnotify.store.records import (
    DUE_STATUSES,
    INTERRUPTED,
    Attempt,
    AttemptEnd,
    Delivery,
    DueBatch,
    DueDelivery,
    NewDelivery,
    recoverable,
)

_UNSETTLED = frozenset(
    {DeliveryStatus.PENDING, DeliveryStatus.RETRY_SCHEDULED, DeliveryStatus.SENDING}
)
_DUE = DUE_STATUSES


@dataclass(slots=True)
class _Ledger:
    """Deliveries (in the order they were recorded), attempts, endpoints."""

    deliveries: dict[str, Delivery] = field(default_factory=dict)
    """Rows without their history."""
    rendered: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, dict[int, Attempt]] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)
    claimed: dict[str, str] = field(default_factory=dict)
    """Delivery id -> the instance that started its latest attempt."""


class LedgerTables(MemoryBase):
    """The delivery ledger as every stage drives and reads it; disabled endpoints."""

    def __init__(self, instance: str | None = None) -> None:
        super().__init__(instance)
        self._ledger = _Ledger()

    def _rows(self) -> dict[str, Delivery]:
        self._live()
        return self._ledger.deliveries

    def _update(self, row: Delivery, **changes: Any) -> None:
        self._ledger.deliveries[row.id] = replace(row, **changes)

    # -- the ledger as the rule handler and the worker drive it ----------------------
    async def record_deliveries(
        self,
        deliveries: Sequence[NewDelivery],
        consumer: str,
        position: int,
        now: datetime,
        rendered: Mapping[str, str] | None = None,
    ) -> int:
        """Insert new deliveries and advance ``consumer`` at once."""
        inserted = self._insert(deliveries, now, rendered or {})
        self._log.positions[consumer] = position
        if inserted:
            await self._wake(self.due_changed)
        return inserted

    def _insert(
        self, deliveries: Sequence[NewDelivery], now: datetime, rendered: Mapping[str, str]
    ) -> int:
        """Insert new deliveries, each with its rendered summary if any; one whose id is
        there already stays as it is. How many were new."""
        rows, now = self._rows(), _utc(now) or now
        inserted = 0
        for d in deliveries:
            if d.id in rows:
                continue
            rows[d.id] = Delivery(
                id=d.id,
                rule=d.rule,
                action_index=d.action_index,
                action_type=d.action_type,
                event_id=d.event_id,
                event_seq=d.event_seq,
                exactly_once=d.exactly_once,
                target=d.target,
                status=d.status,
                attempts=0,
                created_at=now,
                updated_at=now,
                next_attempt_at=_utc(d.next_attempt_at) or now,
            )
            if d.id in rendered:
                self._ledger.rendered[d.id] = rendered[d.id]
            inserted += 1
        return inserted

    async def get_rendered(self, delivery_id: str) -> str | None:
        """What a dry-run delivery would have sent (JSON), if recorded."""
        self._live()
        return self._ledger.rendered.get(delivery_id)

    async def due_deliveries(
        self, now: datetime, limit: int = 100, exclude: Collection[str] = ()
    ) -> list[Delivery]:
        """Deliveries whose next attempt is due, except those in ``exclude``."""
        skip = set(exclude)
        due = [
            row
            for row in self._rows().values()
            if row.status in _DUE
            and row.next_attempt_at is not None
            and row.next_attempt_at <= now
            and row.id not in skip
        ]
        due.sort(key=lambda row: (row.next_attempt_at, row.event_seq))
        return due[:limit]

    async def read_due(
        self, now: datetime, limit: int = 100, exclude: Collection[str] = ()
    ) -> DueBatch:
        """Due deliveries with their events' JSON, and the disabled endpoints."""
        bodies = self._log.bodies
        return DueBatch(
            [
                DueDelivery(
                    id=row.id,
                    rule=row.rule,
                    action_index=row.action_index,
                    action_type=row.action_type,
                    event_id=row.event_id,
                    exactly_once=row.exactly_once,
                    target=row.target,
                    event=bodies.get(row.event_id),
                )
                for row in await self.due_deliveries(now, limit, exclude)
            ],
            dict(self._ledger.endpoints),
        )

    async def next_due_at(self) -> datetime | None:
        """When the next delivery is due."""
        due = [
            (row.next_attempt_at, row.event_seq)
            for row in self._rows().values()
            if row.status in _DUE and row.next_attempt_at is not None
        ]
        return min(due)[0] if due else None

    async def start_attempt(self, delivery_id: str, now: datetime) -> int:
        """Mark ``sending`` and open attempt N."""
        row = self._rows().get(delivery_id)
        if row is None:
            raise StoreError(f"unknown delivery {delivery_id}")
        return self._start(row, _utc(now) or now)

    def _start(self, row: Delivery, now: datetime) -> int:
        number = row.attempts + 1
        self._update(row, status=DeliveryStatus.SENDING, attempts=number, updated_at=now)
        self._ledger.claimed[row.id] = self.instance
        opened = Attempt(delivery_id=row.id, number=number, started_at=now)
        self._ledger.attempts.setdefault(row.id, {})[number] = opened
        return number

    async def start_attempts(self, delivery_ids: Sequence[str], now: datetime) -> dict[str, int]:
        """Start every still-due delivery of ``delivery_ids`` at once."""
        rows, now = self._rows(), _utc(now) or now
        numbers: dict[str, int] = {}
        for id_ in dict.fromkeys(delivery_ids):
            row = rows.get(id_)
            if (
                row is not None
                and row.status in _DUE
                and row.next_attempt_at is not None
                and row.next_attempt_at <= now
            ):
                numbers[id_] = self._start(row, now)
        return numbers

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
        """Close several attempts and set their deliveries' status at once."""
        rows = self._rows()
        for e in ends:
            finished = _utc(e.finished_at)
            opened = self._ledger.attempts.get(e.delivery_id, {})
            if e.number in opened:
                opened[e.number] = replace(
                    opened[e.number],
                    finished_at=finished,
                    outcome=e.outcome,
                    status_code=e.status_code,
                    error=e.error,
                )
            row = rows.get(e.delivery_id)
            if row is not None:
                self._update(
                    row,
                    status=e.status,
                    next_attempt_at=_utc(e.next_attempt_at),
                    last_error=e.error,
                    last_status_code=e.status_code,
                    updated_at=finished,
                )
        if any(e.status in _DUE for e in ends):
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
        rows, now = self._rows(), _utc(now) or now
        claimed = self._ledger.claimed
        uncertain = rescheduled = 0
        for row in list(rows.values()):
            if row.status is not DeliveryStatus.SENDING or not recoverable(
                claimed.get(row.id), instance, live
            ):
                continue
            if row.exactly_once:
                status, due, uncertain = (
                    DeliveryStatus.UNCERTAIN,
                    row.next_attempt_at,
                    uncertain + 1,
                )
            else:
                status, due, rescheduled = DeliveryStatus.RETRY_SCHEDULED, now, rescheduled + 1
            self._update(
                row, status=status, next_attempt_at=due, last_error=INTERRUPTED, updated_at=now
            )
            claimed.pop(row.id, None)
            opened = self._ledger.attempts.get(row.id, {})
            for number, attempt in opened.items():
                if attempt.finished_at is None:
                    opened[number] = replace(
                        attempt, finished_at=now, outcome=Outcome.UNCERTAIN, error=INTERRUPTED
                    )
        if rescheduled:
            await self._wake(self.due_changed)
        return uncertain, rescheduled

    # -- the ledger as operators, metrics and reconciliation read it -----------------
    async def list_deliveries(
        self, statuses: Sequence[DeliveryStatus] | None = None, limit: int = 1000
    ) -> list[Delivery]:
        """Ledger rows, newest first."""
        rows = [r for r in self._rows().values() if not statuses or r.status in statuses]
        rows.sort(key=lambda r: (r.created_at, r.event_seq), reverse=True)
        return rows[:limit]

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """One delivery with its attempts."""
        row = self._rows().get(delivery_id)
        if row is None:
            return None
        history = sorted(self._ledger.attempts.get(delivery_id, {}).items())
        return replace(row, history=[attempt for _, attempt in history])

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
        row = self._rows().get(delivery_id)
        if row is None:
            return False
        self._update(
            row,
            status=status,
            next_attempt_at=_utc(next_attempt_at),
            note=note,
            updated_at=_utc(now),
            last_error=error if error is not None else row.last_error,
        )
        if status in _DUE:
            await self._wake(self.due_changed)
        return True

    async def count_deliveries(self) -> dict[tuple[str, str], int]:
        """(action_type, status) -> count."""
        counts: dict[tuple[str, str], int] = {}
        for row in self._rows().values():
            key = (row.action_type, row.status.value)
            counts[key] = counts.get(key, 0) + 1
        return counts

    async def oldest_pending_at(self) -> datetime | None:
        """Creation time of the oldest delivery not yet settled."""
        times = [r.created_at for r in self._rows().values() if r.status in _UNSETTLED]
        return min(times) if times else None

    async def get_deliveries(self, ids: Sequence[str]) -> list[Delivery]:
        """Deliveries by id, without their attempt history (unknown ids are absent)."""
        rows = self._rows()
        return [rows[id_] for id_ in dict.fromkeys(ids) if id_ in rows]

    async def settled_since(
        self, statuses: Sequence[DeliveryStatus], since: datetime, limit: int = 10_000
    ) -> list[Delivery]:
        """Deliveries in ``statuses`` whose row changed at or after ``since``, oldest first."""
        rows = [r for r in self._rows().values() if r.status in statuses and r.updated_at >= since]
        rows.sort(key=lambda r: r.updated_at)
        return rows[:limit]

    # -- endpoints -------------------------------------------------------------------
    async def disable_endpoint(self, name: str, reason: str, now: datetime) -> None:
        """Mark a webhook endpoint disabled."""
        self._live()
        self._ledger.endpoints[name] = reason

    async def disabled_endpoints(self) -> dict[str, str]:
        """Disabled endpoints and why."""
        self._live()
        return dict(self._ledger.endpoints)

    async def enable_endpoint(self, name: str) -> None:
        """Re-enable a disabled endpoint."""
        self._live()
        self._ledger.endpoints.pop(name, None)
