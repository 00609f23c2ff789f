"""Deliveries held back without an attempt (mute windows, rate-limit turns), in memory."""

from __future__ import annotations

import bisect
from datetime import UTC, datetime, timedelta

from billnotify.deliveries.turns import WENT, horizon, plan_rows, stale_before
from billnotify.store.memory_ledger import LedgerTables
from billnotify.store.memory_log import _utc
from billnotify.store.records import DUE_STATUSES

_Row = tuple[int, float, str | None]
"""(row id, at, holder), as :func:`~billnotify.deliveries.turns.plan_rows` reads them."""


class _Turns:
    """One rate limit's turns, in the order of their times and by holder, so a turn reads
    only the rows it needs (a bisect), however many deliveries wait."""

    def __init__(self) -> None:
        self.order: list[tuple[float, int]] = []
        self.rows: dict[int, _Row] = {}
        self.by_holder: dict[str, set[int]] = {}
        self.next_id = 0

    def prune(self, before: float) -> None:
        end = bisect.bisect_right(self.order, (before, float("inf")))
        for _, row_id in self.order[:end]:
            self._unindex(row_id)
        del self.order[:end]

    def view(self, holder: str, high: float, limit: int) -> list[_Row]:
        ids = {*self.by_holder.get(holder, ()), *self.by_holder.get(WENT + holder, ())}
        ids.update(
            i for _, i in self.order[: bisect.bisect_right(self.order, (high, float("inf")))]
        )
        ids.update(i for _, i in self.order[-limit:])
        return sorted((self.rows[i] for i in ids), key=lambda row: row[1])

    def put(self, row_id: int | None, at: float, holder: str) -> None:
        if row_id is None:
            row_id, self.next_id = self.next_id, self.next_id + 1
        else:
            old = self.rows[row_id]
            del self.order[bisect.bisect_left(self.order, (old[1], row_id))]
            self._unindex(row_id)
        self.rows[row_id] = (row_id, at, holder)
        self.by_holder.setdefault(holder, set()).add(row_id)
        bisect.insort(self.order, (at, row_id))

    def _unindex(self, row_id: int) -> None:
        _, _, holder = self.rows.pop(row_id)
        if holder is not None:
            ids = self.by_holder[holder]
            ids.discard(row_id)
            if not ids:
                del self.by_holder[holder]


class HoldTables(LedgerTables):
    """Deferring a due delivery; each rate limit's turns."""

    def __init__(self, instance: str | None = None) -> None:
        super().__init__(instance)
        self._turns: dict[str, _Turns] = {}

    async def defer_delivery(
        self, delivery_id: str, until: datetime, now: datetime, note: str
    ) -> bool:
        """Make a still-due delivery due at ``until``, without an attempt."""
        row = self._rows().get(delivery_id)
        due_at = row.next_attempt_at if row is not None else None
        if row is None or row.status not in DUE_STATUSES or due_at is None or due_at > now:
            return False
        self._update(row, next_attempt_at=_utc(until), note=note, updated_at=_utc(now))
        return True

    async def take_turn(
        self, key: str, holder: str, now: datetime, limit: int, period: timedelta
    ) -> datetime | None:
        """``holder``'s turn under rate limit ``key``: None to go now, else when."""
        self._live()
        ts, seconds = now.timestamp(), period.total_seconds()
        turns = self._turns.setdefault(key, _Turns())
        turns.prune(stale_before(ts, seconds))
        rows = turns.view(holder, horizon(ts, seconds), limit)
        plan = plan_rows(rows, holder, ts, limit, seconds)
        if plan.write:
            row = plan.row if isinstance(plan.row, int) else None
            turns.put(row, plan.at, WENT + holder if plan.go else holder)
        return None if plan.go else datetime.fromtimestamp(plan.at, UTC)
