"""Parsing and applying list query parameters (pure functions).

Common to every billing-platform list: ``limit``, ``offset``, ``idAfter``,
``createdSince``, ``updatedSince``. ``*Since`` filters are inclusive at second
resolution and use the platform's system timestamps, not record fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from billnotify.simulator import records as rec
from billnotify.simulator.state import SimState

COMMON_PARAMS = frozenset({"limit", "offset", "idAfter", "createdSince", "updatedSince"})
INVOICE_PARAMS = frozenset(
    {
        "invoiceNumber",
        "unsent",
        "includeUnsent",
        "undelivered",
        "minDate",
        "maxDate",
        "minDueDate",
        "maxDueDate",
    }
)
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_BOUNDS = (
    ("minDate", "invoiceDate", True),
    ("maxDate", "invoiceDate", False),
    ("minDueDate", "dueDate", True),
    ("maxDueDate", "dueDate", False),
)
_TRUE = frozenset({"", "1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ParamError(ValueError):
    """A list parameter is unknown or has an invalid value."""


def parse_datetime(name: str, value: str) -> datetime:
    """Parse ``YYYY-MM-DDTHH:MM:SSZ`` into an aware UTC datetime."""
    if not _DATETIME_RE.match(value):
        raise ParamError(f"{name} must be a datetime like 2024-01-31T23:59:59Z, got {value!r}")
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise ParamError(f"{name} is not a valid datetime: {value!r}") from exc


def parse_date(name: str, value: str) -> date:
    """Parse ``YYYY-MM-DD``."""
    if not _DATE_RE.match(value):
        raise ParamError(f"{name} must be a date like 2024-01-31, got {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ParamError(f"{name} is not a valid date: {value!r}") from exc


def parse_int(name: str, value: str, minimum: int) -> int:
    """Parse a non-negative decimal integer parameter."""
    if not re.fullmatch(r"\d+", value) or int(value) < minimum:
        raise ParamError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def parse_flag(name: str, value: str) -> bool:
    """Parse a flag parameter: present (or 1/true/yes) is true, 0/false/no is false."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ParamError(f"{name} is a flag; use {name}=1 or {name}=0, got {value!r}")


def _record_date(record: Mapping[str, Any], field: str) -> date | None:
    value = record.get(field)
    if not value:
        return None
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


def _check_names(query: Mapping[str, str], allowed: frozenset[str]) -> None:
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise ParamError(f"unknown parameter(s): {', '.join(unknown)}")


def select(
    state: SimState,
    resource: str,
    query: Mapping[str, str],
    *,
    page_max: int,
    customer_id: str | None = None,
) -> list[dict[str, Any]]:
    """Apply list parameters to one resource and return the page, sorted by numeric id.

    Args:
        state: The simulator state.
        resource: ``billing_tasks``, ``billing_runs`` or ``invoices``.
        query: The request's query parameters (one value per name).
        page_max: The server's page cap, applied whatever ``limit`` says.
        customer_id: Restrict invoices to one customer.

    Raises:
        ParamError: For an unknown parameter name or an invalid value.
    """
    allowed = COMMON_PARAMS | INVOICE_PARAMS if resource == "invoices" else COMMON_PARAMS
    _check_names(query, allowed)
    limit = parse_int("limit", query["limit"], 1) if "limit" in query else page_max
    offset = parse_int("offset", query["offset"], 0) if "offset" in query else 0
    id_after = parse_int("idAfter", query["idAfter"], 0) if "idAfter" in query else None
    created = (
        parse_datetime("createdSince", query["createdSince"]) if "createdSince" in query else None
    )
    updated = (
        parse_datetime("updatedSince", query["updatedSince"]) if "updatedSince" in query else None
    )
    invoice_filter = _invoice_filter(query) if resource == "invoices" else None

    rows = []
    for key in sorted(state.table(resource), key=int):
        record = state.table(resource)[key]
        if id_after is not None and int(key) <= id_after:
            continue
        times = state.times(resource, key)
        if created is not None and times.created_at.replace(microsecond=0) < created:
            continue
        if updated is not None and times.updated_at.replace(microsecond=0) < updated:
            continue
        if customer_id is not None and str(record.get("customerID")) != customer_id:
            continue
        if invoice_filter is not None and not invoice_filter(record):
            continue
        rows.append(record)
    return rows[offset : offset + min(limit, page_max)]


def _invoice_filter(query: Mapping[str, str]) -> Any:
    number = query.get("invoiceNumber")
    unsent = parse_flag("unsent", query["unsent"]) if "unsent" in query else False
    include = (
        parse_flag("includeUnsent", query["includeUnsent"]) if "includeUnsent" in query else False
    )
    undelivered = (
        parse_flag("undelivered", query["undelivered"]) if "undelivered" in query else False
    )
    bounds = [
        (field, is_min, parse_date(name, query[name]))
        for name, field, is_min in _DATE_BOUNDS
        if name in query
    ]

    def keep(record: Mapping[str, Any]) -> bool:
        is_unsent = rec.is_unsent(record)
        if unsent and not is_unsent:
            return False
        if not unsent and not include and is_unsent:
            return False
        if number is not None and record.get("invoiceNumber") != number:
            return False
        if undelivered and rec.is_delivered(record):
            return False
        for field, is_min, bound in bounds:
            value = _record_date(record, field)
            if value is None or (value < bound if is_min else value > bound):
                return False
        return True

    return keep
