"""PgStore against a real private PostgreSQL server (``tests/pg.py``), a fresh database
per test: the SQLite store's semantics, and what a shared database adds (concurrent
schema creation, appends heard by other stores, claims that never overlap, gap-free
log order under concurrent writers, outages)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

import pg
from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.errors import StoreError
from billnotify.events import CloudEvent, build_event
from billnotify.store.postgres import PgStore
from billnotify.store.postgres_schema import SCHEMA_VERSION
from billnotify.store.records import AttemptEnd, NewDelivery, SnapshotWrite
from servers import free_port
from store_contract import EventLogContract, LifecycleContract, SnapshotsContract

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pg.PostgresServer]:
    """One private server for the session (skipped where PostgreSQL is missing)."""
    reason = pg.available()
    if reason:
        pytest.skip(reason)
    server = pg.PostgresServer().init()
    yield server
    server.close()


@pytest.fixture
def pg_url(pg_server: pg.PostgresServer) -> str:
    """A fresh, empty database of the test's own."""
    return pg_server.database()


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PgStore]:
    async with PgStore(pg_url, instance="test") as opened:
        yield opened


def _event(object_id: str, key: str = "k", type_: str = "billing_task.created") -> CloudEvent:
    return build_event(
        source="acme",
        entity="billing_task",
        object_id=object_id,
        type_=type_,
        key=key,
        time=NOW,
        data={"object": {"id": object_id, "note": "caf\u00e9 \u2603"}},
    )


async def _until(predicate: object, timeout: float = 10.0) -> None:
    """Await ``predicate()`` (a coroutine function) until it is true, or fail."""
    deadline = time.monotonic() + timeout
    while not await predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# -- the store contract (tests/store_contract.py) ----------------------------------------


@pytest.fixture
async def backend(store: PgStore) -> PgStore:
    """The contract's open, empty store."""
    return store


class TestLifecycle(LifecycleContract):
    pass


class TestSnapshots(SnapshotsContract):
    pass


class TestEventLog(EventLogContract):
    pass


# -- the SQLite store's semantics beyond the contract so far ------------------------------


async def test_events_keep_their_json_through_the_log(store: PgStore) -> None:
    event = _event("1")
    await store.commit("acme", [], [event])
    (entry,) = await store.read_log(0)
    assert entry.json == event.to_json()
    (stored,) = await store.read_events(0)
    assert stored.event == event
    assert [s.event.id for s in await store.get_events([event.id, "evt_unknown"])] == [event.id]
    assert [s.seq for s in await store.list_events(type_glob="billing_task.*")] == [1]
    assert await store.list_events(type_glob="invoice.*") == []
    assert await store.list_events(since=datetime.now(UTC) + timedelta(hours=1)) == []


async def test_a_failed_transaction_leaves_nothing(store: PgStore) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with store._transaction() as conn:
            await conn.execute(
                "INSERT INTO cursors (source, resource, value, updated_at) "
                "VALUES ('a', 'b', 'c', now())"
            )
            raise Boom
    assert await store.get_cursor("a", "b") is None
    await store.ping()


async def test_due_dirty_and_paged_snapshots(store: PgStore) -> None:
    writes = [
        SnapshotWrite("invoice", "1", {"id": "1"}, due_at=NOW - timedelta(minutes=1)),
        SnapshotWrite(
            "invoice", "2", {"id": "2"}, marks=frozenset({"m"}), due_at=NOW + timedelta(days=1)
        ),
    ]
    await store.commit("acme", writes, [])
    due = await store.due_snapshots("acme", "invoice", NOW)
    assert [(s.id, s.due_at) for s in due] == [("1", NOW - timedelta(minutes=1))]
    dirty = await store.dirty_snapshots()
    assert {s.id for s in dirty} == {"1", "2"}
    await store.commit("acme", [writes[0]], [])  # rewritten after being read: stays dirty
    await store.clear_dirty(dirty)
    assert [s.id for s in await store.dirty_snapshots()] == ["1"]
    page = await store.iter_snapshots("acme", "invoice", after_id="1")
    assert [(s.id, s.marks) for s in page] == [("2", frozenset({"m"}))]


async def test_delivery_lifecycle_and_crash_recovery(store: PgStore) -> None:
    once = NewDelivery("r", 0, "invoice_action", "evt_1", 1, exactly_once=True, target="inv 1")
    alert = NewDelivery("r", 1, "webhook", "evt_1", 1, exactly_once=False, target="ops")
    assert await store.record_deliveries([once, alert], "rules", 1, NOW) == 2
    assert await store.record_deliveries([once], "rules", 1, NOW) == 0
    assert await store.get_position("rules") == 1
    assert {d.id for d in await store.due_deliveries(NOW)} == {once.id, alert.id}
    assert await store.oldest_pending_at() == NOW
    await store.start_attempt(once.id, NOW)
    assert await store.start_attempt(alert.id, NOW) == 1
    with pytest.raises(StoreError, match="unknown delivery"):
        await store.start_attempt("dlv_unknown", NOW)
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
    assert await store.count_deliveries() == {
        ("invoice_action", "uncertain"): 1,
        ("webhook", "succeeded"): 1,
    }
    assert [d.id for d in await store.list_deliveries([DeliveryStatus.UNCERTAIN])] == [once.id]
    assert len(await store.list_deliveries()) == 2
    settled = await store.settled_since([DeliveryStatus.SUCCEEDED], NOW)
    assert [d.id for d in settled] == [alert.id]
    assert await store.settled_since([DeliveryStatus.SUCCEEDED], NOW + timedelta(seconds=1)) == []
    assert await store.oldest_pending_at() is None
    assert await store.get_delivery("dlv_unknown") is None


async def test_attempts_start_and_finish_in_batches(store: PgStore) -> None:
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
    assert await store.next_due_at() == NOW + timedelta(seconds=5)
    assert [d.id for d in await store.due_deliveries(NOW + timedelta(seconds=5))] == [second.id]
    assert await store.start_attempts([second.id], NOW) == {}  # not due yet
    assert await store.start_attempts([second.id], NOW + timedelta(seconds=5)) == {second.id: 2}
    assert {d.id for d in await store.get_deliveries([r.id for r in rows])} == {r.id for r in rows}


async def test_due_deliveries_merge_pending_and_scheduled_in_order(store: PgStore) -> None:
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
    assert [d.id for d in await store.due_deliveries(NOW, exclude={rows[1].id})][:1] == [rows[3].id]


async def test_read_due_joins_events_and_disabled_endpoints(store: PgStore) -> None:
    event = _event("1")
    (stored,) = await store.commit("acme", [], [event])
    row = NewDelivery("r", 0, "webhook", event.id, stored.seq, exactly_once=False, target="ops")
    gone = NewDelivery("r", 1, "webhook", "evt_gone", stored.seq, exactly_once=True)
    await store.record_deliveries([row, gone], "rules", 1, NOW, rendered={row.id: '{"a":1}'})
    await store.disable_endpoint("ops", "410 Gone", NOW)
    batch = await store.read_due(NOW)
    assert [(d.id, d.event) for d in batch.deliveries] == [
        (row.id, event.to_json()),
        (gone.id, None),
    ]
    assert batch.deliveries[1].exactly_once is True
    assert batch.disabled == {"ops": "410 Gone"}
    assert await store.get_rendered(row.id) == '{"a":1}'
    await store.enable_endpoint("ops")
    assert await store.disabled_endpoints() == {}


# -- what a shared database adds ----------------------------------------------------------


async def test_five_stores_opening_a_fresh_database_at_once_create_the_schema_once(
    pg_url: str,
) -> None:
    stores = [PgStore(pg_url, instance=f"i{n}") for n in range(5)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await asyncio.gather(*(s.ping() for s in stores))
        rows = await stores[0]._fetch("SELECT version FROM schema_version ORDER BY version")
        assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_schema_newer_than_the_code_is_refused(pg_url: str) -> None:
    async with PgStore(pg_url) as first, first._transaction() as conn:
        await conn.execute("INSERT INTO schema_version (version) VALUES (999)")
    with pytest.raises(StoreError, match="newer than this billnotify"):
        await PgStore(pg_url).open()


async def test_an_append_by_another_store_wakes_its_readers(pg_url: str) -> None:
    async with PgStore(pg_url) as writer, PgStore(pg_url) as reader:
        woken = asyncio.Event()

        async def wait() -> None:
            async with reader.appended:
                await reader.appended.wait()
            woken.set()

        waiter = asyncio.create_task(wait())
        await asyncio.sleep(0)  # the waiter holds the condition before the append
        await writer.commit("acme", [], [_event("1")])
        await asyncio.wait_for(woken.wait(), 5)
        await waiter
        assert [e.seq for e in await reader.read_log(0)] == [1]


async def test_two_stores_never_start_the_same_delivery(pg_url: str) -> None:
    async with PgStore(pg_url, instance="a") as a, PgStore(pg_url, instance="b") as b:
        rows = [NewDelivery("r", i, "webhook", "evt_1", 1, exactly_once=True) for i in range(200)]
        await a.record_deliveries(rows, "rules", 1, NOW)
        one_by_one = await asyncio.gather(
            *(store.start_attempts([row.id], NOW) for row in rows for store in (a, b))
        )
        starts = [id_ for started in one_by_one for id_ in started]
        assert sorted(starts) == sorted(r.id for r in rows)  # each exactly once
        await a.recover_in_flight(NOW)  # all uncertain now; make them due again
        for row in rows:
            await a.set_delivery_status(
                row.id, DeliveryStatus.PENDING, now=NOW, next_attempt_at=NOW
            )
        ids = [r.id for r in rows]
        batches = await asyncio.gather(
            *(store.start_attempts(ids[k::7], NOW) for k in range(7) for store in (a, b))
        )
        starts = [id_ for started in batches for id_ in started]
        assert sorted(starts) == sorted(ids)
        attempts = await a._fetch("SELECT count(*), max(number) FROM attempts")
        assert tuple(attempts[0]) == (400, 2)


async def test_readers_never_skip_an_event_under_concurrent_writers(pg_url: str) -> None:
    async with PgStore(pg_url) as a, PgStore(pg_url) as b, PgStore(pg_url) as reader:
        seen: list[int] = []
        done = asyncio.Event()

        async def read() -> None:
            while True:
                finished = done.is_set()
                entries = await reader.read_log(seen[-1] if seen else 0)
                seen.extend(e.seq for e in entries)
                if finished and not entries:
                    return

        async def write(store: PgStore, name: str) -> None:
            for n in range(60):
                await store.commit("acme", [], [_event(f"{name}{n}a"), _event(f"{name}{n}b")])

        follower = asyncio.create_task(read())
        await asyncio.gather(write(a, "a"), write(b, "b"))
        done.set()
        await follower
        assert seen == list(range(1, 241))


@pytest.mark.fault
async def test_a_server_restart_is_a_store_error_then_the_store_works_again() -> None:
    reason = pg.available()
    if reason:
        pytest.skip(reason)
    server = pg.PostgresServer().init()
    try:
        url = server.database()
        async with PgStore(url, password="s3cr3t-pw", timeout=5) as store, PgStore(url) as other:
            await store.commit("acme", [], [_event("1")])
            await asyncio.to_thread(server.stop)
            with pytest.raises(StoreError) as failed:
                await store.ping()
            assert f"127.0.0.1:{server.port}/" in str(failed.value)
            assert "s3cr3t" not in str(failed.value)
            await asyncio.to_thread(server.start)

            async def works() -> bool:
                try:
                    await store.ping()
                except StoreError:
                    return False
                return True

            await _until(works)
            assert [e.seq for e in await store.read_log(0)] == [1]

            async def heard() -> bool:
                # the listener is back once another store's append wakes this one
                async with store.appended:
                    try:
                        await other.commit("acme", [], [_event(f"x{time.monotonic()}")])
                        await asyncio.wait_for(store.appended.wait(), 0.5)
                    except (TimeoutError, StoreError):
                        return False
                return True

            await _until(heard, timeout=15)
            assert await heard()  # by NOTIFY, not by the wake-up of a listener come back
    finally:
        server.close()


async def test_errors_name_the_server_never_the_password() -> None:
    port = free_port()
    secret = "pw-never-shown"
    for store in (
        PgStore(f"postgresql://billnotify:{secret}@127.0.0.1:{port}/state", timeout=2),
        PgStore(f"postgresql://billnotify@127.0.0.1:{port}/state", password=secret, timeout=2),
    ):
        with pytest.raises(StoreError) as failed:
            await store.open()
        message = str(failed.value)
        assert f"127.0.0.1:{port}/state" in message
        assert secret not in message and secret not in repr(failed.value)
        assert failed.value.__cause__ is None or not isinstance(
            failed.value.__cause__, asyncpg.PostgresError
        )
    with pytest.raises(StoreError, match="postgresql://"):
        PgStore("mysql://u@h/db")
