"""SqliteStore: atomic commits, de-duplicated log, positions and the delivery ledger."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.events import build_event
from billnotify.store import NewDelivery, SnapshotWrite, SqliteStore
from billnotify.store.records import AttemptEnd

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def _event(object_id: str, key: str = "k", type_: str = "billing_task.created"):
    return build_event(
        source="acme",
        entity="billing_task",
        object_id=object_id,
        type_=type_,
        key=key,
        time=NOW,
        data={"object": {"id": object_id}},
    )


async def test_commit_writes_snapshots_events_and_cursor_together(store: SqliteStore) -> None:
    writes = [SnapshotWrite("billing_task", "1", {"id": "1", "status": "Pending"})]
    stored = await store.commit("acme", writes, [_event("1")], ("billing_tasks", "c1"))
    assert [s.seq for s in stored] == [1]
    assert await store.get_cursor("acme", "billing_tasks") == "c1"
    snaps = await store.get_snapshots("acme", "billing_task", ["1", "2"])
    assert list(snaps) == ["1"]
    assert snaps["1"].record["status"] == "Pending"
    assert snaps["1"].version == 1


async def test_a_duplicate_event_id_is_never_logged_twice(store: SqliteStore) -> None:
    await store.commit("acme", [], [_event("1")])
    assert await store.commit("acme", [], [_event("1")]) == []
    assert await store.last_seq() == 1


async def test_a_repeated_transition_gets_a_new_salted_id(store: SqliteStore) -> None:
    write = SnapshotWrite("billing_task", "1", {"id": "1"})
    await store.commit("acme", [write], [_event("1", "same")])
    again = await store.commit("acme", [write], [_event("1", "same")])
    assert len(again) == 1
    assert again[0].event.id.endswith("_2")


async def test_one_commit_with_a_repeated_event_logs_it_once_or_salted(
    store: SqliteStore,
) -> None:
    plain = await store.commit("acme", [], [_event("1"), _event("2"), _event("1")])
    assert [s.event.id for s in plain] == [_event("1").id, _event("2").id]
    assert [s.seq for s in plain] == [1, 2]
    write = SnapshotWrite("billing_task", "3", {"id": "3"})
    salted = await store.commit("acme", [write, write], [_event("3"), _event("3")])
    assert [s.event.id for s in salted] == [_event("3").id, _event("3").id + "_2"]
    assert [s.seq for s in salted] == [3, 4]
    snaps = await store.get_snapshots("acme", "billing_task", ["3"])
    assert snaps["3"].version == 2


async def test_failed_transaction_leaves_nothing(store: SqliteStore) -> None:
    class Boom(Exception):
        pass

    def work(db: sqlite3.Connection) -> None:
        db.execute(
            "INSERT INTO cursors (source, resource, value, updated_at) VALUES ('a','b','c',0)"
        )
        raise Boom

    with pytest.raises(Boom):
        await store._write(work)
    assert await store.get_cursor("a", "b") is None
    await store.ping()  # the connection is usable again: nothing was left open


async def test_due_and_dirty_snapshots(store: SqliteStore) -> None:
    writes = [
        SnapshotWrite("invoice", "1", {"id": "1"}, due_at=NOW - timedelta(minutes=1)),
        SnapshotWrite("invoice", "2", {"id": "2"}, due_at=NOW + timedelta(days=1)),
    ]
    await store.commit("acme", writes, [])
    due = await store.due_snapshots("acme", "invoice", NOW)
    assert [s.id for s in due] == ["1"]
    dirty = await store.dirty_snapshots()
    assert {s.id for s in dirty} == {"1", "2"}
    await store.commit("acme", [writes[0]], [])  # rewritten after being read: stays dirty
    await store.clear_dirty(dirty)
    assert [s.id for s in await store.dirty_snapshots()] == ["1"]


async def test_delivery_lifecycle_and_crash_recovery(store: SqliteStore) -> None:
    once = NewDelivery("r", 0, "invoice_action", "evt_1", 1, exactly_once=True, target="inv 1")
    alert = NewDelivery("r", 1, "webhook", "evt_1", 1, exactly_once=False, target="ops")
    assert await store.record_deliveries([once, alert], "rules", 1, NOW) == 2
    assert await store.record_deliveries([once], "rules", 1, NOW) == 0
    assert await store.get_position("rules") == 1
    due = await store.due_deliveries(NOW)
    assert {d.id for d in due} == {once.id, alert.id}
    await store.start_attempt(once.id, NOW)
    n = await store.start_attempt(alert.id, NOW)
    assert n == 1
    assert await store.recover_in_flight(NOW) == (1, 1)
    assert (await store.get_delivery(once.id)).status is DeliveryStatus.UNCERTAIN
    got = await store.get_delivery(alert.id)
    assert got.status is DeliveryStatus.RETRY_SCHEDULED
    assert got.history[0].outcome is Outcome.UNCERTAIN
    n = await store.start_attempt(alert.id, NOW)
    await store.finish_attempt(
        alert.id,
        n,
        now=NOW,
        outcome=Outcome.SUCCESS,
        status=DeliveryStatus.SUCCEEDED,
        status_code=200,
    )
    got = await store.get_delivery(alert.id)
    assert (got.status, got.attempts, got.last_status_code) == (DeliveryStatus.SUCCEEDED, 2, 200)
    counts = await store.count_deliveries()
    assert counts == {("invoice_action", "uncertain"): 1, ("webhook", "succeeded"): 1}
    assert [d.id for d in await store.list_deliveries([DeliveryStatus.UNCERTAIN])] == [once.id]


async def test_attempts_start_and_finish_in_batches(store: SqliteStore) -> None:
    rows = [NewDelivery("r", i, "webhook", "evt_1", 1, exactly_once=False) for i in range(3)]
    await store.record_deliveries(rows, "rules", 1, NOW)
    await store.set_delivery_status(rows[2].id, DeliveryStatus.DEAD, now=NOW)
    started = await store.start_attempts([r.id for r in rows] + ["dlv_unknown"], NOW)
    assert started == {rows[0].id: 1, rows[1].id: 1}  # the dead and the unknown are left alone
    assert await store.start_attempts([rows[0].id], NOW) == {}  # already sending
    assert await store.due_deliveries(NOW) == []
    await store.finish_attempts(
        [
            AttemptEnd(rows[0].id, 1, NOW, Outcome.SUCCESS, DeliveryStatus.SUCCEEDED, None, 200),
            AttemptEnd(
                rows[1].id,
                1,
                NOW,
                Outcome.RETRYABLE,
                DeliveryStatus.RETRY_SCHEDULED,
                NOW + timedelta(seconds=5),
                503,
                "HTTP 503",
            ),
        ]
    )
    first, second = await store.get_delivery(rows[0].id), await store.get_delivery(rows[1].id)
    assert first.status is DeliveryStatus.SUCCEEDED and first.history[0].status_code == 200
    assert second.status is DeliveryStatus.RETRY_SCHEDULED and second.last_error == "HTTP 503"
    assert second.history[0].outcome is Outcome.RETRYABLE
    assert [d.id for d in await store.due_deliveries(NOW + timedelta(seconds=5))] == [second.id]
    assert await store.start_attempts([second.id], NOW) == {}  # not due yet
    assert await store.start_attempts([second.id], NOW + timedelta(seconds=5)) == {second.id: 2}


async def test_due_deliveries_merge_pending_and_scheduled_in_order(store: SqliteStore) -> None:
    rows = [NewDelivery("r", i, "webhook", f"evt_{i}", i, exactly_once=False) for i in range(4)]
    await store.record_deliveries(rows, "rules", 4, NOW)
    for row, minutes in ((rows[1], -3), (rows[3], -1)):
        await store.set_delivery_status(
            row.id,
            DeliveryStatus.RETRY_SCHEDULED,
            now=NOW,
            next_attempt_at=NOW + timedelta(minutes=minutes),
        )
    due = await store.due_deliveries(NOW, limit=3)
    assert [d.id for d in due] == [rows[1].id, rows[3].id, rows[0].id]
