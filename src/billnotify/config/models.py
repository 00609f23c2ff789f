"""Pydantic models of ``config.toml`` (SPEC §5): the whole :class:`Config`.

Unknown keys are rejected so that a typo is an error, not a silently ignored setting.
Secrets (`api_key`, `password`, `secret`, ...) are :class:`~billnotify.secrets.Secret`
values resolved from ``env:NAME`` / ``file:/path`` references. Each table's model lives
in a module of its own (``service``, ``mqtt``, ``sources``, ``smtp``, ``webhooks``,
``rules``) and is re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from billnotify.config.base import StrictModel
from billnotify.config.mqtt import MqttConfig
from billnotify.config.mute import MuteWindow
from billnotify.config.rules import (
    Action,
    EmailAction,
    InvoiceActionAction,
    MqttAction,
    Rule,
    WebhookAction,
)
from billnotify.config.service import DEFAULT_TEMPLATES, ServiceConfig, template_folders
from billnotify.config.smtp import DEFAULT_SMTP_RETRY_SCHEDULE, SmtpConfig
from billnotify.config.sources import BillingPlatformSource, PropertyBillingSource, SourceConfig
from billnotify.config.webhooks import WebhookEndpoint


class Config(StrictModel):
    """The whole ``config.toml``."""

    service: ServiceConfig = ServiceConfig()
    mqtt: MqttConfig = MqttConfig()
    sources: list[SourceConfig] = []
    smtp: SmtpConfig | None = None
    webhooks: list[WebhookEndpoint] = []
    rules: list[Rule] = []
    mute_windows: list[MuteWindow] = []
    base_dir: Path = Field(default=Path("."), exclude=True)
    """The folder of the config file; relative paths resolve against it."""

    def source(self, name: str) -> BillingPlatformSource | PropertyBillingSource:
        """The source called ``name``."""
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)

    def webhook(self, name: str) -> WebhookEndpoint:
        """The webhook endpoint called ``name``."""
        for hook in self.webhooks:
            if hook.name == name:
                return hook
        raise KeyError(name)

    @property
    def state_path(self) -> Path:
        """The SQLite state file."""
        return self.service.state_path(self.base_dir)

    @property
    def templates_path(self) -> Path:
        """The template folder."""
        return self.service.templates_path(self.base_dir)

    @property
    def template_folders(self) -> list[Path]:
        """Where templates are looked up: the configured folder when it exists, then the
        shipped defaults (so a folder holding only overrides still finds ``slack``, ...)."""
        return template_folders(self.templates_path)


__all__ = [
    "DEFAULT_SMTP_RETRY_SCHEDULE",
    "DEFAULT_TEMPLATES",
    "Action",
    "BillingPlatformSource",
    "Config",
    "EmailAction",
    "InvoiceActionAction",
    "MqttAction",
    "MqttConfig",
    "MuteWindow",
    "PropertyBillingSource",
    "Rule",
    "ServiceConfig",
    "SmtpConfig",
    "SourceConfig",
    "WebhookAction",
    "WebhookEndpoint",
]
