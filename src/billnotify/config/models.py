"""Pydantic models of every table in ``config.toml`` (SPEC §5).

Unknown keys are rejected so that a typo is an error, not a silently ignored setting.
Secrets (`api_key`, `password`, `secret`, ...) are :class:`~billnotify.secrets.Secret`
values resolved from ``env:NAME`` / ``file:/path`` references. Rules and actions live in
``config/rules.py`` and are re-exported here.
"""

from __future__ import annotations

import base64
import binascii
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from billnotify.config.base import StrictModel, check_http_url, check_name
from billnotify.config.rules import (
    Action,
    EmailAction,
    InvoiceActionAction,
    MqttAction,
    Rule,
    WebhookAction,
)
from billnotify.config.types import DEFAULT_RETRY_SCHEDULE, Duration
from billnotify.secrets import Secret

DEFAULT_TEMPLATES = Path(__file__).resolve().parents[1] / "default_templates"
"""The templates shipped with the package (the repository's ``templates/``)."""


class ServiceConfig(StrictModel):
    """``[service]``: the process itself."""

    name: str = "billnotify"
    """Instance name, used in logs."""
    state: str = "state.db"
    """SQLite file (relative to the config file's folder) or ``sqlite:///path`` URL."""
    templates: str = "templates"
    """Template folder, relative to the config file's folder."""
    http: str | None = "127.0.0.1:9464"
    """``host:port`` for /healthz, /readyz and /metrics; empty to disable."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log verbosity."""
    log_format: Literal["text", "json"] = "text"
    """``text`` for people, ``json`` (one object per line) for log collectors."""
    dry_run: bool = False
    """Render and record every delivery, send nothing."""
    shutdown_grace: Duration = timedelta(seconds=10)
    """How long SIGTERM waits for in-flight deliveries before parking them."""
    delivery_concurrency: int = Field(default=16, ge=1, le=1000)
    """Delivery attempts in flight at once."""

    _name_ok = field_validator("name")(check_name)

    @field_validator("http")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if not value:
            return None
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"must be host:port, got {value!r}")
        return value

    @field_validator("state")
    @classmethod
    def _check_state(cls, value: str) -> str:
        if value.startswith("sqlite:") and not value.startswith("sqlite:///"):
            raise ValueError("a sqlite URL is sqlite:///relative or sqlite:////absolute")
        if not value:
            raise ValueError("must not be empty")
        return value

    def state_path(self, base_dir: Path) -> Path:
        """The SQLite file, resolved against the config file's folder."""
        raw = self.state[len("sqlite:///") :] if self.state.startswith("sqlite:///") else self.state
        path = Path(raw).expanduser()
        return path if path.is_absolute() else base_dir / path

    def templates_path(self, base_dir: Path) -> Path:
        """The template folder, resolved against the config file's folder."""
        path = Path(self.templates).expanduser()
        return path if path.is_absolute() else base_dir / path

    def listen(self) -> tuple[str, int] | None:
        """``(host, port)`` of the HTTP endpoint, or None when disabled."""
        if not self.http:
            return None
        host, _, port = self.http.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


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


class _SourceBase(StrictModel):
    name: str
    """Source name: in events' ``source`` (``billnotify://<name>``) and topics."""
    poll_interval: Duration = timedelta(seconds=30)
    """Time between two polls of each resource."""
    emit_on_first_sync: bool = False
    """Emit ``created`` events for the records found on the very first poll."""
    timeout: Duration = timedelta(seconds=30)
    """Per-request timeout towards the platform."""
    max_attempts: int = Field(default=5, ge=1, le=20)
    """Tries per request on 5xx, 429 and connection errors (with backoff)."""
    failing_after_polls: int = Field(default=3, ge=1)
    """Failed polls in a row of a resource that make ``billnotify.source.failing``."""
    failing_after: Duration = timedelta(minutes=5)
    """Or: how long a resource's polls may keep failing before ``billnotify.source.failing``."""
    hook_secret: Secret | None = None
    """Enables ``POST /hooks/<name>``: ``whsec_…`` verifies Standard Webhooks signatures, any other (16+ characters) is a Bearer token."""

    _name_ok = field_validator("name")(check_name)

    @field_validator("hook_secret")
    @classmethod
    def _check_hook_secret(cls, value: Secret | None) -> Secret | None:
        if value is None or not value.resolved:
            return value
        raw = value.reveal()
        if raw.startswith("whsec_"):
            try:
                key = base64.b64decode(raw[len("whsec_") :], validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("the part after 'whsec_' must be base64") from None
            if not key:
                raise ValueError("the part after 'whsec_' is empty")
        elif len(raw) < 16:
            raise ValueError("must be a 'whsec_' secret or a token of at least 16 characters")
        return value


class BillingPlatformSource(_SourceBase):
    """A ``kind = "billing_platform"`` source (seeds 000-002)."""

    kind: Literal["billing_platform"]
    base_url: str
    """``https://HOST/backend/api/v1``."""
    api_key: Secret
    """Sent as ``Authorization: Bearer``."""
    watch: list[Literal["billing_tasks", "billing_runs", "invoices"]] = [
        "billing_tasks",
        "billing_runs",
        "invoices",
    ]
    """Resources to poll."""
    stall_after: Duration = timedelta(hours=2)
    """A task running longer than this is ``billing_task.stalled``."""
    overlap: Duration = timedelta(seconds=5)
    """How far back each incremental poll reaches behind the cursor."""
    page_size: int = Field(default=100, ge=1, le=10_000)
    """``limit`` asked per page (the server may return fewer)."""
    include_unsent: bool = False
    """Also watch the unsent invoice that collects each customer's new charges."""

    _url_ok = field_validator("base_url")(check_http_url)


class PropertyBillingSource(_SourceBase):
    """A ``kind = "property_billing"`` source (seed 003)."""

    kind: Literal["property_billing"]
    base_url: str
    """``https://HOST/api/v1``."""
    auth_url: str
    """Where ``{"username", "password"}`` is posted for a JWT."""
    username: Secret
    """API user."""
    password: Secret
    """API password."""
    administrator_ids: list[str] = Field(min_length=1)
    """Sent as ``istaAdministratorIds: id1;id2``."""
    properties: list[str] = Field(min_length=1)
    """Property UUIDs whose billing headers are polled."""
    poll_interval: Duration = timedelta(hours=1)
    """Time between two polls of each property."""
    document_path: str = "BillingDoculment"
    """Path of the document download (the documentation's spelling by default)."""
    enrich: bool = True
    """Fetch ``Billing/<id>`` for every new or updated header."""

    _url_ok = field_validator("base_url", "auth_url")(check_http_url)


SourceConfig = Annotated[BillingPlatformSource | PropertyBillingSource, Field(discriminator="kind")]


DEFAULT_SMTP_RETRY_SCHEDULE: tuple[timedelta, ...] = (
    *(timedelta(seconds=s) for s in (0, 5, 15, 30, 45)),
    *(timedelta(minutes=1),) * 15,
    *(timedelta(minutes=m) for m in (2, 5, 10, 30)),
    *(timedelta(hours=h) for h in (1, 2, 5, 10, 10)),
)
"""Emails' default retry schedule: a mail server comes back within minutes (a restart,
a greylisting window, a 421 while busy), so for the first quarter of an hour an email is
tried again at least once a minute and reaches its reader within a minute of the server's
return; then the waits grow to 10 h, about 29 h in all, so no short outage kills one."""


class SmtpConfig(StrictModel):
    """``[smtp]``: the mail server emails are sent through."""

    host: str
    """Mail server host."""
    port: int = Field(default=587, ge=1, le=65535)
    """Mail server port."""
    tls: bool = False
    """Implicit TLS (usually port 465)."""
    starttls: bool = False
    """Upgrade the connection with STARTTLS (usually port 587)."""
    username: str | None = None
    """SMTP AUTH user."""
    password: Secret | None = None
    """SMTP AUTH password."""
    from_: str = Field(alias="from")
    """The From header, e.g. ``Billing <billing@example.com>``."""
    timeout: Duration = timedelta(seconds=30)
    """Per-command timeout."""
    ca_file: str | None = None
    """CA bundle to verify the server."""
    validate_certs: bool = True
    """Verify the server's certificate."""
    allow_plaintext_auth: bool = False
    """Permit AUTH with neither ``tls`` nor ``starttls``: the password crosses the network in clear text."""
    max_connections: int = Field(default=4, ge=1, le=100)
    """Connections kept open to the server (messages sent at once)."""
    retry_schedule: list[Duration] = list(DEFAULT_SMTP_RETRY_SCHEDULE)
    """Delay before each attempt of an email; exhausted means dead letter."""

    @field_validator("retry_schedule")
    @classmethod
    def _check_schedule(cls, value: list[timedelta]) -> list[timedelta]:
        if not value:
            raise ValueError("must list at least one attempt")
        return value

    @property
    def plaintext_auth(self) -> bool:
        """Whether AUTH would go over an unencrypted connection."""
        return bool(self.username and self.password) and not (self.tls or self.starttls)


class WebhookEndpoint(StrictModel):
    """``[[webhooks]]``: an HTTP endpoint that receives signed deliveries."""

    name: str
    """Endpoint name, referred to by webhook actions."""
    url: str
    """``https://`` URL (``http://`` only with ``allow_private``)."""
    secret: Secret
    """``whsec_<base64>`` signing secret (Standard Webhooks)."""
    headers: dict[str, str] = {}
    """Extra headers sent with every delivery."""
    timeout: Duration = timedelta(seconds=15)
    """Overall deadline of one attempt (connect, send, read)."""
    retry_schedule: list[Duration] = list(DEFAULT_RETRY_SCHEDULE)
    """Delay before each attempt; exhausted means dead letter."""
    allow_private: bool = False
    """Permit private/loopback addresses and plain http:// (for internal receivers)."""

    _name_ok = field_validator("name")(check_name)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return check_http_url(value)

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, value: Secret) -> Secret:
        if not value.resolved:
            return value
        raw = value.reveal()
        if raw.startswith("whsec_"):
            import base64
            import binascii

            try:
                base64.b64decode(raw[len("whsec_") :], validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("the part after 'whsec_' must be base64") from None
        elif len(raw) < 16:
            raise ValueError("must be a 'whsec_' secret (or at least 16 characters)")
        return value

    @field_validator("retry_schedule")
    @classmethod
    def _check_schedule(cls, value: list[timedelta]) -> list[timedelta]:
        if not value:
            raise ValueError("must list at least one attempt")
        return value


class Config(StrictModel):
    """The whole ``config.toml``."""

    service: ServiceConfig = ServiceConfig()
    mqtt: MqttConfig = MqttConfig()
    sources: list[SourceConfig] = []
    smtp: SmtpConfig | None = None
    webhooks: list[WebhookEndpoint] = []
    rules: list[Rule] = []
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
        """Where templates are looked up: the configured folder, then the shipped defaults
        (so a folder holding only overrides still finds ``task_failed``, ``slack``, ...)."""
        return [self.templates_path, DEFAULT_TEMPLATES]


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
]
