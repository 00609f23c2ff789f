"""CloudEvent JSON round trips, and the collector settings the service runs with."""

from __future__ import annotations

import gc
from datetime import UTC, datetime

from billnotify.collector import GEN0_THRESHOLD, tuned_collector
from billnotify.events import CloudEvent, build_event


def _event() -> CloudEvent:
    return build_event(
        source="acme",
        entity="invoice",
        object_id="7",
        type_="invoice.status_changed",
        key="k",
        time=datetime(2026, 11, 21, 10, 0, tzinfo=UTC),
        data={"object": {"id": "7", "status": "Approved", "note": "ä \u001e"}},
    )


def test_an_event_read_from_the_log_gives_back_its_logged_json() -> None:
    built = _event()
    logged = built.to_json()
    parsed = CloudEvent.from_json(logged)
    assert parsed.to_json() is logged  # not serialised again
    assert parsed == built
    assert (parsed != built) is False
    assert CloudEvent.from_json(logged.encode()).to_json() == logged


def test_json_from_elsewhere_is_kept_as_written() -> None:
    spaced = _event().to_json().replace('","', '", "')
    assert CloudEvent.from_json(spaced).to_json() == spaced


def test_a_changed_copy_is_serialised_again() -> None:
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
