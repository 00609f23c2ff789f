"""Publish a rendered payload to a rendered topic (SPEC §4 ``mqtt``).

The message goes through the service's own MQTT connection (a
:class:`~billnotify.actions.base.MqttSender`); while the broker is away the attempt is
retryable, so nothing is lost.
"""

from __future__ import annotations

import logging

from billnotify.actions.base import (
    InvalidMessageError,
    MqttSender,
    NotApplicableError,
    Rendered,
    failure,
)
from billnotify.config.models import Action, MqttAction, Rule
from billnotify.deliveries.base import AttemptResult, Outcome
from billnotify.events import CloudEvent
from billnotify.templating import TemplateRenderer, build_context

logger = logging.getLogger(__name__)

MAX_TOPIC_BYTES = 65535


class MqttExecutor:
    """Performs ``mqtt`` actions.

    Args:
        sender: the broker connection (None when MQTT is disabled: permanent failure).
        templates: renders topics and payloads.
    """

    action_type = "mqtt"

    def __init__(self, sender: MqttSender | None, templates: TemplateRenderer) -> None:
        self._sender = sender
        self._templates = templates

    def exactly_once(self, action: Action) -> bool:
        """MQTT messages are operator alerts: retried, duplicates acceptable."""
        return False

    def target(self, action: Action, event: CloudEvent) -> str:
        """The topic (rendered when possible)."""
        if not isinstance(action, MqttAction):
            return ""
        try:
            return self._topic(action, event, None)
        except Exception:
            return action.topic

    async def render(self, action: Action, event: CloudEvent, rule: Rule) -> Rendered:
        """The message an attempt would publish."""
        mqtt = _mqtt(action)
        topic = self._topic(mqtt, event, rule)
        payload = self._payload(mqtt, event, rule)
        summary = {"topic": topic, "payload": payload, "qos": mqtt.qos, "retain": mqtt.retain}
        return Rendered(self.action_type, topic, summary)

    async def execute(
        self, action: Action, event: CloudEvent, rule: Rule, *, delivery_id: str, attempt: int
    ) -> AttemptResult:
        """Publish once; failures are returned, classified."""
        try:
            mqtt = _mqtt(action)
            if self._sender is None:
                raise NotApplicableError("MQTT is disabled ([mqtt] enabled = false)")
            topic = self._topic(mqtt, event, rule)
            payload = self._payload(mqtt, event, rule)
            await self._sender.publish(topic, payload, qos=mqtt.qos, retain=mqtt.retain)
        except Exception as exc:  # BusError (not connected) is retryable
            return failure(exc)
        logger.debug("mqtt %s (attempt %d) published to %s", delivery_id, attempt, topic)
        return AttemptResult(Outcome.SUCCESS)

    async def close(self) -> None:
        """Nothing to release: the connection belongs to the publisher."""

    def _topic(self, action: MqttAction, event: CloudEvent, rule: Rule | None) -> str:
        context = build_context(event, rule)
        topic = self._templates.render_string(action.topic, context, label="mqtt topic").strip()
        if not topic or any(c in topic for c in "#+\x00\r\n"):
            raise InvalidMessageError(
                f"invalid MQTT topic {topic!r} (empty, wildcard or control character)"
            )
        if len(topic.encode()) > MAX_TOPIC_BYTES:
            raise InvalidMessageError("MQTT topic longer than 65535 bytes")
        return topic

    def _payload(self, action: MqttAction, event: CloudEvent, rule: Rule) -> str:
        return self._templates.render_string(
            action.payload, build_context(event, rule), label="mqtt payload"
        )


def _mqtt(action: Action) -> MqttAction:
    if not isinstance(action, MqttAction):
        raise NotApplicableError(f"not an mqtt action: {action.type}")
    return action
