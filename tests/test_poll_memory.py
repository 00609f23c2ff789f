"""Memory stays flat as tracked records grow: snapshots live in the store, not in RAM.

The peak traced memory (tracemalloc) of a first sync plus one incremental cycle with a
few changes is measured with 2,000 and with 10,000 tracked records; paging bounds it by
the page size, so five times the records must not cost more than ~1.5 times the peak.

The simulator runs in a child process: its own per-request work (it sorts and filters
the whole table for every page) would otherwise be traced here and grow with the records.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import tracemalloc
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from billnotify.clients.billing_platform import BillingPlatformClient
from billnotify.config.models import BillingPlatformSource
from billnotify.sources import build_billing_syncs
from billnotify.store import SqliteStore

PAGE = 100
SMALL = 2_000
LARGE = 10_000
CHANGES = 5
MAX_GROWTH = 1.5
ANSWER_TIMEOUT = 60.0


def _serve(conn: Connection, count: int) -> None:
    """Child process: serve ``count`` tasks; change some on request; stop on None."""
    asyncio.run(_serve_async(conn, count))


async def _serve_async(conn: Connection, count: int) -> None:
    from datetime import UTC, datetime, timedelta

    from billnotify.simulator import Simulator
    from billnotify.simulator.clock import ManualClock, SimClock

    # created an hour ago: incremental polls' createdSince windows do not re-read them
    clock = ManualClock(datetime.now(UTC) - timedelta(hours=1))
    sim = Simulator(page_max=PAGE, clock=clock)
    for i in range(count):
        sim.state.add_billing_task(status="Completed", customerID=str(i % 97))
    sim.state.clock = SimClock()
    await sim.start()
    conn.send(sim.billing_base_url)
    loop = asyncio.get_running_loop()
    try:
        while (request := await loop.run_in_executor(None, conn.recv)) is not None:
            ids, fields = request
            for task_id in ids:
                sim.state.update_billing_task(task_id, **fields)
            conn.send(len(ids))
    finally:
        await sim.stop()


class ChildSimulator:
    """The simulator with ``count`` completed tasks (ids from 1001), in its own process."""

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, count), daemon=True)
        self.process.start()
        child.close()
        try:
            self.billing_base_url: str = self._answer()
        except BaseException:
            self.stop()
            raise

    def _answer(self) -> Any:
        # blocking is fine: nothing else runs on the loop between polls
        if not self.conn.poll(ANSWER_TIMEOUT):
            raise TimeoutError("the simulator process did not answer")
        return self.conn.recv()

    def update(self, ids: list[str], **fields: Any) -> None:
        self.conn.send((ids, fields))
        assert self._answer() == len(ids)

    def stop(self) -> None:
        try:
            self.conn.send(None)
        finally:
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
            self.process.close()
            self.conn.close()


def _config(base_url: str) -> BillingPlatformSource:
    return BillingPlatformSource.model_validate(
        {
            "name": "mem",
            "kind": "billing_platform",
            "base_url": base_url,
            "api_key": "sim-key",
            "watch": ["billing_tasks"],
            "page_size": PAGE,
        }
    )


async def _peak(count: int, folder: Path) -> tuple[int, int]:
    """(peak traced bytes of first sync + one incremental cycle, bytes of all records)."""
    sim = ChildSimulator(count)
    try:
        config = _config(sim.billing_base_url)
        async with (
            SqliteStore(folder / f"{count}.db") as store,
            BillingPlatformClient(config.base_url, config.api_key, page_size=PAGE) as client,
        ):
            (sync,) = build_billing_syncs(config, client, store)
            tracemalloc.start()
            try:
                first = await sync.poll_once()
                sim.update(
                    [str(1001 + i * (count // CHANGES)) for i in range(CHANGES)], priority="9"
                )
                second = await sync.poll_once()
                _, peak = tracemalloc.get_traced_memory()
                # what holding every record in RAM would cost, for scale
                before = tracemalloc.get_traced_memory()[0]
                everything = [r async for page in client.iter_pages("billingTasks") for r in page]
                held = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            assert first.baseline and first.records == count
            assert second.types == {"billing_task.updated": CHANGES}, second
            assert len(everything) == count
            assert await store.count_snapshots("mem", "billing_task") == count
    finally:
        sim.stop()
    return peak, held


async def test_peak_memory_does_not_grow_with_tracked_records(tmp_path: Path) -> None:
    small_peak, small_held = await _peak(SMALL, tmp_path)
    large_peak, large_held = await _peak(LARGE, tmp_path)
    per_record = large_held / LARGE
    print(
        f"peak traced memory: {SMALL:,} records {small_peak / 1e6:.2f} MB, "
        f"{LARGE:,} records {large_peak / 1e6:.2f} MB "
        f"({large_peak / small_peak:.2f}x, limit {MAX_GROWTH}x); "
        f"holding all records would take {small_held / 1e6:.2f} MB vs {large_held / 1e6:.2f} MB "
        f"({per_record:,.0f} B/record)"
    )
    # The bound is tight enough to matter: if snapshots (or fetched records) stayed in
    # RAM, the extra records alone would blow it.
    assert (LARGE - SMALL) * per_record > (MAX_GROWTH - 1) * small_peak
    assert large_peak <= MAX_GROWTH * small_peak
