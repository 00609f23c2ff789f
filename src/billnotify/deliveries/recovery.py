"""Resolving the ``sending`` rows of a process that died (SPEC §4.1, §7.1).

A delivery is committed ``sending`` before its request goes out, naming the instance
that started it. When that process dies the row stays ``sending``; recovery makes it
``uncertain`` (exactly-once: never sent twice) or due again (at-least-once):

- at start-up, the rows of this instance's previous life and of every dead instance
  (:meth:`Recovery.at_start`);
- then, every TTL, the rows of instances that died since (:meth:`Recovery.sweep`), so
  that the survivors resolve a dead process's work without waiting for its restart.

The store recovers each row once, even when several processes sweep at once. An
instance counts as live while its heartbeat is younger than the TTL; a process records
its first heartbeat (:attr:`~billnotify.leases.LeaseKeeper.ready`) before it starts any
attempt, so no other process takes its rows for a dead one's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Protocol

from billnotify.errors import StoreError
from billnotify.leases import LeaseKeeper
from billnotify.notices import Notices
from billnotify.store.base import Leases, Ledger

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class RecoveryStore(Ledger, Leases, Protocol):
    """What recovery needs of the store: the ledger, and who is alive."""


class Recovery:
    """Recovers interrupted deliveries, at start-up and (with several processes) on.

    Args:
        store: the state store.
        clock: returns the current UTC time.
        keeper: this process's leases and heartbeat (None: the only process on the
            store, every ``sending`` row is its own previous life's).
        exclusive: this process holds the store alone (a SQLite state under its lock),
            so at start every ``sending`` row is a dead process's, however recent its
            heartbeat: recover them all at once instead of after the TTL.
        notices: told of the deliveries recovery made uncertain.
        on_due: called when recovery made deliveries due again.
    """

    def __init__(
        self,
        store: RecoveryStore,
        clock: Clock,
        *,
        keeper: LeaseKeeper | None = None,
        notices: Notices | None = None,
        on_due: Callable[[], None] = lambda: None,
        exclusive: bool = False,
    ) -> None:
        self.exclusive = exclusive
        self.store = store
        self.clock = clock
        self.keeper = keeper
        self.notices = notices
        self.on_due = on_due

    async def at_start(self) -> tuple[int, int]:
        """Recover this instance's previous life's rows and the dead instances'.

        Returns:
            (uncertain, rescheduled).
        """
        if self.keeper is None or self.exclusive:
            found = await self.store.recover_in_flight(self.clock())
        else:
            await self.keeper.ready.wait()
            live = await self._live()
            found = await self.store.recover_in_flight(
                self.clock(), instance=self.keeper.instance, live=live
            )
        # the notices of what recovery just made uncertain, and any a crash kept back
        await self._report(found, notify=True)
        return found

    async def sweep(self) -> tuple[int, int]:
        """Recover the rows of instances that died since (never this one's)."""
        if self.keeper is None:
            return (0, 0)
        live = await self._live()
        found = await self.store.recover_in_flight(self.clock(), live=live)
        await self._report(found, notify=any(found))
        return found

    async def sweep_forever(self, sleep: Callable[[float], Awaitable[None]]) -> None:
        """:meth:`sweep` every TTL until cancelled (a failing store is retried then)."""
        if self.keeper is None:
            return
        while True:
            await sleep(self.keeper.ttl.total_seconds())
            try:
                await self.sweep()
            except StoreError as exc:
                logger.warning("recovering dead instances' deliveries failed: %s", exc)

    async def _live(self) -> list[str]:
        assert self.keeper is not None
        instances = await self.store.instances(self.clock(), self.keeper.ttl)
        return [instance.name for instance in instances]

    async def _report(self, found: tuple[int, int], *, notify: bool) -> None:
        if any(found):
            logger.warning("recovered interrupted deliveries: %d uncertain, %d due again", *found)
        if found[1]:
            self.on_due()
        if notify and self.notices is not None:
            try:
                await self.notices.sweep()
            except StoreError as exc:
                logger.error("cannot emit the notices of settled deliveries: %s", exc)
