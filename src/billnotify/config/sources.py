"""``[[sources]]``: the billing platforms polled, one model per ``kind``."""

from __future__ import annotations

import base64
import binascii
from datetime import timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationInfo, field_validator

from billnotify.config.base import StrictModel, check_http_url, check_name
from billnotify.config.types import Duration
from billnotify.secrets import Secret


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
    timezone: str = "UTC"
    """IANA zone the platform's zone-less timestamps and due dates are read in (``stalled``, ``overdue``, cursors)."""
    reconcile_interval: Duration = timedelta(hours=6)
    """How often every id of each watched resource is listed to find deleted and restored records (``{entity}.deleted`` / ``.restored``); ``"0s"`` turns it off."""

    _name_ok = field_validator("name")(check_name)

    @property
    def zone(self) -> ZoneInfo:
        """The validated ``timezone``."""
        return ZoneInfo(self.timezone)

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name like 'Europe/London')"
            ) from None
        return value

    @field_validator("reconcile_interval")
    @classmethod
    def _check_reconcile_interval(cls, value: timedelta) -> timedelta:
        if timedelta(0) < value < timedelta(seconds=1):
            raise ValueError('must be "0s" (off) or at least "1s"')
        return value

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
    page_size: int = Field(default=500, ge=1, le=10_000)
    """``limit`` asked per page (the server may return fewer)."""
    include_unsent: bool = False
    """Also watch the unsent invoice that collects each customer's new charges (a rule running ``updateCallTransactions`` needs it: only unsent invoices take that action)."""

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
    include_device_consumptions: bool = False
    """Ask ``Billing/<id>`` with ``includeDeviceConsumptions=true`` (needs ``enrich``)."""

    _url_ok = field_validator("base_url", "auth_url")(check_http_url)

    @field_validator("include_device_consumptions")
    @classmethod
    def _check_consumptions_need_enrich(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("enrich") is False:
            raise ValueError("needs enrich = true: device consumptions come with Billing/<id>")
        return value


SourceConfig = Annotated[BillingPlatformSource | PropertyBillingSource, Field(discriminator="kind")]
