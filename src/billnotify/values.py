"""Tolerant readers for the platforms' display-typed values (pure functions).

The APIs document display types ("Text", "Currency", "Date"), so numbers arrive as
strings and strings as numbers, and dates in several spellings. These helpers read
them without ever raising.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any

_EMPTY_DATES = {"", "0000-00-00", "0000-00-00 00:00:00", "0000-00-00T00:00:00Z", "null", "None"}
_DECIMAL_ASCII = frozenset("0123456789+-._eEinfINFtyTYaAsS,$ \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f")
"""Every ASCII character of a text :func:`as_decimal` can read: those
:class:`~decimal.Decimal` takes (digits, signs, the point, the exponent, underscores,
the letters of ``Infinity``, ``NaN`` and ``sNaN``) and those it removes first
(separators, ``$``, surrounding white space). ASCII text with any other character is no
number, which this set answers in a fraction of the time a refused ``Decimal`` takes
(a status or a timestamp is compared so in every change)."""
_NUMBERS = (int, float, Decimal)
_CONTAINERS = (list, dict)


def as_decimal(value: Any) -> Decimal | None:
    """``"12.50"``, ``12.5``, ``"1,234.00"`` -> Decimal; anything else -> None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, _NUMBERS):
        return Decimal(str(value))
    if isinstance(value, str):
        if value.isascii() and not _DECIMAL_ASCII.issuperset(value):
            return None
        return decimal_of_text(value)
    return None


def decimal_of_text(value: str) -> Decimal | None:
    """``value`` read by :class:`~decimal.Decimal` once separators, currency symbols and
    surrounding white space are removed; None where it refuses. :func:`as_decimal`
    without its quick refusal of text that is no number."""
    text = value.strip().replace(",", "")
    for symbol in ("£", "$", "€"):
        text = text.replace(symbol, "")
    try:
        return Decimal(text) if text else None
    except InvalidOperation:
        return None


def as_int(value: Any) -> int | None:
    """``"3"``, ``3``, ``3.0`` -> 3; anything else -> None."""
    if type(value) is int:  # the common cases: an int (not a bool), ASCII digits
        return value
    if type(value) is str and value.isascii() and value.isdigit():
        return int(value)
    number = as_decimal(value)
    if number is None or number != number.to_integral_value():
        return None
    return int(number)


def as_datetime(value: Any, zone: tzinfo = UTC) -> datetime | None:
    """Read a platform date or datetime as an aware datetime.

    A value without a zone (a bare date: its midnight) is a wall-clock time in ``zone``,
    the platform's own (UTC unless the source says otherwise), and comes back in UTC so
    that adding a duration to it adds real time, across a clock change too.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif not isinstance(value, str) or value.strip() in _EMPTY_DATES:
        return None
    else:
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=zone).astimezone(UTC)


def as_date(value: Any) -> date | None:
    """Read a date (or the date part of a datetime)."""
    parsed = as_datetime(value)
    return parsed.date() if parsed else None


def is_set(value: Any) -> bool:
    """Whether a field holds a value (not None, empty or a zero date)."""
    if value is None:
        return False
    if isinstance(value, str):
        return value.strip() not in _EMPTY_DATES
    return not (isinstance(value, list | dict) and not value)


def flags(value: Any) -> frozenset[str]:
    """An invoice's status flags from a list, or a comma/semicolon-separated string."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        parts = value.replace(";", ",").split(",")
        return frozenset(p.strip() for p in parts if p.strip())
    if isinstance(value, list | tuple | set | frozenset):
        return frozenset(str(v).strip() for v in value if str(v).strip())
    return frozenset({str(value)})


def same(a: Any, b: Any) -> bool:
    """Equality that ignores number-vs-string spelling (``"12.50" == 12.5``)."""
    if a == b:
        return True
    if isinstance(a, _CONTAINERS) or isinstance(b, _CONTAINERS):
        return False
    da, db = as_decimal(a), as_decimal(b)
    return da is not None and da == db


def record_id(record: dict[str, Any]) -> str:
    """A record's id as a string (ids arrive as strings or integers)."""
    value = record.get("id")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value) if value is not None else ""
