"""Operator actions (:class:`~billnotify.store.base.OperatorLog`) on PostgreSQL."""

from __future__ import annotations

from billnotify.store.postgres_base import PgBase
from billnotify.store.records import OperatorAction


class OperatorTables(PgBase):
    """The ``operator_actions`` table: append only."""

    async def record_operator_action(self, action: OperatorAction) -> None:
        """Keep one operator action."""
        async with self._transaction() as conn:
            await conn.execute(
                "INSERT INTO operator_actions (at, who, action, subject, reason, result) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                action.at,
                action.who,
                action.action,
                action.subject,
                action.reason,
                action.result,
            )

    async def operator_actions(
        self, subject: str | None = None, limit: int = 100
    ) -> list[OperatorAction]:
        """Operator actions, newest first (``subject``: only those done to it)."""
        rows = await self._fetch(
            "SELECT at, who, action, subject, reason, result FROM operator_actions "
            "WHERE $1::text IS NULL OR subject = $1 ORDER BY at DESC, id DESC LIMIT $2",
            subject,
            limit,
        )
        return [OperatorAction(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]
