"""Instances' heartbeats and leases, on PostgreSQL: several processes on one database.

:meth:`LeaseTables.acquire` is one statement: an upsert that takes the lease only when
it is free, lapsed or the caller's own, with PostgreSQL's row lock deciding between
instances acquiring at once. Writes fenced by a lease lock its row ``FOR SHARE``
(``postgres_base.py``), so a lease cannot move while such a write is in its transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from billnotify.store.postgres_base import PgBase
from billnotify.store.records import RELEASED, Instance, Lease

_LEASE_COLS = "name, holder, epoch, expires_at"


def _lease(row: Sequence[Any]) -> Lease:
    return Lease(row[0], row[1], int(row[2]), row[3])


class LeaseTables(PgBase):
    """Who is alive and who holds which lease."""

    async def heartbeat(
        self, instance: str, now: datetime, info: Mapping[str, str] | None = None
    ) -> None:
        """Record that ``instance`` is alive at ``now``."""
        async with self._transaction() as conn:
            await conn.execute(
                "INSERT INTO instances (name, started_at, heartbeat_at, info) "
                "VALUES ($1, $2, $2, coalesce($3::jsonb, '{}')) ON CONFLICT (name) DO UPDATE "
                "SET heartbeat_at = excluded.heartbeat_at, "
                "info = coalesce($3::jsonb, instances.info)",
                instance,
                now,
                None if info is None else json.dumps(dict(info)),
            )

    async def instances(self, now: datetime, ttl: timedelta) -> list[Instance]:
        """The instances heard from within ``ttl``, by name."""
        rows = await self._fetch(
            "SELECT name, started_at, heartbeat_at, info::text FROM instances "
            "WHERE heartbeat_at > $1 ORDER BY name",
            now - ttl,
        )
        return [Instance(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    async def acquire(
        self, name: str, instance: str, now: datetime, ttl: timedelta
    ) -> Lease | None:
        """Take or renew lease ``name``; None while another instance holds it."""
        async with self._transaction() as conn:
            row = await conn.fetchrow(
                "INSERT INTO leases (name, holder, epoch, expires_at) VALUES ($1, $2, 1, $3) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "epoch = leases.epoch + CASE WHEN leases.holder = excluded.holder "
                "THEN 0 ELSE 1 END, expires_at = excluded.expires_at "
                "WHERE leases.holder = excluded.holder OR leases.expires_at <= $4 "
                f"RETURNING {_LEASE_COLS}",
                name,
                instance,
                now + ttl,
                now,
            )
        return None if row is None else _lease(row)

    async def release(self, name: str, instance: str) -> None:
        """Let lease ``name`` lapse now if ``instance`` holds it."""
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE leases SET expires_at = $3 WHERE name = $1 AND holder = $2",
                name,
                instance,
                RELEASED,
            )

    async def leases(self) -> list[Lease]:
        """Every lease, by name."""
        rows = await self._fetch(f"SELECT {_LEASE_COLS} FROM leases ORDER BY name")
        return [_lease(r) for r in rows]
