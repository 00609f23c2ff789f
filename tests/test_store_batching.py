"""SqliteStore: writes queued together share a transaction, each still all-or-nothing;
the worker's and the rule handler's reads come back whole and in order."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.errors import StoreError
from billnotify.events import CloudEvent, build_event
from billnotify.store import NewDelivery, SqliteStore
from billnotify.store.records import AttemptEnd

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def _event(n: int, entity: str = "billing_task") -> CloudEvent:
    return build_event(
        source="acme",
        entity=entity,
        object_id=str(n),
        type_=f"{entity}.created",
        key=str(n),
        time=NOW,
        data={"object": {"id": str(n), "note": "caf\u00e9 \u2603"}},
    )


async def _meta_keys(store: SqliteStore) -> list[str]:
    rows = await store._fetch("SELECT key FROM meta WHERE key LIKE 'k%' ORDER BY key")
    return [row[0] for row in rows]


async def test_a_failing_write_is_rolled_back_alone_when_others_share_its_transaction(
    store: SqliteStore,
) -> None:
    def put(key: str) -> Callable[[sqlite3.Connection], object]:
        return lambda db: db.execute("INSERT INTO meta (key, value) VALUES (?, 'x')", (key,))

    def half_then_fail(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO meta (key, value) VALUES ('k-half', 'x')")
        raise sqlite3.IntegrityError("no")

    results = await asyncio.gather(
        store._write(put("k1")),
        store._write(half_then_fail),
        store._write(put("k2")),
        return_exceptions=True,
    )
    assert isinstance(results[1], StoreError)
    assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
    assert await _meta_keys(store) == ["k1", "k2"]


async def test_callers_resume_in_the_order_of_their_calls(store: SqliteStore) -> None:
    order: list[str] = []

    async def call(name: str) -> None:
        await store.ping() if name.startswith("w") else await store.last_seq()
        order.append(name)

    names = ["w1", "r1", "w2", "w3", "r2", "w4"]
    await asyncio.gather(*(call(name) for name in names))
    assert order == names


async def test_appended_events_get_the_seqs_the_log_reads_back(store: SqliteStore) -> None:
    await store.commit("acme", [], [_event(0)])
    appended = await store.commit("acme", [], [_event(n) for n in range(1, 6)])
    read = await store.read_events(0)
    assert [(s.seq, s.event) for s in appended] == [(s.seq, s.event) for s in read[1:]]
    log = await store.read_log(appended[1].seq, limit=2)
    assert [e.seq for e in log] == [s.seq for s in appended[2:4]]
    entry = log[0]
    assert (entry.id, entry.type, entry.source) == (
        appended[2].event.id,
        "billing_task.created",
        "acme",
    )
    assert CloudEvent.from_json(entry.json) == appended[2].event
    assert entry.json == appended[2].event.to_json()  # the JSON as logged, byte for byte


async def test_read_due_brings_each_due_delivery_with_its_event(store: SqliteStore) -> None:
    stored = await store.commit("acme", [], [_event(n) for n in range(4)])
    rows = [
        NewDelivery("r", 0, "webhook", s.event.id, s.seq, exactly_once=n % 2 == 0, target="ops")
        for n, s in enumerate(stored)
    ]
    rows.append(NewDelivery("r", 0, "webhook", "evt_gone", 99, exactly_once=False))
    await store.record_deliveries(rows, "rules", stored[-1].seq, NOW)
    await store.set_delivery_status(
        rows[0].id,
        DeliveryStatus.RETRY_SCHEDULED,
        now=NOW,
        next_attempt_at=NOW - timedelta(minutes=1),  # due before the others
    )
    await store.set_delivery_status(
        rows[3].id, DeliveryStatus.RETRY_SCHEDULED, now=NOW, next_attempt_at=NOW + timedelta(1)
    )
    await store.disable_endpoint("ops", "410", NOW)

    batch = await store.read_due(NOW, limit=10, exclude=[rows[2].id])

    assert [d.id for d in batch.deliveries] == [rows[0].id, rows[1].id, rows[4].id]
    assert batch.deliveries[0].event == stored[0].event.to_json()
    assert batch.deliveries[0].exactly_once is True
    assert batch.deliveries[1].exactly_once is False
    assert batch.deliveries[1].target == "ops"
    assert batch.deliveries[2].event is None  # not in the log
    assert batch.disabled == {"ops": "410"}
    assert [d.id for d in (await store.read_due(NOW, limit=1)).deliveries] == [rows[0].id]


@pytest.mark.parametrize("count", [1, 7, 450])
async def test_batches_of_any_size_start_and_finish_together(
    store: SqliteStore, count: int
) -> None:
    rows = [NewDelivery("r", i, "webhook", "evt_1", 1, exactly_once=False) for i in range(count)]
    assert await store.record_deliveries(rows, "rules", 1, NOW) == count
    numbers = await store.start_attempts([r.id for r in rows], NOW)
    assert numbers == {r.id: 1 for r in rows}
    await store.finish_attempts(
        [
            AttemptEnd(r.id, 1, NOW, Outcome.SUCCESS, DeliveryStatus.SUCCEEDED, None, 200)
            for r in rows
        ]
    )
    assert await store.count_deliveries() == {("webhook", "succeeded"): count}
    got = await store.get_delivery(rows[-1].id)
    assert got is not None and got.history[0].status_code == 200
