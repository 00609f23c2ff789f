"""MqttPublisher against a real mosquitto: topics, payloads, retained state, availability."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from billnotify.config.models import MqttConfig
from billnotify.errors import BusError
from billnotify.events import CloudEvent, build_event
from billnotify.publish import MqttPublisher
from billnotify.publish.mqtt import CONTENT_TYPE, POSITION
from billnotify.store import SnapshotWrite, SqliteStore
from servers import running


def make_event(entity: str, object_id: str, action: str, n: int = 0) -> CloudEvent:
    return build_event(
        source="acme",
        entity=entity,
        object_id=object_id,
        type_=f"{entity}.{action}",
        key=f"change-{n}",
        time=datetime(2026, 11, 21, 10, 15, 2, tzinfo=UTC),
        data={"object": {"id": object_id, "n": n}, "changed": ["status"]},
    )


def mqtt_config(url: str, prefix: str, **overrides: Any) -> MqttConfig:
    values: dict[str, Any] = {
        "url": url,
        "prefix": prefix,
        "client_id": f"{prefix}-publisher",
        "reconnect_max": timedelta(seconds=1),
    }
    values.update(overrides)
    return MqttConfig(**values)


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    """Poll an async predicate until it holds (store state has no notification)."""
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.02)


async def test_events_are_published_to_their_topics_as_cloudevents(
    mosquitto: Any, mqtt_prefix: str, mqtt_subscriber: Any, store: SqliteStore
) -> None:
    before = [
        make_event("billing_task", "1234", "created"),
        make_event("billing_task", "1234", "status_changed", 1),
        make_event("invoice", "A/7+#", "paid"),
    ]
    stored = await store.commit("acme", [], before)
    publisher = MqttPublisher(mqtt_config(mosquitto.url(), mqtt_prefix), store)
    async with (
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/events/#") as sub,
        running(publisher, connected=10),
    ):
        await sub.wait_for(lambda msgs: len(msgs) == 3)
        # appended while the publisher waits: it is woken, not polling
        later = await store.commit("acme", [], [make_event("billing_run", "9", "completed")])
        await sub.wait_for(lambda msgs: len(msgs) == 4)
        last = later[0].seq
        await wait_until(lambda: _position_is(store, last))
        assert publisher.last_published_seq == last

    topics = [m.topic.value for m in sub.messages]
    assert topics == [
        f"{mqtt_prefix}/events/acme/billing_task/1234/created",
        f"{mqtt_prefix}/events/acme/billing_task/1234/status_changed",
        f"{mqtt_prefix}/events/acme/invoice/A%2F7%2B%23/paid",
        f"{mqtt_prefix}/events/acme/billing_run/9/completed",
    ]
    for message, event in zip(
        sub.messages, [s.event for s in stored] + [later[0].event], strict=True
    ):
        body = json.loads(bytes(message.payload))  # type: ignore[arg-type]
        assert body == json.loads(event.to_json())
        assert body["specversion"] == "1.0"
        assert body["source"] == "billnotify://acme"
        assert message.qos == 1
        assert not message.retain
        assert message.properties is not None
        assert message.properties.ContentType == CONTENT_TYPE


async def _position_is(store: SqliteStore, seq: int) -> bool:
    return await store.get_position(POSITION) == seq


async def test_resumes_from_the_stored_position(
    mosquitto: Any, mqtt_prefix: str, mqtt_subscriber: Any, store: SqliteStore
) -> None:
    first = await store.commit("acme", [], [make_event("invoice", "1", "created")])
    await store.set_position(POSITION, first[0].seq)
    await store.commit("acme", [], [make_event("invoice", "2", "created")])
    publisher = MqttPublisher(mqtt_config(mosquitto.url(), mqtt_prefix), store)
    async with (
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/events/#") as sub,
        running(publisher, connected=10),
    ):
        await sub.wait_for(lambda msgs: len(msgs) >= 1)
        await wait_until(lambda: _position_is(store, first[0].seq + 1))
    assert [m.topic.value for m in sub.messages] == [f"{mqtt_prefix}/events/acme/invoice/2/created"]


async def test_retained_state_only_for_configured_entities(
    mosquitto: Any, mqtt_prefix: str, mqtt_subscriber: Any, store: SqliteStore
) -> None:
    await store.commit(
        "acme",
        [
            SnapshotWrite("billing_task", "1", {"id": "1", "status": "Running"}),
            SnapshotWrite("billing_run", "7", {"id": "7", "status": "Requested"}),
            SnapshotWrite("invoice", "3", {"id": "3", "outstanding": "10.00"}),
        ],
        [],
    )
    publisher = MqttPublisher(mqtt_config(mosquitto.url(), mqtt_prefix), store, idle_interval=0.05)
    async with running(publisher, connected=10):
        await wait_until(lambda: _no_dirty(store))
        # a later change of the same record replaces the retained state
        await store.commit(
            "acme", [SnapshotWrite("billing_task", "1", {"id": "1", "status": "Completed"})], []
        )
        await wait_until(lambda: _no_dirty(store))

    task_topic = f"{mqtt_prefix}/state/acme/billing_task/1"
    run_topic = f"{mqtt_prefix}/state/acme/billing_run/7"
    fence = f"{mqtt_prefix}/state/zz-fence"
    # A new subscriber gets the retained state; the fence, published after the
    # publisher had cleared every dirty snapshot, proves nothing else is coming.
    async with mqtt_subscriber(mosquitto, f"{mqtt_prefix}/state/#") as sub:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.publish(fence, b"", qos=1)
        await sub.wait_for(lambda msgs: any(m.topic.value == fence for m in msgs))
    assert {m.topic.value for m in sub.messages} == {task_topic, run_topic, fence}
    assert all(m.retain for m in sub.messages if m.topic.value != fence)
    assert json.loads(sub.payloads(task_topic)[-1]) == {"id": "1", "status": "Completed"}
    assert json.loads(sub.payloads(run_topic)[-1]) == {"id": "7", "status": "Requested"}


async def _no_dirty(store: SqliteStore) -> bool:
    return not await store.dirty_snapshots()


async def test_without_retained_entities_written_records_wait_until_one_is_retained(
    mosquitto: Any, mqtt_prefix: str, mqtt_subscriber: Any, store: SqliteStore
) -> None:
    """``retain_state = []``: no record is read back (the flags stay set) and nothing is
    retained; retaining the entity later publishes every record written meanwhile."""
    write = SnapshotWrite("billing_task", "1", {"id": "1", "status": "Running"})
    stored = await store.commit("acme", [write], [make_event("billing_task", "1", "updated")])
    quiet = mqtt_config(mosquitto.url(), mqtt_prefix, retain_state=[])
    async with running(MqttPublisher(quiet, store, idle_interval=0.05), connected=10):
        await wait_until(lambda: _position_is(store, stored[-1].seq))  # it ran a while
    assert [s.id for s in await store.dirty_snapshots()] == ["1"]
    task_topic = f"{mqtt_prefix}/state/acme/billing_task/1"
    retaining = mqtt_config(mosquitto.url(), mqtt_prefix, retain_state=["billing_task"])
    async with (
        mqtt_subscriber(mosquitto, task_topic) as sub,
        running(MqttPublisher(retaining, store, idle_interval=0.05), connected=10),
    ):
        await sub.wait_for(lambda msgs: len(msgs) == 1)
    assert json.loads(sub.payloads(task_topic)[0]) == {"id": "1", "status": "Running"}


async def _position_is(store: SqliteStore, seq: int) -> bool:
    return await store.get_position(POSITION) == seq


async def test_online_then_offline_on_clean_shutdown(
    mosquitto: Any, mqtt_prefix: str, mqtt_subscriber: Any, store: SqliteStore
) -> None:
    status = f"{mqtt_prefix}/status"
    publisher = MqttPublisher(mqtt_config(mosquitto.url(), mqtt_prefix), store)
    async with mqtt_subscriber(mosquitto, status) as sub:
        async with running(publisher, connected=10):
            await sub.wait_for(lambda msgs: sub.payloads(status) == [b"online"])
            assert publisher.connected
        await sub.wait_for(lambda msgs: sub.payloads(status) == [b"online", b"offline"])
    assert not publisher.connected
    # retained: a late subscriber learns the publisher is gone
    async with mqtt_subscriber(mosquitto, status) as late:
        await late.wait_for(lambda msgs: late.payloads(status) == [b"offline"])
        assert late.on(status)[0].retain


_KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import timedelta
    from billnotify.config.models import MqttConfig
    from billnotify.publish import MqttPublisher
    from billnotify.store import SqliteStore

    async def main():
        url, prefix, path = sys.argv[1:4]
        store = SqliteStore(path)
        await store.open()
        config = MqttConfig(url=url, prefix=prefix, client_id=prefix + "-doomed", keepalive=timedelta(seconds=5))
        publisher = MqttPublisher(config, store)
        task = asyncio.create_task(publisher.run())
        await publisher.wait_connected(10)
        print("connected", flush=True)
        await task

    asyncio.run(main())
    """
)


async def test_last_will_says_offline_when_the_process_is_killed(
    mosquitto: Any, mqtt_prefix: str, mqtt_subscriber: Any, tmp_path: Path
) -> None:
    status = f"{mqtt_prefix}/status"
    script = tmp_path / "doomed.py"
    script.write_text(_KILL_SCRIPT)
    async with mqtt_subscriber(mosquitto, status) as sub:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            mosquitto.url(),
            mqtt_prefix,
            str(tmp_path / "state.db"),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(20):
                line = await proc.stdout.readline()
            assert line.strip() == b"connected"
            await sub.wait_for(lambda msgs: sub.payloads(status) == [b"online"])
        finally:
            proc.kill()  # SIGKILL: no chance to say goodbye
            await proc.wait()
        await sub.wait_for(lambda msgs: sub.payloads(status) == [b"online", b"offline"])


async def test_mqtt5_content_type_and_message_expiry(
    mosquitto: Any, mqtt_prefix: str, mqtt_subscriber: Any, store: SqliteStore
) -> None:
    await store.commit("acme", [], [make_event("billing_task", "5", "created")])
    config = mqtt_config(
        mosquitto.url(), mqtt_prefix, protocol=5, message_expiry=timedelta(hours=1)
    )
    async with (
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/events/#") as sub,
        running(MqttPublisher(config, store), connected=10),
    ):
        await sub.wait_for(lambda msgs: len(msgs) == 1)
    props = sub.messages[0].properties
    assert props is not None
    assert props.ContentType == "application/cloudevents+json"
    assert 3590 <= props.MessageExpiryInterval <= 3600


async def test_mqtt311_publisher(
    mosquitto: Any, mqtt_prefix: str, mqtt_subscriber: Any, store: SqliteStore
) -> None:
    await store.commit("acme", [], [make_event("billing_task", "5", "created")])
    config = mqtt_config(mosquitto.url(), mqtt_prefix, protocol=4)
    async with (
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/#", protocol=4) as sub,
        running(MqttPublisher(config, store), connected=10),
    ):
        await sub.wait_for(
            lambda msgs: len(sub.on(f"{mqtt_prefix}/events/acme/billing_task/5/created")) == 1
        )
        assert sub.payloads(f"{mqtt_prefix}/status") == [b"online"]


async def test_publish_api_for_rules(
    mosquitto: Any, mqtt_prefix: str, mqtt_subscriber: Any, store: SqliteStore
) -> None:
    publisher = MqttPublisher(mqtt_config(mosquitto.url(), mqtt_prefix), store)
    with pytest.raises(BusError, match="not connected"):
        await publisher.publish(f"{mqtt_prefix}/alerts", b"x")
    async with (
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/alerts/#") as sub,
        running(publisher, connected=10),
    ):
        await publisher.publish(f"{mqtt_prefix}/alerts/ops", "task failed", qos=1)
        await publisher.publish(f"{mqtt_prefix}/alerts/kept", b"kept", qos=0, retain=True)
        with pytest.raises(BusError):
            await publisher.publish(f"{mqtt_prefix}/alerts/#", b"wildcards are not topics")
        await sub.wait_for(lambda msgs: len(msgs) == 2)
    assert sub.payloads(f"{mqtt_prefix}/alerts/ops") == [b"task failed"]


async def test_republish_with_and_without_a_running_publisher(
    mosquitto: Any, mqtt_prefix: str, mqtt_subscriber: Any, store: SqliteStore
) -> None:
    stored = await store.commit(
        "acme", [], [make_event("invoice", str(i), "created") for i in range(5)]
    )
    config = mqtt_config(mosquitto.url(), mqtt_prefix)
    async with mqtt_subscriber(mosquitto, f"{mqtt_prefix}/events/#") as sub:
        # no run(): a short-lived connection of its own
        assert await MqttPublisher(config, store).republish(stored[:2]) == 2
        await sub.wait_for(lambda msgs: len(msgs) == 2)
        assert await store.get_position(POSITION) == 0
        publisher = MqttPublisher(config, store)
        async with running(publisher, connected=10):
            await sub.wait_for(lambda msgs: len(msgs) == 7)
            assert await publisher.republish(stored[4:]) == 1
            await sub.wait_for(lambda msgs: len(msgs) == 8)
    assert sub.messages[-1].topic.value == f"{mqtt_prefix}/events/acme/invoice/4/created"


async def test_republish_without_a_broker_raises_bus_error(store: SqliteStore) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = MqttConfig(url=f"mqtt://127.0.0.1:{port}", prefix="nobody")
    stored = await store.commit("acme", [], [make_event("invoice", "1", "created")])
    with pytest.raises(BusError):
        await MqttPublisher(config, store).republish(stored)


async def test_reconnects_with_capped_exponential_backoff(store: SqliteStore) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 7:
            raise asyncio.CancelledError

    config = MqttConfig(url=f"mqtt://127.0.0.1:{port}", reconnect_max=timedelta(seconds=5))
    publisher = MqttPublisher(config, store, sleep=sleep)
    with pytest.raises(asyncio.CancelledError):
        await publisher.run()
    assert delays == [0.5, 1, 2, 4, 5, 5, 5]
    assert not publisher.connected
    assert publisher.reconnects == 0


async def test_reconnects_after_the_broker_restarts(
    make_mosquitto: Any, mqtt_prefix: str, mqtt_subscriber: Any, store: SqliteStore
) -> None:
    broker = make_mosquitto()
    publisher = MqttPublisher(mqtt_config(broker.url(), mqtt_prefix), store)
    async with running(publisher, connected=10):
        broker.stop()
        async with asyncio.timeout(10):
            while publisher.connected:
                await asyncio.sleep(0.02)
        with pytest.raises(BusError):
            await publisher.publish(f"{mqtt_prefix}/x", b"while away")
        broker.start()
        await publisher.wait_connected(10)
        assert publisher.reconnects == 1
        await store.commit("acme", [], [make_event("invoice", "1", "created")])
        async with mqtt_subscriber(broker, f"{mqtt_prefix}/#") as sub:
            # the status is retained (persistence on): online again after the restart
            await sub.wait_for(lambda msgs: sub.payloads(f"{mqtt_prefix}/status") == [b"online"])
            await wait_until(lambda: _position_is(store, 1))
