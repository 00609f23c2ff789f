"""One ``billnotify run`` process against three on the same work, on one PostgreSQL state.

A simulator (in this process, counting the list requests it serves) holds ``INVOICES``
raised invoices and ``TASKS`` pending billing tasks. ``K`` processes (``billnotify run
--instance NAME --http HOST:PORT``, K = 1 or 3) share one fresh database of a private
PostgreSQL server (``bench/_postgres.py``) and one private mosquitto, with one rule: an
approved invoice is emailed through the platform (``invoice_action`` ``email``). Once
every resource has been polled incrementally (the baselines are done), every invoice is
approved and every task's status changes at once. Measured from that moment:

*drain*     seconds from when both resources were first polled after the change (so
            not where the 1 s poll cycles happened to stand) until the platform has emailed every invoice (its own action log)
            and an independent ``mosquitto_sub`` has every task's status event;
*CPU*       user + system seconds of all ``K`` process trees over the drain;
*lists*     the list requests (``GET`` of a collection) the platform answered over it.

Then lost (an invoice never emailed, a task change never on MQTT) and duplicated
(an invoice emailed twice) are checked. The runs alternate 1, 3, 3, 1, … for
``ROUNDS`` rounds of each; the best drain of each is reported, with its CPU and lists.
The three-process rows have the one-process figure as their baseline: the ratio is what
sharing the work costs or saves. Skipped, saying why, without PostgreSQL binaries.
``BENCH_QUICK=1``: a quarter of the work, one round.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from bench import BenchResult, _postgres
from bench._peer_sides import Subscriber, cpu_seconds
from bench._peers import free_port
from bench.bench_mqtt import _mosquitto
from billnotify.simulator import Simulator

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
INVOICES = 150 if QUICK else 600
TASKS = 750 if QUICK else 3_000
ROUNDS = 1 if QUICK else 3
PAGE = 200
LIST_PATHS = ("/backend/api/v1/billingTasks", "/backend/api/v1/invoices")
READY_TIMEOUT = 90.0
DRAIN_TIMEOUT = 240.0


@dataclass
class Run:
    """What ``processes`` processes did with the work."""

    processes: int
    drain_s: float = 0.0
    cpu_s: float = 0.0
    lists: int = 0
    lost: int = 0
    duplicated: int = 0

    def describe(self) -> str:
        return (
            f"  {self.processes} process(es): drained in {self.drain_s:.2f} s, CPU {self.cpu_s:.2f}"
            f" s, {self.lists} list requests, lost {self.lost}, duplicated {self.duplicated}"
        )


class _Platform:
    """The simulator, counting list requests (incremental ones apart) by path."""

    def __init__(self) -> None:
        self.sim = Simulator(page_max=PAGE)
        self.lists = 0
        self.incremental: Counter[str] = Counter()
        self.list_times: dict[str, list[float]] = {path: [] for path in LIST_PATHS}
        """``time.monotonic()`` of each list request, by path."""

        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            path = request.path.rstrip("/")
            if request.method == "GET" and path in LIST_PATHS:
                self.lists += 1
                self.list_times[path].append(time.monotonic())
                if "updatedSince" in request.query:
                    self.incremental[path] += 1
            response: web.StreamResponse = await handler(request)
            return response

        self.sim.app().middlewares.insert(0, count)

    def emailed(self) -> Counter[str]:
        log = self.sim.state.action_log
        return Counter(str(e["invoice_id"]) for e in log if e["action"] == "email")


def _config(folder: Path, url: str, sim: Simulator, mqtt_port: int, prefix: str) -> Path:
    path = folder / "billnotify.toml"
    path.write_text(
        f"""[service]
name = "bench"
state = "{url}"
log_level = "warning"
delivery_concurrency = 4

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
client_id = "{prefix}"
prefix = "{prefix}"
qos = 1
retain_state = []

[[sources]]
name = "acme"
kind = "billing_platform"
base_url = "{sim.billing_base_url}"
api_key = "{sim.api_key}"
poll_interval = "1s"
page_size = {PAGE}
watch = ["billing_tasks", "invoices"]

[[rules]]
name = "email-approved-invoices"
on = ["invoice.status_changed"]
when = "'Approved' in event.data.added"
actions = [{{ type = "invoice_action", action = "email", params = {{ billStyle = "Full" }} }}]
"""
    )
    return path


@contextlib.asynccontextmanager
async def _processes(folder: Path, config: Path, count: int) -> AsyncIterator[list[int]]:
    """``count`` ``billnotify run --instance`` processes; yields their pids."""
    procs = []
    try:
        for n in range(count):
            log = (folder / f"instance-{n}.log").open("ab")
            procs.append(
                await asyncio.create_subprocess_exec(
                    *[sys.executable, "-m", "billnotify", "run", "-c", str(config)],
                    *["--instance", f"i{n}", "--http", f"127.0.0.1:{free_port()}"],
                    stdout=log,
                    stderr=log,
                    cwd=folder,
                )
            )
            log.close()
        yield [proc.pid for proc in procs]
        for n, proc in enumerate(procs):
            if proc.returncode is not None:
                tail = (folder / f"instance-{n}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"instance i{n} exited with {proc.returncode}:\n{tail}")
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                async with asyncio.timeout(20):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def _task_events(subscriber: Subscriber) -> set[str]:
    """Task ids whose change to ``Running`` is on MQTT."""
    found = set()
    for line in subscriber.lines:
        event = json.loads(line.split(b" ", 1)[1])
        task = event["data"]["object"]
        if event["type"] == "billing_task.status_changed" and task["status"] == "Running":
            found.add(str(task["id"]))
    return found


async def _run(server: Any, mqtt_port: int, count: int) -> Run:
    """``count`` processes on a fresh database and a fresh platform, measured."""
    result = Run(count)
    platform = _Platform()
    sim = platform.sim
    invoices = [sim.state.add_invoice(status=["Raised"])["id"] for _ in range(INVOICES)]
    tasks = [sim.state.add_billing_task(status="Pending")["id"] for _ in range(TASKS)]
    prefix = f"bench-{count}-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    await sim.start()
    with tempfile.TemporaryDirectory(prefix="bench-instances-") as tmp:
        folder = Path(tmp)
        config = _config(folder, server.database(), sim, mqtt_port, prefix)
        try:
            async with (
                Subscriber.running(mqtt_port, prefix) as subscriber,
                _processes(folder, config, count) as pids,
            ):
                await _until(
                    lambda: all(platform.incremental[path] for path in LIST_PATHS),
                    READY_TIMEOUT,
                    "every resource's first incremental poll",
                )
                cpu, lists = sum(map(cpu_seconds, pids)), platform.lists
                changed = time.monotonic()
                for task in tasks:
                    sim.state.update_billing_task(task, status="Running")
                for invoice in invoices:
                    sim.state.update_invoice(invoice, status=["Raised", "Approved"])
                polled = platform.list_times.values()
                await _until(
                    lambda: all(at[-1] > changed for at in polled), 5, "polls after the change"
                )
                # from when both resources were polled: not where the poll cycles stood
                started = max(next(t for t in at if t > changed) for at in polled)
                await _until(
                    lambda: (
                        len(platform.emailed()) == INVOICES
                        and len(_task_events(subscriber)) == TASKS
                    ),
                    DRAIN_TIMEOUT,
                    "every invoice emailed and every task change on MQTT",
                )
                result.drain_s = time.monotonic() - started
                result.cpu_s = sum(map(cpu_seconds, pids)) - cpu
                result.lists = platform.lists - lists
                await asyncio.sleep(2)  # a late duplicate would show up now
            emailed = platform.emailed()
            result.lost = INVOICES - len(emailed) + TASKS - len(_task_events(subscriber))
            result.duplicated = sum(n - 1 for n in emailed.values())
        finally:
            await sim.stop()
    return result


def _results(runs: dict[int, list[Run]]) -> list[BenchResult]:
    one, three = (min(runs[k], key=lambda r: r.drain_s) for k in (1, 3))
    where = (
        f"{INVOICES} invoices approved (invoice-email rule) + {TASKS} task changes at once, "
        f"N processes on one PostgreSQL database (private, fsync off), "
        f"poll 1 s, page {PAGE}, delivery_concurrency 4; best drain "
        f"of {ROUNDS}; lost {max(r.lost for k in runs for r in runs[k])}, duplicated "
        f"{max(r.duplicated for k in runs for r in runs[k])} (worst run)"
    )
    rows = []
    for name, unit, figure, how in (
        ("drain", "s", lambda r: r.drain_s, "both resources polled -> every email and event"),
        ("cpu", "CPU s", lambda r: r.cpu_s, "user+system of all processes over the drain"),
        ("lists", "requests", lambda r: float(r.lists), "platform list requests over the drain"),
    ):
        rows.append(BenchResult(f"instances.{name}.1", figure(one), unit, notes=f"{how}; {where}"))
        rows.append(
            BenchResult.versus(
                f"instances.{name}.3",
                figure(three),
                unit,
                figure(one),
                f"{how}; baseline = one process",
            )
        )
    return rows


async def run() -> list[BenchResult]:
    """One process, then three, alternating; skipped without PostgreSQL."""
    reason = _postgres.unavailable()
    if reason:
        print(f"  instances: skipped: {reason}", file=sys.stderr)
        return []
    runs: dict[int, list[Run]] = {1: [], 3: []}
    order = [1, 3]
    with (
        _postgres.private() as server,
        tempfile.TemporaryDirectory() as tmp,
        _mosquitto(Path(tmp)) as port,
    ):
        for _ in range(ROUNDS):
            for count in order:
                runs[count].append(await _run(server, port, count))
                print(runs[count][-1].describe(), file=sys.stderr, flush=True)
            order.reverse()
    return _results(runs)


if __name__ == "__main__":
    from bench import format_table

    print(format_table(asyncio.run(run())))
