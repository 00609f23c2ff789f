"""Change → MQTT beside a peer: billnotify against Node-RED doing the same job (issue 13).

Each side runs as its own process tree against a fresh loopback billing platform
(``bench/_billing_fake.py``: ``N`` completed tasks, created an hour ago) and one private
mosquitto, with an independent ``mosquitto_sub`` stamping every message as it arrives:

- Node-RED 4.1.8 (``bench/nodered/``, installed by ``npm ci`` into
  ``~/.cache/billnotify-bench/node-red`` on first use) running a flow that polls
  ``billingTasks`` every 1 s with ``updatedSince`` + ``idAfter`` paging at ``limit=500``,
  compares each task's status with the last one seen (in memory) and publishes one JSON
  message per change at QoS 1;
- ``billnotify run`` with one ``billing_platform`` source watching ``billing_tasks``
  (``poll_interval`` 1 s, ``page_size`` 500), SQLite state in a temporary folder, events
  to the same broker (no retained state, so one message per change on both sides).

Both reach back ``OVERLAP_S`` behind their cursor. In turn, after one warm-up change:

*trickle*  ``TRICKLE`` single status changes ``TRICKLE_GAP`` apart; latency from the
           change to the subscriber, p50 and p99;
*burst*    every task's status changes at once; events/s from the first platform request
           after the change to the last message at the subscriber; CPU µs per event of
           the side's process tree (user + system, change to last message);
then peak RSS of the tree, lost and duplicated messages, and what the side asked of the
platform (requests per full scan, rows read again after the burst). Each figure is the
median of ``ROUNDS`` rounds, the sides taking turns. Node/npm missing: skipped, saying so.
Beside them, two floors against Node-RED's CPU per event: *paho floor*, the CPU per
message of a bare paho publish loop on the same broker (what the MQTT library alone
costs here), and *SQLite floor*, the CPU per change of bare ``sqlite3`` writing what a
durable change is at least (its snapshot and its logged event, in billnotify's schema,
a transaction a page).

``BENCH_QUICK=1``: ``N`` 2,000, one round. ``BENCH_NODERED_N`` sets ``N``.
``BENCH_PROFILE=FOLDER``: one more billnotify round under py-spy; the burst's profile
is printed and kept in the folder with py-spy's stacks (see ``bench/_spy.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from bench import BenchResult
from bench._billing_fake import PAGE_MAX, FakePlatform, Request
from bench._peer_sides import (
    OVERLAP_S,
    Skip,
    Subscriber,
    billnotify,
    cpu_seconds,
    node_red,
    node_red_home,
    peak_rss,
)
from bench._spy import burst_profile
from bench.bench_mqtt import _mosquitto
from billnotify.store.schema import SCHEMA

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
N = int(os.environ.get("BENCH_NODERED_N", 2_000 if QUICK else 20_000))
ROUNDS = 1 if QUICK else 3
TRICKLE = 30 if QUICK else 100
TRICKLE_GAP = 0.1
READY_TIMEOUT = 60.0
BURST_TIMEOUT = 180.0

Launch = Callable[[Path, str, int, str], AbstractAsyncContextManager[asyncio.subprocess.Process]]
Nudge = Callable[[], Awaitable[None]]


@dataclass
class Round:
    """What one side did in one round."""

    side: str
    burst_rate: float = 0.0
    burst_wall: float = 0.0
    cpu_us: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    rss_mib: float = 0.0
    lost: int = 0
    duplicated: int = 0
    scan_requests: int = 0
    limits: set[int] = field(default_factory=set)
    after_burst: list[tuple[str, int, int]] = field(default_factory=list)
    """Queries from the burst on: (filter, requests, rows)."""

    @property
    def reread(self) -> int:
        """Rows fetched after the burst beyond the ``N`` that carried the change."""
        return sum(rows for _, _, rows in self.after_burst) - N

    @property
    def requests_after(self) -> int:
        return sum(requests for _, requests, _ in self.after_burst)

    def describe(self) -> str:
        queries = " ".join(f"{f[0]}{rows}/{req}" for f, req, rows in self.after_burst)
        return (
            f"  {self.side}: burst {self.burst_rate:,.0f}/s ({self.burst_wall:.2f} s change→last),"
            f" {self.cpu_us:.0f} µs CPU/event, trickle p50/p99 {self.p50_ms:.0f}/"
            f"{self.p99_ms:.0f} ms, peak RSS {self.rss_mib:.0f} MiB, lost {self.lost},"
            f" duplicated {self.duplicated}; full scan {self.scan_requests} requests"
            f" (limit {sorted(self.limits)}); after the burst (filter rows/requests): {queries}"
        )


def _queries(log: list[Request]) -> list[tuple[str, int, int]]:
    """Requests grouped into paged queries: (filter, requests, rows)."""
    queries: list[tuple[str, int, int]] = []
    for request in log:
        if request.first_page or not queries:
            queries.append((request.filter, 0, 0))
        kind, requests, rows = queries[-1]
        queries[-1] = (kind, requests + 1, rows + request.rows)
    return queries


@contextlib.asynccontextmanager
async def _logging(platform: FakePlatform) -> AsyncIterator[list[Request]]:
    log: list[Request] = []

    async def drain() -> None:
        while True:
            log.extend(await platform.requests())
            await asyncio.sleep(0.2)

    task = asyncio.create_task(drain())
    try:
        yield log
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.extend(await platform.requests())


async def _until(
    condition: Callable[[], bool], timeout: float, what: str, nudge: Nudge | None = None
) -> None:
    """Until ``condition()``, calling ``nudge`` (if any) every half second meanwhile."""
    deadline = time.monotonic() + timeout
    nudged = 0.0
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        if nudge is not None and time.monotonic() - nudged > 0.5:
            nudged = time.monotonic()
            await nudge()
        await asyncio.sleep(0.05)


async def _trickle(platform: FakePlatform, subscriber: Subscriber) -> dict[tuple[str, str], float]:
    changed: dict[tuple[str, str], float] = {}
    started = time.monotonic()
    for n in range(1, TRICKLE + 1):
        await asyncio.sleep(max(0.0, started + n * TRICKLE_GAP - time.monotonic()))
        changed[(str(n), "Failed")] = await platform.change(n, n, "Failed")
    await subscriber.wait_for(1 + TRICKLE, TRICKLE * TRICKLE_GAP + 30)
    return changed


@dataclass
class _Live:
    """A side running against its own platform, past its first incremental poll."""

    platform: FakePlatform
    log: list[Request]
    subscriber: Subscriber
    process: asyncio.subprocess.Process
    warm_up: dict[tuple[str, str], float]
    rss_mib: float = 0.0
    """Peak RSS of the side's process tree, once the block is over."""


@contextlib.asynccontextmanager
async def _up(
    side: str, launch: Launch, port: int, nudge: Nudge | None = None
) -> AsyncIterator[_Live]:
    """Start ``side``; wait for its first incremental poll and one change to come through
    (``nudge``: called meanwhile, e.g. an inbound hook that asks for a poll)."""
    prefix = f"{side}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            FakePlatform(N) as platform,
            _logging(platform) as log,
            Subscriber.running(port, prefix) as subscriber,
            launch(Path(tmp), platform.base_url, port, prefix) as process,
        ):
            await _until(
                lambda: any(r.filter != "full" for r in log),
                READY_TIMEOUT,
                f"{side} to poll",
                nudge,
            )
            warm_up = {(str(N), "Running"): await platform.change(N, N, "Running")}
            if nudge is not None:
                await nudge()
            await subscriber.wait_for(1, 30)
            live = _Live(platform, log, subscriber, process, warm_up)
            yield live
            await asyncio.sleep(OVERLAP_S + 3)  # the re-reads of the overlap, late duplicates
            live.rss_mib = peak_rss(process.pid)


async def _round(side: str, launch: Launch, port: int) -> Round:
    """One side: trickle, then burst, measured."""
    result = Round(side)
    async with _up(side, launch, port) as live:
        platform, log, subscriber, process = live.platform, live.log, live.subscriber, live.process
        trickle = await _trickle(platform, subscriber)
        changed = live.warm_up | trickle
        cpu = cpu_seconds(process.pid)
        burst_at = await platform.change(1, N, "Error")
        await subscriber.wait_for(len(changed) + N, BURST_TIMEOUT)
        result.cpu_us = (cpu_seconds(process.pid) - cpu) / N * 1e6
    result.rss_mib = live.rss_mib
    arrivals = subscriber.arrivals()
    changed |= {(str(n), "Error"): burst_at for n in range(1, N + 1)}
    first: dict[tuple[str, str], float] = {}
    for at, task_id, status in arrivals:
        first.setdefault((task_id, status), at)
    result.lost = len(changed.keys() - first.keys())
    result.duplicated = len(arrivals) - len(first) + len(first.keys() - changed.keys())
    latencies = [(first[key] - at) * 1000 for key, at in trickle.items() if key in first]
    if len(latencies) > 1:
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        result.p50_ms, result.p99_ms = statistics.median(latencies), cuts[98]
    last = max(at for (_, status), at in first.items() if status == "Error")
    polled = min(r.at for r in log if r.at >= burst_at)
    result.burst_rate, result.burst_wall = N / (last - polled), last - burst_at
    full = [r for r in log if r.filter == "full"]
    result.scan_requests, result.limits = len(full), {r.limit for r in log}
    result.after_burst = _queries([r for r in log if r.at >= burst_at])
    return result


async def _profile(port: int, folder: Path) -> str:
    """billnotify under py-spy twice, with the burst and with an equally long pause."""
    traces = {burst: folder / f"billnotify.{burst}.txt" for burst in ("burst", "control")}
    took = 0.0
    for kind, trace in traces.items():

        def launch(
            tmp: Path, url: str, port: int, prefix: str, trace: Path = trace
        ) -> AbstractAsyncContextManager[asyncio.subprocess.Process]:
            return billnotify(tmp, url, port, prefix, trace)

        async with _up("billnotify", launch, port) as live:
            started = time.monotonic()
            if kind == "burst":
                await live.platform.change(1, N, "Error")
                await live.subscriber.wait_for(1 + N, BURST_TIMEOUT)
                took = time.monotonic() - started
            else:
                await asyncio.sleep(took)
    text = burst_profile(traces["burst"], traces["control"], N)
    (folder / "billnotify.profile.txt").write_text(text + "\n")
    return text


async def _paho_floor(port: int) -> float:
    """CPU µs per message of a bare paho publish loop on this machine and broker: ``N``
    messages of an event's size, QoS 1, MQTT 5, a window of 100, each a future settled
    by paho's ``on_publish`` (aiomqtt only connects and runs paho's socket). What any
    publisher built on paho costs at least, whatever else it does."""
    payload = b"x" * 900
    async with aiomqtt.Client(
        "127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, max_inflight_messages=0
    ) as client:
        paho = client._client
        loop = asyncio.get_running_loop()
        waiting: dict[int, asyncio.Future[None]] = {}
        theirs = paho.on_publish

        def acknowledged(c: Any, userdata: Any, mid: int, *rest: Any) -> None:
            future = waiting.pop(mid, None)
            if future is None:
                if theirs is not None:
                    theirs(c, userdata, mid, *rest)
            else:
                future.set_result(None)

        paho.on_publish = acknowledged
        slots = asyncio.Semaphore(100)
        sent: list[asyncio.Future[None]] = []
        cpu = time.process_time()
        for n in range(N):
            await slots.acquire()
            info = paho.publish(f"floor/{n}", payload, 1)
            future = loop.create_future()
            future.add_done_callback(lambda _: slots.release())
            waiting[info.mid] = future
            sent.append(future)
        await asyncio.gather(*sent)
        return (time.process_time() - cpu) / N * 1e6


def _sqlite_floor(folder: Path) -> float:
    """CPU µs per change of bare ``sqlite3`` doing the least a durable change needs: ``N``
    tracked tasks, all changed, written in transactions of ``PAGE_MAX``: each task's
    snapshot updated and an event of its size appended, in billnotify's schema (its
    indexes included), WAL, ``synchronous=NORMAL``; ``executemany``, no framing, no
    detection, no JSON encoding (the texts are made before the clock starts)."""
    path = folder / f"floor-{uuid.uuid4().hex}.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        task = {"id": "", "status": "Completed", "text": "x" * 220}
        snapshots = [json.dumps({**task, "id": str(n)}) for n in range(N)]
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO snapshots (source, entity, id, record, updated_at) "
            "VALUES ('bench', 'billing_task', ?, ?, 0)",
            [(str(n), text) for n, text in enumerate(snapshots)],
        )
        db.execute("COMMIT")
        changed = [text.replace("Completed", "Error") for text in snapshots]
        ids = [uuid.uuid4().hex for _ in range(N)]
        body = "x" * 900
        cpu = time.process_time()
        for start in range(0, N, PAGE_MAX):
            page = range(start, min(N, start + PAGE_MAX))
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "UPDATE snapshots SET record = ?, version = version + 1, dirty = 1, "
                "updated_at = 1 WHERE source = 'bench' AND entity = 'billing_task' AND id = ?",
                [(changed[n], str(n)) for n in page],
            )
            db.executemany(
                "INSERT INTO events (id, type, source, subject, time, recorded_at, body) "
                "VALUES (?, 'billing_task.status_changed', 'bench', ?, '', 1, ?)",
                [(ids[n], f"billing_tasks/{n}", body) for n in page],
            )
            db.execute("COMMIT")
        return (time.process_time() - cpu) / N * 1e6
    finally:
        db.close()


def _results(
    rounds: dict[str, list[Round]], paho_floor: float, sqlite_floor: float
) -> list[BenchResult]:
    where = f"N={N}, poll 1 s, limit {PAGE_MAX}, QoS 1, median of {ROUNDS}; baseline = Node-RED"
    sides = ("billnotify", "node-red")
    rows = []
    figures: tuple[tuple[str, str, Callable[[Round], float], str], ...] = (
        ("burst", "events/s", lambda r: r.burst_rate, "first request after the change → last"),
        ("burst_cpu", "µs/event", lambda r: r.cpu_us, "CPU of the process tree, change → last"),
        ("trickle_p50", "ms", lambda r: r.p50_ms, f"{TRICKLE} changes {TRICKLE_GAP:g} s apart"),
        ("trickle_p99", "ms", lambda r: r.p99_ms, f"{TRICKLE} changes {TRICKLE_GAP:g} s apart"),
        ("peak_rss", "MiB", lambda r: r.rss_mib, "sum of VmHWM of the process tree"),
        ("lost", "events", lambda r: r.lost, "worst round"),
        ("duplicated", "events", lambda r: r.duplicated, "worst round"),
        ("scan_requests", "requests", lambda r: r.scan_requests, "first full scan"),
        ("reread_rows", "rows", lambda r: r.reread, f"after the burst, {OVERLAP_S} s overlap"),
        ("requests_after", "requests", lambda r: r.requests_after, "after the burst"),
    )
    for name, unit, figure, how in figures:
        pick: Callable[[list[float]], float] = (
            max if name in ("lost", "duplicated") else statistics.median
        )
        ours, theirs = (pick([figure(r) for r in rounds[side]]) for side in sides)
        rows.append(BenchResult.versus(f"nodered.{name}", ours, unit, theirs, f"{how}; {where}"))
    theirs = statistics.median([r.cpu_us for r in rounds["node-red"]])
    how = "a bare paho publish loop per message (QoS 1, window 100) against Node-RED per event"
    rows.append(BenchResult.versus("nodered.paho_floor", paho_floor, "µs/event", theirs, how))
    how = "bare sqlite3 per change (snapshot + logged event, a transaction a page) against Node-RED per event"
    rows.append(BenchResult.versus("nodered.sqlite_floor", sqlite_floor, "µs/event", theirs, how))
    return rows


async def run() -> list[BenchResult]:
    """Both sides, ``ROUNDS`` rounds taking turns; a profiled billnotify round if asked."""
    try:
        node_red_home()
    except Skip as skip:
        print(f"  nodered: skipped: {skip}", file=sys.stderr)
        return []
    sides: dict[str, Launch] = {"node-red": node_red, "billnotify": billnotify}
    rounds: dict[str, list[Round]] = {side: [] for side in sides}
    profile_dir = os.environ.get("BENCH_PROFILE")
    with tempfile.TemporaryDirectory() as tmp, _mosquitto(Path(tmp)) as port:
        order = list(sides)
        for _ in range(ROUNDS):
            for side in order:
                rounds[side].append(await _round(side, sides[side], port))
                print(rounds[side][-1].describe(), file=sys.stderr, flush=True)
            order.reverse()
        paho_floor = statistics.median([await _paho_floor(port) for _ in range(ROUNDS)])
        sqlite_floor = statistics.median([_sqlite_floor(Path(tmp)) for _ in range(ROUNDS)])
        if profile_dir:
            folder = Path(profile_dir).absolute()
            folder.mkdir(parents=True, exist_ok=True)
            print(await _profile(port, folder), file=sys.stderr)
    return _results(rounds, paho_floor, sqlite_floor)


if __name__ == "__main__":
    from bench import format_table

    print(format_table(asyncio.run(run())))
