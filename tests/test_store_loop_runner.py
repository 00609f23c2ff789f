"""The store's SQLite work on the event loop's own thread (``LoopRunner``, what the
store's child process runs): writes made in one turn of the loop share a transaction,
each still all-or-nothing; callers resume in the order of their calls; a cancelled call
is skipped; the WAL is checkpointed once the store has been quiet a while; and a
``SqliteStore(on_loop=True)`` runs no thread at all."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from billnotify.errors import StoreError
from billnotify.store import SqliteStore
from billnotify.store.sqlite_thread import LoopRunner


@pytest.fixture
async def on_loop(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "state.db", on_loop=True)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _put(key: str) -> Callable[[sqlite3.Connection], object]:
    return lambda db: db.execute("INSERT INTO meta (key, value) VALUES (?, 'x')", (key,))


async def _keys(store: SqliteStore) -> list[str]:
    rows = await store._fetch("SELECT key FROM meta WHERE key LIKE 'k%' ORDER BY key")
    return [row[0] for row in rows]


async def test_no_thread_is_started(on_loop: SqliteStore) -> None:
    before = threading.active_count()
    await on_loop.ping()
    assert await on_loop.last_seq() == 0
    assert threading.active_count() == before
    assert isinstance(on_loop._thread, LoopRunner)


async def test_writes_of_one_turn_share_a_transaction_and_a_failing_one_is_rolled_back_alone(
    on_loop: SqliteStore,
) -> None:
    begun: list[bool] = []

    def watch(key: str) -> Callable[[sqlite3.Connection], object]:
        def work(db: sqlite3.Connection) -> object:
            begun.append(db.in_transaction)
            return _put(key)(db)

        return work

    def half_then_fail(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO meta (key, value) VALUES ('k-half', 'x')")
        raise sqlite3.IntegrityError("no")

    results = await asyncio.gather(
        on_loop._write(watch("k1")),
        on_loop._write(half_then_fail),
        on_loop._write(watch("k2")),
        return_exceptions=True,
    )
    assert isinstance(results[1], StoreError)
    assert not isinstance(results[0], BaseException)
    assert not isinstance(results[2], BaseException)
    assert await _keys(on_loop) == ["k1", "k2"]
    assert all(begun)  # each ran inside BEGIN IMMEDIATE ... COMMIT

    statements: list[str] = []
    on_loop._db.set_trace_callback(statements.append)
    await asyncio.gather(*(on_loop._write(_put(f"k-{n}")) for n in range(10)))
    on_loop._db.set_trace_callback(None)
    assert statements.count("COMMIT") == 1, statements


async def test_callers_resume_in_the_order_of_their_calls(on_loop: SqliteStore) -> None:
    order: list[str] = []

    async def call(name: str) -> None:
        await on_loop.ping() if name.startswith("w") else await on_loop.last_seq()
        order.append(name)

    names = ["w1", "r1", "w2", "w3", "r2", "w4"]
    await asyncio.gather(*(call(name) for name in names))
    assert order == names


async def test_a_call_cancelled_before_it_runs_is_skipped(on_loop: SqliteStore) -> None:
    write = asyncio.ensure_future(on_loop._write(_put("k-cancelled")))
    await asyncio.sleep(0)  # queued, not yet run
    write.cancel()
    await on_loop._write(_put("k-after"))
    assert await _keys(on_loop) == ["k-after"]


async def test_the_wal_is_checkpointed_once_quiet_and_not_while_calls_come() -> None:
    idle: list[float] = []
    loop = asyncio.get_running_loop()

    def on_idle() -> bool:
        idle.append(loop.time())
        return True

    runner = LoopRunner(on_idle)
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE t (n INTEGER)")
    try:
        started = loop.time()
        for n in range(6):  # a write every 0.3 s for 1.5 s: never quiet for 1 s
            await runner.write(db, lambda d, n=n: d.execute("INSERT INTO t VALUES (?)", (n,)))
            await asyncio.sleep(0.3)
        assert idle == []
        deadline = loop.time() + 5.0
        while not idle and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert len(idle) == 1 and idle[0] - started >= 1.5 + 1.0 - 0.3
        await asyncio.sleep(1.3)
        assert len(idle) == 1  # done: not again until the next write
    finally:
        runner.stop()
        db.close()
