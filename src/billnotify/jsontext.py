"""JSON text decoded on the hot paths (a platform's pages, snapshots' records, the log's
envelopes) by ``orjson`` wherever it gives the very value :func:`json.loads` gives: a
stored record of 300 bytes in 1.4 µs against 2.2, a page of 500 records about a tenth
faster (``docs/performance.md``). Records are written (:func:`dumps`) by ``orjson`` too
wherever its text reads back as the same value: 1.2 µs a record against 6, the
check included.

Where the two differ, :func:`json.loads` decides: ``orjson`` reads an integer beyond 64
bits as a float, and refuses ``NaN``, ``Infinity``, numbers beyond a double and lone
surrogates, which :func:`json.loads` reads. A text with 20 digits in a row (the only
way to write an integer beyond 64 bits) or that ``orjson`` refuses goes to
:func:`json.loads`, so the value, and an error's type (a :class:`ValueError`), stay
what they were.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_LONG = b"0" * 20
"""20 digits in a row, once every digit reads ``0`` (a translate and a find: some 0.25 µs
a record, where a regular expression took 2.4)."""


def loads(text: bytes | str) -> Any:
    """:func:`json.loads`'s value of ``text``, decoded by ``orjson`` where that is the same.

    Raises:
        ValueError: ``text`` is not JSON (a :class:`json.JSONDecodeError`), or bytes
            that are not UTF-8 (a :class:`UnicodeDecodeError`).
    """
    try:
        data = text if isinstance(text, bytes) else text.encode()
    except UnicodeEncodeError:  # a lone surrogate: only json.loads reads it
        return json.loads(text)
    if _LONG not in data.translate(_DIGITS):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


_SCALARS = frozenset({str, int, bool, type(None)})
"""Types ``orjson`` writes exactly as :func:`json.dumps` does (``bool`` is not ``int``
here: the types are compared, not ``isinstance``)."""
_KEYS = frozenset({str})
"""The one type of key whose order ``orjson`` sorts as :func:`json.dumps` does."""


def _finite(value: Any) -> bool:
    """No ``NaN`` or infinity anywhere in ``value`` (``orjson`` writes them as null)."""
    kind = type(value)
    if kind is float:
        return math.isfinite(value)
    if kind is dict:
        value = value.values()
    elif kind is not list:
        return True
    if _SCALARS.issuperset(map(type, value)):  # a flat record: one pass in C
        return True
    return all(_finite(v) for v in value)


def dumps(value: Any) -> str:
    """Compact JSON text of ``value`` that :func:`loads` reads back as ``value``.

    ``orjson``'s where that holds; :func:`json.dumps`'s (compact) for what ``orjson``
    refuses (an integer beyond 64 bits, keys that are not strings, types it does not
    know) or writes as something else (``NaN`` and infinities, as null). Non-ASCII
    characters are written as they are, not escaped.

    Raises:
        TypeError: ``value`` is not JSON-serialisable at all.
    """
    if _finite(value):
        try:
            return orjson.dumps(value).decode()
        except orjson.JSONEncodeError:
            pass
    return json.dumps(value, separators=(",", ":"))


def _plain(value: Any) -> bool:
    """Only objects with string keys, arrays, strings, integers, booleans and null: the
    values whose canonical text ``orjson`` writes exactly as :func:`json.dumps` does
    (floats it writes otherwise: ``1e16`` for ``1e+16``)."""
    kind = type(value)
    if kind is dict:
        if not _KEYS.issuperset(map(type, value)):
            return False
        value = value.values()
    elif kind is not list:
        return kind in _SCALARS
    if _SCALARS.issuperset(map(type, value)):  # a flat record: one pass in C
        return True
    return all(_plain(v) for v in value)


_AS_PYDANTIC = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
"""What ``orjson`` writes otherwise than pydantic (datetimes, dataclasses, subclasses of
the JSON types), it refuses with these options."""


def compact(value: Any) -> str | None:
    """Pydantic's compact JSON text of ``value`` (``model_dump_json``), written by
    ``orjson`` in a quarter of the time; None where ``orjson`` refuses ``value`` (an
    integer beyond 64 bits, a key that is not a string, a lone surrogate, a datetime, a
    ``Decimal``, ...), for pydantic to write. For every value it takes the two write the
    very same text: ``tests/test_events_json.py`` checks every code point, floats, NaN,
    UUIDs and enums."""
    try:
        return orjson.dumps(value, option=_AS_PYDANTIC).decode()
    except orjson.JSONEncodeError:
        return None


def canonical(value: Any) -> str:
    """JSON with sorted keys, no spaces and non-ASCII as it is: the very text of
    ``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    default=str)``, by ``orjson`` where that text is the same (2.2 µs a record against 4.2, the
    check included).
    It feeds event ids, so it must never change: ``tests/test_jsontext.py``."""
    if _plain(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except orjson.JSONEncodeError:  # an integer beyond 64 bits, a lone surrogate
            pass
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
