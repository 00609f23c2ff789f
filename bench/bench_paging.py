"""Paging throughput of :class:`BillingPlatformClient` against a raw aiohttp loop.

Both sides fetch the same pages (``limit`` + ``idAfter`` until an empty page) from the same
server in the same run, so the ratio is the client's cost: retries/size-cap bookkeeping,
page validation, and for the typed case pydantic models.

Two servers: a *static* one that answers from pre-serialised pages (so the client's own
cost dominates), and the simulator (a realistic server doing its own filtering per page).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from bench import BenchResult
from billnotify.clients import BillingPlatformClient

RECORDS = 20_000
PAGE = 500
ROUNDS = 3
API_KEY = "bench-key"
PREFIX = "/backend/api/v1"


def _task(task_id: int) -> dict[str, Any]:
    return {
        "id": str(task_id),
        "billingTaskType": "Generate Invoice",
        "status": "Completed",
        "customerID": str(task_id % 997),
        "attached": "",
        "parameters": "{}",
        "priority": "5",
        "retryCount": "0",
        "addedTime": "2024-01-31 10:00:00",
        "delayTime": None,
        "startedTime": "2024-01-31 10:00:01",
        "endedTime": "2024-01-31 10:00:02",
        "testMode": "0",
        "activityLog": "Generated invoice",
    }


class _StaticServer:
    """Serves ``billingTasks/`` from pre-serialised pages of ``PAGE`` records."""

    def __init__(self, count: int) -> None:
        self.ids = list(range(1001, 1001 + count))
        records = [_task(i) for i in self.ids]
        self.pages: dict[int, bytes] = {}
        for start in range(0, count + 1, PAGE):
            after = 0 if start == 0 else self.ids[start - 1]
            self.pages[after] = json.dumps(records[start : start + PAGE]).encode()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _list(self, request: web.Request) -> web.Response:
        after = int(request.query.get("idAfter", "0"))
        body = self.pages.get(after)
        if body is None:  # an idAfter that is not a page boundary: slice (not on the hot path)
            start = bisect.bisect_right(self.ids, after)
            body = json.dumps([_task(i) for i in self.ids[start : start + PAGE]]).encode()
        return web.Response(body=body, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(f"{PREFIX}/billingTasks/", self._list)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}{PREFIX}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def _raw_loop(session: aiohttp.ClientSession, base_url: str, key: str) -> int:
    """The baseline: a bare aiohttp loop fetching the same pages."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
    count, last = 0, None
    while True:
        params = {"limit": str(PAGE)} if last is None else {"limit": str(PAGE), "idAfter": last}
        async with session.get(f"{base_url}/billingTasks/", params=params, headers=headers) as r:
            page = await r.json()
        if not page:
            return count
        count += len(page)
        last = str(max(int(rec["id"]) for rec in page))


async def _best(fn: Callable[[], Awaitable[int]]) -> float:
    """Best records/s over ``ROUNDS`` runs."""
    best = 0.0
    for _ in range(ROUNDS):
        start = time.perf_counter()
        count = await fn()
        elapsed = time.perf_counter() - start
        if count != RECORDS:
            raise RuntimeError(f"fetched {count} records, expected {RECORDS}")
        best = max(best, count / elapsed)
    return best


async def _measure(base_url: str, key: str, label: str) -> list[BenchResult]:
    async with (
        aiohttp.ClientSession() as session,
        BillingPlatformClient(base_url, key, session=session, page_size=PAGE) as client,
    ):

        async def raw() -> int:
            return await _raw_loop(session, base_url, key)

        async def pages() -> int:
            return sum([len(page) async for page in client.iter_pages("billingTasks")])

        async def typed() -> int:
            return len(await client.list_billing_tasks())

        await raw()  # warm-up: connection, caches
        baseline = await _best(raw)
        raw_dicts = await _best(pages)
        models = await _best(typed)
    notes = f"{RECORDS} tasks, limit {PAGE}, best of {ROUNDS}"
    return [
        BenchResult.versus(f"paging.{label}.iter_pages", raw_dicts, "records/s", baseline, notes),
        BenchResult.versus(f"paging.{label}.typed", models, "records/s", baseline, notes),
    ]


async def _simulator_results() -> list[BenchResult]:
    from billnotify.simulator import Simulator

    sim = Simulator(api_key=API_KEY, page_max=PAGE)
    for i in range(RECORDS):
        sim.state.add_billing_task(status="Completed", customerID=str(i % 997))
    await sim.start()
    try:
        return await _measure(sim.billing_base_url, API_KEY, "simulator")
    finally:
        await sim.stop()


async def run() -> list[BenchResult]:
    """Measure paging against the static server and the simulator."""
    server = _StaticServer(RECORDS)
    await server.start()
    try:
        results = await _measure(server.url, API_KEY, "static")
    finally:
        await server.stop()
    return results + await _simulator_results()


if __name__ == "__main__":
    from bench import format_table

    print(format_table(asyncio.run(run())))
