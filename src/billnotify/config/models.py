"""Pydantic models of every table in ``config.toml`` (SPEC §5).

Unknown keys are rejected so that a typo is an error, not a silently ignored setting.
Secrets (`api_key`, `password`, `secret`, ...) are :class:`~billnotify.secrets.Secret`
values resolved from ``env:NAME`` / ``file:/path`` references.
"""

from __future__ import annotations

import fnmatch
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from billnotify.config.types import ENTITIES, EVENT_TYPES, INVOICE_ACTIONS, RESOURCES, Duration
from billnotify.secrets import Secret

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            "must start with a letter or digit and contain only letters, digits, '_', '.', '-'"
        )
    return value


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


class ServiceConfig(_Model):
    """``[service]``: the process itself."""

    name: str = "billnotify"
    state: str = "state.db"
    """SQLite file (relative to the config file's folder) or ``sqlite:///path`` URL."""
    templates: str = "templates"
    """Template folder, relative to the config file's folder."""
    http: str | None = "127.0.0.1:9464"
    """``host:port`` for /healthz, /readyz and /metrics; empty to disable."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    dry_run: bool = False
    shutdown_grace: Duration = timedelta(seconds=10)
    """How long SIGTERM waits for in-flight deliveries before parking them."""
    delivery_concurrency: int = Field(default=16, ge=1, le=1000)

    _name_ok = field_validator("name")(_check_name)

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


class MqttConfig(_Model):
    """``[mqtt]``: the broker events and state are published to."""

    enabled: bool = True
    url: str = "mqtt://127.0.0.1:1883"
    """``mqtt://host:port``, ``mqtts://host:port`` (TLS) or ``embedded://host:port``."""
    client_id: str = "billnotify"
    username: str | None = None
    password: Secret | None = None
    prefix: str = "billnotify"
    qos: Literal[0, 1, 2] = 1
    protocol: Literal[4, 5] = 5
    retain_state: list[Literal["billing_task", "billing_run", "invoice", "billing_header"]] = [
        "billing_task",
        "billing_run",
    ]
    keepalive: Duration = timedelta(seconds=60)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    """Skip hostname verification (testing only)."""
    message_expiry: Duration | None = None
    """MQTT 5 message expiry interval for event messages."""
    max_inflight: int = Field(default=100, ge=1, le=65535)
    """Publishes awaiting the broker's acknowledgement at once."""
    batch_size: int = Field(default=500, ge=1, le=100_000)
    reconnect_max: Duration = timedelta(seconds=30)

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


class _SourceBase(_Model):
    name: str
    poll_interval: Duration = timedelta(seconds=30)
    emit_on_first_sync: bool = False
    timeout: Duration = timedelta(seconds=30)
    """Per-request timeout towards the platform."""
    max_attempts: int = Field(default=5, ge=1, le=20)

    _name_ok = field_validator("name")(_check_name)


class BillingPlatformSource(_SourceBase):
    """A ``kind = "billing_platform"`` source (seeds 000-002)."""

    kind: Literal["billing_platform"]
    base_url: str
    api_key: Secret
    watch: list[Literal["billing_tasks", "billing_runs", "invoices"]] = [
        "billing_tasks",
        "billing_runs",
        "invoices",
    ]
    stall_after: Duration = timedelta(hours=2)
    overlap: Duration = timedelta(seconds=5)
    """How far back each incremental poll reaches behind the cursor."""
    page_size: int = Field(default=100, ge=1, le=10_000)
    include_unsent: bool = False
    """Also watch the unsent invoice that collects each customer's new charges."""

    _url_ok = field_validator("base_url")(_check_http_url)


class PropertyBillingSource(_SourceBase):
    """A ``kind = "property_billing"`` source (seed 003)."""

    kind: Literal["property_billing"]
    base_url: str
    auth_url: str
    username: Secret
    password: Secret
    administrator_ids: list[str] = Field(min_length=1)
    properties: list[str] = Field(min_length=1)
    poll_interval: Duration = timedelta(hours=1)
    document_path: str = "BillingDoculment"
    enrich: bool = True
    """Fetch ``Billing/<id>`` for every new or updated header."""

    _url_ok = field_validator("base_url", "auth_url")(_check_http_url)


SourceConfig = Annotated[BillingPlatformSource | PropertyBillingSource, Field(discriminator="kind")]


class SmtpConfig(_Model):
    """``[smtp]``: the mail server emails are sent through."""

    host: str
    port: int = Field(default=587, ge=1, le=65535)
    tls: bool = False
    """Implicit TLS (usually port 465)."""
    starttls: bool = False
    username: str | None = None
    password: Secret | None = None
    from_: str = Field(alias="from")
    timeout: Duration = timedelta(seconds=30)
    ca_file: str | None = None
    validate_certs: bool = True


class WebhookEndpoint(_Model):
    """``[[webhooks]]``: an HTTP endpoint that receives signed deliveries."""

    name: str
    url: str
    secret: Secret
    headers: dict[str, str] = {}
    timeout: Duration = timedelta(seconds=15)
    retry_schedule: list[Duration] = [
        timedelta(0),
        timedelta(seconds=5),
        timedelta(minutes=5),
        timedelta(minutes=30),
        timedelta(hours=2),
        timedelta(hours=5),
        timedelta(hours=10),
        timedelta(hours=10),
    ]
    allow_private: bool = False
    """Permit private/loopback addresses and plain http:// (for internal receivers)."""

    _name_ok = field_validator("name")(_check_name)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _check_http_url(value)

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, value: Secret) -> Secret:
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


class _ActionBase(_Model):
    dry_run: bool | None = None


class InvoiceActionAction(_ActionBase):
    """``type = "invoice_action"``: one of seed 002's actions on the event's invoice."""

    type: Literal["invoice_action"]
    action: Literal[
        "email",
        "emailCdrs",
        "recreate",
        "updateCallTransactions",
        "reapplyDiscountPlans",
        "generateDownloadLink",
        "linkToXero",
        "unlinkFromXero",
    ]
    params: dict[str, Any] = {}
    """Action parameters; string values are Jinja templates."""
    source: str | None = None
    """The billing_platform source to call (default: the event's source)."""


class EmailAction(_ActionBase):
    """``type = "email"``: an SMTP email rendered from templates."""

    type: Literal["email"]
    to: list[str] = Field(min_length=1)
    cc: list[str] = []
    bcc: list[str] = []
    reply_to: str | None = None
    template: str
    """Base name: ``templates/<template>.{subject,txt,html}.j2``."""
    attach: list[Literal["invoice_pdf", "billing_documents"]] = []
    at_least_once: bool = False
    """An operator alert: retry after a crash rather than wait for an operator."""


class WebhookAction(_ActionBase):
    """``type = "webhook"``: a signed POST to a ``[[webhooks]]`` endpoint."""

    type: Literal["webhook"]
    endpoint: str
    body: str | None = None
    """Template name (``templates/<body>.j2``) for the body; the CloudEvent when unset."""
    content_type: str = "application/json"


class MqttAction(_ActionBase):
    """``type = "mqtt"``: publish a rendered payload to a rendered topic."""

    type: Literal["mqtt"]
    topic: str
    payload: str = "{{ event | tojson }}"
    qos: Literal[0, 1, 2] = 1
    retain: bool = False


Action = Annotated[
    InvoiceActionAction | EmailAction | WebhookAction | MqttAction, Field(discriminator="type")
]


class Rule(_Model):
    """``[[rules]]``: which events trigger which actions."""

    name: str
    on: list[str] = Field(min_length=1)
    when: str | None = None
    actions: list[Action] = Field(min_length=1)
    dry_run: bool = False
    enabled: bool = True
    sources: list[str] = []
    """Only events of these sources (all when empty)."""

    _name_ok = field_validator("name")(_check_name)

    @field_validator("on")
    @classmethod
    def _check_globs(cls, value: list[str]) -> list[str]:
        for glob in value:
            if not any(fnmatch.fnmatchcase(t, glob) for t in EVENT_TYPES):
                raise ValueError(
                    f"{glob!r} matches no event type (e.g. 'invoice.*', 'billing_task.created', '*')"
                )
        return value

    def matches(self, event_type: str) -> bool:
        """Whether an event type matches one of the rule's globs."""
        return any(fnmatch.fnmatchcase(event_type, glob) for glob in self.on)


class Config(_Model):
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


__all__ = [
    "ENTITIES",
    "INVOICE_ACTIONS",
    "RESOURCES",
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
