"""Change detection is a pure function: every event type of SPEC §2."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from billnotify.sources.detect import Policy, detect

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def types(found) -> list[str]:
    return [d.type for d in found.drafts]


def test_new_record_is_created_and_baseline_is_silent() -> None:
    task = {"id": "1", "status": "Pending"}
    assert types(detect("billing_task", None, task, now=NOW)) == ["billing_task.created"]
    assert types(detect("billing_task", None, task, now=NOW, baseline=True)) == []
    header = {"id": 5, "updateTimeStamp": "2023-07-03T22:00:26.16"}
    assert types(detect("billing_header", None, header, now=NOW)) == ["billing_header.published"]


def test_status_change_with_previous_and_changed() -> None:
    before = {"id": "1", "status": "Running"}
    after = {"id": "1", "status": "Failed", "endedTime": "2026-11-21 11:59:00"}
    found = detect("billing_task", before, after, now=NOW)
    assert types(found) == ["billing_task.status_changed"]
    data = found.drafts[0].data
    assert data["previous"] == {"status": "Running"}
    assert data["changed"] == ["status", "endedTime"]
    assert data["object"] is after


def test_updated_only_for_fields_no_specific_event_covers() -> None:
    before = {"id": "1", "status": "Running", "retryCount": "0", "priority": "1"}
    retried = {"id": "1", "status": "Pending", "retryCount": "1", "priority": "1"}
    assert types(detect("billing_task", before, retried, now=NOW)) == [
        "billing_task.status_changed",
        "billing_task.retried",
    ]
    both = {**retried, "priority": "5"}
    assert types(detect("billing_task", before, both, now=NOW))[-1] == "billing_task.updated"


def test_number_spelling_is_not_a_change() -> None:
    before = {"id": "1", "retryCount": "2", "invoiceAmount": "12.50"}
    after = {"id": 1, "retryCount": 2, "invoiceAmount": 12.5}
    assert types(detect("billing_run", before, after, now=NOW)) == []


def test_billing_run_commenced_and_completed() -> None:
    pending = {"id": "7", "status": "Requested", "commencedDate": None, "completedDate": ""}
    running = {**pending, "status": "Running", "commencedDate": "2026-11-21 10:00:00"}
    done = {**running, "status": "Complete", "completedDate": "2026-11-21 11:00:00"}
    assert types(detect("billing_run", pending, running, now=NOW)) == [
        "billing_run.status_changed",
        "billing_run.commenced",
    ]
    assert types(detect("billing_run", running, done, now=NOW)) == [
        "billing_run.status_changed",
        "billing_run.completed",
    ]


def test_invoice_flags_added_removed_and_paid() -> None:
    before = {"id": "3", "status": ["Raised"], "outstanding": "120.00", "paidDate": None}
    approved = {**before, "status": ["Raised", "Approved"]}
    found = detect("invoice", before, approved, now=NOW)
    assert types(found) == ["invoice.status_changed"]
    assert found.drafts[0].data["added"] == ["Approved"]
    assert found.drafts[0].data["removed"] == []
    paid = {**approved, "outstanding": "0.00", "paidAmount": "120.00", "paidDate": "2026-11-21"}
    assert types(detect("invoice", approved, paid, now=NOW)) == ["invoice.paid"]
    partial = {**approved, "outstanding": "20.00"}
    assert types(detect("invoice", approved, partial, now=NOW)) == ["invoice.updated"]


def test_overdue_once_per_due_date() -> None:
    invoice = {"id": "3", "dueDate": "2026-11-10", "outstanding": "10.00"}
    first = detect("invoice", invoice, invoice, now=NOW)
    assert types(first) == ["invoice.overdue"]
    assert first.drafts[0].data["days_overdue"] == 11
    again = detect("invoice", invoice, invoice, now=NOW, marks=first.marks)
    assert types(again) == []
    moved = {**invoice, "dueDate": "2026-11-15"}
    assert "invoice.overdue" in types(detect("invoice", invoice, moved, now=NOW, marks=first.marks))


def test_overdue_due_at_is_the_day_after_the_due_date() -> None:
    invoice = {"id": "3", "dueDate": "2026-11-30", "outstanding": "10.00"}
    found = detect("invoice", None, invoice, now=NOW)
    assert found.due_at == datetime(2026, 12, 1, tzinfo=UTC)


def test_stalled_once_per_start_and_silent_at_baseline() -> None:
    policy = Policy(stall_after=timedelta(hours=2))
    task = {"id": "1", "status": "Running", "startedTime": "2026-11-21 08:00:00"}
    found = detect("billing_task", task, task, now=NOW, policy=policy)
    assert types(found) == ["billing_task.stalled"]
    assert types(detect("billing_task", task, task, now=NOW, marks=found.marks)) == []
    baseline = detect("billing_task", None, task, now=NOW, policy=policy, baseline=True)
    assert types(baseline) == [] and baseline.marks == found.marks
    restarted = {**task, "startedTime": "2026-11-21 11:00:00"}
    pending = detect("billing_task", task, restarted, now=NOW, marks=found.marks, policy=policy)
    assert pending.due_at == datetime(2026, 11, 21, 13, 0, tzinfo=UTC)


def test_the_same_change_has_the_same_key() -> None:
    before = {"id": "1", "status": "Running"}
    after = {"id": "1", "status": "Failed"}
    a = detect("billing_task", before, after, now=NOW)
    b = detect("billing_task", before, after, now=NOW + timedelta(hours=1))
    assert [d.key for d in a.drafts] == [d.key for d in b.drafts]


def test_unknown_status_and_odd_values_never_crash() -> None:
    before = {"id": "1", "status": {"weird": True}, "retryCount": "n/a", "startedTime": "soon"}
    after = {"id": "1", "status": "Quantum", "retryCount": None, "startedTime": None}
    assert types(detect("billing_task", before, after, now=NOW)) == [
        "billing_task.status_changed",
        "billing_task.updated",
    ]


LONDON = ZoneInfo("Europe/London")


def test_stalled_reads_zone_less_starts_in_the_source_zone_across_the_clock_change() -> None:
    policy = Policy(stall_after=timedelta(hours=2), zone=LONDON)
    # 00:30 GMT; British Summer Time starts at 01:00 UTC that night: two real hours later
    # is 02:30 UTC (03:30 on London clocks), not 02:30 on London clocks.
    task = {"id": "1", "status": "Running", "startedTime": "2026-03-29T00:30:00"}
    due = datetime(2026, 3, 29, 2, 30, tzinfo=UTC)
    early = detect("billing_task", task, task, now=due - timedelta(seconds=1), policy=policy)
    assert types(early) == [] and early.due_at == due
    found = detect("billing_task", task, task, now=due, policy=policy)
    assert types(found) == ["billing_task.stalled"]
    assert found.drafts[0].data["started"] == "2026-03-29T00:30:00Z"
    # Started in summer time: 09:00 in London is 08:00 UTC, so stalled at 10:00 UTC.
    summer = {"id": "2", "status": "Running", "startedTime": "2026-03-29 09:00:00"}
    on_time = datetime(2026, 3, 29, 10, 0, tzinfo=UTC)
    pending = detect(
        "billing_task", summer, summer, now=on_time - timedelta(seconds=1), policy=policy
    )
    assert pending.due_at == on_time
    stalled = detect("billing_task", summer, summer, now=on_time, policy=policy)
    assert types(stalled) == ["billing_task.stalled"]
    assert stalled.drafts[0].data["running_for_seconds"] == 7200


def test_overdue_when_the_due_day_ends_in_the_source_zone() -> None:
    policy = Policy(zone=LONDON)
    invoice = {"id": "3", "dueDate": "2026-06-30", "outstanding": "10.00"}
    midnight_bst = datetime(2026, 6, 30, 23, 0, tzinfo=UTC)
    pending = detect(
        "invoice", invoice, invoice, now=midnight_bst - timedelta(seconds=1), policy=policy
    )
    assert types(pending) == [] and pending.due_at == midnight_bst
    found = detect("invoice", invoice, invoice, now=midnight_bst, policy=policy)
    assert types(found) == ["invoice.overdue"]
    assert found.drafts[0].data["days_overdue"] == 1
