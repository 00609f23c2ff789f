"""The values the store trades in: snapshots, logged events, deliveries and attempts.

Plain frozen dataclasses and tuples, shared by every backend (``store/base.py`` holds the
protocols that trade in them).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from billnotify.deliveries.base import DeliveryStatus, Outcome
from billnotify.errors import FencedError
from billnotify.hashing import digest

if TYPE_CHECKING:  # the store's child process reads no event: no pydantic there
    from billnotify.events import CloudEvent


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The last-seen state of one record."""

    source: str
    entity: str
    id: str
    record: dict[str, Any]
    marks: frozenset[str] = frozenset()
    due_at: datetime | None = None
    version: int = 1


def parsed_event(text: str | bytes) -> CloudEvent:
    """The event a log entry's JSON holds. The event model is imported on first use, not
    with the store: the store's child process, which never parses an event, stays
    without pydantic (some 10 MiB)."""
    from billnotify.events import CloudEvent

    return CloudEvent.from_json(text)


def marks_text(marks: frozenset[str]) -> str:
    """A snapshot's marks as the stores keep them: a sorted JSON array (most have none,
    and ``[]`` costs nothing where encoding it cost 2 µs a written record)."""
    return json.dumps(sorted(marks)) if marks else "[]"


def marks_of(text: str) -> frozenset[str]:
    """The marks :func:`marks_text` wrote."""
    return frozenset(json.loads(text)) if text != "[]" else frozenset()


@dataclass(frozen=True, slots=True)
class SnapshotWrite:
    """A snapshot to store (the version is the store's business)."""

    entity: str
    id: str
    record: dict[str, Any]
    marks: frozenset[str] = frozenset()
    due_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event and its position (``seq``, increasing) in the log."""

    seq: int
    event: CloudEvent


class LogEntry(NamedTuple):
    """An event as logged, not parsed (:meth:`~billnotify.store.base.EventLog.read_log`)."""

    seq: int
    id: str
    type: str
    source: str
    """The source's name (``acme``)."""
    subject: str
    """``billing_tasks/1234``: the event's ``subject``."""
    json: str


def delivery_id(rule: str, action_index: int, event_id: str) -> str:
    """The stable id of (rule, action, event): also the webhook's ``webhook-id``."""
    return "dlv_" + digest(rule, str(action_index), event_id)[:32]


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A delivery to record before it is attempted."""

    rule: str
    action_index: int
    action_type: str
    event_id: str
    event_seq: int
    exactly_once: bool
    """Customer-facing: never sent twice (a crash mid-send makes it ``uncertain``)."""
    target: str = ""
    """A human hint of where it goes (webhook name, invoice id and action, recipients)."""
    status: DeliveryStatus = DeliveryStatus.PENDING
    next_attempt_at: datetime | None = None

    @property
    def id(self) -> str:
        """The delivery's stable id."""
        return delivery_id(self.rule, self.action_index, self.event_id)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of a delivery."""

    delivery_id: str
    number: int
    started_at: datetime
    finished_at: datetime | None = None
    outcome: Outcome | None = None
    status_code: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    """How one attempt ended, for :meth:`~billnotify.store.base.Ledger.finish_attempts`."""

    delivery_id: str
    number: int
    finished_at: datetime
    outcome: Outcome
    status: DeliveryStatus
    """The delivery's new status."""
    next_attempt_at: datetime | None = None
    status_code: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """A row of the delivery ledger."""

    id: str
    rule: str
    action_index: int
    action_type: str
    event_id: str
    event_seq: int
    exactly_once: bool
    target: str
    status: DeliveryStatus
    attempts: int
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    last_status_code: int | None = None
    note: str | None = None
    """An operator's or the reconciler's note (``resolve``, ``reconciled: delivered``)."""
    history: list[Attempt] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class OperatorAction:
    """Something an operator did by hand (console or CLI), kept for the record (SPEC §7.4).

    Attributes:
        at: when.
        who: ``console`` (a console session), ``cli:<os user>``.
        action: ``retry``, ``resolve_sent``, ``resolve_not_sent``, ``enable_endpoint``
            or ``replay``.
        subject: what it was done to: a delivery id, an endpoint name or an event id.
        reason: the operator's words.
        result: what it did (``uncertain -> succeeded``), or why it did nothing.
    """

    at: datetime
    who: str
    action: str
    subject: str
    reason: str = ""
    result: str = ""


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A console login kept in the store, so that it outlives a restart and every
    process on the store accepts it (SPEC §7.4, §7.1).

    Attributes:
        key: the SHA-256 (hex) of the session id; the id itself is only in the
            browser's cookie, so reading the store opens no session.
        who: how its actions are recorded (``console:NAME``).
        mark: binds it to the console token it was opened under (an HMAC of the
            session id keyed by the token; empty without a token): changing the token
            ends it.
        created_at: when it was opened.
        seen_at: its latest request (the idle timeout counts from here).
        expires_at: when it ends however busy it is (the absolute timeout).
        flash: what its last action did, shown once on its next page.
    """

    key: str
    who: str
    mark: str
    created_at: datetime
    seen_at: datetime
    expires_at: datetime
    flash: str = ""


DELIVERY_COLS = (
    "id, rule, action_index, action_type, event_id, event_seq, exactly_once, target, "
    "status, attempts, created_at, updated_at, next_attempt_at, last_error, "
    "last_status_code, note"
)
"""The columns of the ``deliveries`` table :func:`delivery_from_row` reads, in its order."""


def _as_stored(value: Any) -> Any:
    return value


def delivery_from_row(
    row: Sequence[Any],
    history: list[Attempt] | None = None,
    time: Callable[[Any], datetime | None] = _as_stored,
) -> Delivery:
    """A :class:`Delivery` from a row of :data:`DELIVERY_COLS`; ``time`` reads a
    database's timestamp (SQLite keeps seconds)."""
    return Delivery(
        id=row[0],
        rule=row[1],
        action_index=int(row[2]),
        action_type=row[3],
        event_id=row[4],
        event_seq=int(row[5]),
        exactly_once=bool(row[6]),
        target=row[7],
        status=DeliveryStatus(row[8]),
        attempts=int(row[9]),
        created_at=time(row[10]) or datetime.now(UTC),
        updated_at=time(row[11]) or datetime.now(UTC),
        next_attempt_at=time(row[12]),
        last_error=row[13],
        last_status_code=row[14],
        note=row[15],
        history=history or [],
    )


class DueDelivery(NamedTuple):
    """A due delivery as the worker reads it, with its event (:meth:`~billnotify.store.base.Ledger.read_due`).

    A plain tuple of strings and numbers: the worker holds many ahead of need, and the
    garbage collector need not track them.
    """

    id: str
    rule: str
    action_index: int
    action_type: str
    event_id: str
    exactly_once: bool
    target: str
    event: str | None
    """The event's JSON as logged (None: it is no longer in the log)."""


@dataclass(frozen=True, slots=True)
class DueBatch:
    """What the delivery worker reads in one trip (:meth:`~billnotify.store.base.Ledger.read_due`).

    Attributes:
        deliveries: due deliveries, oldest first.
        disabled: disabled webhook endpoint name -> reason.
    """

    deliveries: list[DueDelivery]
    disabled: dict[str, str]


@dataclass(frozen=True, slots=True)
class Lease:
    """A role held by one live process (SPEC §7.1): polling a source's resource
    (``poll:acme/billing_tasks``), publishing to MQTT (``publish``), planning deliveries
    (``rules``), reconciling (``reconcile``).

    Attributes:
        name: the role.
        holder: the instance that holds it.
        epoch: the fencing token: grows by one each time the lease changes hands, never
            on a renewal. A write made under a lease names its epoch, and the store
            refuses it once another holder has taken the lease (a paused ex-holder
            cannot write stale state).
        expires_at: when the lease lapses unless renewed.
    """

    name: str
    holder: str
    epoch: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Instance:
    """One running ``billnotify run`` process, as its heartbeats show it.

    Attributes:
        name: ``[service] instance`` (default hostname-pid).
        started_at: its first heartbeat.
        heartbeat_at: its latest heartbeat; it is dead once this is older than the
            lease TTL.
        info: what it says of itself (``http``, ``pid``, ``host``, ``version``).
    """

    name: str
    started_at: datetime
    heartbeat_at: datetime
    info: dict[str, str] = field(default_factory=dict)


def default_instance() -> str:
    """This process's name among several sharing a store: ``hostname-pid``."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class ChainMove:
    """A chained delivery's next status (:meth:`~billnotify.store.base.Chains.move_chained`).

    Attributes:
        id: the delivery.
        expect: it moves only while its status is one of these (a move computed from
            an older read never overrides what happened since).
        status: the new status; ``pending`` makes it due at once.
        note: why (``after link: uncertain``).
    """

    id: str
    expect: tuple[DeliveryStatus, ...]
    status: DeliveryStatus
    note: str


DUE_STATUSES = frozenset({DeliveryStatus.PENDING, DeliveryStatus.RETRY_SCHEDULED})
"""The statuses of a delivery waiting for its next attempt: a change to one of them may
make work due (:attr:`~billnotify.store.base.Ledger.due_changed`)."""

RELEASED = datetime(1970, 1, 1, tzinfo=UTC)
"""The ``expires_at`` of a released lease: lapsed whenever it is looked at."""

INTERRUPTED = "interrupted: the process stopped while this attempt was in flight"
"""The error of an attempt (and its delivery) that :meth:`~billnotify.store.base.Ledger.recover_in_flight` ended."""


def fenced(fence: Lease) -> FencedError:
    """The error of a write refused because ``fence``'s lease changed hands."""
    return FencedError(
        f"lease {fence.name!r} is no longer held by {fence.holder!r} at epoch {fence.epoch} "
        "(another instance took it over): nothing was written"
    )


def recoverable(claimed_by: str | None, instance: str | None, live: Collection[str] | None) -> bool:
    """Whether a ``sending`` row started by ``claimed_by`` is recovered, as
    :meth:`~billnotify.store.base.Ledger.recover_in_flight` says."""
    if instance is None and live is None:
        return True
    if instance is not None and claimed_by == instance:
        return True
    return live is not None and (claimed_by is None or claimed_by not in live)
