"""What happens to a delivery after an attempt: pure functions, no I/O (SPEC §4.1).

The executors classify each attempt (success, retryable, permanent, uncertain); this
module turns that classification into the delivery's next status:

- success -> ``succeeded``;
- retryable -> ``retry_scheduled`` at the next slot of the retry schedule, or later if
  the server asked (``Retry-After``, capped at :data:`MAX_RETRY_AFTER`); when the
  schedule is exhausted -> ``dead``;
- permanent -> ``dead`` (a webhook ``410`` also disables the endpoint);
- uncertain -> ``uncertain`` for exactly-once deliveries (an operator or the invoice
  reconciliation decides); at-least-once deliveries are retried instead, because a
  duplicate is acceptable there and a loss is not.

A schedule lists the delay before each attempt: ``["0s", "5s", "5m"]`` means the first
attempt at once, the second 5 s after the first failed, the third 5 min after that, and
no fourth.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from billnotify.config.models import Action, EmailAction, WebhookAction
from billnotify.config.types import DEFAULT_RETRY_SCHEDULE
from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.deliveries.settings import DeliverySettings

logger = logging.getLogger(__name__)

DEFAULT_SCHEDULE = DEFAULT_RETRY_SCHEDULE
"""Retry schedule of actions that have no configured one (all but webhooks and emails)."""

MAX_RETRY_AFTER = timedelta(days=1)
"""A ``Retry-After`` longer than this is treated as this (a broken server must not park
a delivery for a year)."""


class AttemptReport(Protocol):
    """What :func:`decide` reads of an ``actions.base.AttemptResult``."""

    @property
    def outcome(self) -> str:
        """An :class:`Outcome` value."""

    @property
    def status_code(self) -> int | None:
        """The HTTP status, when there was one."""

    @property
    def error(self) -> str | None:
        """What went wrong."""

    @property
    def retry_after(self) -> float | timedelta | None:
        """What the server asked for (``Retry-After``), seconds or a timedelta."""

    @property
    def disable_endpoint(self) -> bool:
        """The endpoint answered 410 Gone."""


@dataclass(frozen=True)
class Decision:
    """The delivery's new state after an attempt.

    Attributes:
        status: the new status.
        next_attempt_at: when to try again (``retry_scheduled`` only).
        error: the error to record (None on success).
        disable_endpoint: the webhook endpoint answered 410 Gone and must be disabled.
    """

    status: DeliveryStatus
    next_attempt_at: datetime | None = None
    error: str | None = None
    disable_endpoint: bool = False


def schedule_for(settings: DeliverySettings, action: Action) -> Sequence[timedelta]:
    """The retry schedule of an action: its endpoint's for webhooks, ``[smtp]``'s for
    emails, else the default."""
    if isinstance(action, WebhookAction):
        return settings.webhook_schedules.get(action.endpoint, DEFAULT_SCHEDULE)
    if isinstance(action, EmailAction) and settings.email_schedule is not None:
        return settings.email_schedule
    return DEFAULT_SCHEDULE


def as_timedelta(value: float | timedelta | None) -> timedelta | None:
    """A ``Retry-After`` as a timedelta (executors may give seconds or a timedelta)."""
    if value is None:
        return None
    delay = value if isinstance(value, timedelta) else timedelta(seconds=float(value))
    return max(timedelta(0), min(delay, MAX_RETRY_AFTER))


def retry_at(
    attempt: int,
    schedule: Sequence[timedelta],
    now: datetime,
    retry_after: float | timedelta | None = None,
) -> datetime | None:
    """When attempt ``attempt + 1`` is due, or None when the schedule is exhausted.

    Args:
        attempt: the number (1-based) of the attempt that just failed.
        schedule: delays before each attempt (``schedule[0]`` is the first's).
        now: when the attempt failed.
        retry_after: what the server asked for, if anything; the later of the two wins.
    """
    if attempt >= len(schedule):
        return None
    delay = schedule[max(attempt, 0)]
    asked = as_timedelta(retry_after)
    if asked is not None and asked > delay:
        delay = asked
    return now + delay


def decide(
    result: AttemptReport,
    *,
    attempt: int,
    exactly_once: bool,
    schedule: Sequence[timedelta],
    now: datetime,
) -> Decision:
    """Classify an attempt's result into the delivery's next state.

    Args:
        result: what the executor reported.
        attempt: the attempt's number (1-based, counting every attempt so far).
        exactly_once: whether the delivery must never be sent twice.
        schedule: the action's retry schedule.
        now: when the attempt ended.
    """
    outcome = Outcome(result.outcome)
    error = result.error
    if outcome is Outcome.SUCCESS:
        return Decision(DeliveryStatus.SUCCEEDED)
    if outcome is Outcome.PERMANENT:
        gone = bool(result.disable_endpoint)
        return Decision(DeliveryStatus.DEAD, error=error, disable_endpoint=gone)
    if outcome is Outcome.UNCERTAIN and exactly_once:
        return Decision(DeliveryStatus.UNCERTAIN, error=error)
    when = retry_at(attempt, schedule, now, result.retry_after)
    if when is None:
        note = f"gave up after {attempt} attempt(s)"
        return Decision(DeliveryStatus.DEAD, error=f"{error} ({note})" if error else note)
    return Decision(DeliveryStatus.RETRY_SCHEDULED, next_attempt_at=when, error=error)
