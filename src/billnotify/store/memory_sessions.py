"""The console's sessions (:class:`~billnotify.store.base.ConsoleSessions`), in memory."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from billnotify.store.memory_log import MemoryBase, _utc
from billnotify.store.records import ConsoleSession


class SessionTables(MemoryBase):
    """Console sessions by key (the hash of the cookie)."""

    def __init__(self, instance: str | None = None) -> None:
        super().__init__(instance)
        self._console_sessions: dict[str, ConsoleSession] = {}

    async def add_console_session(self, session: ConsoleSession) -> None:
        """Keep a new session (replacing one kept under the same key)."""
        self._live()
        self._console_sessions[session.key] = replace(
            session,
            created_at=_utc(session.created_at) or session.created_at,
            seen_at=_utc(session.seen_at) or session.seen_at,
            expires_at=_utc(session.expires_at) or session.expires_at,
        )

    async def get_console_session(self, key: str) -> ConsoleSession | None:
        """The session kept under ``key``."""
        self._live()
        return self._console_sessions.get(key)

    async def touch_console_session(
        self, key: str, now: datetime, flash: str | None = None
    ) -> bool:
        """Mark a session seen at ``now`` (and set its flash); False when it is gone."""
        self._live()
        kept = self._console_sessions.get(key)
        if kept is None:
            return False
        seen = _utc(now) or now
        self._console_sessions[key] = replace(
            kept, seen_at=seen, flash=kept.flash if flash is None else flash
        )
        return True

    async def drop_console_session(self, key: str) -> bool:
        """End a session; False when it was gone."""
        self._live()
        return self._console_sessions.pop(key, None) is not None

    async def prune_console_sessions(self, now: datetime, seen_before: datetime, keep: int) -> int:
        """Drop ended, idle and surplus sessions; returns how many went."""
        self._live()
        live = sorted(
            (
                s
                for s in self._console_sessions.values()
                if s.expires_at > now and s.seen_at >= seen_before
            ),
            key=lambda s: (s.seen_at, s.created_at),
            reverse=True,
        )[: max(0, keep)]
        before = len(self._console_sessions)
        self._console_sessions = {s.key: s for s in live}
        return before - len(self._console_sessions)
