"""A webhook rate limit holds across two ``billnotify run`` processes on one PostgreSQL
state (SPEC §7.2): both attempt deliveries, the turns are the database's, so the
receiver never sees more than the limit in any second, and every delivery arrives.

Real parts: the simulator over HTTP, a private PostgreSQL server (``tests/pg.py``), the
service as two subprocesses, an HTTP receiver noting when each request arrives.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web

import pg
from billnotify.simulator import Simulator
from servers import PYTHON, free_port, serving, sim_source, toml_config, wait_for
from test_rate_limit import JITTER, SECRET, TimedReceiver, busiest_window

COUNT = 30


async def test_two_processes_share_one_rate_limit(tmp_path: Path) -> None:
    reason = pg.available()
    if reason:
        pytest.skip(reason)
    url = pg.shared().database()
    receiver = TimedReceiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    sim = Simulator(page_max=50)
    await sim.start()
    procs: list[asyncio.subprocess.Process] = []
    try:
        async with serving(app) as base:
            config = tmp_path / "config.toml"
            raw = {
                "service": {"state": url, "http": "127.0.0.1:1", "log_level": "warning"},
                "mqtt": {"enabled": False},
                "sources": [sim_source(sim, poll_interval="200ms", watch=["billing_tasks"])],
                "webhooks": [
                    {
                        "name": "ops",
                        "url": f"{base}/hook",
                        "secret": SECRET,
                        "allow_private": True,
                        "rate_limit": "5/s",
                    }
                ],
                "rules": [
                    {
                        "name": "new-task",
                        "on": ["billing_task.created"],
                        "actions": [{"type": "webhook", "endpoint": "ops"}],
                    }
                ],
            }
            config.write_text(toml_config(raw))
            for name in ("a", "b"):
                procs.append(
                    await asyncio.create_subprocess_exec(
                        PYTHON,
                        "-m",
                        "billnotify",
                        "run",
                        "-c",
                        str(config),
                        "--instance",
                        name,
                        "--http",
                        f"127.0.0.1:{free_port()}",
                        stderr=asyncio.subprocess.DEVNULL,
                    )
                )
            conn = await asyncpg.connect(url)
            try:

                async def baseline_taken() -> bool:
                    try:
                        return bool(await conn.fetchval("SELECT count(*) FROM cursors"))
                    except asyncpg.UndefinedTableError:  # not migrated yet
                        return False

                deadline = time.monotonic() + 30
                while not await baseline_taken():
                    assert time.monotonic() < deadline, "no baseline within 30 s"
                    assert all(p.returncode is None for p in procs)
                    await asyncio.sleep(0.05)
                for _ in range(COUNT):
                    sim.state.add_billing_task(status="Pending")
                await wait_for(lambda: len(receiver.arrivals) >= COUNT, 40)
                await asyncio.sleep(0.5)  # a moment more: nothing may arrive twice
                claimants = await conn.fetch(
                    "SELECT claimed_by, count(*) AS n FROM deliveries GROUP BY claimed_by"
                )
                statuses = await conn.fetch("SELECT DISTINCT status FROM deliveries")
            finally:
                await conn.close()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
        await sim.stop()

    ids = [i for _, i in receiver.arrivals]
    assert len(ids) == len(set(ids)) == COUNT  # all of them, none twice
    assert [r["status"] for r in statuses] == ["succeeded"]
    times = [t for t, _ in receiver.arrivals]
    assert busiest_window(times, 1.0 - JITTER) <= 5, times
    assert {r["claimed_by"] for r in claimants} == {"a", "b"}  # both processes sent
    # and at the limit, not below it: 30 at 5/s take about 5 s after the first 5
    assert max(times) - min(times) < 9.0
