"""Deliveries held back without an attempt (mute windows, rate-limit turns), in memory."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from billnotify.deliveries.turns import WENT, plan_rows
from billnotify.store.memory_ledger import LedgerTables
from billnotify.store.memory_log import _utc
from billnotify.store.records import DUE_STATUSES


@dataclass(slots=True)
class _Turn:
    at: float
    holder: str | None


class HoldTables(LedgerTables):
    """Deferring a due delivery; each rate limit's turns."""

    def __init__(self, instance: str | None = None) -> None:
        super().__init__(instance)
        self._turns: dict[str, list[_Turn]] = {}

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
        turns = [t for t in self._turns.get(key, []) if t.at > ts - 2 * seconds]
        turns.sort(key=lambda t: t.at)
        plan = plan_rows([(id(t), t.at, t.holder) for t in turns], holder, ts, limit, seconds)
        if plan.write:
            who = WENT + holder if plan.go else holder
            mine = next((t for t in turns if id(t) == plan.row), None)
            if mine is None:
                turns.append(_Turn(plan.at, who))
            else:
                mine.at, mine.holder = plan.at, who
        self._turns[key] = turns
        return None if plan.go else datetime.fromtimestamp(plan.at, UTC)
