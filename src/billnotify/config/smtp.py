"""``[smtp]``: the mail server emails are sent through."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, field_validator

from billnotify.config.base import StrictModel, check_retry_schedule
from billnotify.config.rates import check_rate
from billnotify.config.types import Duration
from billnotify.secrets import Secret

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
    rate_limit: str | None = None
    """At most this many emails: ``"N/s"``, ``"N/m"`` or ``"N/h"``; more wait their turn
    (never dropped), across restarts and processes."""

    _schedule_ok = field_validator("retry_schedule")(check_retry_schedule)
    _rate_ok = field_validator("rate_limit")(check_rate)

    @property
    def plaintext_auth(self) -> bool:
        """Whether AUTH would go over an unencrypted connection."""
        return bool(self.username and self.password) and not (self.tls or self.starttls)
