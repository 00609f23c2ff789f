"""``[mqtt]``: the broker events and state are published to."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from billnotify.config.base import StrictModel
from billnotify.config.types import Duration
from billnotify.secrets import Secret


class MqttConfig(StrictModel):
    """``[mqtt]``: the broker events and state are published to."""

    enabled: bool = True
    """Publish to MQTT at all."""
    url: str = "mqtt://127.0.0.1:1883"
    """``mqtt://host:port``, ``mqtts://host:port`` (TLS) or ``embedded://host:port``."""
    client_id: str = "billnotify"
    """MQTT client identifier (the persistent session is keyed by it)."""
    username: str | None = None
    """Broker user name."""
    password: Secret | None = None
    """Broker password (``env:NAME`` / ``file:/path``)."""
    prefix: str = "billnotify"
    """First topic level of everything published."""
    qos: Literal[0, 1, 2] = 1
    """QoS of event messages."""
    protocol: Literal[4, 5] = 5
    """MQTT protocol version: 5, or 4 for 3.1.1."""
    retain_state: list[Literal["billing_task", "billing_run", "invoice", "billing_header"]] = [
        "billing_task",
        "billing_run",
    ]
    """Entities whose latest record is kept as retained ``{prefix}/state/...``."""
    keepalive: Duration = timedelta(seconds=60)
    """MQTT keepalive interval."""
    ca_file: str | None = None
    """CA bundle to verify the broker (TLS)."""
    cert_file: str | None = None
    """Client certificate (TLS client authentication)."""
    key_file: str | None = None
    """Client certificate's private key."""
    tls_insecure: bool = False
    """Skip hostname verification (testing only)."""
    message_expiry: Duration | None = None
    """MQTT 5 message expiry interval for event messages."""
    max_inflight: int = Field(default=100, ge=1, le=65535)
    """Publishes awaiting the broker's acknowledgement at once."""
    batch_size: int = Field(default=500, ge=1, le=100_000)
    """Events read from the log per batch."""
    reconnect_max: Duration = timedelta(seconds=30)
    """Longest wait between reconnection attempts."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl", "embedded") or not parts.hostname:
            raise ValueError(
                f"must be mqtt://host:port, mqtts://host:port or embedded://host:port, got {value!r}"
            )
        return value

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value or any(c in value for c in "#+") or value.startswith("/"):
            raise ValueError("must be a non-empty topic level without '#', '+' or a leading '/'")
        return value.rstrip("/")

    @property
    def tls(self) -> bool:
        """Whether the URL asks for TLS."""
        return urlsplit(self.url).scheme in ("mqtts", "ssl")

    @property
    def embedded(self) -> bool:
        """Whether billnotify starts its own broker."""
        return urlsplit(self.url).scheme == "embedded"

    @property
    def host(self) -> str:
        """The broker host."""
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        """The broker port (1883, or 8883 for TLS, by default)."""
        return urlsplit(self.url).port or (8883 if self.tls else 1883)
