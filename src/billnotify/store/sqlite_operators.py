"""Operator actions (:class:`~billnotify.store.base.OperatorLog`) on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime

from billnotify.store.records import OperatorAction
from billnotify.store.sqlite_base import SqliteBase, _dt


class OperatorTables(SqliteBase):
    """The ``operator_actions`` table: append only."""

    async def record_operator_action(self, action: OperatorAction) -> None:
        """Keep one operator action."""
        params = (
            action.at.timestamp(),
            action.who,
            action.action,
            action.subject,
            action.reason,
            action.result,
        )
        await self._write(
            lambda db: db.execute(
                "INSERT INTO operator_actions (at, who, action, subject, reason, result) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                params,
            )
        )

    async def operator_actions(
        self, subject: str | None = None, limit: int = 100
    ) -> list[OperatorAction]:
        """Operator actions, newest first (``subject``: only those done to it)."""
        rows = await self._fetch(
            "SELECT at, who, action, subject, reason, result FROM operator_actions "
            "WHERE ?1 IS NULL OR subject = ?1 ORDER BY at DESC, id DESC LIMIT ?2",
            (subject, limit),
        )
        return [
            OperatorAction(_dt(r[0]) or datetime.now(UTC), r[1], r[2], r[3], r[4], r[5])
            for r in rows
        ]
