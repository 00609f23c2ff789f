"""Chained actions (:class:`~billnotify.store.base.Chains`), in memory."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from billnotify.deliveries.base import DeliveryStatus
from billnotify.store.memory_ledger import LedgerTables
from billnotify.store.memory_log import _utc
from billnotify.store.records import ChainMove, Delivery

_CHAINED = frozenset({DeliveryStatus.WAITING, DeliveryStatus.SKIPPED})


class ChainTables(LedgerTables):
    """The answers kept with deliveries, and the moves of chained deliveries (on the
    ledger's own rows)."""

    def __init__(self, instance: str | None = None) -> None:
        super().__init__(instance)
        self._results: dict[str, str] = {}

    async def keep_result(self, delivery_id: str, result: str, now: datetime) -> None:
        """Keep a delivery's answer (JSON), replacing an older one."""
        self._live()
        self._results[delivery_id] = result

    async def get_results(self, ids: Sequence[str]) -> dict[str, str]:
        """Delivery id -> the answer kept."""
        self._live()
        return {i: self._results[i] for i in ids if i in self._results}

    async def chained_deliveries(
        self, limit: int = 500, after: tuple[datetime, str] | None = None
    ) -> list[Delivery]:
        """Deliveries ``waiting`` or ``skipped``, oldest first (past ``after``)."""
        rows = [r for r in self._rows().values() if r.status in _CHAINED]
        if after is not None:
            cut = (_utc(after[0]) or after[0], after[1])
            rows = [r for r in rows if (r.created_at, r.id) > cut]
        rows.sort(key=lambda r: (r.created_at, r.id))
        return rows[:limit]

    async def move_chained(self, moves: Sequence[ChainMove], now: datetime) -> list[str]:
        """Apply the moves whose delivery is still in an expected status."""
        rows = self._rows()
        moved: list[str] = []
        for m in moves:
            row = rows.get(m.id)
            if row is None or row.status not in m.expect:
                continue
            pending = m.status is DeliveryStatus.PENDING
            self._update(
                row,
                status=m.status,
                note=m.note,
                updated_at=_utc(now),
                next_attempt_at=_utc(now) if pending else row.next_attempt_at,
            )
            moved.append(m.id)
        if any(rows[i].status is DeliveryStatus.PENDING for i in moved):
            await self._wake(self.due_changed)
        return moved
