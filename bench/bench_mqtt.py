"""Event-log-to-subscriber throughput of :class:`MqttPublisher` against a raw aiomqtt loop.

``N`` events are appended to a SQLite store; the publisher drains the log into a
mosquitto that this module starts on loopback, and an independent QoS 1 subscriber
counts them. The clock runs from the publisher's start until the subscriber has every
event. The baseline is a bare aiomqtt publish loop doing the same work (the same
payloads already in memory, QoS 1, the same window of ``max_inflight`` publishes)
through the same broker to the same kind of subscriber, in the same run.

A second case runs the publisher against the embedded amqtt broker (MQTT 3.1.1) and
compares it with the publisher on mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt

from bench import BenchResult
from billnotify.config.models import MqttConfig
from billnotify.events import build_event
from billnotify.publish import MqttPublisher
from billnotify.publish.broker import EmbeddedBroker
from billnotify.publish.mqtt import POSITION
from billnotify.publish.topics import event_topic
from billnotify.store import ProcessStore, SqliteStore

N = 20_000
ROUNDS = 5
WINDOW = 100
QOS = 1
SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _mosquitto(folder: Path) -> Iterator[int]:
    """A mosquitto on a free loopback port; yields the port."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = _free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                "allow_anonymous true",
                "user root",
                f"listener {port} 127.0.0.1",
                "max_queued_messages 100000",
                "max_inflight_messages 1000",
                "set_tcp_nodelay true",
                "persistence false",
                "log_dest none",
            ]
        )
        + "\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not start")
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def _fill(store: SqliteStore) -> list[tuple[str, bytes]]:
    """Append ``N`` events; return their (topic, payload) for the baseline."""
    messages: list[tuple[str, bytes]] = []
    for first in range(0, N, 1000):
        events = [
            build_event(
                source="bench",
                entity="billing_task",
                object_id=str(n % 1000),
                type_="billing_task.status_changed",
                key=f"bench-{n}",
                time=datetime(2026, 11, 21, tzinfo=UTC),
                data={
                    "object": {"id": str(n % 1000), "status": "Completed", "n": n},
                    "previous": {"status": "Running"},
                    "changed": ["status"],
                },
            )
            for n in range(first, first + 1000)
        ]
        for stored in await store.commit("bench", [], events):
            messages.append((event_topic("x", stored.event), stored.event.to_json().encode()))
    return messages


async def _subscriber(port: int, topic: str, username: str | None) -> asyncio.subprocess.Process:
    """An independent QoS 1 subscriber process that exits after ``N`` messages.

    ``mosquitto_sub`` in its own process, so its cost is not charged to the
    publisher's event loop. A first run creates the persistent session and its
    subscription (``-c -E``); the broker queues from then on, so the second run
    misses nothing however late it connects.
    """
    client_id = f"sub-{uuid.uuid4().hex[:8]}"
    command = [SUB, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv311", "-q", str(QOS)]
    command += ["-c", "-i", client_id, "-t", topic]
    if username:
        command += ["-u", username]
    setup = await asyncio.create_subprocess_exec(*command, "-E", stdout=subprocess.DEVNULL)
    if await setup.wait() != 0:
        raise RuntimeError("mosquitto_sub could not subscribe")
    return await asyncio.create_subprocess_exec(*command, "-C", str(N), stdout=subprocess.DEVNULL)


async def _timed(
    port: int,
    prefix: str,
    work: Callable[[], Awaitable[object]],
    username: str | None = None,
) -> float:
    """Seconds from starting ``work`` until the subscriber has all ``N`` messages."""
    subscriber = await _subscriber(port, f"{prefix}/events/#", username)
    started = time.perf_counter()
    task = asyncio.create_task(work())
    try:
        async with asyncio.timeout(120):
            await subscriber.wait()
        return time.perf_counter() - started
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if subscriber.returncode is None:
            subscriber.kill()
            await subscriber.wait()


async def _product(
    store: SqliteStore, port: int, protocol: int, url: str, username: str | None = None
) -> float:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    await store.set_position(POSITION, 0)
    config = MqttConfig(
        url=url,
        prefix=prefix,
        client_id=prefix,
        protocol=protocol,  # type: ignore[arg-type]
        qos=QOS,
        max_inflight=WINDOW,
        retain_state=[],
        username=username,
    )
    publisher = MqttPublisher(config, store)
    return await _timed(port, prefix, publisher.run, username)


async def _baseline(messages: list[tuple[str, bytes]], port: int, protocol: int) -> float:
    prefix = f"raw-{uuid.uuid4().hex[:8]}"
    version = aiomqtt.ProtocolVersion.V5 if protocol == 5 else aiomqtt.ProtocolVersion.V311

    async def publish_all() -> None:
        async with aiomqtt.Client(
            "127.0.0.1", port, protocol=version, max_inflight_messages=WINDOW
        ) as client:
            client.pending_calls_threshold = 10 * WINDOW
            window = asyncio.Semaphore(WINDOW)
            tasks = set()

            async def one(topic: str, payload: bytes) -> None:
                try:
                    await client.publish(topic, payload, qos=QOS)
                finally:
                    window.release()

            for topic, payload in messages:
                await window.acquire()
                task = asyncio.create_task(one(prefix + topic[1:], payload))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
            await asyncio.Event().wait()  # stay connected until measured

    return await _timed(port, prefix, publish_all)


async def run() -> list[BenchResult]:
    """Measure the publisher and the raw loop, best of ``ROUNDS`` each."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        async with ProcessStore(folder / "bench.db") as store:  # as `billnotify run` has it
            messages = await _fill(store)
            with _mosquitto(folder) as port:
                url = f"mqtt://127.0.0.1:{port}"
                product = baseline = float("inf")
                for _ in range(ROUNDS):
                    raw = await _baseline(messages, port, 5)
                    ours = await _product(store, port, 5, url)
                    print(
                        f"  round: raw loop {N / raw:,.0f}/s, publisher {N / ours:,.0f}/s",
                        file=sys.stderr,
                    )
                    baseline, product = min(baseline, raw), min(product, ours)
            # amqtt queues for an offline session only when the client is not anonymous;
            # it warns about PUBACKs it lost track of while doing so
            logging.getLogger("amqtt").setLevel(logging.ERROR)
            async with EmbeddedBroker(port=0, allow_anonymous=False) as embedded:
                amqtt = min(
                    [
                        await _product(store, embedded.port, 4, embedded.url, "bench")
                        for _ in range(2)
                    ]
                )
    notes = f"N={N}, QoS {QOS}, window {WINDOW}, MQTT 5, mosquitto; best of {ROUNDS}"
    return [
        BenchResult.versus("mqtt.log_to_subscriber", N / product, "events/s", N / baseline, notes),
        BenchResult.versus(
            "mqtt.embedded_broker",
            N / amqtt,
            "events/s",
            N / product,
            "publisher on amqtt (MQTT 3.1.1) vs on mosquitto",
        ),
    ]
