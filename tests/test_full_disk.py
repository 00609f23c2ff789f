"""A full disk under the state (issue 10, item 7): the service stays up, says it is not
ready, recovers by itself once there is room, loses nothing, sends nothing without its
ledger row, and keeps its WAL small.

The state lives on a real 5 MB tmpfs (mounting needs root: skipped otherwise) that a
filler file fills while the simulator keeps making changes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiohttp import web

from billnotify.events import build_event
from billnotify.simulator import Simulator
from billnotify.store import SqliteStore
from conftest import Mosquitto
from servers import free_port, serving, sim_source, toml_config

SECRET = "whsec_" + base64.b64encode(b"full-disk-test-signing-key-01234").decode()
VOLUME = "5m"


@contextlib.contextmanager
def small_volume(folder: Path) -> Iterator[Path]:
    """A 5 MB tmpfs mounted on ``folder``; skips the test where mounting is not allowed."""
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the state needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={VOLUME}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the file system is full; returns its size."""
    chunk = b"\0" * 65536
    written = 0
    with path.open("wb", buffering=0) as file:
        for size in (65536, 4096, 512):
            with contextlib.suppress(OSError):
                while True:
                    written += file.write(chunk[:size])
    return written


def _header(headers: dict[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name), None)


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


async def until(
    check: Callable[[], bool], what: str, within: float, proc: subprocess.Popen[bytes]
) -> float:
    """Wait for ``check`` (the service must stay up); returns the seconds it took."""
    began = time.monotonic()
    while not await asyncio.to_thread(check):
        assert proc.poll() is None, f"the service exited with {proc.returncode} ({what})"
        assert time.monotonic() - began < within, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - began


class _Subscriber:
    """A QoS 1 subscriber with a persistent session that reconnects after outages."""

    def __init__(self, broker: Mosquitto, topic: str, client_id: str) -> None:
        self.broker, self.topic, self.client_id = broker, topic, client_id
        self.subjects: list[str] = []
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    identifier=self.client_id,
                    clean_session=False,
                    protocol=aiomqtt.ProtocolVersion.V311,
                    keepalive=5,
                ) as client:
                    await client.subscribe(self.topic, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        if message.topic.value.endswith("/created"):
                            body = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                            self.subjects.append(body["subject"].rsplit("/", 1)[1])
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)  # the broker is away: try again shortly


class _Receiver:
    """A webhook receiver that answers 503 until told to accept."""

    def __init__(self) -> None:
        self.accepting = True
        self.received: list[str] = []
        self.app = web.Application()
        self.app.router.add_post("/hook", self._hook)

    async def _hook(self, request: web.Request) -> web.Response:
        await request.read()
        if not self.accepting:
            return web.Response(status=503)
        self.received.append(request.headers["webhook-id"])
        return web.Response(status=204)


@pytest.mark.fault
@pytest.mark.timeout(120)
async def test_a_full_disk_is_waited_out_and_loses_nothing(
    tmp_path: Path, sim: Simulator, make_mosquitto: Callable[[], Mosquitto], mqtt_prefix: str
) -> None:
    broker = make_mosquitto()
    subscriber = _Subscriber(broker, f"{mqtt_prefix}/events/#", f"{mqtt_prefix}-sub")
    receiver = _Receiver()
    volume = tmp_path / "volume"
    port = free_port()
    config = tmp_path / "config.toml"
    with small_volume(volume):
        async with serving(receiver.app) as base:
            sub_task = asyncio.create_task(subscriber.run())
            try:
                await asyncio.wait_for(subscriber.subscribed.wait(), 10)
                await _run(tmp_path, volume, config, port, sim, broker, subscriber, receiver, base)
            finally:
                sub_task.cancel()
                await asyncio.gather(sub_task, return_exceptions=True)


async def _run(
    tmp_path: Path,
    volume: Path,
    config: Path,
    port: int,
    sim: Simulator,
    broker: Mosquitto,
    subscriber: _Subscriber,
    receiver: _Receiver,
    base: str,
) -> None:
    raw = {
        "service": {
            "name": "fulldisk",
            "state": str(volume / "state.db"),
            "http": f"127.0.0.1:{port}",
            "log_level": "info",
            "shutdown_grace": "5s",
        },
        "mqtt": {
            "url": broker.url(),
            "client_id": f"billnotify-{tmp_path.name}",
            "prefix": subscriber.topic.split("/")[0],
            "reconnect_max": "500ms",
        },
        "sources": [sim_source(sim, poll_interval="200ms", watch=["billing_tasks"], timeout="2s")],
        "webhooks": [
            {
                "name": "ops",
                "url": f"{base}/hook",
                "secret": SECRET,
                "allow_private": True,
                "retry_schedule": ["0s"] + ["1s"] * 40,
            }
        ],
        "rules": [
            {
                "name": "alert",
                "on": ["billing_task.created"],
                "actions": [{"type": "webhook", "endpoint": "ops"}],
            }
        ],
    }
    config.write_text(toml_config(raw))
    (tmp_path / "templates").mkdir()
    state = volume / "state.db"
    wal = Path(f"{state}-wal")
    made: list[str] = []
    wal_sizes: list[int] = []

    async def make_changes(stop: asyncio.Event) -> None:
        while not stop.is_set():
            made.append(str(sim.state.add_billing_task(status="Pending")["id"]))
            with contextlib.suppress(OSError):
                wal_sizes.append(wal.stat().st_size)
            await asyncio.sleep(0.05)

    def logged() -> set[str]:
        rows = query(state, "SELECT subject FROM events WHERE type = 'billing_task.created'")
        return {str(subject).rsplit("/", 1)[1] for (subject,) in rows}

    def ledger() -> dict[str, tuple[str, int]]:
        rows = query(state, "SELECT id, status, attempts FROM deliveries WHERE rule = 'alert'")
        return {str(i): (str(s), int(n)) for i, s, n in rows}

    proc = _start(config, tmp_path / "service.err")
    stop = asyncio.Event()
    changes: asyncio.Task[None] | None = None
    try:
        await until(lambda: readyz(port)[0] == 200, "ready", 30, proc)
        changes = asyncio.create_task(make_changes(stop))
        await until(lambda: len(set(subscriber.subjects)) >= 10, "events flowing", 15, proc)

        # a backlog for the publisher and deliveries waiting for a retry, then the disk fills
        await asyncio.to_thread(broker.stop)
        receiver.accepting = False
        backlog = len(logged())
        await until(lambda: len(logged()) >= backlog + 20, "a backlog", 15, proc)
        filler = volume / "filler"
        await asyncio.to_thread(fill, filler)
        full_at = time.monotonic()
        receiver.accepting = True
        await asyncio.to_thread(broker.start)  # the publisher sends what it has
        to_503 = await until(lambda: readyz(port)[0] == 503, "not ready while full", 10, proc)
        status, body = readyz(port)
        made_before_full = len(made)
        await until(lambda: time.monotonic() - full_at > 5, "an outage of 5 s", 10, proc)
        made_while_full = len(made) - made_before_full

        filler.unlink()
        to_200 = await until(lambda: readyz(port)[0] == 200, "ready again", 20, proc)
        stop.set()
        await changes
        wanted = set(made)
        caught_up = await until(lambda: wanted <= logged(), "every change in the log", 30, proc)
        await until(lambda: wanted <= set(subscriber.subjects), "every change on MQTT", 30, proc)

        def delivered() -> bool:
            rows = ledger()
            return len(rows) >= len(wanted) and {s for s, _ in rows.values()} == {"succeeded"}

        await until(delivered, "every delivery sent", 30, proc)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        stop.set()
        if changes is not None:
            await asyncio.gather(changes, return_exceptions=True)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    log = (tmp_path / "service.err").read_text()
    rows = ledger()
    sent = Counter(receiver.received)
    figures = {
        "changes": len(made),
        "made_while_full": made_while_full,
        "seconds_to_503": round(to_503, 2),
        "seconds_to_200_after_room": round(to_200, 2),
        "seconds_to_catch_up": round(caught_up, 2),
        "mqtt_duplicates": len(subscriber.subjects) - len(set(subscriber.subjects)),
        "webhook_duplicates": sum(n - 1 for n in sent.values()),
        "wal_max_bytes": max(wal_sizes),
    }
    print("full disk figures:", figures)
    assert status == 503 and "disk full" in body["checks"]["store"], body
    assert "MQTT publisher: disk full" in log  # the publisher met the full disk, and lived
    assert set(made) <= logged()  # nothing lost
    assert len(rows) == len(logged())  # one delivery per event, none forgotten
    # nothing sent without its ledger row: each request is a committed attempt
    assert all(sent[i] <= rows[i][1] for i in sent), [i for i in sent if i not in rows]
    assert max(wal_sizes) <= 2 * (1 << 20) + 65536, figures  # bounded, not 4 MB+
    assert "Traceback" not in log, log[-3000:]


def _start(config: Path, stderr: Path) -> subprocess.Popen[bytes]:
    with stderr.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "billnotify", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


async def test_the_wal_is_cut_back_while_writing_and_emptied_when_idle(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    wal = Path(f"{state}-wal")
    largest = 0
    async with SqliteStore(state) as store:
        for batch in range(60):  # some 6 MB through the log
            events = [
                build_event(
                    source="acme",
                    entity="billing_task",
                    object_id=str(n),
                    type_="billing_task.updated",
                    key=f"wal-{batch}-{n}",
                    time=datetime(2026, 11, 21, tzinfo=UTC),
                    data={"object": {"id": str(n), "pad": "x" * 1000}},
                )
                for n in range(100)
            ]
            await store.commit("acme", [], events)
            largest = max(largest, wal.stat().st_size)
        began = time.monotonic()
        while wal.stat().st_size:  # idle: checkpointed and truncated
            assert time.monotonic() - began < 5, wal.stat().st_size
            await asyncio.sleep(0.05)
        assert await store.last_seq() == 6000
    # checkpointed every 1 MiB and cut back to 1 MiB: not SQLite's 4 MB, nor the 6 MB
    assert largest <= 2 * (1 << 20), largest
    print("largest WAL while writing 6 MB:", largest)
