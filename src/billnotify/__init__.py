"""billnotify: billing-platform change notifications over MQTT, email and webhooks."""

__version__ = "0.2.0"
