"""rules.outcomes: outcomes written close together share one commit; none is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.deliveries.outcomes import OutcomeWriter
from billnotify.errors import StoreError
from billnotify.store import NewDelivery, SqliteStore
from billnotify.store.records import AttemptEnd

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


class CountingStore(SqliteStore):
    """A real store that remembers the size of every finish_attempts batch."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[int] = []
        self.fail = False

    async def finish_attempts(self, ends: Sequence[AttemptEnd]) -> None:
        self.batches.append(len(ends))
        if self.fail:
            raise StoreError("disk full")
        await super().finish_attempts(ends)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    async with CountingStore(tmp_path / "state.db") as s:
        yield s


async def _started(store: SqliteStore, count: int) -> list[str]:
    rows = [NewDelivery("r", i, "webhook", "evt_1", 1, exactly_once=False) for i in range(count)]
    await store.record_deliveries(rows, "rules", 1, NOW)
    numbers = await store.start_attempts([r.id for r in rows], NOW)
    assert len(numbers) == count
    return [r.id for r in rows]


def _end(delivery_id: str) -> AttemptEnd:
    return AttemptEnd(delivery_id, 1, NOW, Outcome.SUCCESS, DeliveryStatus.SUCCEEDED, None, 200)


async def test_outcomes_arriving_together_are_committed_together(store: CountingStore) -> None:
    ids = await _started(store, 20)
    writer = OutcomeWriter(store)
    await asyncio.gather(*(writer.write(_end(i)) for i in ids))
    assert sum(store.batches) == 20 and len(store.batches) <= 2  # the first may go alone
    rows = await store.list_deliveries([DeliveryStatus.SUCCEEDED])
    assert len(rows) == 20  # committed before write() returned


async def test_a_writer_cancelled_while_waiting_still_gets_its_outcome_committed(
    store: CountingStore,
) -> None:
    (delivery_id,) = await _started(store, 1)
    writer = OutcomeWriter(store)
    task = asyncio.create_task(writer.write(_end(delivery_id)))
    await asyncio.sleep(0)  # queued, commit under way
    task.cancel()
    await writer.flush()
    row = await store.get_delivery(delivery_id)
    assert row is not None and row.status is DeliveryStatus.SUCCEEDED


async def test_a_commit_the_store_failed_is_tried_again_until_it_holds(
    store: CountingStore,
) -> None:
    ids = await _started(store, 3)
    store.fail = True  # a full disk, say
    writer = OutcomeWriter(store)
    writing = asyncio.gather(*(writer.write(_end(i)) for i in ids))
    async with asyncio.timeout(5):
        while len(store.batches) < 3:
            await asyncio.sleep(0.01)
    assert not writing.done()  # nobody is told "failed" for a store that will recover
    store.fail = False
    async with asyncio.timeout(5):
        await writing
    assert {d.status for d in await store.list_deliveries()} == {DeliveryStatus.SUCCEEDED}


async def test_once_flushed_a_failed_commit_reaches_every_writer_of_the_batch(
    store: CountingStore,
) -> None:
    ids = await _started(store, 3)
    store.fail = True
    writer = OutcomeWriter(store)
    writing = asyncio.gather(*(writer.write(_end(i)) for i in ids), return_exceptions=True)
    async with asyncio.timeout(5):
        await writer.flush()  # shutting down: the store is not waited for any longer
    results = await writing
    assert all(isinstance(r, StoreError) for r in results)
    assert {d.status for d in await store.list_deliveries()} == {DeliveryStatus.SENDING}
