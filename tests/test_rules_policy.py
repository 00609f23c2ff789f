"""rules.policy: an attempt's result -> the delivery's next status; pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from billnotify.deliveries.base import AttemptResult, DeliveryStatus, Outcome
from billnotify.deliveries.policy import DEFAULT_SCHEDULE, MAX_RETRY_AFTER, decide, retry_at

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
SCHEDULE = [timedelta(0), timedelta(seconds=5), timedelta(minutes=5)]


def _decide(result: AttemptResult, attempt: int = 1, exactly_once: bool = False):
    return decide(result, attempt=attempt, exactly_once=exactly_once, schedule=SCHEDULE, now=NOW)


def test_the_default_schedule_is_the_specs() -> None:
    assert [d.total_seconds() for d in DEFAULT_SCHEDULE] == [
        0,
        5,
        300,
        1800,
        7200,
        18000,
        36000,
        36000,
    ]


def test_retry_slots_follow_the_schedule_then_stop() -> None:
    assert retry_at(1, SCHEDULE, NOW) == NOW + timedelta(seconds=5)
    assert retry_at(2, SCHEDULE, NOW) == NOW + timedelta(minutes=5)
    assert retry_at(3, SCHEDULE, NOW) is None


def test_retry_after_wins_when_later_and_is_capped() -> None:
    assert retry_at(1, SCHEDULE, NOW, 60.0) == NOW + timedelta(seconds=60)
    assert retry_at(2, SCHEDULE, NOW, 60.0) == NOW + timedelta(minutes=5)
    assert retry_at(1, SCHEDULE, NOW, 10**9) == NOW + MAX_RETRY_AFTER


def test_outcomes_map_to_statuses() -> None:
    ok = _decide(AttemptResult(Outcome.SUCCESS, 200))
    assert ok.status is DeliveryStatus.SUCCEEDED and ok.error is None
    retry = _decide(AttemptResult(Outcome.RETRYABLE, 503, "HTTP 503", retry_after=30))
    assert retry.status is DeliveryStatus.RETRY_SCHEDULED
    assert retry.next_attempt_at == NOW + timedelta(seconds=30)
    dead = _decide(AttemptResult(Outcome.RETRYABLE, 503, "HTTP 503"), attempt=3)
    assert dead.status is DeliveryStatus.DEAD and "gave up after 3" in (dead.error or "")
    gone = _decide(AttemptResult(Outcome.PERMANENT, 410, "gone", disable_endpoint=True))
    assert gone.status is DeliveryStatus.DEAD and gone.disable_endpoint


def test_uncertain_waits_when_exactly_once_and_is_retried_otherwise() -> None:
    result = AttemptResult(Outcome.UNCERTAIN, None, "connection lost after sending")
    assert _decide(result, exactly_once=True).status is DeliveryStatus.UNCERTAIN
    assert _decide(result, exactly_once=False).status is DeliveryStatus.RETRY_SCHEDULED
