"""The stages under leases, two processes' worth on one store in memory: the MQTT
publisher (real mosquitto) publishes only while it holds ``publish`` and writes its
position fenced; the rule handler records only under ``rules``; recovery resolves only
the ``sending`` rows of instances whose heartbeat stopped, each once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billnotify.deliveries.base import DeliveryStatus
from billnotify.deliveries.recovery import Recovery
from billnotify.errors import FencedError
from billnotify.leases import PUBLISH, RULES, LeaseKeeper
from billnotify.publish import MqttPublisher
from billnotify.publish.mqtt import POSITION
from billnotify.rules.engine import RuleHandler, RuleSettings
from billnotify.store.memory import MemoryStore
from billnotify.store.records import NewDelivery
from servers import running
from test_mqtt_publisher import make_event, mqtt_config

TTL = timedelta(seconds=0.9)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_only_the_publish_holder_publishes_and_its_position_is_fenced(
    mosquitto: Any, mqtt_prefix: str, mqtt_subscriber: Any
) -> None:
    store = MemoryStore()
    await store.open()
    a, b = LeaseKeeper(store, "a", ttl=TTL), LeaseKeeper(store, "b", ttl=TTL)
    config = mqtt_config(mosquitto.url(), mqtt_prefix)
    pub_a = MqttPublisher(config, store, instance="a", role=a.role(PUBLISH))
    pub_b = MqttPublisher(config, store, instance="b", role=b.role(PUBLISH))
    await a.keep()
    await b.keep()
    first = [make_event("billing_task", str(n), "created", n) for n in range(5)]
    await store.commit("acme", [], first)
    async with (
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/events/#") as sub,
        running(pub_a, connected=10),
        running(pub_b, connected=10),
    ):
        await sub.wait_for(lambda msgs: len(msgs) == 5)
        assert pub_a.publishing and not pub_b.publishing
        await _settled(store, 5)
        paused = a.role(PUBLISH).lease
        await a.release()  # a stops (cleanly): b takes over at its next round
        await b.keep()
        assert pub_b.publishing and not pub_a.publishing
        later = [make_event("billing_task", str(n), "created", n) for n in range(5, 8)]
        await store.commit("acme", [], later)
        await sub.wait_for(lambda msgs: len(msgs) >= 8)
        await _settled(store, 8)
        # a's old lease no longer moves the position
        with pytest.raises(FencedError):
            await store.set_position(POSITION, 3, fence=paused)
        assert await store.get_position(POSITION) == 8
    ids = [json.loads(m.payload)["id"] for m in sub.messages]
    assert len(ids) == len(set(ids)) == 8  # each event once, from one publisher


async def _settled(store: MemoryStore, seq: int) -> None:
    """Until the publisher's stored position reaches ``seq``."""
    async with asyncio.timeout(5):
        while await store.get_position(POSITION) < seq:
            await asyncio.sleep(0.01)


class _Evaluator:
    def evaluate(self, expression: str, context: Any) -> bool:
        return True


async def test_the_rule_handler_records_only_under_its_lease() -> None:
    store = MemoryStore()
    await store.open()
    a, b = LeaseKeeper(store, "a", ttl=TTL), LeaseKeeper(store, "b", ttl=TTL)
    settings = RuleSettings(rules=())
    handlers = {
        keeper.instance: RuleHandler(
            settings, store, _Evaluator(), {}, lambda: datetime.now(UTC), role=keeper.role(RULES)
        )
        for keeper in (a, b)
    }
    await a.keep()
    await b.keep()
    await store.commit("acme", [], [make_event("billing_task", "1", "created")])
    tasks = [asyncio.create_task(h.run()) for h in handlers.values()]
    try:
        await until(lambda: handlers["a"].events_processed == 1)
        assert handlers["b"].events_processed == 0
        a.role(RULES).lose()  # as if its lease lapsed: a records nothing more
        await store.commit("acme", [], [make_event("billing_task", "2", "created")])
        with pytest.raises(FencedError):
            await handlers["a"].process_batch()
        assert await store.get_position("rules") == 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_recovery_resolves_only_dead_instances_rows_once() -> None:
    store = MemoryStore(instance="x")
    await store.open()
    now = datetime.now(UTC)
    stored = await store.commit("acme", [], [make_event("invoice", "7", "approved")])
    event = stored[0].event
    rows = [
        NewDelivery("r", 0, "invoice_action", event.id, stored[0].seq, exactly_once=True),
        NewDelivery("r", 1, "webhook", event.id, stored[0].seq, exactly_once=False),
    ]
    await store.record_deliveries(rows, "rules", stored[0].seq, now)
    await store.heartbeat("x", now)
    await store.start_attempts([row.id for row in rows], now)  # claimed by x
    keeper = LeaseKeeper(store, "b", ttl=TTL)
    await keeper.keep()
    recovery = Recovery(store, lambda: datetime.now(UTC), keeper=keeper)
    assert await recovery.at_start() == (0, 0)  # x is alive: its rows are in flight
    await asyncio.sleep(TTL.total_seconds() + 0.05)  # x's heartbeat ages past the TTL
    await keeper.keep()
    assert await recovery.sweep() == (1, 1)
    assert await recovery.sweep() == (0, 0)  # once
    statuses = {d.id: d.status for d in await store.get_deliveries([r.id for r in rows])}
    assert statuses == {
        rows[0].id: DeliveryStatus.UNCERTAIN,
        rows[1].id: DeliveryStatus.RETRY_SCHEDULED,
    }
