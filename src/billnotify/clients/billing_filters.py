"""Keyword filters of the billing platform's list endpoints and request bodies.

The client methods take snake_case keywords (``created_since=...``) typed by the
``TypedDict``s here; :func:`split_filters` turns them into the API's camelCase parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, TypedDict

from billnotify.clients.billing_models import Record


class ListFilters(TypedDict, total=False):
    """Filters every list endpoint takes (all optional).

    ``limit`` caps the number of records returned over all pages; ``page_size`` is the
    ``limit`` sent with each request; ``offset`` applies to the first request only.
    """

    created_since: datetime | str | None
    updated_since: datetime | str | None
    id_after: int | str | None
    limit: int | None
    offset: int | None
    page_size: int | None


class InvoiceFilters(ListFilters, total=False):
    """Invoice list filters of seed 002 on top of :class:`ListFilters`.

    Dates are ``date`` objects or ``YYYY-MM-DD`` strings; flags are sent as ``1`` when true.
    """

    invoice_number: str | None
    unsent: bool
    include_unsent: bool
    undelivered: bool
    min_date: date | str | None
    max_date: date | str | None
    min_due_date: date | str | None
    max_due_date: date | str | None


_PARAM_NAMES = {
    "created_since": "createdSince",
    "updated_since": "updatedSince",
    "id_after": "idAfter",
    "offset": "offset",
    "invoice_number": "invoiceNumber",
    "unsent": "unsent",
    "include_unsent": "includeUnsent",
    "undelivered": "undelivered",
    "min_date": "minDate",
    "max_date": "maxDate",
    "min_due_date": "minDueDate",
    "max_due_date": "maxDueDate",
}
_DATE_PARAMS = {"min_date", "max_date", "min_due_date", "max_due_date"}


def request_body(model: type[Record], fields: Mapping[str, Any]) -> dict[str, Any]:
    """A request body from keyword fields; snake_case model names map to their API alias."""
    body: dict[str, Any] = {}
    for name, value in fields.items():
        info = model.model_fields.get(name)
        body[info.alias if info is not None and info.alias else name] = value
    return body


def split_filters(filters: Mapping[str, Any]) -> tuple[dict[str, Any], int | None, int | None]:
    """Turn keyword filters into API parameters, the overall ``limit`` and the page size.

    Raises:
        TypeError: an unknown filter name.
    """
    params: dict[str, Any] = {}
    for name, value in filters.items():
        if name in ("limit", "page_size"):
            continue
        if name not in _PARAM_NAMES:
            raise TypeError(f"unknown filter {name!r}")
        if name in _DATE_PARAMS and isinstance(value, datetime):
            value = value.date()
        params[_PARAM_NAMES[name]] = value
    return params, filters.get("limit"), filters.get("page_size")
