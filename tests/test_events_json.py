"""CloudEvent JSON round trips, and the collector settings the service runs with."""

from __future__ import annotations

import enum
import gc
import math
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from billnotify.collector import GEN0_THRESHOLD, tuned_collector
from billnotify.events import CloudEvent, build_event


def _event(data: dict[str, Any] | None = None) -> CloudEvent:
    return build_event(
        source="acme",
        entity="invoice",
        object_id="7",
        type_="invoice.status_changed",
        key="k",
        time=datetime(2026, 11, 21, 10, 0, tzinfo=UTC),
        data=data or {"object": {"id": "7", "status": "Approved", "note": "ä \u001e"}},
    )


AWKWARD: dict[str, Any] = {
    "floats": [0.1, 1e16, 1e-7, 123456789.123456789, -0.0, 1.5e300, 2.0],
    "ints": [2**70, -1, 0],
    "text": ['ä \u001e \u2028 😀 "\\ </script>', ""],
    "none": None,
    "flags": [True, False],
    "nested": {"z": 1, "a": {"y": []}},
}


def test_an_event_read_from_the_log_serialises_to_its_logged_json_byte_for_byte() -> None:
    # The publisher and the webhook executor send what they parsed from the log
    # serialised again: it must be the JSON that was logged, byte for byte.
    built = _event(AWKWARD)
    extended = CloudEvent.model_validate({**built.model_dump(), "traceparent": "00-ab"})
    for event in (_event(), built, extended):
        logged = event.to_json()
        parsed = CloudEvent.from_json(logged)
        assert parsed == event
        assert parsed.to_json() == logged
        assert CloudEvent.from_json(logged.encode()).to_json() == logged


class _Colour(enum.Enum):
    RED = "red"
    TWO = 2


def test_an_event_is_written_as_pydantic_writes_it_whatever_it_holds() -> None:
    # to_json writes by orjson where that gives pydantic's very text, else by pydantic
    every_code_point = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    values: list[Any] = [
        every_code_point,
        {every_code_point[:300]: 1},
        AWKWARD,
        [math.nan, math.inf, -math.inf, 5e-324, 1.7976931348623157e308, 1e21, 1e22],
        [uuid.UUID(int=7), _Colour.RED, _Colour.TWO, (1, "a")],
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # orjson: +00:00, pydantic: Z
        date(2026, 1, 2),
        Decimal("12.50"),
        {1: "an int key"},
        2**64 - 1,
        -(2**63),
        2**64,
    ]
    for value in values:
        event = _event({"value": value})
        assert event.to_json() == event.model_dump_json(), repr(value)[:80]
    with pytest.raises(PydanticSerializationError):  # as pydantic alone did
        _event({"value": "\ud800"}).to_json()
    extended = CloudEvent.model_validate({**_event().model_dump(), "traceparent": "00-ab"})
    assert extended.to_json() == extended.model_dump_json()
    assert extended.to_json().endswith(',"traceparent":"00-ab"}')


def test_an_event_is_a_plain_value_without_a_json_cache() -> None:
    assert not CloudEvent.__private_attributes__
    for name in ("__eq__", "model_copy"):
        assert getattr(CloudEvent, name) is getattr(BaseModel, name), name
    spaced = _event().to_json().replace('","', '", "')
    assert CloudEvent.from_json(spaced).to_json() == _event().to_json()


def test_a_changed_copy_serialises_its_change() -> None:
    parsed = CloudEvent.from_json(_event().to_json())
    copy = parsed.model_copy(update={"id": "evt_other"})
    assert '"id":"evt_other"' in copy.to_json()
    assert copy != parsed
    assert parsed.model_copy().to_json() == parsed.to_json()


def test_events_compare_by_value_and_are_not_hashable() -> None:
    assert _event() == _event()
    assert _event() != CloudEvent.from_json(_event().to_json().replace('"7"', '"8"'))
    assert _event().__eq__(object()) is NotImplemented
    try:
        hash(_event())
    except TypeError:
        pass
    else:
        raise AssertionError("an event with a dict payload must not be hashable")


def test_the_collector_is_tuned_while_the_service_runs_and_restored_after() -> None:
    before = gc.get_threshold()
    with tuned_collector():
        assert gc.get_threshold()[0] >= GEN0_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
