"""The billing poller's cursor: one list query per idle cycle where the platform allows,
created records never missed where it does not, and no full re-read after a long cycle."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billnotify.simulator import Simulator
from billnotify.sources import billing_cursor
from billnotify.sources.billing_cursor import Cursor, ReadTimes
from billnotify.store import SqliteStore
from test_poll import Harness

T0 = datetime(2026, 3, 15, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def sim_options() -> dict[str, Any]:
    return {"page_max": 50}


@pytest.fixture
async def harness(sim: Simulator, store: SqliteStore) -> AsyncIterator[Harness]:
    h = Harness(sim, store)
    yield h
    await h.client.close()


def _unstamped(sim: Simulator, **fields: Any) -> str:
    """A task added as a platform that does not stamp creations as updates would list it."""
    rid = str(sim.state.add_billing_task(**fields)["id"])
    sim.state.times("billing_tasks", rid).updated_at -= timedelta(hours=1)
    return rid


async def _asks_created_since(sim: Simulator, h: Harness) -> bool:
    """Whether the next poll asks ``createdSince``."""
    sim.requests.clear()
    await h.poll()
    return any("createdSince" in r for r in sim.requests)


async def _created(h: Harness) -> list[str]:
    return [
        e.event.object_id
        for e in await h.store.read_events(0, 100_000)
        if e.event.type == "billing_task.created"
    ]


def test_a_cursor_reads_its_old_text_and_round_trips() -> None:
    assert Cursor.parse("2026-03-15T12:00:00Z") == Cursor(((None, T0),), T0)
    later = T0 + timedelta(seconds=3)
    cursor = Cursor(((None, T0), (1500, later)), T0 - timedelta(seconds=30))
    text = cursor.text()
    assert text == "2026-03-15T12:00:00Z 1500@2026-03-15T12:00:03Z c2026-03-15T11:59:30Z"
    assert Cursor.parse(text) == cursor
    overlap = timedelta(seconds=2)
    assert cursor.queries(overlap) == [(None, T0 - overlap), (1500, later - overlap)]


def test_read_times_keep_increasing_ranges_never_later_than_a_range_above() -> None:
    reads = ReadTimes()
    seconds = [0, 0, 1, 3, 2, 2, 5]  # a response of an id range above answered earlier
    for n, s in enumerate(seconds):
        reads.add(None if n == 0 else n * 100, T0 + timedelta(seconds=s, microseconds=7))
    at = [(after, int((when - T0).total_seconds())) for after, when in reads.ranges()]
    assert at == [(None, 0), (200, 1), (300, 2), (600, 5)]
    many = ReadTimes()
    for n in range(40):
        many.add(None if n == 0 else n, T0 + timedelta(seconds=n))
    ranges = many.ranges()
    assert len(ranges) == billing_cursor.MAX_RANGES
    assert ranges[0] == (None, T0)
    assert all(a[1] < b[1] and (a[0] or 0) < (b[0] or 0) for a, b in itertools.pairwise(ranges))


async def test_an_idle_cycle_is_one_request_once_updated_since_lists_created_records(
    sim: Simulator, harness: Harness
) -> None:
    await harness.poll()
    assert (await harness.poll()).requests == 2  # updatedSince + createdSince: not known yet
    rid = str(sim.state.add_billing_task(status="Pending")["id"])
    stats = await harness.poll()
    assert stats.types["billing_task.created"] == 1 and stats.requests == 4
    # its updatedSince listed the new task: from now on updatedSince alone (a page holding
    # the task again, in the overlap, and the empty page)
    assert (await harness.poll()).requests == 2
    second = str(sim.state.add_billing_task(status="Pending")["id"])
    stats = await harness.poll()
    assert (stats.types["billing_task.created"], stats.requests) == (1, 2)
    assert await _created(harness) == [rid, second]


async def test_a_created_record_only_created_since_lists_is_seen_in_the_same_cycle(
    sim: Simulator, harness: Harness
) -> None:
    await harness.poll()
    rid = _unstamped(sim, status="Pending")
    stats = await harness.poll()
    assert stats.types["billing_task.created"] == 1
    assert await _asks_created_since(sim, harness)  # still, every cycle
    assert await _created(harness) == [rid]


async def test_a_created_record_is_seen_after_updated_since_seemed_to_list_them(
    sim: Simulator, harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A platform that listed one creation with ``updatedSince`` and then does not: the
    once-a-minute ``createdSince`` (here every 2 s) still finds the next, once, and
    turns the every-cycle query back on."""
    monkeypatch.setattr(billing_cursor, "CREATED_CHECK", timedelta(seconds=2))
    await harness.poll()
    first = str(sim.state.add_billing_task(status="Pending")["id"])
    await harness.poll()  # both queries list it
    assert not await _asks_created_since(sim, harness)
    hidden = _unstamped(sim, status="Pending")
    deadline = time.monotonic() + 15
    while hidden not in await _created(harness):
        assert time.monotonic() < deadline, "the unstamped task was never seen"
        await harness.poll()
        await asyncio.sleep(0.2)
    assert await _asks_created_since(sim, harness)  # every cycle again
    assert await _created(harness) == [first, hidden]


async def test_a_long_cycle_is_not_read_again_in_full(sim: Simulator, harness: Harness) -> None:
    """300 tasks change at once; the cycle carrying them pages slowly (6 pages over some
    3 s); the cycles after it re-read only the ranges read within the overlap (2 s) of the
    change, and every change is logged once."""
    ids = [str(sim.state.add_billing_task(status="Running")["id"]) for _ in range(300)]
    for rid in ids:  # created an hour ago: createdSince lists none of them
        times = sim.state.times("billing_tasks", rid)
        times.created_at = times.updated_at = times.created_at - timedelta(hours=1)
    await harness.poll()
    await harness.poll()
    for rid in ids:
        sim.state.update_billing_task(rid, status="Completed")
    sim.faults.add("/backend/api/v1/billingTasks", kind="slow", count=1000, delay=0.6)
    burst = await harness.poll()
    sim.faults.clear()
    assert burst.records == 300 and burst.types["billing_task.status_changed"] == 300
    after = await harness.poll()
    assert after.records < 300, f"re-read {after.records} of 300"
    assert (await harness.poll()).records == 0
    events = [e.event for e in await harness.store.read_events(0, 100_000)]
    changed = [e.object_id for e in events if e.type == "billing_task.status_changed"]
    assert sorted(changed, key=int) == ids
