"""The publisher's outbox on a real mosquitto: futures settled by the broker's
acknowledgements, aiomqtt's own publishes on the same connection untouched, refusals as
aiomqtt reports them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from billnotify.publish.outbox import outbox
from conftest import Mosquitto


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_publishes_are_settled_by_the_broker(
    mosquitto: Mosquitto, mqtt_subscriber: Callable[..., Any], mqtt_prefix: str, qos: int
) -> None:
    async with (
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/#", qos=2) as sub,
        aiomqtt.Client(
            mosquitto.host, mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5
        ) as client,
    ):
        box = outbox(client)
        assert outbox(client) is box  # one per connection
        sent = [box.publish(f"{mqtt_prefix}/n/{n}", str(n).encode(), qos) for n in range(300)]
        async with asyncio.timeout(10):
            await asyncio.gather(*sent)
        assert len(box) == 0
        # aiomqtt's own publish on the same connection is acknowledged through it as before
        await client.publish(f"{mqtt_prefix}/own", b"own", qos=1, timeout=5)
        await sub.wait_for(lambda messages: len(messages) == 301)
    assert sorted(
        int(m.payload) for m in sub.messages if m.topic.value != f"{mqtt_prefix}/own"
    ) == list(range(300))


async def test_an_acknowledgement_never_comes_without_the_broker(
    make_mosquitto: Callable[[], Mosquitto], mqtt_prefix: str
) -> None:
    """A publish sent into a connection that dies stays pending (the publisher's window
    gives up on it); once paho knows the connection is gone, a publish is refused."""
    broker = make_mosquitto()
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        box = outbox(client)
        await box.publish(f"{mqtt_prefix}/a", b"a", 1)
        broker.stop()
        with pytest.raises(aiomqtt.MqttError):
            async with asyncio.timeout(10):
                async for _ in client.messages:  # ends when the connection is lost
                    pass
        refused = box.publish(f"{mqtt_prefix}/b", b"b", 1)
        with pytest.raises(aiomqtt.MqttCodeError):
            await refused


async def test_a_message_the_broker_refuses_is_not_counted_as_sent(
    tmp_path: Path, mqtt_prefix: str
) -> None:
    """MQTT 5: a topic the broker's ACL denies is acknowledged with ``Not authorized``;
    that publish fails (the publisher keeps its position) instead of passing as sent."""
    broker = Mosquitto(tmp_path / "acl")
    acl = tmp_path / "acl.txt"
    acl.write_text(f"topic write {mqtt_prefix}/allowed/#\n")
    broker.conf.write_text(broker.conf.read_text() + f"acl_file {acl}\n")
    broker.start()
    try:
        version = aiomqtt.ProtocolVersion.V5
        async with aiomqtt.Client(broker.host, broker.port, protocol=version) as client:
            box = outbox(client)
            await box.publish(f"{mqtt_prefix}/allowed/1", b"ok", 1)
            with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
                await box.publish(f"{mqtt_prefix}/denied/1", b"no", 1)
            await box.publish(f"{mqtt_prefix}/allowed/2", b"ok", 1)  # the connection lives on
    finally:
        broker.stop()
