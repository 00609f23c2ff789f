"""Three `billnotify run` processes on one PostgreSQL database, one SIGKILLed every few
seconds in rotation and restarted (SPEC §7.1, issue 12's proof):

- every approved invoice is emailed exactly once (counted in the platform's own action
  log, not by billnotify);
- every task status change reaches MQTT (counted by an independent subscriber);
- while all three run, the platform sees one process's worth of list requests.

Real parts only: a private PostgreSQL server (``tests/pg.py``), a private mosquitto, the
simulator over HTTP, the service as subprocesses driven through its CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import pg
from billnotify.simulator import Simulator
from conftest import Mosquitto
from servers import PYTHON, free_port, sim_source, toml_config

pytestmark = [
    pytest.mark.fault,
    pytest.mark.timeout(300),
    pytest.mark.skipif(pg.available() is not None, reason=str(pg.available())),
]

INVOICES = 150
TASK_CHANGES = 500
INSTANCES = ("a", "b", "c")
LIST_PATHS = ("/backend/api/v1/billingTasks", "/backend/api/v1/invoices")


@pytest.fixture(scope="module")
def postgres() -> Iterator[pg.PostgresServer]:
    server = pg.PostgresServer().init()
    try:
        yield server
    finally:
        server.close()


class CountingSimulator:
    """The simulator, counting the list requests (``GET`` of a collection) it serves."""

    def __init__(self) -> None:
        self.sim = Simulator(page_max=200)
        self.lists = 0

        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.method == "GET" and request.path.rstrip("/") in LIST_PATHS:
                self.lists += 1
            response: web.StreamResponse = await handler(request)
            return response

        self.sim.app().middlewares.insert(0, count)

    async def __aenter__(self) -> CountingSimulator:
        await self.sim.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sim.stop()


class Fleet:
    """The three processes: start, SIGKILL, restart; one log file each."""

    def __init__(self, folder: Path, config: Path) -> None:
        self.folder = folder
        self.config = config
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.ports = {name: free_port() for name in INSTANCES}
        self.kills = 0

    def log(self, name: str) -> Path:
        return self.folder / f"billnotify-{name}.log"

    async def start(self, name: str) -> None:
        with self.log(name).open("ab") as out:
            self.procs[name] = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "billnotify", "run", "-c", str(self.config),
                "--instance", name, "--http", f"127.0.0.1:{self.ports[name]}",
                stdout=out, stderr=out, cwd=self.folder,
            )  # fmt: skip

    async def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        self.kills += 1

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.returncode is not None and proc.returncode != -signal.SIGKILL:
                tail = self.log(name).read_text(errors="replace")[-3000:]
                raise AssertionError(f"instance {name} exited with {proc.returncode}:\n{tail}")

    async def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def fleet(folder: Path, config: Path) -> AsyncIterator[Fleet]:
    group = Fleet(folder, config)
    try:
        yield group
    finally:
        await group.stop_all()


def _config(folder: Path, url: str, sim: Simulator, broker: Mosquitto, prefix: str) -> Path:
    raw: dict[str, Any] = {
        "service": {
            "name": "fleet",
            "state": url,
            "lease_ttl": "3s",
            "log_level": "info",
            "delivery_concurrency": 4,
            "shutdown_grace": "3s",
        },
        "mqtt": {"url": broker.url(), "client_id": f"fleet-{prefix}", "prefix": prefix},
        "sources": [
            sim_source(
                sim,
                poll_interval="1s",
                watch=["billing_tasks", "invoices"],
                timeout="3s",
                page_size=200,
            )
        ],
        "rules": [
            {
                "name": "email-approved-invoices",
                "on": ["invoice.status_changed"],
                "when": "'Approved' in event.data.added",
                "actions": [
                    {"type": "invoice_action", "action": "email", "params": {"billStyle": "Full"}}
                ],
            }
        ],
    }
    path = folder / "config.toml"
    path.write_text(toml_config(raw))
    return path


async def _until(predicate: Any, what: str, timeout: float, group: Fleet) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        group.check_alive()
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_three_instances_with_rotating_sigkills_email_once_and_lose_nothing(
    tmp_path: Path,
    postgres: pg.PostgresServer,
    mosquitto: Mosquitto,
    mqtt_prefix: str,
    mqtt_subscriber: Any,
) -> None:
    url = postgres.database()
    async with (
        CountingSimulator() as counting,
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/events/#") as sub,
    ):
        sim = counting.sim
        invoices = [sim.state.add_invoice(status=["Raised"]) for _ in range(INVOICES)]
        tasks = [sim.state.add_billing_task(status="Pending") for _ in range(TASK_CHANGES)]
        config = _config(tmp_path, url, sim, mosquitto, mqtt_prefix)

        def emails() -> Counter[str]:
            return Counter(e["invoice_id"] for e in sim.state.action_log if e["action"] == "email")

        def status_events() -> set[str]:
            found = set()
            for message in sub.messages:
                event = json.loads(message.payload)
                if event["type"] == "billing_task.status_changed":
                    found.add(event["id"])
            return found

        async with fleet(tmp_path, config) as group:
            # one process alone: its list requests over a few poll cycles
            await group.start("a")
            await asyncio.sleep(4)  # the baseline and a few idle cycles (a rate, not a wait)
            before = counting.lists
            await asyncio.sleep(5)
            alone = counting.lists - before
            for name in ("b", "c"):
                await group.start(name)
            await asyncio.sleep(4)
            before = counting.lists
            await asyncio.sleep(5)
            together = counting.lists - before
            group.check_alive()

            # the work, with one process SIGKILLed every ~2.5 s in rotation and restarted
            # each task changes once (two changes of one record between two polls are
            # one change to any poller, and a takeover may skip a poll or two)
            async def work() -> None:
                for round_ in range(5):
                    for task in tasks[round_ * 100 : (round_ + 1) * 100]:
                        sim.state.update_billing_task(task["id"], status="Running")
                    for invoice in invoices[round_ * 30 : (round_ + 1) * 30]:
                        sim.state.update_invoice(invoice["id"], status=["Raised", "Approved"])
                    await asyncio.sleep(3)

            async def chaos() -> None:
                for turn in range(6):
                    name = INSTANCES[turn % len(INSTANCES)]
                    await asyncio.sleep(2.5)
                    await group.kill(name)
                    await asyncio.sleep(0.5)
                    await group.start(name)

            await asyncio.gather(work(), chaos())
            ids = {invoice["id"] for invoice in invoices}
            await _until(lambda: set(emails()) >= ids, "every invoice emailed", 120, group)
            await _until(
                lambda: len(status_events()) >= TASK_CHANGES,
                "every task status change on MQTT",
                60,
                group,
            )
            await asyncio.sleep(3)  # a late duplicate would show up now

    sent = emails()
    twice = {invoice: n for invoice, n in sent.items() if n > 1}
    print(
        f"\nkills {group.kills} | invoices {INVOICES}: emailed {len(sent)}, twice {len(twice)}"
        f" | task changes {TASK_CHANGES}: on MQTT {len(status_events())}"
        f" | list requests per 5 s: one process {alone}, three {together}"
    )
    assert group.kills == 6
    assert not twice, f"emailed more than once: {twice}"
    assert set(sent) == ids
    assert len(status_events()) == TASK_CHANGES
    assert together <= alone * 1.5 + 2, (alone, together)
