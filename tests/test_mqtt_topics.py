"""Topic names (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime

from billnotify.events import build_event
from billnotify.publish.topics import (
    event_topic,
    events_filter,
    state_filter,
    state_topic,
    status_topic,
    topic_level,
)


def test_levels_escape_what_mqtt_forbids_and_stay_reversible() -> None:
    assert topic_level("1234") == "1234"
    assert topic_level("ACC-9/12") == "ACC-9%2F12"
    assert topic_level("a+b#c") == "a%2Bb%23c"
    assert topic_level("100%") == "100%25"
    assert topic_level("nul\0") == "nul%00"
    assert topic_level("") == "_"
    assert topic_level("Ünïcode") == "Ünïcode"


def test_event_topic() -> None:
    event = build_event(
        source="acme",
        entity="invoice",
        object_id="ACC/7",
        type_="invoice.status_changed",
        key="k",
        time=datetime(2026, 1, 1, tzinfo=UTC),
        data={},
    )
    assert event_topic("billnotify", event) == (
        "billnotify/events/acme/invoice/ACC%2F7/status_changed"
    )


def test_state_status_and_filters() -> None:
    assert state_topic("p", "acme", "billing_task", "12") == "p/state/acme/billing_task/12"
    assert status_topic("p") == "p/status"
    assert events_filter("p") == "p/events/#"
    assert state_filter("p") == "p/state/#"
