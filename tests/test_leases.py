"""Several instances on one store (SPEC §7.1), as leases decide who does what: one
store in memory, two :class:`LeaseKeeper`s, the simulator over real HTTP.

- only the holder of a resource's lease polls it;
- a holder that stops renewing (killed, or paused) loses the lease to the other
  within the TTL, and the other polls at once;
- a paused ex-holder that wakes up writes nothing: the store refuses a commit fenced
  by an epoch that is no longer the lease's, and nothing stale lands;
- a clean shutdown releases the leases, so the other takes over at its next round.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest

from billnotify.clients.billing_platform import BillingPlatformClient
from billnotify.config.models import BillingPlatformSource
from billnotify.errors import FencedError
from billnotify.leases import PUBLISH, LeaseKeeper, Role, poll_lease, run_while_held
from billnotify.simulator import Simulator
from billnotify.sources import Poller, build_billing_syncs
from billnotify.sources.base import FencedSnapshots, ResourceSync
from billnotify.store.memory import MemoryStore
from servers import sim_source

TTL = timedelta(seconds=0.9)
LEASE = poll_lease("acme", "billing_tasks")


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for ``condition`` with a deadline."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


class Process:
    """One instance's keeper and poller, as tasks; :meth:`kill` stops renewing without
    releasing (a SIGKILL or SIGSTOP as the others see it)."""

    def __init__(self, name: str, store: MemoryStore, sim: Simulator) -> None:
        self.dead = asyncio.Event()
        self.keeper = LeaseKeeper(store, name, ttl=TTL, sleep=self._sleep)
        self.role = self.keeper.role(LEASE)
        config = BillingPlatformSource.model_validate(sim_source(sim, overlap="2s"))
        self.client = BillingPlatformClient(config.base_url, config.api_key, page_size=100)
        fenced = FencedSnapshots(store, self.role)
        self.sync: ResourceSync = build_billing_syncs(config, self.client, fenced)[0]
        self.poller = Poller(self.sync, timedelta(seconds=0.05), role=self.role)
        self.tasks: list[asyncio.Task[None]] = []

    async def _sleep(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.dead.is_set():
            await asyncio.Event().wait()  # never renews again, never releases

    def start(self, *, poll: bool = True) -> None:
        self.tasks.append(asyncio.create_task(self.keeper.run()))
        if poll:
            self.tasks.append(asyncio.create_task(self.poller.run()))

    async def kill(self) -> None:
        """Stop polling and renewing; the leases stay as they were in the store."""
        self.dead.set()
        self.tasks[-1].cancel()  # the poller; the keeper hangs in its sleep
        await asyncio.gather(self.tasks[-1], return_exceptions=True)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.close()


@dataclass
class Pair:
    store: MemoryStore
    a: Process
    b: Process

    def holder(self) -> tuple[Process, Process]:
        """(holder, standby)."""
        if self.a.role.lease is not None:
            return self.a, self.b
        return self.b, self.a


@pytest.fixture
async def pair(sim: Simulator) -> AsyncIterator[Pair]:
    store = MemoryStore()
    await store.open()
    pair = Pair(store, Process("a", store, sim), Process("b", store, sim))
    yield pair
    await pair.a.stop()
    await pair.b.stop()
    await store.close()


async def test_only_the_lease_holder_polls(sim: Simulator, pair: Pair) -> None:
    sim.state.add_billing_task(status="Pending")
    pair.a.start()
    pair.b.start()
    await until(lambda: pair.a.poller.polls + pair.b.poller.polls >= 10)
    holder, standby = pair.holder()
    assert standby.poller.polls == 0 and standby.poller.standby
    assert standby.poller.healthy()  # a standby is not a failing source
    assert [lease.holder for lease in await pair.store.leases()] == [holder.keeper.instance]
    assert [lease.name for lease in holder.keeper.held()] == [LEASE]
    assert standby.keeper.held() == []
    assert sorted(standby.keeper.live) == ["a", "b"]


async def test_a_poller_is_not_ready_before_its_first_lease_round(pair: Pair) -> None:
    # nobody knows yet who polls: not "standing by", not healthy (not polled yet)
    assert not pair.a.poller.standby and not pair.a.poller.healthy()
    await pair.a.keeper.keep()
    await pair.b.keeper.keep()
    assert not pair.a.poller.standby and not pair.a.poller.healthy()  # holds, not polled
    assert pair.b.poller.standby and pair.b.poller.healthy()


async def test_a_dead_holder_s_lease_moves_within_the_ttl(sim: Simulator, pair: Pair) -> None:
    task = sim.state.add_billing_task(status="Pending")
    pair.a.start()
    await until(lambda: pair.a.poller.polls > 0)
    pair.b.start()
    await until(lambda: pair.b.keeper.ready.is_set())
    await pair.a.kill()
    killed = time.monotonic()
    sim.state.update_billing_task(task["id"], status="Completed")
    await until(lambda: pair.b.poller.polls > 0, timeout=3 * TTL.total_seconds())
    took_over = time.monotonic() - killed
    assert took_over < TTL.total_seconds(), took_over
    await until(lambda: pair.b.poller.polls > 1)
    types = [e.event.type for e in await pair.store.read_events(0)]
    assert "billing_task.status_changed" in types and len(types) == len(set(types))
    lease = (await pair.store.leases())[0]
    assert (lease.holder, lease.epoch) == ("b", 2)


async def test_a_paused_ex_holder_writes_nothing_stale(sim: Simulator, pair: Pair) -> None:
    task = sim.state.add_billing_task(status="Pending")
    pair.a.start(poll=False)
    await until(lambda: pair.a.role.lease is not None)
    await pair.a.sync.poll_once()  # the baseline, under epoch 1
    paused = pair.a.role.lease
    assert paused is not None
    pair.a.dead.set()  # a stops renewing, as a SIGSTOPped process does
    pair.b.start(poll=False)
    await until(lambda: pair.b.role.lease is not None, timeout=3 * TTL.total_seconds())
    sim.state.update_billing_task(task["id"], status="Completed")
    cursor = await pair.store.get_cursor("acme", "billing_tasks")
    # a wakes up mid-poll, before its own clock told it the lease lapsed
    pair.a.role.grant(paused, until=time.monotonic() + 60)
    with pytest.raises(FencedError):
        await pair.a.sync.poll_once()
    assert await pair.store.read_events(0) == []
    assert await pair.store.get_cursor("acme", "billing_tasks") == cursor
    # its own clock stops it even before the store is asked
    pair.a.role.grant(paused, until=time.monotonic() - 1)
    with pytest.raises(FencedError):
        await pair.a.sync.poll_once()
    # the new holder sees the change once
    await pair.b.sync.poll_once()
    types = [e.event.type for e in await pair.store.read_events(0)]
    assert "billing_task.status_changed" in types and len(types) == len(set(types))


async def test_a_poller_whose_commit_is_fenced_stands_by(sim: Simulator, pair: Pair) -> None:
    sim.state.add_billing_task(status="Pending")
    pair.a.start()
    await until(lambda: pair.a.poller.polls > 0)
    pair.a.dead.set()
    pair.b.start(poll=False)
    await until(lambda: pair.b.role.lease is not None, timeout=3 * TTL.total_seconds())
    assert pair.a.role.lease is None  # lapsed on a's own clock
    polls = pair.a.poller.polls
    await asyncio.sleep(0.2)  # a's poller would poll every 0.05 s if it ran
    assert pair.a.poller.polls == polls
    assert pair.a.poller.episode.failures == 0  # no failing-source notice from a standby


async def test_a_clean_shutdown_hands_the_leases_over(sim: Simulator, pair: Pair) -> None:
    pair.a.start()
    await until(lambda: pair.a.poller.polls > 0)
    pair.b.start()
    await until(lambda: pair.b.keeper.ready.is_set())
    await pair.a.stop()
    assert pair.a.keeper.held() == []
    stopped = time.monotonic()
    await until(lambda: pair.b.poller.polls > 0)
    assert time.monotonic() - stopped <= pair.b.keeper.interval + 0.2


async def test_work_runs_only_while_the_lease_is_held() -> None:
    store = MemoryStore()
    await store.open()
    a = LeaseKeeper(store, "a", ttl=TTL)
    b = LeaseKeeper(store, "b", ttl=TTL)
    running: dict[str, int] = {"a": 0, "b": 0}

    def worker(name: str) -> Callable[[], Awaitable[None]]:
        async def work() -> None:
            running[name] += 1
            await asyncio.Event().wait()

        return work

    roles: dict[str, Role] = {"a": a.role(PUBLISH), "b": b.role(PUBLISH)}
    await a.keep()
    await b.keep()
    tasks = [asyncio.create_task(run_while_held(roles[name], worker(name))) for name in ("a", "b")]
    await until(lambda: running["a"] == 1)
    assert running["b"] == 0
    await a.release()
    await b.keep()
    await until(lambda: running["b"] == 1)
    await until(lambda: roles["a"].lease is None)
    await a.keep()  # b holds it now: a stays out
    assert roles["a"].lease is None and running == {"a": 1, "b": 1}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
