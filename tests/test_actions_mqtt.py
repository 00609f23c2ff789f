"""The ``mqtt`` action through the service's own publisher, against a real mosquitto."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from billnotify.actions.mqtt import MqttExecutor
from billnotify.config.models import MqttAction, MqttConfig, Rule
from billnotify.deliveries.base import Outcome
from billnotify.events import CloudEvent
from billnotify.publish.mqtt import MqttPublisher
from billnotify.templating import TemplateRenderer
from servers import running

RULE = Rule.model_validate(
    {"name": "relay", "on": ["*"], "actions": [{"type": "mqtt", "topic": "x"}]}
)
EVENT = CloudEvent(
    id="evt_m",
    source="billnotify://acme",
    type="billing_run.completed",
    subject="billing_runs/9",
    time="2026-11-21T10:15:02Z",
    data={"object": {"id": "9", "name": "November", "invoiceAmount": "12345.5"}},
)


def action(**overrides: Any) -> MqttAction:
    return MqttAction.model_validate({"type": "mqtt", "topic": "t", **overrides})


@contextlib.asynccontextmanager
async def publisher(broker: Any, prefix: str, store: Any) -> AsyncIterator[MqttPublisher]:
    config = MqttConfig(
        url=broker.url(),
        prefix=prefix,
        client_id=f"{prefix}-pub",
        reconnect_max=timedelta(seconds=1),
    )
    pub = MqttPublisher(config, store)
    async with running(pub, connected=10):
        yield pub


async def test_a_rendered_payload_reaches_the_rendered_topic(
    tmp_path: Path, mosquitto: Any, mqtt_prefix: str, mqtt_subscriber: Any, store: Any
) -> None:
    act = action(
        topic=mqtt_prefix + "/alerts/{{ source }}/{{ event.type }}",
        payload='{"run": {{ object.name | tojson }}, "amount": "{{ object.invoiceAmount | money }}"}',
        retain=True,
    )
    async with (
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/alerts/#") as sub,
        publisher(mosquitto, mqtt_prefix, store) as pub,
    ):
        executor = MqttExecutor(pub, TemplateRenderer(tmp_path))
        result = await executor.execute(act, EVENT, RULE, delivery_id="dlv_m", attempt=1)
        assert result.outcome is Outcome.SUCCESS, result.error
        topic = f"{mqtt_prefix}/alerts/acme/billing_run.completed"
        await sub.wait_for(lambda msgs: len(sub.on(topic)) == 1)
    assert json.loads(sub.payloads(topic)[0]) == {"run": "November", "amount": "12,345.50"}
    assert sub.on(topic)[0].retain is False  # live delivery; retain applies to later subscribers


async def test_the_default_payload_is_the_event(tmp_path: Path, store: Any) -> None:
    rendered = await MqttExecutor(None, TemplateRenderer(tmp_path)).render(
        action(topic="a/{{ object.id }}"), EVENT, RULE
    )
    assert rendered.target == "a/9"
    assert json.loads(rendered.summary["payload"]) == json.loads(EVENT.to_json())
    assert rendered.summary["qos"] == 1


async def test_not_connected_is_retryable(
    tmp_path: Path, mosquitto: Any, mqtt_prefix: str, store: Any
) -> None:
    config = MqttConfig(url=mosquitto.url(), prefix=mqtt_prefix, client_id=f"{mqtt_prefix}-idle")
    idle = MqttPublisher(config, store)  # never started
    result = await MqttExecutor(idle, TemplateRenderer(tmp_path)).execute(
        action(), EVENT, RULE, delivery_id="dlv_m", attempt=1
    )
    assert result.outcome is Outcome.RETRYABLE
    assert "not connected" in (result.error or "")


async def test_mqtt_disabled_is_permanent(tmp_path: Path) -> None:
    result = await MqttExecutor(None, TemplateRenderer(tmp_path)).execute(
        action(), EVENT, RULE, delivery_id="d", attempt=1
    )
    assert result.outcome is Outcome.PERMANENT
    assert "disabled" in (result.error or "")


@pytest.mark.parametrize("topic", ["a/+/b", "a/#", "{{ '' }}", "a/{{ 'x\nb' }}"])
async def test_invalid_topics_are_permanent(tmp_path: Path, topic: str) -> None:
    executor = MqttExecutor(None, TemplateRenderer(tmp_path))
    with pytest.raises(Exception, match="invalid MQTT topic"):
        await executor.render(action(topic=topic), EVENT, RULE)
    assert executor.target(action(topic=topic), EVENT) == topic


def test_flags(tmp_path: Path) -> None:
    assert MqttExecutor(None, TemplateRenderer(tmp_path)).exactly_once(action()) is False
