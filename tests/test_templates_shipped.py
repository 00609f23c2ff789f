"""The shipped templates compile, render for every event shape, and stay well-formed."""

from __future__ import annotations

import json

import pytest

from billnotify.config.models import DEFAULT_TEMPLATES, Rule
from billnotify.config.types import EVENT_TYPES
from billnotify.digests import digest_event, flush_id, group_key, group_values
from billnotify.events import ENTITY_RESOURCE, CloudEvent
from billnotify.templating import TemplateRenderer, build_context

TEMPLATES = DEFAULT_TEMPLATES
EMAILS = [
    "task_failed",
    "task_stalled",
    "run_completed",
    "invoice_approved",
    "invoice_overdue",
    "task_failed_digest",
]
BODIES = ["slack", "teams"]
RULE = Rule.model_validate(
    {"name": "ops", "on": ["*"], "actions": [{"type": "mqtt", "topic": "t"}]}
)

RECORDS = {
    "billing_task": {
        "id": "1234",
        "billingTaskType": "Generate Invoice",
        "status": "Failed",
        "customerID": "77",
        "retryCount": "2",
        "startedTime": "2026-11-21 10:01:00",
        "endedTime": "2026-11-21 10:15:00",
        "activityLog": "Step 3 failed: <timeout> & retry",
    },
    "billing_run": {
        "id": "9",
        "name": "November <run>",
        "status": "Complete",
        "invoiceAmount": "12345.5",
        "invoiceDate": "2026-11-21",
        "dueDate": "2026-12-21",
        "completedDate": "2026-11-21 10:15:00",
    },
    "invoice": {
        "id": 55,
        "invoiceNumber": "ACC1/3",
        "total": "120.00",
        "invoiceAmount": 100,
        "invoiceVAT": "20",
        "outstanding": "120",
        "dueDate": "2026-11-01",
        "invoiceDate": "2026-10-01",
        "status": ["Approved"],
    },
    "billing_header": {
        "id": 385619,
        "propertyUUId": "2eff",
        "updateTimeStamp": "2023-07-03T22:00:26.16",
    },
}


def event(type_: str, record: dict[str, object] | None = None) -> CloudEvent:
    entity = type_.split(".")[0]
    obj = RECORDS[entity] if record is None else record
    return CloudEvent(
        id="evt_1",
        source="billnotify://acme",
        type=type_,
        subject=f"{ENTITY_RESOURCE[entity]}/{obj['id']}",
        time="2026-11-21T10:15:02Z",
        data={"object": obj, "previous": {"status": "Running"}, "changed": ["status"]},
    )


@pytest.fixture(scope="module")
def renderer() -> TemplateRenderer:
    return TemplateRenderer(TEMPLATES)


def test_the_folder_checks_clean(renderer: TemplateRenderer) -> None:
    assert renderer.check(email_templates=EMAILS, body_templates=BODIES) == []


@pytest.mark.parametrize(
    ("template", "type_"),
    [
        ("task_failed", "billing_task.status_changed"),
        ("task_stalled", "billing_task.stalled"),
        ("run_completed", "billing_run.completed"),
        ("invoice_approved", "invoice.status_changed"),
        ("invoice_overdue", "invoice.overdue"),
    ],
)
@pytest.mark.parametrize("minimal", [False, True], ids=["full", "id-only"])
def test_email_templates_render(
    renderer: TemplateRenderer, template: str, type_: str, minimal: bool
) -> None:
    entity = type_.split(".")[0]
    ev = event(type_, {"id": "1"} if minimal else None)
    context = build_context(ev, RULE)
    subject = renderer.render_file(f"{template}.subject.j2", context).strip()
    text = renderer.render_file(f"{template}.txt.j2", context)
    html = renderer.render_file(f"{template}.html.j2", context)
    assert subject and "\n" not in subject
    assert text.strip()
    assert html.lstrip().startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    if not minimal and template == "task_failed":
        assert "<timeout> & retry" in text
        assert "&lt;timeout&gt; &amp; retry" in html
    if not minimal and entity == "invoice":
        assert "ACC1/3" in subject and "120.00" in text


GROUPED = Rule.model_validate(
    {
        "name": "failed-tasks-digest",
        "on": ["billing_task.status_changed"],
        "group_by": ["source", "object.billingTaskType"],
        "actions": [{"type": "email", "to": ["ops@example.com"], "template": "task_failed_digest"}],
    }
)


def digest_of(count: int, record: dict[str, object] | None = None) -> CloudEvent:
    events = [
        event(
            "billing_task.status_changed",
            {**(RECORDS["billing_task"] if record is None else record), "id": str(10000 + n)},
        ).model_copy(update={"id": f"evt_{n}"})
        for n in range(count)
    ]
    key = group_key(group_values(GROUPED.group_by or [], events[0]))
    return digest_event(flush_id(GROUPED.name, key, events[0].id), key, events, rule=GROUPED.name)


@pytest.mark.parametrize("count", [1, 3, 300])
@pytest.mark.parametrize("minimal", [False, True], ids=["full", "id-only"])
def test_the_digest_email_lists_every_event_of_its_group(
    renderer: TemplateRenderer, count: int, minimal: bool
) -> None:
    context = build_context(digest_of(count, {"id": "1"} if minimal else None), GROUPED)
    assert context["count"] == count and len(context["events"]) == count
    subject = renderer.render_file("task_failed_digest.subject.j2", context).strip()
    text = renderer.render_file("task_failed_digest.txt.j2", context)
    html = renderer.render_file("task_failed_digest.html.j2", context)
    assert subject and "\n" not in subject
    plural = "" if count == 1 else "s"
    assert subject.startswith(f"[acme] {count} billing task{plural} failed")
    assert html.lstrip().startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert (
        text.count("- Task 1") == count
        and html.count('<td style="padding:6px 12px 6px 0;">1') == count
    )
    if not minimal:
        assert subject.endswith(": Generate Invoice")
        assert "billingTaskType: Generate Invoice" in text
        assert "customer 77" in text and "Generate Invoice" in html


def test_a_digest_body_is_group_count_and_events() -> None:
    from billnotify.digests import default_body

    body = json.loads(default_body(digest_of(2)))
    assert body["group"] == {"source": "acme", "object.billingTaskType": "Generate Invoice"}
    assert body["count"] == 2
    assert [e["data"]["object"]["id"] for e in body["events"]] == ["10000", "10001"]
    assert all(e["type"] == "billing_task.status_changed" for e in body["events"])


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("type_", EVENT_TYPES)
def test_chat_bodies_are_valid_json_for_every_event_type(
    renderer: TemplateRenderer, body: str, type_: str
) -> None:
    payload = json.loads(renderer.render_file(f"{body}.j2", build_context(event(type_), RULE)))
    title = payload["text"] if body == "slack" else payload["title"]
    assert title.startswith("[acme] ")


def test_slack_lists_changed_fields(renderer: TemplateRenderer) -> None:
    payload = json.loads(
        renderer.render_file("slack.j2", build_context(event("billing_task.status_changed"), RULE))
    )
    fields = payload["attachments"][0]["blocks"][1]["fields"]
    assert fields == [{"type": "mrkdwn", "text": "*status*\nRunning -> Failed"}]
    assert payload["attachments"][0]["color"] == "#D13438"


def test_the_templates_ship_once_inside_the_package() -> None:
    # one copy: the package's own folder (a real one, in the wheel), no second tree to drift
    assert DEFAULT_TEMPLATES.is_dir() and not DEFAULT_TEMPLATES.is_symlink()
    assert not (DEFAULT_TEMPLATES.parents[2] / "templates").exists()
    assert {p.name for p in DEFAULT_TEMPLATES.glob("*.subject.j2")} == {
        f"{name}.subject.j2" for name in EMAILS
    }
