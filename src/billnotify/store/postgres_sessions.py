"""The console's sessions (:class:`~billnotify.store.base.ConsoleSessions`) on PostgreSQL."""

from __future__ import annotations

from datetime import datetime

from billnotify.store.postgres_base import PgBase, affected
from billnotify.store.records import ConsoleSession

_COLS = "key, who, mark, created_at, seen_at, expires_at, flash"


class SessionTables(PgBase):
    """The ``console_sessions`` table, by key (the hash of the cookie): every process on
    the database accepts every session."""

    async def add_console_session(self, session: ConsoleSession) -> None:
        """Keep a new session (replacing one kept under the same key)."""
        async with self._transaction() as conn:
            await conn.execute(
                f"INSERT INTO console_sessions ({_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                "ON CONFLICT (key) DO UPDATE SET who = $2, mark = $3, created_at = $4, "
                "seen_at = $5, expires_at = $6, flash = $7",
                session.key,
                session.who,
                session.mark,
                session.created_at,
                session.seen_at,
                session.expires_at,
                session.flash,
            )

    async def get_console_session(self, key: str) -> ConsoleSession | None:
        """The session kept under ``key``."""
        rows = await self._fetch(f"SELECT {_COLS} FROM console_sessions WHERE key = $1", key)
        return ConsoleSession(*rows[0]) if rows else None

    async def touch_console_session(
        self, key: str, now: datetime, flash: str | None = None
    ) -> bool:
        """Mark a session seen at ``now`` (and set its flash); False when it is gone."""
        async with self._transaction() as conn:
            done: str = await conn.execute(
                "UPDATE console_sessions SET seen_at = $1, flash = coalesce($2, flash) "
                "WHERE key = $3",
                now,
                flash,
                key,
            )
        return affected(done) > 0

    async def drop_console_session(self, key: str) -> bool:
        """End a session; False when it was gone."""
        async with self._transaction() as conn:
            done: str = await conn.execute("DELETE FROM console_sessions WHERE key = $1", key)
        return affected(done) > 0

    async def prune_console_sessions(self, now: datetime, seen_before: datetime, keep: int) -> int:
        """Drop ended, idle and surplus sessions; returns how many went."""
        async with self._transaction() as conn:
            done: str = await conn.execute(
                "DELETE FROM console_sessions WHERE expires_at <= $1 OR seen_at < $2 "
                "OR key NOT IN (SELECT key FROM console_sessions "
                "ORDER BY seen_at DESC, created_at DESC LIMIT $3)",
                now,
                seen_before,
                max(0, keep),
            )
        return affected(done)
