"""The console's sessions (:class:`~billnotify.store.base.ConsoleSessions`) on SQLite."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

from billnotify.store.records import ConsoleSession
from billnotify.store.sqlite_base import SqliteBase, _dt

_COLS = "key, who, mark, created_at, seen_at, expires_at, flash"


def _session(row: tuple[Any, ...]) -> ConsoleSession:
    def at(value: float) -> datetime:
        return _dt(value) or datetime.now(UTC)

    return ConsoleSession(row[0], row[1], row[2], at(row[3]), at(row[4]), at(row[5]), row[6])


class SessionTables(SqliteBase):
    """The ``console_sessions`` table, by key (the hash of the cookie)."""

    async def add_console_session(self, session: ConsoleSession) -> None:
        """Keep a new session (replacing one kept under the same key)."""
        params = (
            session.key,
            session.who,
            session.mark,
            session.created_at.timestamp(),
            session.seen_at.timestamp(),
            session.expires_at.timestamp(),
            session.flash,
        )
        await self._write(
            lambda db: db.execute(
                f"INSERT OR REPLACE INTO console_sessions ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                params,
            )
        )

    async def get_console_session(self, key: str) -> ConsoleSession | None:
        """The session kept under ``key``."""
        rows = await self._fetch(f"SELECT {_COLS} FROM console_sessions WHERE key = ?", (key,))
        return _session(rows[0]) if rows else None

    async def touch_console_session(
        self, key: str, now: datetime, flash: str | None = None
    ) -> bool:
        """Mark a session seen at ``now`` (and set its flash); False when it is gone."""
        params = (now.timestamp(), flash, key)

        def work(db: sqlite3.Connection) -> bool:
            return (
                db.execute(
                    "UPDATE console_sessions SET seen_at = ?, flash = coalesce(?, flash) "
                    "WHERE key = ?",
                    params,
                ).rowcount
                > 0
            )

        return await self._write(work)

    async def drop_console_session(self, key: str) -> bool:
        """End a session; False when it was gone."""
        return await self._write(
            lambda db: db.execute("DELETE FROM console_sessions WHERE key = ?", (key,)).rowcount > 0
        )

    async def prune_console_sessions(self, now: datetime, seen_before: datetime, keep: int) -> int:
        """Drop ended, idle and surplus sessions; returns how many went."""
        params = (now.timestamp(), seen_before.timestamp(), max(0, keep))

        def work(db: sqlite3.Connection) -> int:
            return db.execute(
                "DELETE FROM console_sessions WHERE expires_at <= ?1 OR seen_at < ?2 "
                "OR key NOT IN (SELECT key FROM console_sessions "
                "ORDER BY seen_at DESC, created_at DESC LIMIT ?3)",
                params,
            ).rowcount

        return await self._write(work)
