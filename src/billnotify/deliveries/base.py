"""The values every stage shares about deliveries: where one stands and how an attempt ended.

A leaf module (no imports from the rest of the package), so the store, the actions and
the delivery worker can all speak of the same statuses and outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class DeliveryStatus(StrEnum):
    """Where a delivery stands. ``sending`` is written before the request goes out."""

    PENDING = "pending"
    SENDING = "sending"
    SUCCEEDED = "succeeded"
    RETRY_SCHEDULED = "retry_scheduled"
    DEAD = "dead"
    UNCERTAIN = "uncertain"
    DRY_RUN = "dry_run"
    MUTED = "muted"
    """Fell due inside a mute window of a rule with ``mute_action = "drop"``: not sent."""
    WAITING = "waiting"
    """A chained action (``after``) waiting for its predecessor to succeed."""
    SKIPPED = "skipped"
    """A chained action not run because its predecessor ended ``dead`` or ``uncertain``
    (the note says which); it runs if the predecessor later succeeds."""


class Outcome(StrEnum):
    """How one attempt ended, classified in one place (``actions/base.py::classify``)."""

    SUCCESS = "success"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"
    UNCERTAIN = "uncertain"


@dataclass(frozen=True)
class AttemptResult:
    """How one attempt of a delivery ended.

    Attributes:
        outcome: success, retryable, permanent or uncertain.
        status_code: the HTTP status or SMTP reply code, when there was one.
        error: a short, secret-free description of the failure.
        retry_after: seconds the receiver asked us to wait (``Retry-After``).
        disable_endpoint: the webhook endpoint answered ``410 Gone``.
        response: a small summary of what the receiver answered.
    """

    outcome: Outcome
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    disable_endpoint: bool = False
    response: dict[str, Any] | None = None
