"""Pollers against the simulator over real HTTP: baseline, every change, cursor
boundaries, restarts and failing sources."""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from billnotify.clients.billing_platform import BillingPlatformClient
from billnotify.config.models import BillingPlatformSource
from billnotify.errors import BillnotifyError
from billnotify.simulator import Simulator
from billnotify.sources import Poller, build_billing_syncs
from billnotify.sources.base import PollStats
from billnotify.store import SqliteStore
from servers import sim_source


async def _noop_sleep(_: float) -> None:
    return None


def source_config(sim: Simulator, **extra: object) -> BillingPlatformSource:
    return BillingPlatformSource.model_validate(sim_source(sim, overlap="2s", **extra))


@pytest.fixture
def sim_options() -> dict[str, Any]:
    return {"page_max": 50}


class Harness:
    def __init__(self, sim: Simulator, store: SqliteStore, **extra: object) -> None:
        self.config = source_config(sim, **extra)
        self.client = BillingPlatformClient(
            self.config.base_url, self.config.api_key, sleep=_noop_sleep, page_size=100
        )
        self.store = store
        self.syncs = {s.resource: s for s in build_billing_syncs(self.config, self.client, store)}

    async def poll(self, resource: str = "billing_tasks") -> PollStats:
        return await self.syncs[resource].poll_once()

    async def poll_all(self) -> None:
        for sync in self.syncs.values():
            await sync.poll_once()

    async def types(self) -> list[str]:
        return [e.event.type for e in await self.store.read_events(0, 100_000)]


@pytest.fixture
async def harness(sim: Simulator, store: SqliteStore) -> AsyncIterator[Harness]:
    h = Harness(sim, store)
    yield h
    await h.client.close()


async def test_first_sync_is_a_silent_baseline(sim: Simulator, harness: Harness) -> None:
    for _ in range(120):
        sim.state.add_billing_task(status="Pending")
    stats = await harness.poll()
    assert stats.baseline and stats.records == 120
    assert await harness.types() == []
    assert await harness.store.count_snapshots("acme", "billing_task") == 120


async def test_emit_on_first_sync(sim: Simulator, store: SqliteStore) -> None:
    sim.state.add_billing_task(status="Pending")
    h = Harness(sim, store, emit_on_first_sync=True)
    await h.poll()
    assert await h.types() == ["billing_task.created"]
    await h.client.close()


async def test_every_billing_event_type_end_to_end(sim: Simulator, harness: Harness) -> None:
    task = sim.state.add_billing_task(status="Pending", retryCount="0")
    run = sim.state.add_billing_run(status="Pending")
    invoice = sim.state.add_invoice(status=["Raised"], outstanding="50.00", dueDate="2099-01-01")
    await harness.poll_all()
    new_task = sim.state.add_billing_task(status="Pending")
    sim.state.update_billing_task(task["id"], status="Running", startedTime="2020-01-01 10:00:00")
    sim.state.update_billing_run(run["id"], status="Running", commencedDate="2026-11-21 10:00:00")
    sim.state.update_invoice(invoice["id"], status=["Raised", "Approved"])
    await harness.poll_all()
    sim.state.update_billing_task(task["id"], status="Pending", retryCount="1", priority="9")
    sim.state.update_billing_run(run["id"], status="Complete", completedDate="2026-11-21 11:00:00")
    sim.state.update_invoice(invoice["id"], outstanding="0.00", paidDate="2026-11-21")
    await harness.poll_all()
    got = collections.Counter(await harness.types())
    assert got == {
        "billing_task.created": 1,
        "billing_task.status_changed": 2,
        "billing_task.retried": 1,
        "billing_task.updated": 1,
        "billing_task.stalled": 1,  # started in 2020, stall_after 2h
        "billing_run.status_changed": 2,
        "billing_run.commenced": 1,
        "billing_run.completed": 1,
        "invoice.status_changed": 1,
        "invoice.paid": 1,
    }, got
    events = {e.event.type: e.event for e in await harness.store.read_events(0, 1000)}
    assert events["invoice.status_changed"].data["added"] == ["Approved"]
    assert events["billing_task.created"].subject == f"billing_tasks/{new_task['id']}"
    assert events["billing_task.retried"].data["previous"]["retryCount"] == "0"


async def test_overdue_fires_once_from_the_sweep(sim: Simulator, harness: Harness) -> None:
    await harness.poll("invoices")
    sim.state.add_invoice(status=["Raised", "Approved"], outstanding="10.00", dueDate="2020-01-01")
    await harness.poll("invoices")
    await harness.poll("invoices")
    assert collections.Counter(await harness.types()) == {
        "invoice.created": 1,
        "invoice.overdue": 1,
    }


async def test_a_uk_platforms_task_stalls_on_time_in_summer_time(
    sim: Simulator, store: SqliteStore
) -> None:
    config = source_config(sim, timezone="Europe/London", watch=["billing_tasks"])
    now = [datetime(2026, 7, 15, 9, 59, 59, tzinfo=UTC)]
    client = BillingPlatformClient(config.base_url, config.api_key, sleep=_noop_sleep)
    [sync] = build_billing_syncs(config, client, store, clock=lambda: now[0])
    try:
        await sync.poll_once()  # the baseline
        # 09:00 on the platform's London clock is 08:00 UTC: stalled two hours later, at 10:00 UTC.
        sim.state.add_billing_task(status="Running", startedTime="2026-07-15 09:00:00")
        await sync.poll_once()
        assert [e.event.type for e in await store.read_events(0)] == ["billing_task.created"]
        now[0] = datetime(2026, 7, 15, 10, 0, tzinfo=UTC)
        await sync.poll_once()
        events = [e.event for e in await store.read_events(0)]
        assert [e.type for e in events] == ["billing_task.created", "billing_task.stalled"]
        assert events[1].data["started"] == "2026-07-15T08:00:00Z"
    finally:
        await client.close()


async def test_no_update_missed_at_the_cursor_boundary_while_paging(
    sim: Simulator, harness: Harness
) -> None:
    """Hundreds of records updated in the same second as the cursor, across pages,
    while a poll is paging: every change is logged exactly once."""
    ids = [sim.state.add_billing_task(status="Pending", priority="0")["id"] for _ in range(300)]
    await harness.poll()
    sim.faults.add("/backend/api/v1/billingTasks", kind="slow", count=1000, delay=0.02)
    stop = asyncio.Event()

    async def updater() -> None:
        for value in range(1, 6):
            for rid in ids:
                sim.state.update_billing_task(rid, priority=str(value))
            await asyncio.sleep(0.05)
        stop.set()

    async def poller() -> None:
        while not stop.is_set():
            await harness.poll()

    await asyncio.gather(updater(), poller())
    sim.faults.clear()
    await harness.poll()
    await harness.poll()
    chains: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for stored in await harness.store.read_events(0, 100_000):
        event = stored.event
        assert event.type == "billing_task.updated"
        chains[event.object_id].append(
            (int(event.data["previous"]["priority"]), int(event.data["object"]["priority"]))
        )
    missing = [rid for rid in ids if not chains[rid] or chains[rid][-1][1] != 5]
    duplicated = [rid for rid, chain in chains.items() if len(set(chain)) != len(chain)]
    broken = [
        rid
        for rid, chain in chains.items()
        if any(a[1] != b[0] for a, b in itertools.pairwise(chain))
    ]
    print(
        f"records={len(ids)} events={sum(map(len, chains.values()))} "
        f"missing={len(missing)} duplicated={len(duplicated)} broken={len(broken)}"
    )
    assert (missing, duplicated, broken) == ([], [], [])


async def test_a_restart_never_re_emits(sim: Simulator, tmp_path: Path) -> None:
    ids = [sim.state.add_billing_task(status="Pending")["id"] for _ in range(60)]
    async with SqliteStore(tmp_path / "s.db") as first:
        h = Harness(sim, first)
        await h.poll()
        sim.state.update_billing_task(ids[0], status="Running")
        await h.poll()
        await h.client.close()
    async with SqliteStore(tmp_path / "s.db") as second:
        h = Harness(sim, second)
        await h.poll()
        await h.poll()
        assert await h.types() == ["billing_task.status_changed"]
        await h.client.close()


@pytest.mark.parametrize("kind", ["503", "malformed"])
async def test_a_failing_source_delays_only_itself_and_loses_nothing(
    sim: Simulator, store: SqliteStore, kind: str
) -> None:
    other = Simulator(page_max=50)
    await other.start()
    try:
        bad = Harness(sim, store)
        good_config = source_config(other).model_copy(update={"name": "other"})
        good_client = BillingPlatformClient(other.billing_base_url, "sim-key", sleep=_noop_sleep)
        good = build_billing_syncs(good_config, good_client, store)[0]
        await bad.poll()
        await good.poll_once()
        sim.state.add_billing_task(status="Pending")
        other.state.add_billing_task(status="Pending")
        sim.faults.add("/backend/api/v1/billingTasks", kind=kind, count=100)
        bad_poller = Poller(bad.syncs["billing_tasks"], interval=good_config.poll_interval)
        assert await bad_poller.run_once() is None
        assert bad_poller.last_error
        await good.poll_once()
        assert [e.event.source_name for e in await store.read_events(0)] == ["other"]
        sim.faults.clear()
        assert (await bad_poller.run_once()) is not None
        assert sorted(e.event.source_name for e in await store.read_events(0)) == ["acme", "other"]
        await good_client.close()
        await bad.client.close()
    finally:
        await other.stop()


async def test_a_page_that_fails_leaves_the_pages_before_it_committed_once(
    sim: Simulator, harness: Harness
) -> None:
    """A page is committed while the next is fetched: when that fetch fails, the page
    before it is committed all the same, the cursor stays, and the next poll logs the
    rest: every change once."""
    ids = [sim.state.add_billing_task(status="Pending")["id"] for _ in range(120)]
    await harness.poll()
    for rid in ids:
        sim.state.update_billing_task(rid, status="Running")
    cursor = await harness.store.get_cursor("acme", "billing_tasks")
    sim.faults.add("/backend/api/v1/billingTasks", kind="malformed", count=100, after=1)
    with pytest.raises(BillnotifyError):
        await harness.poll()
    assert len(await harness.types()) == 50  # the first page of 50
    assert await harness.store.get_cursor("acme", "billing_tasks") == cursor
    sim.faults.clear()
    await harness.poll()
    await harness.poll()
    logged = [(e.event.object_id, e.event.type) for e in await harness.store.read_events(0)]
    assert sorted(logged) == sorted((rid, "billing_task.status_changed") for rid in ids)
