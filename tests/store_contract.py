"""The store contract: what every backend of the store protocols must do.

Each class holds the tests of one protocol; they take a ``backend`` fixture, an open,
empty store. ``test_store_contract.py`` runs them against every backend (memory, SQLite,
the SQLite store in a process of its own); a new backend is one more entry in its
``BACKENDS``. Backend-specific behaviour (SQLite's WAL, indexes, the child process's
signals) is tested in the backend's own test files.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.errors import StoreError
from billnotify.events import CloudEvent, build_event
from billnotify.store import NewDelivery, SnapshotWrite, Store
from billnotify.store.records import AttemptEnd

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def event(object_id: str, key: str = "k", entity: str = "billing_task") -> CloudEvent:
    """An event of the record ``object_id`` (same id and key: the same transition)."""
    return build_event(
        source="acme",
        entity=entity,
        object_id=object_id,
        type_=f"{entity}.created",
        key=key,
        time=NOW,
        data={"object": {"id": object_id, "note": "caf\u00e9 \u2603"}},
    )


def deliveries(count: int, *, exactly_once: bool = False) -> list[NewDelivery]:
    """``count`` webhook deliveries of events 0.. ``count - 1``, in event order."""
    return [
        NewDelivery("r", 0, "webhook", f"evt_{n}", n, exactly_once=exactly_once, target="ops")
        for n in range(count)
    ]


def end(id_: str, number: int, status: DeliveryStatus, **fields: object) -> AttemptEnd:
    """How attempt ``number`` of ``id_`` ended (success unless ``outcome`` is given)."""
    outcome = fields.pop("outcome", Outcome.SUCCESS)
    return AttemptEnd(id_, number, NOW, outcome, status, **fields)  # type: ignore[arg-type]


class LifecycleContract:
    async def test_a_closed_store_refuses_calls_and_keeps_its_data(self, backend: Store) -> None:
        await backend.ping()
        await backend.commit("acme", [], [event("1")], ("billing_tasks", "c1"))
        await backend.close()
        with pytest.raises(StoreError, match="not open"):
            await backend.last_seq()
        await backend.open()
        assert await backend.last_seq() == 1
        assert await backend.get_cursor("acme", "billing_tasks") == "c1"

    async def test_calls_complete_in_the_order_they_are_made(self, backend: Store) -> None:
        calls = []
        for seq in range(1, 31):
            calls.append(backend.set_position("rules", seq))
            calls.append(backend.get_position("rules"))
        results = await asyncio.gather(*calls)
        assert results[1::2] == list(range(1, 31))


class SnapshotsContract:
    async def test_commit_writes_snapshots_events_and_cursor_together(self, backend: Store) -> None:
        writes = [SnapshotWrite("billing_task", "1", {"id": "1", "status": "Pending"})]
        stored = await backend.commit("acme", writes, [event("1")], ("billing_tasks", "c1"))
        assert [s.seq for s in stored] == [1]
        assert stored[0].event == event("1")
        assert await backend.get_cursor("acme", "billing_tasks") == "c1"
        assert await backend.get_cursor("acme", "invoices") is None
        snaps = await backend.get_snapshots("acme", "billing_task", ["1", "2"])
        assert list(snaps) == ["1"]
        assert snaps["1"].record == {"id": "1", "status": "Pending"}
        assert (snaps["1"].source, snaps["1"].entity, snaps["1"].version) == (
            "acme",
            "billing_task",
            1,
        )

    async def test_a_record_read_and_changed_does_not_change_the_store(
        self, backend: Store
    ) -> None:
        await backend.commit("acme", [SnapshotWrite("invoice", "1", {"id": "1"})], [])
        (await backend.get_snapshots("acme", "invoice", ["1"]))["1"].record["id"] = "x"
        assert (await backend.get_snapshots("acme", "invoice", ["1"]))["1"].record == {"id": "1"}

    async def test_rewrites_bump_the_version_and_keep_marks(self, backend: Store) -> None:
        write = SnapshotWrite("billing_task", "1", {"id": "1"}, frozenset({"stall"}))
        await backend.commit("acme", [write], [])
        await backend.commit("acme", [write, write], [])
        snap = (await backend.get_snapshots("acme", "billing_task", ["1"]))["1"]
        assert snap.version == 3 and snap.marks == {"stall"}

    async def test_due_and_dirty_snapshots(self, backend: Store) -> None:
        writes = [
            SnapshotWrite("invoice", "1", {"id": "1"}, due_at=NOW - timedelta(minutes=1)),
            SnapshotWrite("invoice", "2", {"id": "2"}, due_at=NOW + timedelta(days=1)),
            SnapshotWrite("invoice", "3", {"id": "3"}, due_at=NOW - timedelta(minutes=2)),
        ]
        await backend.commit("acme", writes, [])
        due = await backend.due_snapshots("acme", "invoice", NOW)
        assert [s.id for s in due] == ["3", "1"]
        assert due[1].due_at == NOW - timedelta(minutes=1)
        assert [s.id for s in await backend.due_snapshots("acme", "invoice", NOW, limit=1)] == ["3"]
        dirty = await backend.dirty_snapshots()
        assert {s.id for s in dirty} == {"1", "2", "3"}
        await backend.commit("acme", [writes[0]], [])  # rewritten after being read: stays dirty
        await backend.clear_dirty(dirty)
        assert [s.id for s in await backend.dirty_snapshots()] == ["1"]

    async def test_snapshots_are_counted_and_paged_by_id(self, backend: Store) -> None:
        writes = [SnapshotWrite("invoice", str(n), {"id": str(n)}) for n in (3, 1, 2)]
        await backend.commit("acme", [*writes, SnapshotWrite("task", "9", {})], [])
        await backend.commit("other", [SnapshotWrite("invoice", "1", {})], [])
        assert await backend.count_snapshots("acme") == 4
        assert await backend.count_snapshots("acme", "invoice") == 3
        assert await backend.count_snapshots("nobody") == 0
        first = await backend.iter_snapshots("acme", "invoice", limit=2)
        assert [s.id for s in first] == ["1", "2"]
        rest = await backend.iter_snapshots("acme", "invoice", after_id="2")
        assert [s.id for s in rest] == ["3"]


class EventLogContract:
    async def test_a_duplicate_event_id_is_never_logged_twice(self, backend: Store) -> None:
        await backend.commit("acme", [], [event("1")])
        assert await backend.commit("acme", [], [event("1")]) == []
        assert await backend.last_seq() == 1

    async def test_a_repeated_transition_gets_a_new_salted_id(self, backend: Store) -> None:
        write = SnapshotWrite("billing_task", "1", {"id": "1"})
        first = await backend.commit("acme", [write], [event("1", "same")])
        again = await backend.commit("acme", [write], [event("1", "same")])
        same = event("1", "same").id
        assert [s.event.id for s in first + again] == [same, same + "_2"]
        logged = await backend.read_events(0)
        assert [s.event for s in logged] == [first[0].event, again[0].event]
        assert (await backend.read_log(1))[0].json == again[0].event.to_json()

    async def test_one_commit_with_a_repeated_event_logs_it_once_or_salted(
        self, backend: Store
    ) -> None:
        plain = await backend.commit("acme", [], [event("1"), event("2"), event("1")])
        assert [s.event.id for s in plain] == [event("1").id, event("2").id]
        assert [s.seq for s in plain] == [1, 2]
        write = SnapshotWrite("billing_task", "3", {"id": "3"})
        salted = await backend.commit("acme", [write, write], [event("3"), event("3")])
        assert [s.event.id for s in salted] == [event("3").id, event("3").id + "_2"]
        assert [s.seq for s in salted] == [3, 4]
        snaps = await backend.get_snapshots("acme", "billing_task", ["3"])
        assert snaps["3"].version == 2

    async def test_appended_events_get_the_seqs_the_log_reads_back(self, backend: Store) -> None:
        await backend.commit("acme", [], [event("0")])
        appended = await backend.commit("acme", [], [event(str(n)) for n in range(1, 6)])
        read = await backend.read_events(0)
        assert [(s.seq, s.event) for s in appended] == [(s.seq, s.event) for s in read[1:]]
        log = await backend.read_log(appended[1].seq, limit=2)
        assert [e.seq for e in log] == [s.seq for s in appended[2:4]]
        entry = log[0]
        assert (entry.id, entry.type, entry.source) == (
            appended[2].event.id,
            "billing_task.created",
            "acme",
        )
        assert CloudEvent.from_json(entry.json) == appended[2].event
        assert entry.json == appended[2].event.to_json()  # the JSON as logged, byte for byte
        assert await backend.read_events(appended[-1].seq) == []

    async def test_a_commit_wakes_those_waiting_for_events(self, backend: Store) -> None:
        woken = asyncio.Event()

        async def wait() -> None:
            async with backend.appended:
                woken.set()
                await backend.appended.wait()

        waiter = asyncio.create_task(wait())
        await asyncio.wait_for(woken.wait(), 5)
        await backend.commit("acme", [], [event("1")])
        await asyncio.wait_for(waiter, 5)

    async def test_events_are_listed_by_time_and_type_and_found_by_id(self, backend: Store) -> None:
        stored = await backend.commit(
            "acme", [], [event("1"), event("2", entity="invoice"), event("3")]
        )
        listed = await backend.list_events(type_glob="billing_task.*")
        assert [s.seq for s in listed] == [stored[0].seq, stored[2].seq]
        assert [s.seq for s in await backend.list_events(limit=1)] == [stored[2].seq]
        later = datetime.now(UTC) + timedelta(minutes=5)
        assert await backend.list_events(since=later) == []
        found = await backend.get_events([stored[2].event.id, "evt_nope", stored[0].event.id])
        assert [s.event for s in found] == [stored[0].event, stored[2].event]
        assert await backend.get_events([]) == []

    async def test_positions_start_at_zero_and_move(self, backend: Store) -> None:
        assert await backend.last_seq() == 0
        assert await backend.get_position("mqtt") == 0
        await backend.set_position("mqtt", 7)
        await backend.set_position("mqtt", 9)
        assert (await backend.get_position("mqtt"), await backend.get_position("rules")) == (9, 0)
