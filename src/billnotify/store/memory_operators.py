"""Operator actions (:class:`~billnotify.store.base.OperatorLog`), in memory."""

from __future__ import annotations

from billnotify.store.memory_log import MemoryBase, _utc
from billnotify.store.records import OperatorAction


class OperatorTables(MemoryBase):
    """What operators did by hand, in the order it was recorded."""

    def __init__(self, instance: str | None = None) -> None:
        super().__init__(instance)
        self._operator_actions: list[OperatorAction] = []

    async def record_operator_action(self, action: OperatorAction) -> None:
        """Keep one operator action."""
        self._live()
        at = _utc(action.at) or action.at
        self._operator_actions.append(
            OperatorAction(
                at, action.who, action.action, action.subject, action.reason, action.result
            )
        )

    async def operator_actions(
        self, subject: str | None = None, limit: int = 100
    ) -> list[OperatorAction]:
        """Operator actions, newest first (``subject``: only those done to it)."""
        self._live()
        kept = [a for a in self._operator_actions if subject is None or a.subject == subject]
        # newest first; of actions at the same instant, the one recorded last first
        ordered = sorted(enumerate(kept), key=lambda p: (p[1].at, p[0]), reverse=True)
        return [action for _, action in ordered[:limit]]
