"""billnotify: billing-platform change notifications over MQTT, email and webhooks."""

__version__ = "0.1.0"
