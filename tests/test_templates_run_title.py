"""The shipped run templates name a billing run once, whatever the platform called it."""

from __future__ import annotations

import pytest

from billnotify.config.models import DEFAULT_TEMPLATES, Rule
from billnotify.events import CloudEvent
from billnotify.templating import TemplateRenderer, build_context

RULE = Rule.model_validate(
    {"name": "ops", "on": ["*"], "actions": [{"type": "mqtt", "topic": "t"}]}
)


def completed(name: str | None) -> dict[str, str]:
    run = {"id": "9", "status": "Complete"} | ({"name": name} if name is not None else {})
    event = CloudEvent(
        id="evt_1",
        source="billnotify://acme",
        type="billing_run.completed",
        subject="billingRuns/9",
        time="2026-11-21T10:15:02Z",
        data={"object": run, "previous": {"status": "Running"}, "changed": ["status"]},
    )
    renderer = TemplateRenderer(DEFAULT_TEMPLATES)
    context = build_context(event, RULE)
    return {
        part: renderer.render_file(f"run_completed.{part}.j2", context)
        for part in ("subject", "txt", "html")
    }


@pytest.mark.parametrize(
    ("name", "title"),
    [
        ("Billing run 2026-11-21 #1", "Billing run 2026-11-21 #1 completed"),
        ("billing run nov", "billing run nov completed"),
        ("November", "Billing run November completed"),
        (None, "Billing run 9 completed"),
    ],
)
def test_the_run_is_named_once(name: str | None, title: str) -> None:
    parts = completed(name)
    assert parts["subject"].strip() == f"[acme] {title}"
    assert "Billing run Billing run" not in parts["txt"] + parts["html"]
    assert f"<title>{title}</title>" in parts["html"]
