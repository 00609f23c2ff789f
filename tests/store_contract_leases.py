"""The store contract for leases, fenced writes, recovery by instance and due wake-ups
(see ``store_contract.py``). The backend's store is instance :data:`INSTANCE`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from backends import INSTANCE
from billnotify.deliveries.base import DeliveryStatus
from billnotify.errors import FencedError
from billnotify.store import SnapshotWrite, Store
from billnotify.store.records import Instance, Lease
from store_contract import NOW, deliveries, end, event

"""The name the contract's stores record on the deliveries they start."""
TTL = timedelta(seconds=15)
POLL = "poll:acme/billing_tasks"


def at(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


async def wakes(
    waiting: asyncio.Condition, change: Callable[[], Awaitable[object]], within: float = 2.0
) -> bool:
    """Whether ``change()`` notifies ``waiting`` within ``within`` seconds."""
    ready = asyncio.Event()

    async def wait() -> None:
        async with waiting:
            ready.set()
            await waiting.wait()

    waiter = asyncio.create_task(wait())
    await asyncio.wait_for(ready.wait(), 5)
    await change()
    try:
        await asyncio.wait_for(waiter, within)
    except TimeoutError:
        return False
    return True


class LeasesContract:
    async def test_a_lease_is_taken_renewed_refused_and_taken_over_once_lapsed(
        self, backend: Store
    ) -> None:
        taken = await backend.acquire(POLL, "a", NOW, TTL)
        assert taken == Lease(POLL, "a", 1, NOW + TTL)
        renewed = await backend.acquire(POLL, "a", NOW + at(5), TTL)
        assert renewed == Lease(POLL, "a", 1, NOW + at(20))  # a renewal keeps the epoch
        assert await backend.acquire(POLL, "b", NOW + at(19), TTL) is None  # held
        over = await backend.acquire(POLL, "b", NOW + at(20), TTL)  # lapsed at 20
        assert over == Lease(POLL, "b", 2, NOW + at(35))
        assert await backend.acquire(POLL, "a", NOW + at(21), TTL) is None
        back = await backend.acquire(POLL, "a", NOW + at(40), TTL)
        assert back == Lease(POLL, "a", 3, NOW + at(55))
        other = await backend.acquire("publish", "b", NOW + at(40), TTL)
        assert await backend.leases() == [back, other]  # by name

    async def test_a_released_lease_is_free_at_once_and_only_its_holder_releases_it(
        self, backend: Store
    ) -> None:
        await backend.acquire(POLL, "a", NOW, TTL)
        await backend.release(POLL, "b")  # not b's: nothing changes
        assert await backend.acquire(POLL, "b", NOW + at(1), TTL) is None
        await backend.release(POLL, "a")
        await backend.release("never-taken", "a")
        (released,) = await backend.leases()
        assert (released.holder, released.epoch) == ("a", 1)
        assert released.expires_at <= NOW  # lapsed
        assert await backend.acquire(POLL, "b", NOW + at(1), TTL) == Lease(
            POLL, "b", 2, NOW + at(16)
        )

    async def test_of_several_acquiring_at_once_one_gets_the_lease(self, backend: Store) -> None:
        got = await asyncio.gather(*(backend.acquire(POLL, f"i{n}", NOW, TTL) for n in range(6)))
        held = [lease for lease in got if lease is not None]
        assert len(held) == 1 and held[0].epoch == 1
        assert await backend.leases() == held

    async def test_instances_are_live_while_their_heartbeat_is_younger_than_the_ttl(
        self, backend: Store
    ) -> None:
        await backend.heartbeat("b", NOW, {"http": "127.0.0.1:9464", "pid": "7"})
        await backend.heartbeat("a", NOW + at(10))
        await backend.heartbeat("b", NOW + at(12))  # no info: what it said stays
        live = await backend.instances(NOW + at(20), TTL)
        assert live == [
            Instance("a", NOW + at(10), NOW + at(10), {}),
            Instance("b", NOW, NOW + at(12), {"http": "127.0.0.1:9464", "pid": "7"}),
        ]
        live[1].info["pid"] = "changed"  # a copy: the store keeps its own
        assert [i.name for i in await backend.instances(NOW + at(26), TTL)] == ["b"]
        assert (await backend.instances(NOW + at(26), TTL))[0].info["pid"] == "7"
        assert await backend.instances(NOW + at(27), TTL) == []  # b: 15 s exactly
        await backend.heartbeat("b", NOW + at(30), {"pid": "8"})
        assert (await backend.instances(NOW + at(30), TTL))[0].info == {"pid": "8"}


class FencingContract:
    async def test_a_fence_whose_lease_was_taken_over_writes_nothing(self, backend: Store) -> None:
        old = await backend.acquire(POLL, "a", NOW, TTL)
        assert old is not None
        write = SnapshotWrite("billing_task", "1", {"id": "1"})
        await backend.commit("acme", [write], [event("1")], ("billing_tasks", "c1"), fence=old)
        await backend.set_position("mqtt", 1, fence=old)
        renewed = await backend.acquire(POLL, "a", NOW + at(5), TTL)
        assert renewed is not None
        await backend.set_position("mqtt", 1, fence=renewed)  # a renewal fences the same
        assert await backend.acquire(POLL, "b", NOW + at(21), TTL) is not None

        stale = SnapshotWrite("billing_task", "1", {"id": "1", "status": "stale"})
        with pytest.raises(FencedError, match=POLL):
            await backend.commit("acme", [stale], [event("2")], ("billing_tasks", "c2"), fence=old)
        with pytest.raises(FencedError, match=POLL):
            await backend.set_position("mqtt", 2, fence=old)

        snap = (await backend.get_snapshots("acme", "billing_task", ["1"]))["1"]
        assert (snap.record, snap.version) == ({"id": "1"}, 1)
        assert await backend.get_cursor("acme", "billing_tasks") == "c1"
        assert await backend.last_seq() == 1
        assert await backend.get_position("mqtt") == 1
        await backend.commit("acme", [], [event("3")])  # unfenced writes go on
        assert await backend.last_seq() == 2

    async def test_a_fence_of_a_lease_never_taken_writes_nothing(self, backend: Store) -> None:
        ghost = Lease("publish", "a", 1, NOW + TTL)
        with pytest.raises(FencedError):
            await backend.set_position("mqtt", 5, fence=ghost)
        assert await backend.get_position("mqtt") == 0


class RecoveryContract:
    async def test_a_running_instance_recovers_only_the_rows_of_the_dead(
        self, backend: Store
    ) -> None:
        rows = [*deliveries(1, exactly_once=True), *deliveries(2)[1:]]  # once, at least once
        await backend.record_deliveries(rows, "rules", 2, NOW)
        assert await backend.start_attempts([r.id for r in rows], NOW) == {r.id: 1 for r in rows}
        # this instance is alive: its rows in flight are not touched by a sweep
        assert await backend.recover_in_flight(NOW, live=[INSTANCE, "b"]) == (0, 0)
        assert await backend.recover_in_flight(NOW, instance="b", live=[INSTANCE]) == (0, 0)
        got = await backend.get_delivery(rows[0].id)
        assert got is not None and got.status is DeliveryStatus.SENDING
        assert got.history[0].finished_at is None
        # seen from another instance, with this one dead: recovered, once
        assert await backend.recover_in_flight(NOW, live=["b"]) == (1, 1)
        assert await backend.recover_in_flight(NOW, live=["b"]) == (0, 0)
        got = await backend.get_delivery(rows[0].id)
        assert got is not None and got.status is DeliveryStatus.UNCERTAIN
        assert got.history[0].finished_at == NOW

    async def test_an_instance_restarted_under_its_name_recovers_its_own_rows(
        self, backend: Store
    ) -> None:
        rows = deliveries(3)
        await backend.record_deliveries(rows, "rules", 3, NOW)
        await backend.start_attempts([rows[0].id, rows[1].id], NOW)
        await backend.finish_attempts([end(rows[1].id, 1, DeliveryStatus.SUCCEEDED)])
        assert await backend.recover_in_flight(NOW, instance=INSTANCE, live=[INSTANCE]) == (0, 1)
        assert [d.id for d in await backend.due_deliveries(NOW)] == [rows[0].id, rows[2].id]
        done = await backend.get_delivery(rows[1].id)
        assert done is not None and done.history[0].error is None  # a finished attempt stays
        await backend.start_attempts([rows[2].id], NOW)
        assert await backend.recover_in_flight(NOW, instance=INSTANCE) == (0, 1)


class DueWakeUpContract:
    async def test_recording_deliveries_wakes_idle_workers(self, backend: Store) -> None:
        rows = deliveries(2)
        assert await wakes(
            backend.due_changed, lambda: backend.record_deliveries(rows, "rules", 2, NOW)
        )
        assert not await wakes(  # nothing new: nothing due that was not
            backend.due_changed, lambda: backend.record_deliveries(rows, "rules", 2, NOW), 0.3
        )

    async def test_a_retry_an_operator_or_a_recovery_wakes_idle_workers(
        self, backend: Store
    ) -> None:
        rows = deliveries(3)
        await backend.record_deliveries(rows, "rules", 3, NOW)
        await backend.start_attempts([r.id for r in rows], NOW)
        retry = end(rows[0].id, 1, DeliveryStatus.RETRY_SCHEDULED, next_attempt_at=NOW + at(5))
        assert await wakes(backend.due_changed, lambda: backend.finish_attempts([retry]))
        done = end(rows[1].id, 1, DeliveryStatus.SUCCEEDED)
        assert not await wakes(backend.due_changed, lambda: backend.finish_attempts([done]), 0.3)
        assert await wakes(
            backend.due_changed,
            lambda: backend.set_delivery_status(rows[1].id, DeliveryStatus.PENDING, now=NOW),
        )
        assert await wakes(backend.due_changed, lambda: backend.recover_in_flight(NOW))
