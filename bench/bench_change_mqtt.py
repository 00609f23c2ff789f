"""A change on the platform → its event on MQTT, on SQLite and on PostgreSQL.

``N`` billing tasks on the loopback fake platform (``bench/_billing_fake.py``, its own
process) are baselined by one :class:`BillingPlatformSync` per store, each with an
:class:`MqttPublisher` running on that store into one private mosquitto. In a
measurement every task's status changes at once; the clock runs from the start of a
``poll_once`` (fetch, detect, commit the events) until an independent ``mosquitto_sub``
(``bench/_peer_sides.py``) has received all ``N`` events published from the log.

The stores are those of ``billnotify run``: SQLite in its own process, and PostgreSQL
(:class:`PgStore` on a fresh database of a private server, ``bench/_postgres.py``; its
row is skipped, saying why, where the binaries are missing).

The raw baseline does the same I/O without a store: the ``GET`` loop of
``bench_detect`` (the same ``updatedSince`` pages, ``limit`` and ``idAfter``), each
record published as it arrives by the bare aiomqtt loop of ``bench_mqtt`` (QoS 1, a
window of ``WINDOW``, MQTT 5, a CloudEvent-sized JSON payload), timed to the same kind
of subscriber. Sides take turns within each round (the order reversed every round),
each after its own change of all ``N`` tasks; the best round of each is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import aiomqtt

from bench import BenchResult, _postgres
from bench._billing_fake import API_KEY, PAGE_MAX, FakePlatform
from bench._peer_sides import Subscriber
from bench._postgres import Opener, stores_of
from bench.bench_mqtt import _mosquitto
from billnotify.clients.billing_platform import BillingPlatformClient
from billnotify.config.models import BillingPlatformSource, MqttConfig
from billnotify.publish import MqttPublisher
from billnotify.sources.billing_platform import BillingPlatformSync, build_billing_syncs

N = 5_000
ROUNDS = 3
WINDOW = 100
TIMEOUT = 120.0
SINCE = "%Y-%m-%dT%H:%M:%SZ"


@dataclass
class _Side:
    """One store with its sync (past the baseline) and its running publisher."""

    name: str
    sync: BillingPlatformSync
    prefix: str


@contextlib.asynccontextmanager
async def _side(name: str, opener: Opener, base_url: str, port: int) -> AsyncIterator[_Side]:
    prefix = f"{name}-{uuid.uuid4().hex[:8]}"
    source = BillingPlatformSource.model_validate(
        {
            "name": "bench",
            "kind": "billing_platform",
            "base_url": base_url,
            "api_key": API_KEY,
            "watch": ["billing_tasks"],
            "page_size": PAGE_MAX,
        }
    )
    mqtt = MqttConfig(
        url=f"mqtt://127.0.0.1:{port}",
        prefix=prefix,
        client_id=prefix,
        protocol=5,
        qos=1,
        max_inflight=WINDOW,
        retain_state=[],
    )
    async with (
        opener() as store,
        BillingPlatformClient(base_url, API_KEY, page_size=PAGE_MAX) as client,
    ):
        (sync,) = build_billing_syncs(source, client, store)
        first = await sync.poll_once()
        if not first.baseline or first.records != N:
            raise RuntimeError(f"{name}: the baseline saw {first.records} of {N} tasks")
        publisher = asyncio.create_task(MqttPublisher(mqtt, store).run(), name=f"{name}-mqtt")
        try:
            yield _Side(name, sync, prefix)
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher


async def _timed(port: int, prefix: str, work: Callable[[], Awaitable[object]]) -> float:
    """Events/s from starting ``work`` until the subscriber on ``prefix`` has ``N``."""
    async with Subscriber.running(port, prefix) as subscriber:
        started = time.perf_counter()
        await work()
        await subscriber.wait_for(N, TIMEOUT)
        return N / (time.perf_counter() - started)


async def _product(side: _Side, port: int) -> float:
    async def poll() -> None:
        stats = await side.sync.poll_once()
        if stats.events != N:
            raise RuntimeError(f"{side.name}: a poll found {stats.events} events of {N}")

    return await _timed(port, side.prefix, poll)


async def _raw(
    session: aiohttp.ClientSession, base_url: str, port: int, changed_at: float
) -> float:
    """The baseline: bare GET pages of the changed tasks, each record published bare."""
    prefix = f"raw-{uuid.uuid4().hex[:8]}"
    since = datetime.fromtimestamp(int(changed_at) - 1, UTC).strftime(SINCE)
    headers = {"Authorization": f"Bearer {API_KEY}", "Accept": "application/json"}

    async def fetch_and_publish() -> None:
        async with aiomqtt.Client(
            "127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, max_inflight_messages=WINDOW
        ) as client:
            client.pending_calls_threshold = 10 * WINDOW
            window = asyncio.Semaphore(WINDOW)
            tasks: set[asyncio.Task[None]] = set()

            async def one(record: dict[str, object]) -> None:
                payload = {"specversion": "1.0", "type": "billing_task.status_changed"}
                body = json.dumps({**payload, "data": {"object": record}}).encode()
                try:
                    await client.publish(f"{prefix}/events/billing_tasks/{record['id']}", body, 1)
                finally:
                    window.release()

            last: str | None = None
            while True:
                params = {"limit": str(PAGE_MAX), "updatedSince": since}
                if last is not None:
                    params["idAfter"] = last
                url = f"{base_url}/billingTasks/"
                async with session.get(url, params=params, headers=headers) as response:
                    page = await response.json()
                if not page:
                    break
                for record in page:
                    await window.acquire()
                    task = asyncio.create_task(one(record))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                last = str(max(int(record["id"]) for record in page))
            await asyncio.gather(*tasks)

    return await _timed(port, prefix, fetch_and_publish)


async def _rounds(server: object | None) -> dict[str, float]:
    """Best events/s of the raw loop and of each store, ``ROUNDS`` rounds taking turns."""
    with tempfile.TemporaryDirectory() as tmp, _mosquitto(Path(tmp)) as port:
        async with (
            FakePlatform(N) as platform,
            aiohttp.ClientSession() as session,
            contextlib.AsyncExitStack() as stack,
        ):
            base_url = platform.base_url
            sides = {
                name: await stack.enter_async_context(_side(name, opener, base_url, port))
                for name, opener in stores_of(server).items()
            }
            measures: dict[str, Callable[[float], Awaitable[float]]] = {
                "raw": lambda at: _raw(session, base_url, port, at)
            }
            for name, side in sides.items():
                measures[name] = lambda _at, side=side: _product(side, port)  # type: ignore[misc]
            best = dict.fromkeys(measures, 0.0)
            order, status = list(measures), 0
            for _ in range(ROUNDS):
                for name in order:
                    status += 1
                    changed_at = await platform.change(1, N, f"Status{status}")
                    rate = await measures[name](changed_at)
                    print(f"  {name}: {rate:,.0f} events/s", file=sys.stderr, flush=True)
                    best[name] = max(best[name], rate)
                order.reverse()
            return best


async def run() -> list[BenchResult]:
    """Change → MQTT on each store, against the raw fetch-and-publish loop."""
    with contextlib.ExitStack() as stack:
        reason = _postgres.unavailable()
        if reason:
            print(f"  change_mqtt: the PostgreSQL row is skipped: {reason}", file=sys.stderr)
        best = await _rounds(None if reason else stack.enter_context(_postgres.private()))
    notes = (
        f"{N} tasks change at once, poll_once -> log -> publisher -> subscriber, limit "
        f"{PAGE_MAX}, QoS 1, window {WINDOW}, mosquitto, best of {ROUNDS}; baseline = raw "
        f"GET of the same pages + raw aiomqtt publish of each record"
    )
    rows = [
        BenchResult.versus("change_mqtt.sqlite", best["sqlite"], "events/s", best["raw"], notes)
    ]
    if "postgres" in best:
        rows.append(
            BenchResult.versus(
                "change_mqtt.postgres",
                best["postgres"],
                "events/s",
                best["raw"],
                notes + "; PostgreSQL: private server, fsync off, loopback",
            )
        )
    return rows
