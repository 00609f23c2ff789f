"""Change detection end to end, and what an idle poll costs as tracked records grow.

*Detection throughput*: ``TASKS`` billing tasks are baselined, then every one is updated
(one field) and a single ``poll_once`` is timed until all ``TASKS``
``billing_task.updated`` events are committed to the log. The baseline is a bare aiohttp
GET loop fetching the same pages (same ``updatedSince``, ``limit`` and ``idAfter``) from
the same server in the same run; the ratio is what detection, snapshot upserts and the
event append cost on top of the transfer.

*Idle poll cost*: two simulators and two stores side by side, tracking ``SMALL`` and
``LARGE`` records (generated directly in the simulators' state, an hour old, and
baselined once). Then ``IDLE_CYCLES`` polls in which nothing changed, the two sizes
interleaved so both see the same machine load, each ``CYCLE_GAP`` after the last so that
each commits a new cursor as in production. Measured: requests per cycle, this process's
CPU time per cycle (median ``time.process_time``, which includes the store's SQLite
thread) and, free of timing noise, the Python function calls per cycle (cProfile). Each
LARGE row is compared with its SMALL row: the goal is a ratio of about 1, i.e. an idle
cycle costs the same whatever the number of tracked records.

The simulator runs in a child process, so neither its CPU time nor its per-request scan
of every record (it sorts and filters the whole table for each page) is counted as
billnotify's. That scan still makes a 100k simulator answer ~150 ms later than a 1k one,
and waiting alone costs the client CPU time (colder caches, more wake-ups: a 1k run with
150 ms of injected latency costs about what a 100k run costs); so during the idle cycles both
sizes answer after the same injected ``LATENCY``, which dwarfs the scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import multiprocessing
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

from bench import BenchResult
from billnotify.clients.billing_platform import BillingPlatformClient
from billnotify.config.models import BillingPlatformSource
from billnotify.sources import build_billing_syncs
from billnotify.sources.billing_cursor import CURSOR_FORMAT, Cursor
from billnotify.sources.billing_platform import BillingPlatformSync
from billnotify.store import ProcessStore, SqliteStore

TASKS = 5_000
PAGE = 500
ROUNDS = 3
SMALL = 1_000
LARGE = 100_000
IDLE_CYCLES = 10
API_KEY = "bench-key"
AGE = timedelta(hours=1)
"""How old the generated records are: older than any poll's ``createdSince`` window."""
CYCLE_GAP = 1.0
"""Seconds between idle cycles: each one then commits a new cursor, as in production."""
PROFILED_CYCLES = 5
"""Extra idle cycles run under cProfile to count the Python calls of one cycle."""
LATENCY = 0.25
"""Seconds the simulator waits before each idle answer, whatever its size (see above)."""
START_TIMEOUT = 120.0


# -- the simulator, in a child process ---------------------------------------------------
def _serve(conn: Connection, count: int, page_max: int) -> None:
    """Child process: serve ``count`` completed tasks until told to stop."""
    asyncio.run(_serve_async(conn, count, page_max))


async def _serve_async(conn: Connection, count: int, page_max: int) -> None:
    from billnotify.simulator import Simulator
    from billnotify.simulator.clock import ManualClock, SimClock
    from billnotify.simulator.server import BILLING_PREFIX

    sim = Simulator(api_key=API_KEY, page_max=page_max, clock=ManualClock(datetime.now(UTC) - AGE))
    for i in range(count):
        sim.state.add_billing_task(status="Completed", customerID=str(i % 997))
    sim.state.clock = SimClock()  # updates from now on carry the real time
    await sim.start()
    conn.send(sim.billing_base_url)
    loop = asyncio.get_running_loop()
    try:
        while (command := await loop.run_in_executor(None, conn.recv)) is not None:
            verb, argument = command
            if verb == "latency":
                sim.faults.clear()
                sim.faults.add(
                    f"{BILLING_PREFIX}/billingTasks", kind="slow", count=-1, delay=argument
                )
                conn.send(argument)
            else:
                for task_id in list(sim.state.billing_tasks):
                    sim.state.update_billing_task(task_id, **argument)
                conn.send(len(sim.state.billing_tasks))
    finally:
        await sim.stop()


class _ChildSimulator:
    """A :class:`~billnotify.simulator.Simulator` with ``count`` tasks in its own process."""

    def __init__(self, count: int, page_max: int = PAGE) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, self._child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(self._child, count, page_max), name="bench-simulator", daemon=True
        )
        self.billing_base_url = ""

    async def _recv(self) -> Any:
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(None, self._conn.poll, START_TIMEOUT)
        if not ready:
            raise RuntimeError("the simulator process did not answer")
        return self._conn.recv()

    async def __aenter__(self) -> _ChildSimulator:
        self._process.start()
        self._child.close()  # the child holds its own end: EOF here if it dies
        self.billing_base_url = await self._recv()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        await asyncio.get_running_loop().run_in_executor(None, self._process.join, 10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        self._process.close()
        self._conn.close()

    async def set_latency(self, seconds: float) -> None:
        """Delay every ``billingTasks`` answer by ``seconds`` from now on."""
        self._conn.send(("latency", seconds))
        await self._recv()

    async def update_all(self, **fields: Any) -> int:
        """Change ``fields`` of every task; returns how many were changed."""
        self._conn.send(("update", fields))
        return int(await self._recv())


def _config(base_url: str) -> BillingPlatformSource:
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


def _sync(
    config: BillingPlatformSource, client: BillingPlatformClient, store: SqliteStore
) -> BillingPlatformSync:
    (sync,) = build_billing_syncs(config, client, store)
    return sync


# -- detection throughput ----------------------------------------------------------------
async def _raw_loop(session: aiohttp.ClientSession, base_url: str, since: str) -> int:
    """The baseline: a bare aiohttp loop fetching the pages of the updated records."""
    headers = {"Authorization": f"Bearer {API_KEY}", "Accept": "application/json"}
    count, last = 0, None
    while True:
        params = {"limit": str(PAGE), "updatedSince": since}
        if last is not None:
            params["idAfter"] = last
        async with session.get(f"{base_url}/billingTasks/", params=params, headers=headers) as r:
            page = await r.json()
        if not page:
            return count
        count += len(page)
        last = str(max(int(rec["id"]) for rec in page))


async def _since(sync: BillingPlatformSync) -> str:
    """The ``updatedSince`` the next poll of ``sync`` will send."""
    cursor = await sync.store.get_cursor(sync.source, sync.resource)
    assert cursor is not None
    _after, since = Cursor.parse(cursor).queries(sync.config.overlap)[0]
    return since.strftime(CURSOR_FORMAT)


async def _detection() -> list[BenchResult]:
    best_changes = best_raw = 0.0
    async with _ChildSimulator(TASKS) as sim:
        config = _config(sim.billing_base_url)
        with tempfile.TemporaryDirectory() as tmp:
            async with (
                ProcessStore(Path(tmp) / "state.db") as store,  # as `billnotify run` has it
                aiohttp.ClientSession() as session,
                BillingPlatformClient(
                    config.base_url, config.api_key, session=session, page_size=PAGE
                ) as client,
            ):
                sync = _sync(config, client, store)
                started = time.perf_counter()
                first = await sync.poll_once()
                baseline_s = time.perf_counter() - started
                if not first.baseline or first.records != TASKS:
                    raise RuntimeError(f"baseline saw {first.records} records")
                for round_ in range(ROUNDS):
                    await sim.update_all(priority=str(10 + round_))
                    since = await _since(sync)
                    await _raw_loop(session, sim.billing_base_url, since)  # warm-up
                    started = time.perf_counter()
                    fetched = await _raw_loop(session, sim.billing_base_url, since)
                    best_raw = max(best_raw, fetched / (time.perf_counter() - started))
                    if fetched != TASKS:
                        raise RuntimeError(f"raw loop fetched {fetched}, expected {TASKS}")

                    before = await store.last_seq()
                    started = time.perf_counter()
                    stats = await sync.poll_once()
                    elapsed = time.perf_counter() - started
                    committed = await store.last_seq() - before
                    if committed != TASKS or stats.types != {"billing_task.updated": TASKS}:
                        raise RuntimeError(f"committed {committed} events: {dict(stats.types)}")
                    best_changes = max(best_changes, TASKS / elapsed)
    notes = (
        f"{TASKS} tasks updated, one poll_once to committed log, limit {PAGE}, "
        f"best of {ROUNDS}; baseline = raw GET of the same pages (records/s); "
        f"first sync {TASKS / baseline_s:,.0f} records/s"
    )
    return [BenchResult.versus("detect.changes", best_changes, "changes/s", best_raw, notes)]


# -- idle poll cost ----------------------------------------------------------------------
@dataclass
class _Idle:
    """One store tracking ``count`` records, and what its idle cycles cost."""

    count: int
    sync: BillingPlatformSync
    first_sync_s: float
    requests: int = 0
    wall_s: float = 0.0
    cpu_s: list[float] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)

    @property
    def size(self) -> str:
        return f"{self.count // 1000}k"

    @property
    def figures(self) -> dict[str, float]:
        """Per cycle: requests, median CPU ms, median Python calls."""
        return {
            "requests": self.requests / IDLE_CYCLES,
            "cpu": statistics.median(self.cpu_s) * 1000,
            "calls": statistics.median(self.calls),
        }

    @property
    def notes(self) -> str:
        return (
            f"{self.count:,} tracked tasks, {IDLE_CYCLES} idle cycles {CYCLE_GAP:g}s apart; "
            f"wall {self.wall_s * 1000 / IDLE_CYCLES:.0f} ms/cycle "
            f"(incl. {LATENCY * 1000:.0f} ms/request latency); "
            f"first sync {self.first_sync_s:.1f}s"
        )

    async def cycle(self, profiled: bool) -> None:
        """One idle poll, measured (CPU and wall) or profiled (calls)."""
        profile = cProfile.Profile() if profiled else None
        cpu, wall = time.process_time(), time.perf_counter()
        if profile is not None:
            profile.enable()
        stats = await self.sync.poll_once()
        if profile is not None:
            profile.disable()
            self.calls.append(sum(entry.callcount for entry in profile.getstats()))
        else:
            self.cpu_s.append(time.process_time() - cpu)
            self.wall_s += time.perf_counter() - wall
            self.requests += stats.requests
        if stats.records or stats.events:
            raise RuntimeError(f"an idle cycle saw changes: {stats}")


async def _tracking(
    stack: contextlib.AsyncExitStack, folder: Path, count: int
) -> tuple[_ChildSimulator, _Idle]:
    """A simulator with ``count`` tasks and a store that has baselined them."""
    sim = await stack.enter_async_context(_ChildSimulator(count))
    config = _config(sim.billing_base_url)
    store = await stack.enter_async_context(SqliteStore(folder / f"{count}.db"))
    client = await stack.enter_async_context(
        BillingPlatformClient(config.base_url, config.api_key, page_size=PAGE)
    )
    sync = _sync(config, client, store)
    started = time.perf_counter()
    first = await sync.poll_once()
    if first.records != count:
        raise RuntimeError(f"baseline saw {first.records} of {count} records")
    return sim, _Idle(count, sync, time.perf_counter() - started)


async def _idle() -> tuple[_Idle, _Idle]:
    """Idle cycles of both sizes, interleaved so that both see the same machine load."""
    async with contextlib.AsyncExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        sides = [await _tracking(stack, folder, count) for count in (SMALL, LARGE)]
        for sim, idle in sides:
            await sim.set_latency(LATENCY)
            await idle.sync.poll_once()  # warm-up: the first incremental cycle
        order = [side for _, side in sides]
        for cycle in range(IDLE_CYCLES + PROFILED_CYCLES):
            # A real interval is seconds or more, so every cycle moves the cursor (the
            # server's Date, to the second) and commits it; back to back, the share of
            # cycles that write would depend on how slow the server is.
            await asyncio.sleep(CYCLE_GAP)
            for side in order:
                await side.cycle(profiled=cycle >= IDLE_CYCLES)
            order.reverse()
        return sides[0][1], sides[1][1]


async def _idle_results() -> list[BenchResult]:
    small, large = await _idle()
    versus = f"; baseline = the {small.size} figure"
    rows: list[BenchResult] = []
    for name, unit, how in (
        ("requests", "requests/cycle", ""),
        ("cpu", "CPU ms/cycle", "median process_time"),
        ("calls", "calls/cycle", f"Python calls (cProfile), median of {PROFILED_CYCLES} cycles"),
    ):
        first, second = small.figures[name], large.figures[name]
        rows.append(
            BenchResult(f"detect.idle.{name}.{small.size}", first, unit, notes=how or small.notes)
        )
        rows.append(
            BenchResult.versus(
                f"detect.idle.{name}.{large.size}",
                second,
                unit,
                first,
                (how or large.notes) + versus,
            )
        )
    return rows


async def run() -> list[BenchResult]:
    """Measure detection throughput, then idle poll cost with few and many records."""
    return await _detection() + await _idle_results()


if __name__ == "__main__":
    from bench import format_table

    print(format_table(asyncio.run(run())))
