"""Shared field types of the configuration models."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

from billnotify.durations import format_duration, parse_duration

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
"""A duration written as ``"30s"``, ``"5m"``, ``"2h"`` (or a number of seconds)."""

ENTITIES = ("billing_task", "billing_run", "invoice", "billing_header")
"""Event entities, in the order of SPEC §2."""

RESOURCES = {
    "billing_tasks": "billing_task",
    "billing_runs": "billing_run",
    "invoices": "invoice",
    "billing_headers": "billing_header",
}
"""Polled resource name -> the entity its events are about."""

EVENT_TYPES = (
    "billing_task.created",
    "billing_task.status_changed",
    "billing_task.retried",
    "billing_task.stalled",
    "billing_task.updated",
    "billing_run.created",
    "billing_run.status_changed",
    "billing_run.commenced",
    "billing_run.completed",
    "billing_run.updated",
    "invoice.created",
    "invoice.status_changed",
    "invoice.paid",
    "invoice.overdue",
    "invoice.updated",
    "billing_header.published",
    "billing_header.updated",
    "billing_task.deleted",
    "billing_task.restored",
    "billing_run.deleted",
    "billing_run.restored",
    "invoice.deleted",
    "invoice.restored",
    "billing_header.deleted",
    "billing_header.restored",
)
"""Every event type billnotify emits (SPEC §2)."""

NOTICE_TYPES = (
    "billnotify.delivery.uncertain",
    "billnotify.delivery.dead",
    "billnotify.endpoint.disabled",
    "billnotify.source.failing",
    "billnotify.source.recovered",
)
"""The service's own failures as events, source ``billnotify://<service name>`` (SPEC §7.6)."""

INVOICE_ACTIONS = (
    "email",
    "emailCdrs",
    "recreate",
    "updateCallTransactions",
    "reapplyDiscountPlans",
    "generateDownloadLink",
    "linkToXero",
    "unlinkFromXero",
)
"""The eight invoice actions of seed 002."""

DEFAULT_RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(0),
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
"""Delay before each attempt of a delivery (Svix-like): webhooks' default
``retry_schedule`` and the schedule of every other action."""

CUSTOMER_FACING_INVOICE_ACTIONS = frozenset({"email", "emailCdrs"})
"""Invoice actions a customer sees: never performed twice (SPEC §4.1)."""
