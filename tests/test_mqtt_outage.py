"""A broker outage in the middle of a burst loses no event (SPEC §3)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import pytest

from billnotify.config.models import MqttConfig
from billnotify.events import build_event
from billnotify.publish import MqttPublisher
from billnotify.publish.mqtt import POSITION
from billnotify.store import SqliteStore

TOTAL = 5_000
OUTAGE = 10.0


class PersistentSubscriber:
    """A QoS 1 subscriber with a persistent session that reconnects after outages."""

    def __init__(self, broker: Any, topic: str, client_id: str) -> None:
        self.broker = broker
        self.topic = topic
        self.client_id = client_id
        self.ids: list[str] = []
        self.subscribed = asyncio.Event()
        self._changed = asyncio.Event()

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
                        self.ids.append(json.loads(bytes(message.payload))["id"])  # type: ignore[arg-type]
                        self._changed.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)  # the broker is away: try again shortly

    async def wait_for_count(self, unique: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while len(set(self.ids)) < unique:
                self._changed.clear()
                await self._changed.wait()


@pytest.mark.slow
async def test_broker_outage_loses_nothing(
    make_mosquitto: Any, mqtt_prefix: str, store: SqliteStore
) -> None:
    broker = make_mosquitto()
    subscriber = PersistentSubscriber(broker, f"{mqtt_prefix}/events/#", f"{mqtt_prefix}-sub")
    sub_task = asyncio.create_task(subscriber.run())
    config = MqttConfig(
        url=broker.url(),
        prefix=mqtt_prefix,
        client_id=f"{mqtt_prefix}-pub",
        reconnect_max=timedelta(seconds=1),
        max_inflight=100,
        batch_size=500,
    )
    publisher = MqttPublisher(config, store)
    pub_task = asyncio.create_task(publisher.run())
    expected: list[str] = []

    async def append(start: int, stop: int) -> None:
        for first in range(start, stop, 100):
            events = [
                build_event(
                    source="acme",
                    entity="billing_task",
                    object_id=str(n % 97),
                    type_="billing_task.updated",
                    key=f"burst-{n}",
                    time=datetime(2026, 11, 21, tzinfo=UTC),
                    data={"object": {"id": str(n % 97), "n": n}},
                )
                for n in range(first, min(first + 100, stop))
            ]
            stored = await store.commit("acme", [], events)
            expected.extend(s.event.id for s in stored)
            await asyncio.sleep(0)

    try:
        async with asyncio.timeout(10):
            await subscriber.subscribed.wait()
        await publisher.wait_connected(10)
        appending = asyncio.create_task(append(0, TOTAL))
        await subscriber.wait_for_count(TOTAL // 4, timeout=20)

        broker.stop()  # the broker goes away mid-burst, publishes in flight
        at_stop = len(set(subscriber.ids))
        await appending  # the service keeps detecting changes meanwhile
        await asyncio.sleep(OUTAGE)  # the outage itself, not a wait for a condition
        assert not publisher.connected
        broker.start()

        await subscriber.wait_for_count(TOTAL, timeout=30)
        last = await store.last_seq()
        async with asyncio.timeout(10):
            while await store.get_position(POSITION) != last:
                await asyncio.sleep(0.05)
    finally:
        for task in (pub_task, sub_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    received = Counter(subscriber.ids)
    lost = set(expected) - set(received)
    duplicated = sum(count - 1 for count in received.values())
    print(
        f"\noutage: {len(expected)} events, {len(subscriber.ids)} received, "
        f"lost {len(lost)}, duplicated {duplicated}, received before the outage {at_stop}, "
        f"reconnects {publisher.reconnects}"
    )
    assert len(expected) == TOTAL
    assert not lost
    assert set(received) == set(expected)
    assert publisher.reconnects >= 1
    assert at_stop < TOTAL, "the outage did not interrupt the burst"


async def test_an_event_the_broker_refuses_holds_the_log_until_it_is_taken(
    tmp_path: Any, mqtt_prefix: str, store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    """MQTT 5: an event on a topic the broker's ACL denies is refused (``Not
    authorized``), not passed as sent: the position stays before it, the publisher says
    so and tries again, and once the ACL lets it through every event arrives once."""
    from conftest import Mosquitto

    acl = tmp_path / "acl.txt"
    acl.write_text(f"topic readwrite {mqtt_prefix}/events/acme/billing_task/#\n")
    broker = Mosquitto(tmp_path / "broker")
    broker.conf.write_text(broker.conf.read_text() + f"acl_file {acl}\n")
    broker.start()
    config = MqttConfig(
        url=broker.url(),
        prefix=mqtt_prefix,
        client_id=f"{mqtt_prefix}-pub",
        reconnect_max=timedelta(seconds=1),
        retain_state=[],
    )
    kinds = ["billing_task", "billing_task", "invoice", "billing_task"]
    events = [
        build_event(
            source="acme",
            entity=entity,
            object_id=str(n),
            type_=f"{entity}.updated",
            key="k",
            time=datetime(2026, 12, 3, tzinfo=UTC),
            data={},
        )
        for n, entity in enumerate(kinds)
    ]
    stored = await store.commit("acme", [], events)
    publisher = MqttPublisher(config, store)
    task = asyncio.create_task(publisher.run())
    try:
        async with asyncio.timeout(10):  # refused, tried again, refused again
            while caplog.text.count("refused a message") < 2:
                await asyncio.sleep(0.05)
        assert await store.get_position(POSITION) == stored[1].seq  # held before the invoice
        acl.write_text(f"topic readwrite {mqtt_prefix}/#\n")
        broker.stop()
        broker.start()  # the ACL read again
        async with asyncio.timeout(20):
            while await store.get_position(POSITION) != stored[-1].seq:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        broker.stop()
