"""Deliveries held back without an attempt (mute windows, rate-limit turns), on SQLite."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

from billnotify.deliveries.base import DeliveryStatus
from billnotify.deliveries.turns import WENT, horizon, plan_rows, stale_before
from billnotify.store.sqlite_base import SqliteBase, _dt, _ts

_VIEW = (
    "SELECT id, at, holder FROM rate_turns WHERE key = ? AND holder IN (?, ?) "
    "UNION ALL SELECT id, at, holder FROM rate_turns WHERE key = ? AND at <= ? "
    "UNION ALL SELECT * FROM "
    "(SELECT id, at, holder FROM rate_turns WHERE key = ? ORDER BY at DESC LIMIT ?)"
)
"""The rows a turn reads (:func:`~billnotify.deliveries.turns.plan_rows`): the holder's
own, those up to the horizon and the latest ``limit``, each by an index, however deep
the queue."""


class HoldTables(SqliteBase):
    """Deferring a due delivery; the ``rate_turns`` log of every rate limit."""

    async def defer_delivery(
        self, delivery_id: str, until: datetime, now: datetime, note: str
    ) -> bool:
        """Make a still-due delivery due at ``until``, without an attempt."""
        params = (
            _ts(until),
            note,
            now.timestamp(),
            delivery_id,
            DeliveryStatus.PENDING,
            DeliveryStatus.RETRY_SCHEDULED,
            now.timestamp(),
        )

        def work(db: sqlite3.Connection) -> bool:
            changed = db.execute(
                "UPDATE deliveries SET next_attempt_at = ?, note = ?, updated_at = ? "
                "WHERE id = ? AND status IN (?, ?) AND next_attempt_at <= ?",
                params,
            ).rowcount
            return changed > 0

        return await self._write(work)

    async def take_turn(
        self, key: str, holder: str, now: datetime, limit: int, period: timedelta
    ) -> datetime | None:
        """``holder``'s turn under rate limit ``key``: None to go now, else when."""
        ts, seconds = now.timestamp(), period.total_seconds()

        def work(db: sqlite3.Connection) -> float | None:
            # one writer at a time: the turns read here are every process's
            db.execute(
                "DELETE FROM rate_turns WHERE key = ? AND at <= ?", (key, stale_before(ts, seconds))
            )
            rows = db.execute(
                _VIEW, (key, holder, WENT + holder, key, horizon(ts, seconds), key, limit)
            ).fetchall()
            plan = plan_rows(rows, holder, ts, limit, seconds)
            if plan.write:
                who = WENT + holder if plan.go else holder
                if plan.row is None:
                    db.execute(
                        "INSERT INTO rate_turns (key, at, holder) VALUES (?, ?, ?)",
                        (key, plan.at, who),
                    )
                else:
                    db.execute(
                        "UPDATE rate_turns SET at = ?, holder = ? WHERE id = ?",
                        (plan.at, who, plan.row),
                    )
            return None if plan.go else plan.at

        at = await self._write(work)
        return _dt(at)
