"""SqliteStore's transactions: a failed one leaves nothing, writes queued together share
one, each still all-or-nothing, and callers resume in the order of their calls.

What every backend does is in the store contract (``store_contract*.py``)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable

import pytest

from billnotify.errors import StoreError
from billnotify.store import SqliteStore


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
