"""Topic names (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime

from billnotify.events import CloudEvent, build_event
from billnotify.publish.topics import (
    event_topic,
    events_filter,
    logged_event_topic,
    state_filter,
    state_topic,
    status_topic,
    topic_level,
)
from billnotify.store.base import Store


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


async def test_an_event_logged_has_the_topic_of_the_event_parsed(backend: Store) -> None:
    """The publisher makes a logged event's topic of the columns logged beside it
    (``LogEntry``), never parsing it: the very topic of the event itself."""
    now = datetime(2026, 12, 3, tzinfo=UTC)
    events = [
        build_event(
            source=source,
            entity=entity,
            object_id=object_id,
            type_=f"{entity}.status_changed",
            key="k",
            time=now,
            data={},
        )
        for source, entity, object_id in [
            ("acme", "billing_task", "1234"),
            ("acme-2", "invoice", "INV/7+#%"),
            ("ünï", "billing_header", ""),
            ("acme", "billing_run", "a/b/c"),
        ]
    ]
    events.append(
        CloudEvent(
            id="evt_notice",
            source="billnotify://svc",
            type="billnotify.delivery.dead",
            subject="delivery/dlv_1",
            time="2026-12-03T00:00:00Z",
            data={},
        )
    )
    await backend.commit("acme", [], events)
    entries = await backend.read_log(0, 100)
    parsed = {s.event.id: s.event for s in await backend.read_events(0, 100)}
    assert len(entries) == len(events)
    for entry in entries:
        logged = logged_event_topic("p", entry.type, entry.source, entry.subject)
        assert logged == event_topic("p", parsed[entry.id])
