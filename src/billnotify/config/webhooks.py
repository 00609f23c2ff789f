"""``[[webhooks]]``: the HTTP endpoints that receive signed deliveries."""

from __future__ import annotations

from datetime import timedelta

from pydantic import field_validator

from billnotify.config.base import StrictModel, check_http_url, check_name, check_retry_schedule
from billnotify.config.rates import check_rate
from billnotify.config.types import DEFAULT_RETRY_SCHEDULE, Duration
from billnotify.secrets import Secret


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
    rate_limit: str | None = None
    """At most this many deliveries to the endpoint: ``"N/s"``, ``"N/m"`` or ``"N/h"``;
    more wait their turn (never dropped), across restarts and processes."""

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

    _schedule_ok = field_validator("retry_schedule")(check_retry_schedule)
    _rate_ok = field_validator("rate_limit")(check_rate)
