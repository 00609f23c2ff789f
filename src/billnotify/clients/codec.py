"""Wire formats shared by the API clients: parameter values, bodies, error mapping."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from uuid import UUID

from billnotify.errors import (
    ERROR_CODES,
    ApiError,
    AuthError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    SourceError,
    action_error_class,
)

if TYPE_CHECKING:
    from billnotify.clients.http import HttpResponse

_SNIPPET = 200


def describe_body(body: bytes) -> str:
    """A short printable rendering of a body (truncated, never raises)."""
    if not body:
        return "<empty body>"
    text = body[:_SNIPPET].decode("utf-8", errors="replace")
    more = f"... ({len(body)} bytes)" if len(body) > _SNIPPET else ""
    return repr(text) + more


def json_default(value: Any) -> Any:
    """``json.dumps`` hook for the values API bodies carry (dates, decimals, UUIDs)."""
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def format_datetime(value: datetime) -> str:
    """Format an aware datetime as ``YYYY-MM-DDTHH:MM:SSZ`` (UTC).

    Raises:
        ValueError: ``value`` is naive; its zone would be a guess.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"datetime must be timezone-aware: {value!r}")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def error_for(resp: HttpResponse, retry_after: float | None = None) -> SourceError:
    """Map an error response (status >= 400) to the typed exception it stands for."""
    message, error_code, hint = _error_fields(resp)
    kw: dict[str, Any] = {"status": resp.status, "url": resp.url, "hint": hint}
    kw["error_code"] = error_code
    if resp.status == 429:
        return RateLimitedError(message, retry_after=retry_after, **kw)
    if error_code is not None and (error_code in ERROR_CODES or 403000 <= error_code <= 403999):
        return action_error_class(error_code)(message, **kw)
    if resp.status == 401 or (resp.status == 403 and error_code is None):
        return AuthError(f"{message} [HTTP {resp.status}]", url=resp.url)
    if resp.status == 404:
        return NotFoundError(message, **kw)
    if resp.status >= 500:
        return ServerError(message, **kw)
    return ApiError(message, **kw)


def _error_fields(resp: HttpResponse) -> tuple[str, int | None, str | None]:
    try:
        data = json.loads(resp.body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        text = resp.snippet() if resp.body else "no error details"
        return f"HTTP {resp.status}: {text}", None, None
    message = str(data.get("error") or data.get("message") or f"HTTP {resp.status}")
    code: int | None
    try:
        code = int(data["error_code"])
    except (KeyError, TypeError, ValueError):
        code = None
    hint = data.get("hint")
    return message, code, str(hint) if hint is not None else None


def format_param(value: Any) -> str:
    """Format one query-parameter value the way the billing platform expects it.

    Aware datetimes become ``YYYY-MM-DDTHH:MM:SSZ``, dates ``YYYY-MM-DD``, ``True``
    becomes ``1`` (flags), everything else ``str()``.
    """
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    if value is True:
        return "1"
    if value is False:
        return "0"
    return str(value)


def query(params: Mapping[str, Any]) -> dict[str, str]:
    """Format a parameter mapping, dropping None values and false flags."""
    return {k: format_param(v) for k, v in params.items() if v is not None and v is not False}


def segment(value: object) -> str:
    """Quote an id for use as one path segment."""
    return quote(str(value), safe="")


def single_record(data: Any, url: str) -> dict[str, Any]:
    """The one object of a single-record response (a one-element array is tolerated).

    Raises:
        MalformedResponseError: the body is neither.
    """
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        raise MalformedResponseError(
            f"expected a JSON object, got {type(data).__name__}: {describe_body(repr(data).encode())}",
            url=url,
        )
    return data
