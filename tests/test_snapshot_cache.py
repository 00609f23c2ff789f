"""The poller's snapshot cache: what it keeps is what the store has, on every backend,
and it keeps nothing it cannot vouch for (another lease holder, a failed commit, a read
that overlapped a commit, a record its text would not give back)."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backends import BACKENDS
from billnotify.errors import FencedError
from billnotify.leases import Role
from billnotify.sources.base import FencedSnapshots
from billnotify.sources.snapshot_cache import SnapshotCache
from billnotify.store.base import Store
from billnotify.store.records import Snapshot, SnapshotWrite

LEASE = "poll:acme/billing_tasks"
TTL = timedelta(minutes=5)
NOW = datetime(2026, 12, 3, 6, 0, tzinfo=UTC)


async def holding(store: Store, instance: str = "a") -> Role:
    """A role of ``instance`` holding the poll lease (taken in the store)."""
    lease = await store.acquire(LEASE, instance, NOW, TTL)
    assert lease is not None
    role = Role(LEASE)
    role.grant(lease, time.monotonic() + 300)
    return role


def task(rid: str, status: str, **extra: object) -> dict[str, object]:
    return {"id": rid, "status": status, **extra}


def write(rid: str, status: str, marks: frozenset[str] = frozenset()) -> SnapshotWrite:
    return SnapshotWrite("billing_task", rid, task(rid, status), marks)


async def read(fenced: FencedSnapshots, ids: list[str]) -> dict[str, Snapshot]:
    return await fenced.get_snapshots("acme", "billing_task", ids)


async def test_kept_snapshots_are_the_stores_own(backend: Store) -> None:
    """Random commits (a record written twice in one, marks, new records): each read
    served by the cache equals the backend's own, version included."""
    fenced = FencedSnapshots(backend, await holding(backend))
    rng = random.Random(13)
    ids = [str(n) for n in range(1, 31)]
    for _ in range(25):
        await read(fenced, rng.sample(ids, 10))  # some ids read (kept), some not
        picked = [rng.choice(ids) for _ in range(8)]  # repeats: written twice in a commit
        writes = [
            write(rid, rng.choice(["Pending", "Running", "Error"]), frozenset({f"m{n}"}))
            for n, rid in enumerate(picked)
        ]
        await fenced.commit("acme", writes, [])
        served = await read(fenced, ids)
        stored = await backend.get_snapshots("acme", "billing_task", ids)
        assert served == stored
    assert len(fenced.cache) > 0


async def test_a_new_holder_empties_it(backend: Store) -> None:
    """A record another holder wrote (lease taken over, then back) is read again."""
    role = await holding(backend, "a")
    fenced = FencedSnapshots(backend, role)
    await read(fenced, ["1"])
    await fenced.commit("acme", [write("1", "Pending")], [])
    assert (await read(fenced, ["1"]))["1"].record["status"] == "Pending"
    later = NOW + TTL * 2  # a's lease lapsed: b takes it and writes
    other = await backend.acquire(LEASE, "b", later, TTL)
    assert other is not None
    await backend.commit("acme", [write("1", "Error")], [], fence=other)
    back = await backend.acquire(LEASE, "a", later + TTL * 2, TTL)
    assert back is not None and back.epoch > other.epoch
    role.grant(back, time.monotonic() + 300)
    snap = (await read(fenced, ["1"]))["1"]
    assert snap.record["status"] == "Error"
    assert snap == (await backend.get_snapshots("acme", "billing_task", ["1"]))["1"]


async def test_a_lease_not_held_keeps_nothing(backend: Store) -> None:
    role = await holding(backend)
    fenced = FencedSnapshots(backend, role)
    await read(fenced, ["1", "2"])
    assert len(fenced.cache) == 2
    role.lose()
    await read(fenced, ["1", "2"])
    assert len(fenced.cache) == 0
    with pytest.raises(FencedError):
        await fenced.commit("acme", [write("1", "Pending")], [])


async def test_a_failed_commit_empties_it(backend: Store) -> None:
    """A commit the backend refused (here: fenced off by a newer holder) may or may not
    have landed as far as the cache knows: it forgets everything."""
    role = await holding(backend, "a")
    fenced = FencedSnapshots(backend, role)
    await read(fenced, ["1", "2"])
    await backend.acquire(LEASE, "b", NOW + TTL * 2, TTL)  # a does not know yet
    with pytest.raises(FencedError):
        await fenced.commit("acme", [write("1", "Pending")], [])
    assert len(fenced.cache) == 0


async def test_a_read_that_overlapped_a_commit_is_not_kept(tmp_path: Path) -> None:
    """A read answered around a commit may hold the state before it: not kept."""
    store = BACKENDS["process"](tmp_path)
    await store.open()
    try:
        fenced = FencedSnapshots(store, await holding(store))
        await read(fenced, ["1"])
        reading = asyncio.create_task(read(fenced, ["2"]))
        await fenced.commit("acme", [write("2", "Pending")], [])
        await reading
        assert fenced.cache.get("acme", "billing_task", ["2"]) == ({}, ["2"])
        assert (await read(fenced, ["2"]))["2"].record["status"] == "Pending"
    finally:
        await store.close()


def test_records_come_back_exactly() -> None:
    """Values orjson would write otherwise (NaN, integers beyond 64 bits, infinity deep
    down, non-ASCII) come back as they were read."""
    cache = SnapshotCache()
    cache.hold(1)
    odd = {
        "nan": task("nan", "Running", x=float("nan")),
        "big": task("big", "Running", n=2**70),
        "deep": task("deep", "x", a=[{"b": float("inf")}]),
        "ok": task("ok", "Running", n=2**60, f=0.1, name="Zoë ☃"),
    }
    snapshots = {rid: Snapshot("acme", "billing_task", rid, record) for rid, record in odd.items()}
    cache.read("acme", "billing_task", list(odd), snapshots)
    found, missing = cache.get("acme", "billing_task", list(odd))
    assert missing == []
    assert repr(found) == repr(snapshots)  # NaN != NaN: compared by their repr


def test_the_longest_unwritten_go_first() -> None:
    cache = SnapshotCache(limit=3)
    cache.hold(1)
    cache.read("acme", "billing_task", ["1", "2", "3"], {})
    cache.written("acme", [write("1", "Pending")])  # 1 moves to the end
    cache.read("acme", "billing_task", ["4"], {})
    assert cache.get("acme", "billing_task", ["1", "2", "3", "4"])[1] == ["2"]
    assert len(cache) == 3


def test_the_text_kept_is_bounded_too() -> None:
    cache = SnapshotCache(text=110)
    cache.hold(1)
    long = {
        str(n): Snapshot("acme", "billing_task", str(n), task(str(n), "x" * 30)) for n in range(5)
    }
    cache.read("acme", "billing_task", list(long), long)
    found, missing = cache.get("acme", "billing_task", list(long))
    assert sorted(found) == ["3", "4"] and missing == ["0", "1", "2"]  # 2 x 53 characters
    cache.written("acme", [write("4", "y" * 200)])  # longer than the whole budget
    assert len(cache) == 0
