"""``jsontext.loads`` (orjson on the hot paths) gives what ``json.loads`` gives, value and
error alike, including where orjson alone would not."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from billnotify.jsontext import canonical, dumps, loads

TEXTS = [
    '{"id":"t1","status":"Pending","amount":12.5,"tags":["a","é"],"n":null,"ok":true}',
    "123456789012345678901234567890",  # beyond 64 bits: orjson would give a float
    '{"amount": 18446744073709551616}',
    '{"id": "00000000000000000000001"}',  # 20 digits in a string: json.loads decides
    "1e400",
    "NaN",
    "-Infinity",
    '"\\ud800"',  # a lone surrogate
    '{"a": 1, "a": 2}',
    "[1.0, -0.0, 0.1, 1e-07, 1e16]",
    '"\\u2028\\u0000"',
]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("kind", [str, bytes])
def test_the_value_is_what_json_loads_gives(text: str, kind: type) -> None:
    data = text.encode() if kind is bytes else text
    expected = json.loads(data)
    got = loads(data)
    assert repr(got) == repr(expected)
    assert type(got) is type(expected)


@pytest.mark.parametrize("data", [b"", b"{", b"\xff\xfe", "not json", b"[1,]"])
def test_what_is_not_json_raises_a_value_error(data: bytes | str) -> None:
    with pytest.raises(ValueError):
        json.loads(data)
    with pytest.raises(ValueError):
        loads(data)


def test_a_utf8_bom_is_read_as_json_loads_reads_it() -> None:
    data = b'\xef\xbb\xbf{"a": 1}'
    assert loads(data) == json.loads(data)


@pytest.mark.parametrize("text", [t for t in TEXTS if t != '"\\ud800"'])
def test_dumps_reads_back_as_the_value(text: str) -> None:
    """What ``dumps`` writes, ``loads`` reads back as the value it was given (NaN and
    integers beyond 64 bits included, where orjson alone would write null or refuse)."""
    value = json.loads(text)
    assert repr(loads(dumps(value))) == repr(value)
    assert json.loads(dumps(value)) == value or repr(json.loads(dumps(value))) == repr(value)


def test_dumps_falls_back_for_what_orjson_refuses() -> None:
    assert dumps({1: "a"}) == '{"1":"a"}'  # keys that are not strings: as json.dumps
    assert dumps({"a": [float("nan")]}) == '{"a":[NaN]}'
    with pytest.raises(TypeError):
        dumps({"a": object()})


CANONICAL = [
    {"b": 1, "a": [True, None, "é☃𝄞", {"z": "\u2028", "y": '\x00\x1f\x7f"\\'}]},
    {chr(cp): chr(cp) for cp in range(0x20, 0x800) if not 0xD800 <= cp <= 0xDFFF},
    {"𝄞": 1, "\uffff": 2, "ä": 3, "Z": 4, "a": 5},
    {"n": 2**63 - 1, "m": -(2**63), "big": 2**64, "f": 1e16, "g": 0.1},
    {"s": "\ud800"},
    {1: "non-string key"},
    [{"nested": [[], {}, ""]}],
    {"t": datetime(2026, 12, 3, tzinfo=UTC)},
]


@pytest.mark.parametrize("value", CANONICAL)
def test_canonical_is_the_text_json_dumps_gives(value: object) -> None:
    """Event ids are digests of this text: it must stay what it always was."""
    expected = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    assert canonical(value) == expected
