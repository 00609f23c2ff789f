"""Who does what when several processes share one store (SPEC §7.1).

Every stage that must run in one process at a time works under a named lease: a
source resource's poller under ``poll:{source}/{resource}``, the MQTT publisher under
``publish``, the rule handler under ``rules``, the reconciler under ``reconcile``. The
delivery worker takes none: every process runs one (claims skip rows another holds).

A :class:`LeaseKeeper` per process records its heartbeat and takes or renews the leases
of its stages every third of the TTL; each stage holds a :class:`Role` that says whether
its lease is held now, and :func:`run_while_held` runs the stage's work only then.

A lease is granted for two thirds of the TTL: a dead holder's lease lapses at most that
long after its last renewal, and a standby's next try comes at most a third later, so
the lease moves within the TTL. The holder renews every third, so one late renewal
costs nothing. A holder also stops on its own clock once its lease may have lapsed (a
paused process wakes up already stopped), and the store refuses a write fenced by an
epoch that is no longer the lease's (:class:`~billnotify.errors.FencedError`).

A single process on SQLite runs the same code: it takes every lease at start-up and
renews them every third of the TTL, never per event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from billnotify.errors import FencedError, StoreError
from billnotify.store.base import Leases
from billnotify.store.records import Lease, default_instance

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Monotonic = Callable[[], float]

DEFAULT_TTL = timedelta(seconds=15)
PUBLISH = "publish"
RULES = "rules"
RECONCILE = "reconcile"


def poll_lease(source: str, resource: str) -> str:
    """The lease name of one source resource's poller."""
    return f"poll:{source}/{resource}"


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


class Role:
    """One named lease as this process holds it (or waits for it).

    Attributes:
        name: the lease name.
        standby: another instance held the lease at the last try (before the first try,
            nobody knows yet).
    """

    def __init__(self, name: str, monotonic: Monotonic = time.monotonic) -> None:
        self.name = name
        self.standby = False
        self._monotonic = monotonic
        self._lease: Lease | None = None
        self._until = 0.0
        self._held = asyncio.Event()
        self._lost = asyncio.Event()
        self._lost.set()

    @property
    def lease(self) -> Lease | None:
        """The lease while it is held and cannot have lapsed yet, else None."""
        if self._lease is not None and self._monotonic() >= self._until:
            logger.warning("lease %s lapsed before it was renewed", self.name)
            self.lose()
        return self._lease

    def fence(self) -> Lease:
        """The lease to fence a write with.

        Raises:
            FencedError: the lease is not held (or may have lapsed).
        """
        lease = self.lease
        if lease is None:
            raise FencedError(f"lease {self.name!r} is not held by this instance")
        return lease

    async def wait_held(self) -> Lease:
        """Until the lease is held; returns it."""
        while (lease := self.lease) is None:
            await self._held.wait()
        return lease

    async def wait_lost(self) -> None:
        """Until the lease is no longer held (lost, lapsed or released)."""
        while self.lease is not None:
            delay = max(0.0, self._until - self._monotonic())
            try:
                async with asyncio.timeout(delay):
                    await self._lost.wait()
            except TimeoutError:
                continue

    def grant(self, lease: Lease, until: float) -> None:
        """Held until ``until`` (monotonic seconds), unless renewed."""
        if self._lease is None or self._lease.epoch != lease.epoch:
            logger.info("holding lease %s (epoch %d)", self.name, lease.epoch)
        self._lease, self._until, self.standby = lease, until, False
        self._lost.clear()
        self._held.set()

    def lose(self, *, standby: bool = False, released: bool = False) -> None:
        """Not held any more: another holder took it (``standby``: it holds it now), it
        lapsed, or this instance ``released`` it."""
        if self._lease is not None:
            level = logging.INFO if released else logging.WARNING
            verb = "released" if released else "lost"
            logger.log(level, "%s lease %s (epoch %d)", verb, self.name, self._lease.epoch)
        self._lease = None
        self.standby = standby
        self._held.clear()
        self._lost.set()


class LeaseKeeper:
    """This process's heartbeat and the leases of its stages.

    Args:
        store: where heartbeats and leases live.
        instance: this process's name (``[service] instance``).
        ttl: an instance without a heartbeat for this long is dead, and its leases
            move within it (``[service] lease_ttl``).
        info: what the instance says of itself in its heartbeat (``http``, ``pid``).
        clock: the wall clock (times written to the store).
        monotonic: the clock a lease's local expiry is measured on.
        sleep: awaited between two rounds.

    Attributes:
        live: the live instances' names, as of the last round.
        ready: set once a round has recorded this instance's heartbeat (before it,
            another process could take this one for dead).
    """

    def __init__(
        self,
        store: Leases,
        instance: str | None = None,
        *,
        ttl: timedelta = DEFAULT_TTL,
        info: Mapping[str, str] | None = None,
        clock: Clock = utcnow,
        monotonic: Monotonic = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.instance = instance or default_instance()
        self.ttl = ttl
        self.info = dict(info or {})
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._roles: dict[str, Role] = {}
        self.live: list[str] = [self.instance]
        self.ready = asyncio.Event()
        self._failing = False

    @property
    def interval(self) -> float:
        """Seconds between two rounds: a third of the TTL."""
        return self.ttl.total_seconds() / 3

    def role(self, name: str) -> Role:
        """The role named ``name`` (the keeper takes its lease from its next round on)."""
        if name not in self._roles:
            self._roles[name] = Role(name, self._monotonic)
        return self._roles[name]

    def held(self) -> list[Lease]:
        """The leases held now, by name (for ``/readyz``)."""
        return [lease for _, role in sorted(self._roles.items()) if (lease := role.lease)]

    async def run(self) -> None:
        """A round every :attr:`interval` until cancelled; then the leases are released."""
        try:
            while True:
                await self.keep()
                await self._sleep(self.interval)
        finally:
            await asyncio.shield(self.release())

    async def keep(self) -> None:
        """One round: the heartbeat, the live instances, each lease taken or renewed.

        A store that cannot be reached is logged once per episode; the leases then
        lapse on their own clock.
        """
        try:
            await self._round()
        except StoreError as exc:
            if not self._failing:
                self._failing = True
                logger.error("leases of %s: %s; retrying", self.instance, exc)
            return
        if self._failing:
            self._failing = False
            logger.info("leases of %s: the store answers again", self.instance)

    async def release(self) -> None:
        """Give up every lease held (a clean shutdown: the others take over at once)."""
        for role in self._roles.values():
            if role.lease is None:
                continue
            role.lose(released=True)
            try:
                await self.store.release(role.name, self.instance)
            except StoreError as exc:
                logger.warning("cannot release lease %s: %s", role.name, exc)

    async def _round(self) -> None:
        now = self._clock()
        await self.store.heartbeat(self.instance, now, self.info)
        self.ready.set()
        self.live = [i.name for i in await self.store.instances(now, self.ttl)]
        granted = self.ttl * 2 / 3
        for role in list(self._roles.values()):
            started = self._monotonic()
            lease = await self.store.acquire(role.name, self.instance, self._clock(), granted)
            if lease is None:
                role.lose(standby=True)
            else:
                role.grant(lease, started + granted.total_seconds())


async def run_while_held(role: Role | None, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``work`` while ``role``'s lease is held; stop it when the lease is lost, and
    start it again once the lease is back. With no role, just run it.

    ``work`` learns of a loss by cancellation, or notices it first itself (a write the
    store fences, :meth:`Role.fence`): either way it is started again only under a
    new lease.
    """
    if role is None:
        await work()
        return
    while True:
        await role.wait_held()
        task = asyncio.create_task(work(), name=f"under {role.name}")
        lost = asyncio.create_task(role.wait_lost(), name=f"watch {role.name}")
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (task, lost):
                pending.cancel()
            await asyncio.gather(task, lost, return_exceptions=True)
        if task.done() and not task.cancelled():
            error = task.exception()
            if isinstance(error, FencedError):
                logger.warning("%s; standing by", error)
                role.lose()
            elif error is not None:
                raise error
            elif role.lease is not None:
                return  # the work ended on its own
