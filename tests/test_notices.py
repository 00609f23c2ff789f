"""The service's own failures as events (SPEC §7.6), piece by piece: the notices built
from settled deliveries, failing episodes, their topics, rule globs, and the store-backed
:class:`~billnotify.notices.Notices` (a real SQLite store) with its start-up sweep.

The service end to end (MQTT, rules, webhooks, a failing source, a SIGKILL) is in
``test_notices_service.py``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from billnotify.components import delivery_settings
from billnotify.config.loader import parse_config
from billnotify.config.models import Config
from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.deliveries.worker import DeliveryWorker
from billnotify.errors import ConfigError
from billnotify.events import CloudEvent, build_event
from billnotify.logs import Redactor, _JsonFormatter
from billnotify.notices import (
    DELIVERY_DEAD,
    DELIVERY_UNCERTAIN,
    ENDPOINT_DISABLED,
    SOURCE_FAILING,
    SOURCE_RECOVERED,
    FailureEpisode,
    Notices,
    delivery_notice,
    is_notice,
)
from billnotify.publish.topics import event_topic
from billnotify.store import SqliteStore
from billnotify.store.records import NewDelivery
from servers import Clock

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _config(on: list[str] | None = None, **service: Any) -> Config:
    raw: dict[str, Any] = {
        "service": {"name": "ops-bn", **service},
        "webhooks": [
            {"name": "ops", "url": "http://127.0.0.1:9/h", "secret": SECRET, "allow_private": True}
        ],
        "rules": [
            {
                "name": "alert",
                "on": on or ["billing_task.status_changed"],
                "actions": [{"type": "webhook", "endpoint": "ops"}],
            }
        ],
    }
    return parse_config(raw, base_dir=Path("."))


def _task_event(status: str = "Failed") -> CloudEvent:
    return build_event(
        source="acme",
        entity="billing_task",
        object_id="7",
        type_="billing_task.status_changed",
        key=status,
        time=T0,
        data={"object": {"id": "7", "status": status}, "previous": {"status": "Running"}},
    )


async def _settled(
    store: SqliteStore,
    event: CloudEvent,
    status: DeliveryStatus,
    *,
    rule: str = "alert",
    error: str = "HTTP 400 from ops",
) -> str:
    """Log ``event``, record a webhook delivery for it, attempt it once and settle it."""
    (stored,) = await store.commit("acme", [], [event]) or await store.get_events([event.id])
    new = NewDelivery(rule, 0, "webhook", event.id, stored.seq, exactly_once=False, target="ops")
    await store.record_deliveries([new], "rules", stored.seq, T0)
    number = (await store.start_attempts([new.id], T0))[new.id]
    await store.finish_attempt(
        new.id,
        number,
        now=T0,
        outcome=Outcome.PERMANENT,
        status=status,
        status_code=400,
        error=error,
    )
    return new.id


async def _notices_in_log(store: SqliteStore) -> list[CloudEvent]:
    return [s.event for s in await store.read_events(0) if is_notice(s.event.type)]


# -- pure parts --------------------------------------------------------------------------


def test_rules_may_route_the_notices_and_a_glob_matching_nothing_is_still_an_error() -> None:
    config = _config(["billnotify.delivery.*", "billnotify.source.failing"])
    rule = config.rules[0]
    assert rule.matches(DELIVERY_DEAD) and rule.matches(DELIVERY_UNCERTAIN)
    assert rule.matches(SOURCE_FAILING) and not rule.matches(SOURCE_RECOVERED)
    assert _config(["billnotify.*"]).rules[0].matches(ENDPOINT_DISABLED)
    with pytest.raises(ConfigError, match="matches no event type"):
        _config(["billnotify.delivery.lost"])


def test_a_notice_is_published_under_the_service_name_entity_and_id() -> None:
    episode = FailureEpisode("acme", "billing_tasks", after_polls=1)
    episode.failed("HTTP 503", T0)
    notice = episode.failing("ops-bn", T0)
    assert notice.source == "billnotify://ops-bn"
    assert notice.subject == "sources/acme"
    assert event_topic("p", notice) == "p/events/ops-bn/source/acme/failing"


def test_a_failing_episode_is_reported_once_after_n_polls_or_a_duration() -> None:
    by_count = FailureEpisode("acme", "invoices", after_polls=3, after=timedelta(hours=1))
    due = [by_count.failed("503", T0 + timedelta(seconds=s)) for s in range(5)]
    assert due == [False, False, True, True, True]  # due until it is reported
    by_count.reported = True
    assert not by_count.failed("503", T0 + timedelta(seconds=9))
    failing = by_count.failing("svc", T0 + timedelta(seconds=9))
    assert failing.data == {
        "source": "acme",
        "resource": "invoices",
        "since": "2026-11-21T10:00:00Z",
        "failures": 6,
        "error": "503",
    }
    assert by_count.succeeded()  # recovered is due
    recovered = by_count.recovered("svc", T0 + timedelta(seconds=30))
    assert recovered.data["down_seconds"] == 30.0
    assert recovered.subject == failing.subject and recovered.id != failing.id
    by_count.reset()
    assert not by_count.succeeded()  # a success without a reported failure: nothing

    by_time = FailureEpisode("acme", "invoices", after_polls=100, after=timedelta(minutes=5))
    assert not by_time.failed("503", T0)
    assert not by_time.failed("503", T0 + timedelta(minutes=4))
    assert by_time.failed("503", T0 + timedelta(minutes=5))

    # a new episode is a new event; the same episode seen again has the same id
    again = FailureEpisode("acme", "invoices", after_polls=1)
    again.failed("503", T0)
    assert again.failing("svc", T0 + timedelta(hours=1)).id == again.failing("svc", T0).id
    later = FailureEpisode("acme", "invoices", after_polls=1)
    later.failed("503", T0 + timedelta(seconds=1))
    assert later.failing("svc", T0).id != again.failing("svc", T0).id


# -- with a store ------------------------------------------------------------------------


async def test_a_dead_delivery_becomes_one_notice_logged_once(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config()
    event = _task_event()
    delivery_id = await _settled(store, event, DeliveryStatus.DEAD, error=f"bad {SECRET}")
    notices = Notices(
        config.service.name, config.rules, store, Clock(T0), redact=Redactor([SECRET])
    )

    with caplog.at_level(logging.WARNING, logger="billnotify.notices"):
        notices.delivery(delivery_id)
        notices.delivery(delivery_id)  # reported twice (a retry of the report): one event
        await notices.flush()

    (notice,) = await _notices_in_log(store)
    assert notice.type == DELIVERY_DEAD
    assert notice.source == "billnotify://ops-bn"
    assert notice.subject == f"deliveries/{delivery_id}"
    assert notice.data == {
        "delivery": delivery_id,
        "status": "dead",
        "rule": "alert",
        "action": "webhook",
        "action_index": 0,
        "target": "ops",
        "exactly_once": False,
        "endpoint": "ops",
        "event": {
            "id": event.id,
            "type": "billing_task.status_changed",
            "source": "acme",
            "subject": "billing_tasks/7",
        },
        "attempts": 1,
        "error": "bad **********",
        "status_code": 400,
    }
    assert SECRET not in notice.to_json()
    (record,) = [r for r in caplog.records if r.name == "billnotify.notices"]
    assert record.levelno == logging.ERROR
    line = json.loads(_JsonFormatter(Redactor([SECRET])).format(record))
    assert line["event_id"] == notice.id
    assert line["delivery_id"] == delivery_id
    assert line["rule"] == "alert"
    assert line["event_type"] == DELIVERY_DEAD
    assert line["endpoint"] == "ops"
    assert line["source"] == "acme"
    assert delivery_id in line["message"] and event.id in line["message"]


async def test_a_delivery_for_a_notice_is_logged_but_never_a_notice(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config(["billnotify.delivery.dead"])
    notices = Notices(config.service.name, config.rules, store, Clock(T0))
    first = await _settled(store, _task_event(), DeliveryStatus.DEAD)
    notices.delivery(first)
    await notices.flush()
    (notice,) = await _notices_in_log(store)

    # the rule routed that notice to a webhook, which died too: no second notice
    looped = await _settled(store, notice, DeliveryStatus.DEAD)
    with caplog.at_level(logging.WARNING, logger="billnotify.notices"):
        notices.delivery(looped)
        await notices.flush()
        assert await notices.sweep() == 0

    assert [n.id for n in await _notices_in_log(store)] == [notice.id]
    assert delivery_notice("svc", (await store.get_deliveries([looped]))[0], notice) is None
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "no loops" in record.getMessage() and looped in record.getMessage()


async def test_the_start_up_sweep_emits_what_a_crash_kept_from_being_told(
    store: SqliteStore,
) -> None:
    """A delivery committed dead and an endpoint disabled, then the process died before
    their notices were appended: the next start emits them, and only once."""
    config = _config()
    clock = Clock(T0 + timedelta(minutes=1))
    dead = await _settled(store, _task_event("Failed"), DeliveryStatus.DEAD)
    await store.disable_endpoint("ops", f"410 Gone on delivery {dead}", T0)
    old = await _settled(store, _task_event("Error"), DeliveryStatus.DEAD)
    # settled more than the sweep's look-back ago: not re-examined
    await store.set_delivery_status(old, DeliveryStatus.DEAD, now=T0 - timedelta(hours=2))

    notices = Notices(config.service.name, config.rules, store, clock)
    assert await notices.sweep() == 2
    assert await notices.sweep() == 0
    found = {n.type: n for n in await _notices_in_log(store)}
    assert set(found) == {DELIVERY_DEAD, ENDPOINT_DISABLED}
    assert found[DELIVERY_DEAD].data["delivery"] == dead
    assert found[ENDPOINT_DISABLED].subject == "endpoints/ops"
    assert found[ENDPOINT_DISABLED].data == {
        "endpoint": "ops",
        "reason": f"410 Gone on delivery {dead}",
        "delivery": dead,
    }
    assert event_topic("p", found[ENDPOINT_DISABLED]) == "p/events/ops-bn/endpoint/ops/disabled"

    # the same delivery retried by an operator and dead again: a new occurrence
    await store.set_delivery_status(dead, DeliveryStatus.PENDING, now=T0, next_attempt_at=T0)
    number = (await store.start_attempts([dead], T0))[dead]
    await store.finish_attempt(
        dead,
        number,
        now=clock(),
        outcome=Outcome.PERMANENT,
        status=DeliveryStatus.DEAD,
        error="HTTP 400",
    )
    assert await notices.sweep() == 1


async def test_recovery_at_start_up_makes_each_interrupted_customer_mail_a_notice(
    store: SqliteStore,
) -> None:
    """Exactly-once deliveries left ``sending`` by a killed process become uncertain at
    the next start, each with its ``billnotify.delivery.uncertain``."""
    config = _config()
    event = _task_event()
    (stored,) = await store.commit("acme", [], [event])
    new = NewDelivery(
        "alert", 0, "webhook", event.id, stored.seq, exactly_once=True, target="a@b.example"
    )
    await store.record_deliveries([new], "rules", stored.seq, T0)
    await store.start_attempts([new.id], T0)  # ... and the process was killed

    clock = Clock(T0 + timedelta(seconds=5))
    worker = DeliveryWorker(
        delivery_settings(config),
        store,
        {},
        clock,
        notices=Notices(config.service.name, config.rules, store, clock),
    )
    assert await worker.recover() == (1, 0)
    (notice,) = await _notices_in_log(store)
    assert notice.type == DELIVERY_UNCERTAIN
    assert notice.data["delivery"] == new.id
    assert notice.data["exactly_once"] is True
    assert notice.data["attempts"] == 1
    assert "interrupted" in notice.data["error"]
    assert notice.time == "2026-11-21T10:00:05Z"
    assert event_topic("p", notice) == f"p/events/ops-bn/delivery/{new.id}/uncertain"
