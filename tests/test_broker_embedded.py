"""The embedded amqtt broker: binding, a publish/subscribe roundtrip, the publisher on it."""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import UTC, datetime, timedelta

import aiomqtt
import pytest

from billnotify.config.models import MqttConfig
from billnotify.errors import BusError
from billnotify.events import build_event
from billnotify.publish import MqttPublisher
from billnotify.publish.broker import EmbeddedBroker
from billnotify.store import SqliteStore
from servers import running

V311 = aiomqtt.ProtocolVersion.V311


async def test_roundtrip_with_mqtt311() -> None:
    async with EmbeddedBroker(port=0) as broker:
        assert broker.running
        assert broker.port != 0
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        async with (
            aiomqtt.Client("127.0.0.1", broker.port, protocol=V311) as sub,
            aiomqtt.Client("127.0.0.1", broker.port, protocol=V311) as pub,
        ):
            await sub.subscribe("demo/#", qos=1)
            await pub.publish("demo/a", b"hello", qos=1)
            await pub.publish("demo/kept", b"retained", qos=1, retain=True)
            received = []
            async with asyncio.timeout(5):
                async for message in sub.messages:
                    received.append((message.topic.value, message.payload))
                    if len(received) == 2:
                        break
        assert received == [("demo/a", b"hello"), ("demo/kept", b"retained")]
    assert not broker.running


async def test_binds_loopback_only() -> None:
    async with EmbeddedBroker(port=0) as broker:
        sockets = [
            s for server in broker._broker._servers.values() for s in server.instance.sockets
        ]
        assert sockets
        assert {s.getsockname()[0] for s in sockets} == {"127.0.0.1"}


async def test_port_in_use_is_a_bus_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BusError, match="cannot listen"):
            await EmbeddedBroker(port=port).start()


async def test_stop_is_idempotent() -> None:
    broker = EmbeddedBroker(port=0)
    await broker.stop()
    await broker.start()
    await broker.start()
    await broker.stop()
    await broker.stop()


async def test_publisher_with_protocol_4(store: SqliteStore) -> None:
    event = build_event(
        source="acme",
        entity="billing_task",
        object_id="1",
        type_="billing_task.created",
        key="k",
        time=datetime(2026, 1, 1, tzinfo=UTC),
        data={"object": {"id": "1"}},
    )
    await store.commit("acme", [], [event])
    async with EmbeddedBroker(port=0) as broker:
        config = MqttConfig(  # protocol 5 (the default) is taken down to 3.1.1
            url=f"embedded://127.0.0.1:{broker.port}",
            prefix="demo",
            reconnect_max=timedelta(seconds=1),
        )
        async with aiomqtt.Client("127.0.0.1", broker.port, protocol=V311) as sub:
            await sub.subscribe("demo/#", qos=1)
            topics = []
            async with running(MqttPublisher(config, store)), asyncio.timeout(10):
                async for message in sub.messages:
                    topics.append(message.topic.value)
                    if "demo/events/acme/billing_task/1/created" in topics:
                        break
        assert topics[0] == "demo/status"


async def test_mqtt5_clients_are_refused() -> None:
    async with EmbeddedBroker(port=0) as broker:
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=5
            ):
                pass


async def test_amqtt_logging_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="billnotify")
    async with (
        EmbeddedBroker(port=0) as broker,
        aiomqtt.Client("127.0.0.1", broker.port, protocol=V311) as client,
    ):
        await client.publish("x", b"y", qos=1)
    noisy = [r for r in caplog.records if r.name.startswith(("amqtt", "transitions"))]
    assert [r for r in noisy if r.levelno < logging.WARNING] == []
    assert any(r.name == "billnotify.publish.broker" for r in caplog.records)
