"""Shared fixtures: real servers on loopback, each with its own port and temp folder.

MQTT
    ``mosquitto`` (session)       a plain mosquitto shared by tests that use their own
                                   topic prefix (``mqtt_prefix``)
    ``mosquitto_tls`` (session)   mosquitto with a TLS listener and a client-cert
                                   (mutual TLS) listener, certificates from a trustme CA
    ``make_mosquitto`` (function) a factory of private brokers that a test may stop and
                                   start (outages, restarts); persistence is on
    ``mqtt_prefix`` (function)    a unique topic prefix
    ``mqtt_subscriber`` (function) ``async with mqtt_subscriber(broker, "a/#") as sub``
                                   collects messages; ``await sub.wait_for(pred)``

Billing simulator
    ``clock`` (function)          a :class:`~billnotify.simulator.ManualClock` at the
                                   test module's ``START``
    ``sim`` (function)            a started :class:`~billnotify.simulator.Simulator`;
                                   a module overrides ``sim_options`` to configure it
    ``sim_options`` (function)    the simulator's keyword arguments (none by default)
    ``sleeps`` (function)         an injected ``sleep`` that records the delays
    ``client`` (function)         a :class:`~billnotify.clients.BillingPlatformClient`
                                   for ``sim`` that sleeps through ``sleeps``; a module
                                   overrides ``client_options`` to add arguments
    ``client_options`` (function) the client's extra keyword arguments (none by default)
    ``http`` (function)           an aiohttp session that sends ``sim``'s bearer key

Action peers (see ``servers.py``)
    ``sink`` (function)           a started :class:`~servers.SmtpSink`
    ``receiver`` (function)       a started :class:`~servers.WebhookReceiver`
    ``closing`` (function)        ``closing(thing)`` returns ``thing`` and awaits
                                   ``thing.close()`` at teardown (executors, clients)

Store
    ``store`` (function)          an open SQLite store in the test's temp folder
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
import aiomqtt
import pytest

from backends import BACKENDS
from billnotify.clients import BillingPlatformClient
from billnotify.simulator import ManualClock, Simulator
from billnotify.store import SqliteStore, Store
from servers import Sleeps, SmtpSink, WebhookReceiver, free_port

MOSQUITTO = os.environ.get("MOSQUITTO", shutil.which("mosquitto") or "/usr/sbin/mosquitto")


# -- MQTT --------------------------------------------------------------------------------


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class TlsFiles:
    """A test CA and the files mosquitto and clients need."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


class Mosquitto:
    """A mosquitto process on loopback with its own config, data and log.

    ``stop()`` / ``start()`` simulate an outage: persistence is on, so retained
    messages and persistent sessions (with their queued messages) survive a stop.
    """

    def __init__(self, workdir: Path, *, tls: TlsFiles | None = None) -> None:
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls = tls
        self.tls_port = free_port() if tls else None
        self.mtls_port = free_port() if tls else None
        self.log = workdir / "mosquitto.log"
        self.conf = workdir / "mosquitto.conf"
        self._proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self._config())

    def _config(self) -> str:
        lines = [
            "per_listener_settings false",
            "allow_anonymous true",
            "user root",
            "max_queued_messages 100000",
            "max_inflight_messages 1000",
            "set_tcp_nodelay true",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            f"listener {self.port} {self.host}",
        ]
        if self.tls:
            for port, require in ((self.tls_port, "false"), (self.mtls_port, "true")):
                lines += [
                    f"listener {port} {self.host}",
                    f"cafile {self.tls.ca}",
                    f"certfile {self.tls.server_cert}",
                    f"keyfile {self.tls.server_key}",
                    f"require_certificate {require}",
                ]
        return "\n".join(lines) + "\n"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until every listener accepts connections."""
        if self.running:
            return
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ports = [p for p in (self.port, self.tls_port, self.mtls_port) if p is not None]
        deadline = time.monotonic() + timeout
        while not all(_port_open(p) for p in ports):
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not listen within {timeout}s: {self.tail()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker gracefully (SIGTERM: persistence is written)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def tail(self, lines: int = 20) -> str:
        """The end of the broker's log, for failure messages."""
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def url(self, scheme: str = "mqtt") -> str:
        """``mqtt://127.0.0.1:PORT`` (or the TLS listener's for ``mqtts``)."""
        port = self.tls_port if scheme == "mqtts" else self.port
        return f"{scheme}://{self.host}:{port}"


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A plain mosquitto for the whole session; tests keep to their own prefix."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A trustme CA, a server cert for 127.0.0.1/localhost and a client cert."""
    import trustme

    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("billnotify-test-client")
    files = TlsFiles(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    server.private_key_pem.write_to_path(str(files.server_key))
    with files.server_cert.open("wb") as out:
        for blob in server.cert_chain_pems:
            out.write(blob.bytes())
    client.private_key_pem.write_to_path(str(files.client_key))
    with files.client_cert.open("wb") as out:
        for blob in client.cert_chain_pems:
            out.write(blob.bytes())
    return files


@pytest.fixture(scope="session")
def mosquitto_tls(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[Mosquitto]:
    """mosquitto with ``tls_port`` (server cert only) and ``mtls_port`` (client cert)."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto-tls"), tls=tls_files)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def make_mosquitto(tmp_path: Path) -> Iterator[Callable[[], Mosquitto]]:
    """A factory of private, started brokers; all are stopped at teardown."""
    brokers: list[Mosquitto] = []

    def make() -> Mosquitto:
        broker = Mosquitto(tmp_path / f"mosquitto-{len(brokers)}")
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def mqtt_prefix() -> str:
    """A topic prefix no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


@dataclass
class Subscriber:
    """Messages received on a subscription, with a way to wait for a condition."""

    messages: list[aiomqtt.Message] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _add(self, message: aiomqtt.Message) -> None:
        self.messages.append(message)
        self._changed.set()

    def on(self, topic: str) -> list[aiomqtt.Message]:
        """Messages received on exactly ``topic``."""
        return [m for m in self.messages if m.topic.value == topic]

    def payloads(self, topic: str) -> list[bytes]:
        """Payloads received on exactly ``topic``, as bytes."""
        return [_payload_bytes(m) for m in self.on(topic)]

    async def wait_for(
        self, predicate: Callable[[list[aiomqtt.Message]], bool], timeout: float = 10.0
    ) -> None:
        """Wait until ``predicate(messages)`` holds; fail after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self.messages):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            topics = sorted({m.topic.value for m in self.messages})[:20]
            pytest.fail(
                f"condition not met within {timeout}s; {len(self.messages)} messages on {topics}"
            )


def _payload_bytes(message: aiomqtt.Message) -> bytes:
    payload = message.payload
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return str(payload).encode()


@pytest.fixture
def mqtt_subscriber() -> Callable[..., contextlib.AbstractAsyncContextManager[Subscriber]]:
    """``async with mqtt_subscriber(broker, "prefix/#", protocol=5, **client_kw) as sub``.

    The subscription is acknowledged before the block starts; retained messages on
    matching topics arrive first.
    """

    @contextlib.asynccontextmanager
    async def subscribe(
        broker: Mosquitto, *filters: str, protocol: int = 5, qos: int = 1, **client_kw: Any
    ) -> AsyncIterator[Subscriber]:
        version = aiomqtt.ProtocolVersion.V5 if protocol == 5 else aiomqtt.ProtocolVersion.V311
        sub = Subscriber()
        async with aiomqtt.Client(
            broker.host, broker.port, protocol=version, **client_kw
        ) as client:
            for topic in filters:
                await client.subscribe(topic, qos=qos)

            async def collect() -> None:
                async for message in client.messages:
                    sub._add(message)

            task = asyncio.create_task(collect())
            try:
                yield sub
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task

    return subscribe


# -- billing simulator -------------------------------------------------------------------


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> ManualClock:
    """A manual clock at the requesting module's ``START`` (a module using it defines one)."""
    return ManualClock(request.module.START)


@pytest.fixture
def sim_options() -> dict[str, Any]:
    """Keyword arguments of the ``sim`` fixture's simulator; override it in a module."""
    return {}


@pytest.fixture
async def sim(sim_options: dict[str, Any]) -> AsyncIterator[Simulator]:
    """A billing simulator serving on a free loopback port (``sim_options`` applied)."""
    async with Simulator(**sim_options) as simulator:
        yield simulator


@pytest.fixture
def sleeps() -> Sleeps:
    """An injected ``sleep`` that records the delays instead of waiting."""
    return Sleeps()


@pytest.fixture
def client_options() -> dict[str, Any]:
    """Extra keyword arguments of the ``client`` fixture's client; override it in a module."""
    return {}


@pytest.fixture
async def client(
    sim: Simulator, sleeps: Sleeps, client_options: dict[str, Any]
) -> AsyncIterator[BillingPlatformClient]:
    """A billing-platform client for ``sim`` (5 s timeout) that sleeps through ``sleeps``."""
    options: dict[str, Any] = {"api_key": sim.api_key, "sleep": sleeps, "timeout": 5}
    async with BillingPlatformClient(sim.billing_base_url, **(options | client_options)) as c:
        yield c


@pytest.fixture
async def http(sim: Simulator) -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session that sends ``sim``'s bearer key with every request."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {sim.api_key}"}) as s:
        yield s


# -- action peers ------------------------------------------------------------------------


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    """An SMTP server on a free loopback port, recording what it accepts."""
    server = SmtpSink().start()
    yield server
    server.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """A webhook receiver on a free loopback port (paths in ``servers.py``)."""
    server = await WebhookReceiver().start()
    yield server
    await server.stop()


class _Closable(Protocol):
    async def close(self) -> None: ...


_C = TypeVar("_C", bound=_Closable)


@pytest.fixture
async def closing() -> AsyncIterator[Callable[[_C], _C]]:
    """``closing(thing)``: ``thing``, whose ``close()`` is awaited at teardown."""
    async with contextlib.AsyncExitStack() as stack:

        def close_later(thing: _C) -> _C:
            stack.push_async_callback(thing.close)
            return thing

        yield close_later


# -- store -------------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An open :class:`~billnotify.store.SqliteStore` (``state.db`` in the temp folder)."""
    async with SqliteStore(tmp_path / "state.db") as opened:
        yield opened


@pytest.fixture(params=list(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An open, empty store of each backend (``tests/backends.py``)."""
    store = BACKENDS[request.param](tmp_path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
