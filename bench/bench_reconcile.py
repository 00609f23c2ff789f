"""The deleted-records reconcile on a large account: 20,000 billing tasks.

One :meth:`IdReconciler.reconcile_once` (the known ids read from the store, every page
listed, the ids compared, 20 deletions committed) against a bare aiohttp loop listing the
same pages, in the same run. Two platforms: a *static* server answering from
pre-serialised pages (the reconcile's own cost dominates) and the simulator (a server
filtering each page itself). Two stores: SQLite in this process and in its own process,
as ``billnotify run`` has it.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from bench import BenchResult
from bench.bench_paging import API_KEY, PAGE, RECORDS, _raw_loop, _StaticServer
from billnotify.clients import BillingPlatformClient
from billnotify.config.models import BillingPlatformSource
from billnotify.sources import build_billing_syncs
from billnotify.sources.reconcile_ids import IdReconciler, build_id_reconciler
from billnotify.store import ProcessStore, SqliteStore
from billnotify.store.base import Store

ROUNDS = 3
_STORES = {"sqlite": "SQLite in this process", "process": "SQLite in its own process"}
GONE = 20


def _source(base_url: str) -> BillingPlatformSource:
    return BillingPlatformSource.model_validate(
        {
            "name": "bench",
            "kind": "billing_platform",
            "base_url": base_url,
            "api_key": API_KEY,
            "watch": ["billing_tasks"],
            "page_size": PAGE,
        }
    )


@asynccontextmanager
async def _store(kind: str, folder: Path) -> AsyncIterator[Store]:
    store: Store = (
        ProcessStore(folder / "p.db") if kind == "process" else SqliteStore(folder / "s.db")
    )
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _best(fn: Callable[[], Awaitable[object]]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        await fn()
        best = min(best, time.perf_counter() - started)
    return best


async def _measure(
    base_url: str, label: str, kind: str, drop: Callable[[int], None]
) -> BenchResult:
    config = _source(base_url)
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            _store(kind, Path(tmp)) as store,
            aiohttp.ClientSession() as session,
            BillingPlatformClient(base_url, API_KEY, session=session, page_size=PAGE) as client,
        ):
            (sync,) = build_billing_syncs(config, client, store)
            await sync.poll_once()  # the baseline: 20k snapshots
            reconciler = build_id_reconciler(sync, config)
            assert isinstance(reconciler, IdReconciler)

            async def raw() -> None:
                await _raw_loop(session, base_url, API_KEY)

            baseline = await _best(raw)
            unchanged = await _best(reconciler.reconcile_once)
            for n in range(GONE):
                drop(1001 + n * 997)
            started = time.perf_counter()
            stats = await reconciler.reconcile_once()
            with_deletions = time.perf_counter() - started
            if stats.deleted != GONE:
                raise RuntimeError(f"{stats.deleted} deleted, expected {GONE}")
    notes = (
        f"{RECORDS} tasks known, limit {PAGE}: {stats.requests} list requests; "
        f"{with_deletions:.2f} s with {GONE} deletions; {_STORES[kind]}; best of {ROUNDS} "
        "(baseline: a bare aiohttp loop listing the same pages)"
    )
    return BenchResult.versus(f"reconcile.{label}.{kind}", unchanged, "s", baseline, notes)


async def run() -> list[BenchResult]:
    """Measure one reconcile of 20k tasks against the static server and the simulator."""
    from billnotify.simulator import Simulator

    results = []
    for kind in ("sqlite", "process"):
        server = _StaticServer(RECORDS)
        await server.start()
        try:

            def drop(task_id: int, server: _StaticServer = server) -> None:
                server.ids.remove(task_id)
                server.pages.clear()  # every page is sliced afresh from now on

            results.append(await _measure(server.url, "static", kind, drop))
        finally:
            await server.stop()
        sim = Simulator(api_key=API_KEY, page_max=PAGE)
        for i in range(RECORDS):
            sim.state.add_billing_task(status="Completed", customerID=str(i % 997))
        await sim.start()

        def delete(task_id: int, sim: Simulator = sim) -> None:
            sim.state.delete_record("billing_tasks", task_id)

        try:
            results.append(await _measure(sim.billing_base_url, "simulator", kind, delete))
        finally:
            await sim.stop()
    return results


if __name__ == "__main__":
    from bench import format_table

    print(format_table(asyncio.run(run())))
