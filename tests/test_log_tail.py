"""The log's tail a ProcessStore keeps (``store/log_tail.py``): its answers are the
store's, entry by entry, whoever else writes to the file."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from billnotify.errors import FencedError
from billnotify.store import ProcessStore, SnapshotWrite, SqliteStore
from billnotify.store.log_tail import ENTRIES, LogTail
from billnotify.store.records import LogEntry
from store_contract import NOW, event
from store_contract_leases import POLL, TTL, at


def entry(seq: int, text: str = "{}") -> LogEntry:
    return LogEntry(seq, f"evt_{seq}", "t", "acme", "billing_tasks/1", text)


# -- the tail alone ----------------------------------------------------------------------
def test_reads_start_only_at_a_held_entry() -> None:
    tail = LogTail()
    assert tail.read(0, 10) is None
    tail.extend(entry(seq) for seq in (5, 6, 7))
    assert tail.read(4, 10) == [entry(5), entry(6), entry(7)]
    assert tail.read(5, 1) == [entry(6)]
    for after in (2, 3, 7, 8):  # before the tail, or at its end: the store answers
        assert tail.read(after, 10) is None
    assert tail.read(5, 0) is None


def test_an_entry_that_does_not_follow_starts_the_tail_afresh() -> None:
    tail = LogTail()
    tail.extend([entry(1), entry(2), entry(4), entry(5)])
    assert len(tail) == 2
    assert tail.read(0, 10) is None and tail.read(2, 10) is None
    assert tail.read(3, 10) == [entry(4), entry(5)]
    tail.extend([entry(9)])
    assert tail.read(3, 10) is None and tail.read(8, 10) == [entry(9)]


def test_the_oldest_entries_go_beyond_the_bounds() -> None:
    tail = LogTail(entries=3, text=10)
    tail.extend(entry(seq) for seq in range(1, 6))
    assert tail.read(2, 10) == [entry(3), entry(4), entry(5)]
    assert tail.read(1, 10) is None
    tail.extend([entry(6, "x" * 7)])  # 2 + 2 + 7 characters: only the two newest stay
    assert tail.read(3, 10) is None
    assert tail.read(4, 10) == [entry(5), entry(6, "x" * 7)]
    tail.extend([entry(7, "x" * 11)])  # alone beyond the bound: nothing is held
    assert len(tail) == 0 and tail.read(6, 10) is None


# -- a ProcessStore against a plain SqliteStore on the same file ---------------------------
@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[ProcessStore, SqliteStore]]:
    """The store under test and another writer and reader of its file."""
    path = tmp_path / "state.db"
    async with ProcessStore(path, "ours") as ours, SqliteStore(path, "other") as other:
        yield ours, other


def child_reads(store: ProcessStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the reads of the log ``store`` asks its child for."""
    counted: list[int] = []
    call = store._channel.call

    async def counting(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if name == "read_log":
            counted.append(args[0])
        return await call(name, args, kwargs)

    monkeypatch.setattr(store._channel, "call", counting)
    return counted


async def assert_exact(ours: ProcessStore, other: SqliteStore, afters: list[int]) -> None:
    """Every read of ``ours`` after ``afters`` is the start of the store's answer, empty
    only when the store's is."""
    for after in afters:
        for limit in (1, 2, 7, 500):
            got = await ours.read_log(after, limit)
            want = await other.read_log(after, limit)
            assert got == want[: len(got)], (after, limit)
            assert bool(got) == bool(want), (after, limit)
    for after in afters[:5]:
        got_events = await ours.read_events(after, 3)
        assert got_events == (await other.read_events(after, 3))[: len(got_events)]


async def test_random_commits_and_another_writer_read_back_exactly(
    stores: tuple[ProcessStore, SqliteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, other = stores
    asked = child_reads(ours, monkeypatch)
    rng = random.Random(13)
    follows = followed = salted = skipped = 0
    for _round in range(60):
        writer = other if rng.random() < 0.25 else ours
        events = [
            event(
                str(rng.randrange(40)),
                key=rng.choice("abc"),
                entity=rng.choice(["billing_task", "invoice"]),
            )
            for _ in range(rng.randrange(0, 9))
        ]
        # a record written in the commit makes a logged transition a new (salted) occurrence
        writes = [SnapshotWrite(e.entity, e.object_id, {"id": e.object_id}) for e in events]
        before = await other.last_seq()
        stored = await writer.commit(
            "acme", rng.sample(writes, rng.randrange(len(writes) + 1)), events
        )
        salted += sum(s.event.id not in {e.id for e in events} for s in stored)
        skipped += len(events) - len(stored)
        last = await other.last_seq()
        if writer is ours and stored:  # the follower's read
            reads = len(asked)
            got = await ours.read_log(before, 500)
            assert got and got == (await other.read_log(before, 500))[: len(got)]
            follows += 1
            followed += len(asked) == reads
        await assert_exact(ours, other, rng.sample(range(-1, last + 2), min(last + 3, 12)))
    assert salted > 5 and skipped > 5  # occurrences and duplicates were among them
    assert followed > follows / 2  # most follower reads never reached the child
    assert len(asked) > 100  # and the others did


async def test_a_gap_left_by_another_writer_is_read_from_the_store(
    stores: tuple[ProcessStore, SqliteStore],
) -> None:
    ours, other = stores
    await ours.commit("acme", [], [event("1"), event("2")])
    await other.commit("acme", [], [event("3")])
    await ours.commit("acme", [], [event("4"), event("5")])
    assert [e.seq for e in await ours.read_log(0)] == [1, 2, 3, 4, 5]
    assert [e.seq for e in await ours.read_log(2)] == [3, 4, 5]
    assert [e.seq for e in await ours.read_log(3)] == [4, 5]
    await assert_exact(ours, other, list(range(-1, 7)))


async def test_a_salted_occurrence_is_read_as_logged(
    stores: tuple[ProcessStore, SqliteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, other = stores
    asked = child_reads(ours, monkeypatch)
    write = SnapshotWrite("billing_task", "1", {"id": "1"})
    await ours.commit("acme", [write], [event("1", "same"), event("2")])
    again = await ours.commit("acme", [write], [event("3"), event("1", "same"), event("4")])
    assert [s.event.id for s in again][1] == event("1", "same").id + "_2"
    assert await ours.read_log(0) == await other.read_log(0)  # from the tail
    assert (await ours.read_log(3, 1))[0].json == again[1].event.to_json()
    assert asked == []
    await assert_exact(ours, other, list(range(-1, 7)))


async def test_the_tail_is_bounded_and_older_reads_go_to_the_store(
    stores: tuple[ProcessStore, SqliteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, other = stores
    for page in range(10):
        await ours.commit("acme", [], [event(f"{page}-{n}") for n in range(500)])
    assert len(ours._tail) == ours._tail.max_entries == ENTRIES < 5000
    asked = child_reads(ours, monkeypatch)
    oldest = 5000 - ENTRIES + 1
    await assert_exact(ours, other, [0, oldest - 2, oldest - 1, oldest, 4500, 4999, 5000])
    assert 0 in asked and oldest - 2 in asked and oldest - 1 not in asked and 4999 not in asked


async def test_a_failed_commit_empties_the_tail(
    stores: tuple[ProcessStore, SqliteStore],
) -> None:
    ours, other = stores
    old = await ours.acquire(POLL, "ours", NOW, TTL)
    assert old is not None
    await ours.commit("acme", [], [event("1"), event("2")], fence=old)
    assert len(ours._tail) == 2
    assert await other.acquire(POLL, "other", NOW + at(21), TTL) is not None
    with pytest.raises(FencedError):
        await ours.commit("acme", [], [event("3")], fence=old)
    assert len(ours._tail) == 0
    await other.commit("acme", [], [event("4")])
    await ours.commit("acme", [], [event("5")])
    await assert_exact(ours, other, list(range(-1, 6)))


async def test_a_closed_store_serves_nothing_from_its_tail(tmp_path: Path) -> None:
    store = ProcessStore(tmp_path / "state.db")
    await store.open()
    await store.commit("acme", [], [event("1")])
    await store.close()
    with pytest.raises(Exception, match="not open"):
        await store.read_log(0)
