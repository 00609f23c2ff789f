"""PgStore against a real private PostgreSQL server (``tests/pg.py``), a fresh database
per test: what a shared database adds to the store contract (which
``test_store_contract.py`` runs against PostgreSQL too): concurrent schema creation,
appends heard by other stores, claims that never overlap, gap-free log order under
concurrent writers, outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

import pg
from billnotify.deliveries.base import DeliveryStatus
from billnotify.errors import FencedError, StoreError
from billnotify.events import CloudEvent, build_event
from billnotify.store.postgres import PgStore
from billnotify.store.postgres_schema import SCHEMA_VERSION
from billnotify.store.records import NewDelivery
from servers import free_port

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


@pytest.fixture
def pg_url() -> str:
    """A fresh, empty database of the test's own (on the session's private server)."""
    return pg.shared().database()


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


# -- what a shared database adds ----------------------------------------------------------
# (the SQLite store's semantics are the store contract's: tests/test_store_contract.py)


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


async def test_of_several_stores_acquiring_at_once_one_gets_the_lease(pg_url: str) -> None:
    stores = [PgStore(pg_url, instance=f"i{n}") for n in range(5)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        for round_ in range(10):  # a fresh lease each round, and one lapsing
            name = f"poll:acme/r{round_}"
            got = await asyncio.gather(
                *(s.acquire(name, s.instance, NOW, timedelta(seconds=15)) for s in stores)
            )
            assert len([lease for lease in got if lease is not None]) == 1
            later = NOW + timedelta(seconds=15)
            over = await asyncio.gather(
                *(s.acquire(name, s.instance, later, timedelta(seconds=15)) for s in stores)
            )
            held = [lease for lease in over if lease is not None]
            assert len(held) == 1 and held[0].epoch in (1, 2)
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_fenced_write_in_flight_holds_off_a_takeover_until_it_commits(
    pg_url: str,
) -> None:
    async with PgStore(pg_url, instance="a") as a, PgStore(pg_url, instance="b") as b:
        old = await a.acquire("publish", "a", NOW, timedelta(seconds=15))
        assert old is not None
        async with a._transaction() as conn:
            await a._check_fence(conn, old)  # the lease row is locked FOR SHARE
            takeover = asyncio.create_task(
                b.acquire("publish", "b", NOW + timedelta(seconds=20), timedelta(seconds=15))
            )
            await asyncio.sleep(0.3)
            assert not takeover.done()  # waits for the fenced write to commit
            await a._set_position(conn, "mqtt", 7)
        lease = await asyncio.wait_for(takeover, 5)
        assert lease is not None and (lease.holder, lease.epoch) == ("b", 2)
        assert await b.get_position("mqtt") == 7
        with pytest.raises(FencedError, match="publish"):
            await a.set_position("mqtt", 8, fence=old)
        assert await b.get_position("mqtt") == 7


async def test_a_dead_instances_rows_are_recovered_once_by_stores_sweeping_at_once(
    pg_url: str,
) -> None:
    async with (
        PgStore(pg_url, instance="dead") as dead,
        PgStore(pg_url, instance="a") as a,
        PgStore(pg_url, instance="b") as b,
    ):
        rows = [
            NewDelivery("r", i, "email", "evt_1", 1, exactly_once=i % 2 == 0) for i in range(120)
        ]
        await a.record_deliveries(rows, "rules", 1, NOW)
        await dead.start_attempts([r.id for r in rows[:100]], NOW)
        mine = await a.start_attempts([r.id for r in rows[100:]], NOW)
        assert len(mine) == 20
        results = await asyncio.gather(
            *(store.recover_in_flight(NOW, live=["a", "b"]) for _ in range(4) for store in (a, b))
        )
        assert tuple(map(sum, zip(*results, strict=True))) == (50, 50)  # each row once
        assert {d.id for d in await a.list_deliveries([DeliveryStatus.SENDING])} == set(mine)
        open_attempts = await a._fetchval("SELECT count(*) FROM attempts WHERE finished_at IS NULL")
        assert open_attempts == 20  # a's own attempts in flight stay open


async def test_work_made_due_by_another_store_wakes_its_idle_workers(pg_url: str) -> None:
    async with PgStore(pg_url, instance="a") as a, PgStore(pg_url, instance="b") as b:
        woken = asyncio.Event()
        ready = asyncio.Event()

        async def idle() -> None:
            async with b.due_changed:
                ready.set()
                await b.due_changed.wait()
            woken.set()

        worker = asyncio.create_task(idle())
        await asyncio.wait_for(ready.wait(), 5)
        await a.record_deliveries(
            [NewDelivery("r", 0, "webhook", "evt_1", 1, exactly_once=False)], "rules", 1, NOW
        )
        await asyncio.wait_for(woken.wait(), 5)
        await worker
        assert [d.event_id for d in await b.due_deliveries(NOW)] == ["evt_1"]
