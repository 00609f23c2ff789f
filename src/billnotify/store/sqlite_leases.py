"""Instances' heartbeats and leases, on SQLite.

One process uses a SQLite state (``store/lock.py`` keeps others out), so these tables
hold that process's leases; the rules are PostgreSQL's all the same, so the stages run
one code path whatever the backend. Each call is one transaction, and so atomic.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from datetime import datetime, timedelta

from billnotify.store.records import RELEASED, Instance, Lease
from billnotify.store.sqlite_base import SqliteBase, _dt


def _lease(row: tuple[str, str, int, float]) -> Lease:
    name, holder, epoch, expires_at = row
    return Lease(name, holder, int(epoch), _dt(expires_at) or RELEASED)


class LeaseTables(SqliteBase):
    """Who is alive and who holds which lease."""

    async def heartbeat(
        self, instance: str, now: datetime, info: Mapping[str, str] | None = None
    ) -> None:
        """Record that ``instance`` is alive at ``now``."""
        params = (instance, now.timestamp(), None if info is None else json.dumps(dict(info)))
        await self._write(
            lambda db: db.execute(
                "INSERT INTO instances (name, started_at, heartbeat_at, info) "
                "VALUES (?1, ?2, ?2, coalesce(?3, '{}')) ON CONFLICT (name) DO UPDATE SET "
                "heartbeat_at = excluded.heartbeat_at, info = coalesce(?3, instances.info)",
                params,
            )
        )

    async def instances(self, now: datetime, ttl: timedelta) -> list[Instance]:
        """The instances heard from within ``ttl``, by name."""
        rows = await self._fetch(
            "SELECT name, started_at, heartbeat_at, info FROM instances "
            "WHERE heartbeat_at > ? ORDER BY name",
            ((now - ttl).timestamp(),),
        )
        return [
            Instance(name, _dt(started) or now, _dt(beat) or now, json.loads(info))
            for name, started, beat, info in rows
        ]

    async def acquire(
        self, name: str, instance: str, now: datetime, ttl: timedelta
    ) -> Lease | None:
        """Take or renew lease ``name``; None while another instance holds it."""
        params = (name, instance, (now + ttl).timestamp(), now.timestamp())

        def work(db: sqlite3.Connection) -> tuple[str, str, int, float] | None:
            # taken when free, lapsed or its own; the epoch moves only with the holder
            row: tuple[str, str, int, float] | None = db.execute(
                "INSERT INTO leases (name, holder, epoch, expires_at) VALUES (?1, ?2, 1, ?3) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "epoch = leases.epoch + (leases.holder <> excluded.holder), "
                "expires_at = excluded.expires_at "
                "WHERE leases.holder = excluded.holder OR leases.expires_at <= ?4 "
                "RETURNING name, holder, epoch, expires_at",
                params,
            ).fetchone()
            return row

        row = await self._write(work)
        return None if row is None else _lease(row)

    async def release(self, name: str, instance: str) -> None:
        """Let lease ``name`` lapse now if ``instance`` holds it."""
        params = (RELEASED.timestamp(), name, instance)
        await self._write(
            lambda db: db.execute(
                "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ?", params
            )
        )

    async def leases(self) -> list[Lease]:
        """Every lease, by name."""
        rows = await self._fetch("SELECT name, holder, epoch, expires_at FROM leases ORDER BY name")
        return [_lease(row) for row in rows]
