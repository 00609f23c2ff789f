"""Configuration: pydantic models of ``config.toml`` and the loader that validates it."""

from billnotify.config.loader import load_config, parse_config
from billnotify.config.models import (
    Action,
    BillingPlatformSource,
    Config,
    EmailAction,
    InvoiceActionAction,
    MqttAction,
    MqttConfig,
    PropertyBillingSource,
    Rule,
    ServiceConfig,
    SmtpConfig,
    SourceConfig,
    WebhookAction,
    WebhookEndpoint,
)

__all__ = [
    "Action",
    "BillingPlatformSource",
    "Config",
    "EmailAction",
    "InvoiceActionAction",
    "MqttAction",
    "MqttConfig",
    "PropertyBillingSource",
    "Rule",
    "ServiceConfig",
    "SmtpConfig",
    "SourceConfig",
    "WebhookAction",
    "WebhookEndpoint",
    "load_config",
    "parse_config",
]
