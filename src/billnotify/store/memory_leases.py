"""Instances' heartbeats and leases, in memory."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from billnotify.store.memory_log import MemoryBase, _utc
from billnotify.store.records import RELEASED, Instance, Lease


class LeaseTables(MemoryBase):
    """Who is alive and who holds which lease."""

    def __init__(self, instance: str | None = None) -> None:
        super().__init__(instance)
        self._instances: dict[str, Instance] = {}

    async def heartbeat(
        self, instance: str, now: datetime, info: Mapping[str, str] | None = None
    ) -> None:
        """Record that ``instance`` is alive at ``now``."""
        self._live()
        now = _utc(now) or now
        seen = self._instances.get(instance)
        if seen is None:
            self._instances[instance] = Instance(instance, now, now, dict(info or {}))
        else:
            kept = seen.info if info is None else dict(info)
            self._instances[instance] = replace(seen, heartbeat_at=now, info=kept)

    async def instances(self, now: datetime, ttl: timedelta) -> list[Instance]:
        """The instances heard from within ``ttl``, by name."""
        self._live()
        alive = [i for i in self._instances.values() if i.heartbeat_at > now - ttl]
        return [replace(i, info=dict(i.info)) for i in sorted(alive, key=lambda i: i.name)]

    async def acquire(
        self, name: str, instance: str, now: datetime, ttl: timedelta
    ) -> Lease | None:
        """Take or renew lease ``name``; None while another instance holds it."""
        self._live()
        now = _utc(now) or now
        held = self._leases.get(name)
        if held is None:
            epoch = 1
        elif held.holder == instance:
            epoch = held.epoch
        elif held.expires_at <= now:
            epoch = held.epoch + 1
        else:
            return None
        lease = self._leases[name] = Lease(name, instance, epoch, now + ttl)
        return lease

    async def release(self, name: str, instance: str) -> None:
        """Let lease ``name`` lapse now if ``instance`` holds it."""
        self._live()
        held = self._leases.get(name)
        if held is not None and held.holder == instance:
            self._leases[name] = replace(held, expires_at=RELEASED)

    async def leases(self) -> list[Lease]:
        """Every lease, by name."""
        self._live()
        return [self._leases[name] for name in sorted(self._leases)]
