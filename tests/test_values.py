"""The tolerant readers: the quick refusal of text that is no number changes no answer."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pytest

from billnotify.values import as_decimal, as_int, decimal_of_text, same

_read_slowly = decimal_of_text
"""``as_decimal`` of a text without the quick refusal: always ask Decimal."""


NUMBERS_AND_WORDS = [
    "12.50", " 12.50 ", "1,234.00", "$5", "£5", "€ 5", "-0", "+3", ".5", "5.", "1e3", "1E-3",
    "1_000", "Infinity", "-inf", "NaN", "nan12", "sNaN", "٣", "\uff11\uff12", "\t7\n", "\x1c9\x1f",
    "Completed", "Error", "2026-01-01T00:00:00Z", "0000-00-00", "12:30", "1/2", "12%", "",
    "e", "i", "fast", "N/A", "yes", "0x1F", "1 2", "--1", "1e", "Inf inity",
]  # fmt: skip


@pytest.mark.parametrize("text", NUMBERS_AND_WORDS)
def test_a_text_reads_as_before(text: str) -> None:
    assert _same_decimal(as_decimal(text), _read_slowly(text))


def test_random_texts_read_as_before() -> None:
    alphabet = "0123456789+-._eEinfINFtyaAsSNc,$ \t\x1c:/TZ%x£€٣\uff11"
    draw = random.Random(13)
    for _ in range(20_000):
        text = "".join(draw.choice(alphabet) for _ in range(draw.randint(0, 8)))
        assert _same_decimal(as_decimal(text), _read_slowly(text)), repr(text)


def _same_decimal(a: Decimal | None, b: Decimal | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.is_nan() and b.is_nan()) or a == b


INTEGERS = [(3, 3), ("3", 3), ("007", 7), (" 3 ", 3), ("3.0", 3), (3.0, 3), ("٣", 3)]
NOT_INTEGERS = [("3.5", None), ("²", None), ("", None), (True, None), (None, None), ("x", None)]


@pytest.mark.parametrize(("value", "expected"), [*INTEGERS, *NOT_INTEGERS])
def test_as_int(value: Any, expected: int | None) -> None:
    assert as_int(value) == expected


def test_same_ignores_how_a_number_is_spelled_only() -> None:
    assert same("12.50", 12.5)
    assert same("1,000", 1000)
    assert not same("Completed", "Error")
    assert not same([1], [2])
    assert not same("2026-01-01", "2026-01-02")
