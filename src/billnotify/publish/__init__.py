"""Publishing to MQTT: the event log, retained state, availability, an embedded broker."""

from billnotify.publish.mqtt import MqttPublisher

__all__ = ["MqttPublisher"]
