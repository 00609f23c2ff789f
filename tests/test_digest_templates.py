"""The shipped digest templates say what the group's tasks ended as: ``failed``,
``errored`` or ``failed or errored`` (``task_failed_digest``), in the subject and the
HTML title, through the renderer and through ``billnotify render`` of a config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from billnotify.config.models import DEFAULT_TEMPLATES
from billnotify.digests import digest_event, flush_id, group_key, group_values
from billnotify.events import CloudEvent
from billnotify.store import SqliteStore
from billnotify.templating import TemplateRenderer, build_context
from processes import cli
from test_groups_cli import CONFIG, _task

GROUPED_BY = ["source", "object.billingTaskType"]


def _digest(statuses: list[str | None]) -> CloudEvent:
    events = []
    for n, status in enumerate(statuses):
        event = _task(str(n), status="Failed" if status is None else status)
        if status is None:  # a task record without a status
            obj = {k: v for k, v in event.data["object"].items() if k != "status"}
            event = event.model_copy(update={"data": {**event.data, "object": obj}})
        events.append(event)
    key = group_key(group_values(GROUPED_BY, events[0]))
    return digest_event(flush_id("digest", key, events[0].id), key, events, rule="digest")


@pytest.fixture(scope="module")
def renderer() -> TemplateRenderer:
    return TemplateRenderer(DEFAULT_TEMPLATES)


@pytest.mark.parametrize(
    ("statuses", "subject"),
    [
        (["Failed"], "[acme] 1 billing task failed: Invoice run"),
        (["Error", "Error"], "[acme] 2 billing tasks errored: Invoice run"),
        (["Error", "Failed", "Error"], "[acme] 3 billing tasks failed or errored: Invoice run"),
        ([None, "Failed"], "[acme] 2 billing tasks failed: Invoice run"),
        (["Cancelled", "Error"], "[acme] 2 billing tasks errored or ended Cancelled: Invoice run"),
    ],
)
def test_the_subject_and_title_say_what_the_tasks_ended_as(
    renderer: TemplateRenderer, statuses: list[str | None], subject: str
) -> None:
    from billnotify.config.models import Rule

    rule = Rule.model_validate(
        {
            "name": "digest",
            "on": ["billing_task.status_changed"],
            "group_by": GROUPED_BY,
            "actions": [
                {"type": "email", "to": ["o@example.com"], "template": "task_failed_digest"}
            ],
        }
    )
    context = build_context(_digest(statuses), rule)
    assert renderer.render_file("task_failed_digest.subject.j2", context).strip() == subject
    html = renderer.render_file("task_failed_digest.html.j2", context)
    title = subject.removeprefix("[acme] ").split(":")[0]
    assert f"<title>{title}</title>" in html


async def test_render_of_the_configured_rule_names_errored_tasks(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    async with SqliteStore(tmp_path / "state.db") as store:
        await store.commit("acme", [], [_task("1", "Error"), _task("2", "Error")])
    args = ("render", "failed-tasks-digest", "--sample", "2", "-c", str(config))
    code, out, err = await cli(*args)
    assert code == 0, err
    assert json.loads(out)[0]["summary"]["subject"] == "[acme] 2 billing tasks errored: Invoice run"
    async with SqliteStore(tmp_path / "state.db") as store:
        await store.commit("acme", [], [_task("3", "Failed")])
    code, out, err = await cli(*args[:3], "3", *args[4:])
    assert code == 0, err
    subject = json.loads(out)[0]["summary"]["subject"]
    assert subject == "[acme] 3 billing tasks failed or errored: Invoice run"
