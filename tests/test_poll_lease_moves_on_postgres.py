"""Two ``billnotify run`` processes on one PostgreSQL database and one simulator: the
``poll:`` lease decides who polls (SPEC §7.1).

- while both run, the platform sees one process's worth of list requests;
- SIGKILL the holder: the other polls within ``lease_ttl``;
- SIGSTOP the holder past ``lease_ttl``, then SIGCONT: it writes nothing stale (the
  log holds every change once, the cursor never moves back, snapshots end current).

Real parts: a private PostgreSQL server (``tests/pg.py``), the simulator over HTTP, the
service as subprocesses driven through its CLI, ``/readyz`` for who holds what.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import pg
from billnotify.simulator import Simulator
from billnotify.store.postgres import PgStore
from servers import PYTHON, free_port, sim_source, toml_config
from service_harness import until

pytestmark = [
    pytest.mark.fault,
    pytest.mark.timeout(90),
    pytest.mark.skipif(pg.available() is not None, reason=str(pg.available())),
]

TTL = 3.0
LEASE = "poll:acme/billing_tasks"


class Instances:
    """``billnotify run`` processes by name, each with its own /readyz port and log."""

    def __init__(self, folder: Path, config: Path) -> None:
        self.folder, self.config = folder, config
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.ports: dict[str, int] = {}

    async def start(self, name: str) -> None:
        self.ports[name] = free_port()
        with (self.folder / f"{name}.log").open("ab") as out:
            self.procs[name] = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "billnotify", "run", "-c", str(self.config),
                "--instance", name, "--http", f"127.0.0.1:{self.ports[name]}",
                stdout=out, stderr=out, cwd=self.folder,
            )  # fmt: skip

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    async def leases(self, name: str) -> list[str]:
        """The leases ``name`` says it holds (none while it cannot answer)."""
        url = f"http://127.0.0.1:{self.ports[name]}/readyz"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
                session.get(url) as response,
            ):
                body: dict[str, Any] = json.loads(await response.text())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return []
        return list(body.get("leases", []))

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def running(tmp_path: Path, sim: Simulator) -> AsyncIterator[tuple[Instances, str]]:
    url = pg.shared().database()
    raw = {
        "service": {"name": "pair", "state": url, "lease_ttl": f"{TTL:g}s", "log_level": "info"},
        "mqtt": {"enabled": False},
        "sources": [sim_source(sim, poll_interval="0.5s", watch=["billing_tasks"], timeout="2s")],
    }
    config = tmp_path / "config.toml"
    config.write_text(toml_config(raw))
    instances = Instances(tmp_path, config)
    try:
        yield instances, url
    finally:
        await instances.stop()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """The simulator, noting when it served each list of billing tasks (``sim.lists``)."""
    simulator = Simulator(page_max=200)
    lists: list[float] = []

    @web.middleware
    async def note(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "GET" and request.path.rstrip("/").endswith("/billingTasks"):
            lists.append(time.monotonic())
        response: web.StreamResponse = await handler(request)
        return response

    simulator.app().middlewares.insert(0, note)
    simulator.lists = lists  # type: ignore[attr-defined]
    async with simulator:
        yield simulator


def lists_between(sim: Simulator, start: float, end: float) -> int:
    return sum(1 for at in sim.lists if start <= at < end)  # type: ignore[attr-defined]


async def test_sigkill_of_the_holder_moves_polling_within_the_ttl(
    tmp_path: Path, sim: Simulator
) -> None:
    task = sim.state.add_billing_task(status="Pending")
    async with running(tmp_path, sim) as (instances, url):
        await instances.start("a")
        await until(lambda: instances.leases("a"), "a holds its leases", 20)
        # list requests over the same span with one and with two processes (a rate)
        alone_from = time.monotonic()
        await asyncio.sleep(3)
        alone = lists_between(sim, alone_from, time.monotonic())
        await instances.start("b")
        await until(lambda: _answers(instances, "b"), "b is up", 20)
        together_from = time.monotonic()
        await asyncio.sleep(3)
        together = lists_between(sim, together_from, time.monotonic())
        assert LEASE in await instances.leases("a")
        assert LEASE not in await instances.leases("b")

        instances.signal("a", signal.SIGKILL)
        killed = time.monotonic()
        sim.state.update_billing_task(task["id"], status="Completed")
        served = await until(
            lambda: [at for at in sim.lists if at > killed + 0.2],  # type: ignore[attr-defined]
            "b polls",
            3 * TTL,
        )
        moved = served[0] - killed
        await until(lambda: _status_events(url), "the change logged", 10)
        print(
            f"\nlist requests per 3 s: a alone {alone}, a and b {together};"
            f" SIGKILL -> b polls after {moved:.2f}s (lease_ttl {TTL:g}s)"
        )
        assert moved < TTL, moved
        assert together <= alone * 1.5 + 1, (alone, together)
        assert LEASE in await instances.leases("b")
        assert len(await _status_events(url)) == 1


async def test_a_paused_holder_writes_nothing_stale(tmp_path: Path, sim: Simulator) -> None:
    tasks = [sim.state.add_billing_task(status="Pending") for _ in range(20)]
    async with running(tmp_path, sim) as (instances, url):
        await instances.start("a")
        await until(lambda: instances.leases("a"), "a holds its leases", 20)
        await instances.start("b")
        await until(lambda: _answers(instances, "b"), "b is up", 20)
        instances.signal("a", signal.SIGSTOP)
        stopped = time.monotonic()
        await until(lambda: _holds(instances, "b", LEASE), "b takes the lease", 3 * TTL)
        took = time.monotonic() - stopped
        for task in tasks[:10]:
            sim.state.update_billing_task(task["id"], status="Running")
        await until(lambda: _count(_status_events(url), 10), "b logs the changes", 10)
        cursors = [await _cursor(url)]
        instances.signal("a", signal.SIGCONT)
        resumed = time.monotonic()
        for task in tasks[10:]:
            sim.state.update_billing_task(task["id"], status="Running")
        while time.monotonic() < resumed + 2.0:  # a's poller would poll 4 times by now
            cursors.append(await _cursor(url))
            await asyncio.sleep(0.1)
        await until(lambda: _count(_status_events(url), 20), "every change logged", 10)
        cursors.append(await _cursor(url))
        events = await _status_events(url)
        subjects = [event["subject"] for event in events]
        snapshots = await _statuses(url)
        a_leases = await instances.leases("a")
        print(
            f"\nSIGSTOP a -> b holds {LEASE} after {took:.2f}s; after SIGCONT: "
            f"{len(events)} status events for 20 changes, a holds {a_leases}"
        )
    assert len(subjects) == len(set(subjects)) == 20  # each change logged once
    assert cursors == sorted(cursors)  # the cursor never moved back
    assert all(status == "Running" for status in snapshots.values()), snapshots
    assert LEASE not in a_leases
    assert "lost lease poll:acme/billing_tasks" in instances.log("a") or (
        "lapsed" in instances.log("a")
    )


async def _answers(instances: Instances, name: str) -> bool:
    url = f"http://127.0.0.1:{instances.ports[name]}/healthz"
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def _holds(instances: Instances, name: str, lease: str) -> bool:
    return lease in await instances.leases(name)


async def _count(events: Any, n: int) -> bool:
    return len(await events) >= n


async def _status_events(url: str) -> list[dict[str, Any]]:
    async with _store(url) as store:
        events = await store.read_events(0, 10_000)
    return [
        json.loads(e.event.to_json())
        for e in events
        if e.event.type == "billing_task.status_changed"
    ]


async def _cursor(url: str) -> str:
    async with _store(url) as store:
        return await store.get_cursor("acme", "billing_tasks") or ""


async def _statuses(url: str) -> dict[str, str]:
    async with _store(url) as store:
        snaps = await store.iter_snapshots("acme", "billing_task")
    return {s.id: str(s.record.get("status")) for s in snaps}


@contextlib.asynccontextmanager
async def _store(url: str) -> AsyncIterator[PgStore]:
    store = PgStore(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
