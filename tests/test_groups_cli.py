"""Grouped rules at the command line: ``render`` previews a digest of N sample events,
``check`` names what a grouped rule gets wrong by its TOML path."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from billnotify.cli.commands import render_report
from billnotify.components import build_actions
from billnotify.config import load_config
from billnotify.events import CloudEvent, build_event
from billnotify.store import SqliteStore
from processes import cli

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)

CONFIG = """
[service]
state = "state.db"
[mqtt]
enabled = false
[[sources]]
name = "acme"
kind = "billing_platform"
base_url = "http://127.0.0.1:1/backend/api/v1"
api_key = "k"
[smtp]
host = "127.0.0.1"
port = 1
from = "Billing <billing@example.com>"
[[webhooks]]
name = "ops"
url = "http://127.0.0.1:1/hook"
secret = "whsec_QUJDREVGR0hJSktMTU5PUA=="
allow_private = true
[[rules]]
name = "failed-tasks-digest"
on = ["billing_task.status_changed"]
when = "event.data.object.status in ['Failed', 'Error']"
group_by = ["source", "object.billingTaskType"]
group_wait = "30s"
group_interval = "5m"
[[rules.actions]]
type = "email"
to = ["ops@example.com"]
template = "task_failed_digest"
[[rules.actions]]
type = "webhook"
endpoint = "ops"
"""


def _task(task: str, status: str = "Failed", task_type: str = "Invoice run") -> CloudEvent:
    return build_event(
        source="acme",
        entity="billing_task",
        object_id=task,
        type_="billing_task.status_changed",
        key=f"{task}-{status}",
        time=NOW,
        data={
            "object": {"id": task, "status": status, "billingTaskType": task_type},
            "previous": {"status": "Running"},
            "changed": ["status"],
        },
    )


def _config(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


async def test_render_sample_previews_a_digest_of_the_newest_matching_events(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    code, _, err = await cli("render", "failed-tasks-digest", "--sample", "3", "-c", str(config))
    assert code == 1 and "--event FILE" in err  # an empty log: nothing to sample
    events = [
        _task("1"),
        _task("4"),
        _task("5"),
        _task("2", task_type="CDR import"),
        _task("3", status="Completed"),  # the rule's `when` refuses it
        _task("6"),
    ]
    async with SqliteStore(tmp_path / "state.db") as store:
        await store.commit("acme", [], events)
    code, out, err = await cli("render", "failed-tasks-digest", "--sample", "3", "-c", str(config))
    assert code == 0, err
    email, hook = json.loads(out)
    assert email["summary"]["subject"] == "[acme] 2 billing tasks failed: Invoice run"
    assert "- Task 5 (Invoice run)" in email["summary"]["text"]
    # the newest 3 are 5, 2 and 6, and 2 is of another group
    assert "Task 4" not in email["summary"]["text"]
    body = json.loads(hook["summary"]["body"])
    assert body["count"] == 2 and [e["data"]["object"]["id"] for e in body["events"]] == [
        "5",
        "6",
    ]
    assert body["group"] == {"source": "acme", "object.billingTaskType": "Invoice run"}
    assert 'a digest of 2 events, group {"object.billingTaskType": "Invoice run"' in err


async def test_render_event_sample_repeats_one_event(tmp_path: Path) -> None:
    config = _config(tmp_path)
    event_file = tmp_path / "event.json"
    event_file.write_text(_task("7").to_json())
    args = ("render", "failed-tasks-digest", "--event", str(event_file), "-c", str(config))
    code, out, err = await cli(*args, "--sample", "4")
    assert code == 0, err
    email, _ = json.loads(out)
    assert email["summary"]["subject"] == "[acme] 4 billing tasks failed: Invoice run"
    code, out, err = await cli(*args)
    assert code == 0, err
    assert json.loads(out)[0]["summary"]["subject"] == "[acme] 1 billing task failed: Invoice run"
    event_file.write_text(_task("8", status="Completed").to_json())
    code, _, err = await cli(*args)
    assert code == 3 and "collects none of the sample events" in err


async def test_check_names_what_a_grouped_rule_gets_wrong(tmp_path: Path) -> None:
    broken = (
        CONFIG.replace(
            'group_by = ["source", "object.billingTaskType"]',
            'group_by = ["source", "customer.id", "object..x", "source.name"]',
        )
        .replace('group_interval = "5m"', 'group_interval = "0s"')
        .replace('group_wait = "30s"', 'group_wait = "soon"')
    )
    broken += """
[[rules]]
name = "digest-and-act"
on = ["invoice.status_changed"]
group_by = []
[[rules.actions]]
type = "invoice_action"
action = "email"
[[rules.actions]]
type = "email"
to = ["ops@example.com"]
template = "invoice_approved"
attach = ["invoice_pdf"]
"""
    code, out, err = await cli("check", "-c", str(_config(tmp_path, broken)))
    assert code == 2, out + err
    text = out + err
    for expected in (
        "rules[0].group_by[1]",
        "'customer.id' must start with one of event, object, previous, source",
        "rules[0].group_by[2]",
        "rules[0].group_by[3]",
        "rules[0].group_wait",
        "rules[1].actions[0].type",
        "an invoice_action acts on one invoice",
        "rules[1].actions[1].attach",
    ):
        assert expected in text, (expected, text)


async def test_a_preview_of_one_event_renders_its_digest(tmp_path: Path) -> None:
    # what the console's rule preview calls: one chosen event, rendered as the digest of it
    config = load_config(_config(tmp_path))
    actions = build_actions(config)
    try:
        report = await render_report(
            config, actions.renderer, actions.executors, "failed-tasks-digest", _task("9")
        )
    finally:
        await actions.close()
    assert report.exit_code == 0, report.errors
    email, hook = report.rendered
    assert email.summary["subject"] == "[acme] 1 billing task failed: Invoice run"
    assert json.loads(hook.summary["body"])["count"] == 1


async def test_check_warns_of_templates_that_read_the_other_context(tmp_path: Path) -> None:
    mixed = CONFIG.replace('template = "task_failed_digest"', 'template = "task_failed"')
    mixed += """
[[rules]]
name = "one-by-one"
on = ["billing_task.status_changed"]
[[rules.actions]]
type = "email"
to = ["ops@example.com"]
template = "task_failed_digest"
"""
    code, out, err = await cli("check", "-c", str(_config(tmp_path, mixed)))
    assert code == 0, out + err  # warnings: the templates may guard what they read
    assert (
        "rules[0].actions[0]: its templates read object, empty in a digest of a grouped rule"
    ) in err
    assert "rules[1].actions[0]: its templates read count, events, group, which only" in err
    code, _, err = await cli("check", "-c", str(_config(tmp_path)))
    assert code == 0 and "digest" not in err, err


async def test_status_shows_open_groups_and_the_next_flush(tmp_path: Path) -> None:
    from billnotify.store.group_records import GroupMember

    config = _config(tmp_path)
    code, out, err = await cli("status", "-c", str(config))
    assert code == 0, err
    assert "groups: 0 open, 0 events waiting for their flush" in out
    flush_at = datetime(2026, 11, 21, 10, 0, 30, tzinfo=UTC)
    async with SqliteStore(tmp_path / "state.db") as store:
        await store.add_group_members(
            [
                GroupMember("failed-tasks-digest", "{}", "e1", 1, flush_at),
                GroupMember("failed-tasks-digest", "{}", "e2", 2, flush_at),
            ],
            NOW,
        )
    code, out, err = await cli("status", "-c", str(config))
    assert code == 0, err
    assert (
        "groups: 1 open, 2 events waiting for their flush; next flush 2026-11-21T10:00:30Z "
        "(due now)"
    ) in out
