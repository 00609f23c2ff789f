"""Change detection: (previous record, current record, now) -> events. Pure, no I/O.

One change can give several events: every specific event that applies, plus
``<entity>.updated`` only when fields changed that no specific event covers (SPEC §2).
Time-based events (``billing_task.stalled``, ``invoice.overdue``) fire at most once per
occurrence; the occurrences already seen are remembered as *marks* on the snapshot, and
``due_at`` says when the next time-based check for the record is worth doing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any

from billnotify.events import canonical_json
from billnotify.hashing import digest
from billnotify.values import as_date, as_datetime, as_decimal, as_int, flags, is_set, same

TERMINAL_TASK_STATUSES = frozenset({"Completed", "Error", "Failed", "Skipped"})

_STATUS_TIMESTAMPS = {"billing_task": ("startedTime", "endedTime")}
"""Lifecycle timestamps that move with a status change and are covered by it."""


@dataclass(frozen=True)
class Policy:
    """Per-source settings detection depends on."""

    stall_after: timedelta = timedelta(hours=2)
    zone: tzinfo = UTC
    """The platform's zone: zone-less timestamps and due dates are read in it."""


@dataclass(frozen=True)
class Draft:
    """An event before it has a source, subject and id."""

    type: str
    key: str
    """What makes this occurrence unique (feeds the deterministic event id)."""
    data: dict[str, Any]


@dataclass(frozen=True)
class Detection:
    """What detection found for one record."""

    drafts: list[Draft] = field(default_factory=list)
    marks: frozenset[str] = frozenset()
    """Time-based occurrences already emitted (or seen at the baseline)."""
    due_at: datetime | None = None
    """When a time-based event could next fire for this record, if ever."""


def detect(
    entity: str,
    previous: dict[str, Any] | None,
    current: dict[str, Any],
    *,
    now: datetime,
    marks: frozenset[str] = frozenset(),
    policy: Policy = Policy(),
    baseline: bool = False,
) -> Detection:
    """Return the events for a record going from ``previous`` to ``current``.

    Args:
        entity: ``billing_task``, ``billing_run``, ``invoice`` or ``billing_header``.
        previous: the last snapshot, or None for a record not seen before.
        current: the record as the API returned it now.
        now: the current time (aware).
        marks: time-based occurrences already emitted for this record.
        policy: the source's detection settings.
        baseline: first sync: record silently, and count conditions already true as seen.
    """
    drafts: list[Draft] = []
    if not baseline:
        if previous is None:
            created = "published" if entity == "billing_header" else "created"
            drafts.append(Draft(f"{entity}.{created}", created, {"object": current}))
        else:
            drafts.extend(_changes(entity, previous, current))
    timed, marks, due_at = _timed(entity, current, now=now, marks=marks, policy=policy)
    if not baseline:
        drafts.extend(timed)
    return Detection(drafts, marks, due_at)


def changed_fields(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Fields whose value differs, in the current record's order then removed ones."""
    keys = list(current) + [k for k in previous if k not in current]
    return [k for k in keys if not same(previous.get(k), current.get(k))]


def _changes(entity: str, previous: dict[str, Any], current: dict[str, Any]) -> list[Draft]:
    if previous == current:  # the overlap's re-reads: most records, compared at C speed
        return []
    changed = changed_fields(previous, current)
    if not changed:
        return []
    key = digest(canonical_json(previous), canonical_json(current))
    base = {
        "object": current,
        "previous": {k: previous[k] for k in changed if k in previous},
        "changed": changed,
    }
    specific: list[tuple[str, set[str], dict[str, Any]]] = []
    if entity == "billing_header":
        if "updateTimeStamp" in changed:
            return [Draft("billing_header.updated", key, base)]
        return []
    if "status" in changed:
        if entity == "invoice":
            old, new = flags(previous.get("status")), flags(current.get("status"))
            if old != new:
                extra = {"added": sorted(new - old), "removed": sorted(old - new)}
                specific.append(("status_changed", {"status"}, extra))
        else:
            specific.append(("status_changed", {"status", *_STATUS_TIMESTAMPS.get(entity, ())}, {}))
    if entity == "billing_task":
        before, after = as_int(previous.get("retryCount")), as_int(current.get("retryCount"))
        if after is not None and after > (before or 0):
            specific.append(("retried", {"retryCount"}, {}))
    elif entity == "billing_run":
        for name, field_name in (("commenced", "commencedDate"), ("completed", "completedDate")):
            if not is_set(previous.get(field_name)) and is_set(current.get(field_name)):
                specific.append((name, {field_name}, {}))
    elif entity == "invoice" and _became_paid(previous, current):
        specific.append(("paid", {"paidDate", "outstanding", "paidAmount"}, {}))
    covered: set[str] = set()
    drafts = []
    for action, fields, extra in specific:
        covered |= fields
        drafts.append(Draft(f"{entity}.{action}", key, {**base, **extra}))
    if any(k not in covered for k in changed):
        drafts.append(Draft(f"{entity}.updated", key, base))
    return drafts


def _became_paid(previous: dict[str, Any], current: dict[str, Any]) -> bool:
    if not is_set(previous.get("paidDate")) and is_set(current.get("paidDate")):
        return True
    before, after = as_decimal(previous.get("outstanding")), as_decimal(current.get("outstanding"))
    return before is not None and before > 0 and after is not None and after <= 0


def _timed(
    entity: str,
    record: dict[str, Any],
    *,
    now: datetime,
    marks: frozenset[str],
    policy: Policy,
) -> tuple[list[Draft], frozenset[str], datetime | None]:
    if entity == "billing_task":
        return _stalled(record, now=now, marks=marks, policy=policy)
    if entity == "invoice":
        return _overdue(record, now=now, marks=marks, zone=policy.zone)
    return [], marks, None


def _stalled(
    record: dict[str, Any], *, now: datetime, marks: frozenset[str], policy: Policy
) -> tuple[list[Draft], frozenset[str], datetime | None]:
    stall_after = policy.stall_after
    status = str(record.get("status") or "")
    if status != "Running" and (
        status in TERMINAL_TASK_STATUSES or is_set(record.get("endedTime"))
    ):
        return [], marks, None  # not running, whenever it started
    started = as_datetime(record.get("startedTime"), policy.zone)
    if started is None:
        return [], marks, None
    mark = f"stalled:{record.get('startedTime')}"
    if mark in marks:
        return [], marks, None
    due = started + stall_after
    if now < due:
        return [], marks, due
    data = {
        "object": record,
        "started": started.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "running_for_seconds": int((now - started).total_seconds()),
        "stall_after_seconds": int(stall_after.total_seconds()),
    }
    return [Draft("billing_task.stalled", mark, data)], marks | {mark}, None


def _overdue(
    record: dict[str, Any], *, now: datetime, marks: frozenset[str], zone: tzinfo
) -> tuple[list[Draft], frozenset[str], datetime | None]:
    due_date = as_date(record.get("dueDate"))
    outstanding = as_decimal(record.get("outstanding"))
    if (
        due_date is None
        or outstanding is None
        or outstanding <= 0
        or is_set(record.get("paidDate"))
    ):
        return [], marks, None
    mark = f"overdue:{due_date.isoformat()}"
    if mark in marks:
        return [], marks, None
    # The due day ends at midnight where the platform is, whatever the offset that night.
    due = datetime.combine(due_date + timedelta(days=1), time(), zone).astimezone(UTC)
    if now < due:
        return [], marks, due
    data = {"object": record, "days_overdue": (now.astimezone(zone).date() - due_date).days}
    return [Draft("invoice.overdue", mark, data)], marks | {mark}, None
