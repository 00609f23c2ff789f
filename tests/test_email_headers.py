"""EmailExecutor: header values parsed once and reused still give every message its own
recipients, rule and date, and a non-ASCII name stays encoded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from billnotify.actions.email import EmailExecutor
from billnotify.config.models import EmailAction, Rule, SmtpConfig
from billnotify.deliveries.base import Outcome
from billnotify.events import CloudEvent
from billnotify.templating import TemplateRenderer
from servers import SmtpSink


def _rule(name: str) -> Rule:
    return Rule.model_validate(
        {
            "name": name,
            "on": ["*"],
            "actions": [{"type": "email", "to": ["a@x.org"], "template": "t"}],
        }
    )


def _event(n: int, contact: str) -> CloudEvent:
    return CloudEvent(
        id=f"evt_{n}",
        source="billnotify://acme",
        type="billing_task.status_changed",
        subject=f"billing_tasks/{n}",
        time="2026-11-21T10:15:02Z",
        data={"object": {"id": str(n), "contact": contact}},
    )


async def test_each_message_keeps_its_own_headers_when_values_repeat(
    sink: SmtpSink, tmp_path: Path, closing: Any
) -> None:
    (tmp_path / "t.subject.j2").write_text("Task {{ object.id }}\n")
    (tmp_path / "t.txt.j2").write_text("Task {{ object.id }}\n")
    clock = iter([1_795_000_000.0, 1_795_000_000.4, 1_795_000_061.0, 1_795_000_062.0])
    smtp = SmtpConfig.model_validate(
        {"host": "127.0.0.1", "port": sink.port, "from": "Fakturering Åsa <billing@example.com>"}
    )
    executor: EmailExecutor = closing(
        EmailExecutor(smtp, TemplateRenderer(tmp_path), clock=lambda: next(clock))
    )
    action = EmailAction.model_validate(
        {"type": "email", "to": ["ops@example.com", "{{ object.contact }}"], "template": "t"}
    )
    sends = [
        (_event(1, "Ann <ann@example.com>"), _rule("first")),
        (_event(2, "Ann <ann@example.com>"), _rule("first")),
        (_event(3, "Bo <bo@example.com>"), _rule("second")),
        (_event(4, "Ann <ann@example.com>"), _rule("first")),
    ]
    for n, (event, rule) in enumerate(sends):
        result = await executor.execute(action, event, rule, delivery_id=f"dlv_{n}", attempt=1)
        assert result.outcome is Outcome.SUCCESS, result.error

    messages = [received.message for received in sink.messages]
    assert [m["To"] for m in messages] == [
        "ops@example.com, Ann <ann@example.com>",
        "ops@example.com, Ann <ann@example.com>",
        "ops@example.com, Bo <bo@example.com>",
        "ops@example.com, Ann <ann@example.com>",
    ]
    assert [m["X-Billnotify-Rule"] for m in messages] == ["first", "first", "second", "first"]
    assert [m["Subject"] for m in messages] == ["Task 1", "Task 2", "Task 3", "Task 4"]
    assert [m["Message-ID"] for m in messages] == [f"<dlv_{n}@example.com>" for n in range(4)]
    dates = [m["Date"] for m in messages]
    assert dates[0] == dates[1] != dates[2] != dates[3]
    assert all(str(m["From"]) == "Fakturering Åsa <billing@example.com>" for m in messages)
    assert all(b"=?utf-8?q?=C3=85sa?= <billing@" in received.data for received in sink.messages)
