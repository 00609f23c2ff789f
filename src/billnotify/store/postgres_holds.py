"""Deliveries held back without an attempt (mute windows, rate-limit turns), on
PostgreSQL.

A rate limit's turns are taken under a transaction-scoped advisory lock on its key, so
processes sharing the database take them one at a time and each sees the turns the
others took: the limit holds across all of them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from billnotify.deliveries.base import DeliveryStatus
from billnotify.deliveries.turns import WENT, horizon, plan_rows, stale_before
from billnotify.store.postgres_base import PgBase, affected

_TURN_LOCK = "billnotify-rate:"
"""Prefix of the advisory lock key of a rate limit (``hashtextextended`` of it)."""


_VIEW = (
    "SELECT id, at, holder FROM rate_turns WHERE key = $1 AND holder IN ($2, $3) "
    "UNION ALL SELECT id, at, holder FROM rate_turns WHERE key = $1 AND at <= $4 "
    "UNION ALL (SELECT id, at, holder FROM rate_turns WHERE key = $1 ORDER BY at DESC LIMIT $5)"
)
"""The rows a turn reads (:func:`~billnotify.deliveries.turns.plan_rows`): the holder's
own, those up to the horizon and the latest ``limit``, each by an index, however deep
the queue."""


class HoldTables(PgBase):
    """Deferring a due delivery; the ``rate_turns`` log of every rate limit."""

    async def defer_delivery(
        self, delivery_id: str, until: datetime, now: datetime, note: str
    ) -> bool:
        """Make a still-due delivery due at ``until``, without an attempt."""
        async with self._transaction() as conn:
            done = await conn.execute(
                "UPDATE deliveries SET next_attempt_at = $1, note = $2, updated_at = $3 "
                "WHERE id = $4 AND status = ANY($5) AND next_attempt_at <= $3",
                until,
                note,
                now,
                delivery_id,
                [DeliveryStatus.PENDING.value, DeliveryStatus.RETRY_SCHEDULED.value],
            )
        return affected(done) > 0

    async def take_turn(
        self, key: str, holder: str, now: datetime, limit: int, period: timedelta
    ) -> datetime | None:
        """``holder``'s turn under rate limit ``key``: None to go now, else when."""
        ts, seconds = now.timestamp(), period.total_seconds()
        async with self._transaction() as conn:
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _TURN_LOCK + key
            )
            await conn.execute(
                "DELETE FROM rate_turns WHERE key = $1 AND at <= $2",
                key,
                stale_before(ts, seconds),
            )
            rows = await conn.fetch(_VIEW, key, holder, WENT + holder, horizon(ts, seconds), limit)
            plan = plan_rows(
                [(row["id"], float(row["at"]), row["holder"]) for row in rows],
                holder,
                ts,
                limit,
                seconds,
            )
            who = WENT + holder if plan.go else holder
            if plan.write and plan.row is None:
                await conn.execute(
                    "INSERT INTO rate_turns (key, at, holder) VALUES ($1, $2, $3)",
                    key,
                    plan.at,
                    who,
                )
            elif plan.write:
                await conn.execute(
                    "UPDATE rate_turns SET at = $1, holder = $2 WHERE id = $3",
                    plan.at,
                    who,
                    plan.row,
                )
        return None if plan.go else datetime.fromtimestamp(plan.at, UTC)
