"""Email deliveries end to end against a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from billnotify.actions.attachments import document_ids
from billnotify.actions.email import EmailExecutor
from billnotify.actions.smtp import SmtpPool
from billnotify.config.models import EmailAction, Rule, SmtpConfig
from billnotify.deliveries.base import Outcome
from billnotify.events import CloudEvent
from billnotify.templating import TemplateRenderer
from servers import SmtpSink, free_port

RULE = Rule.model_validate(
    {
        "name": "mail-ops",
        "on": ["*"],
        "actions": [{"type": "email", "to": ["a@x.org"], "template": "t"}],
    }
)
EVENT = CloudEvent(
    id="evt_42",
    source="billnotify://acme",
    type="billing_task.status_changed",
    subject="billing_tasks/1234",
    time="2026-11-21T10:15:02Z",
    data={
        "object": {
            "id": "1234",
            "status": "Failed",
            "contact": "Ann Ops <ann@example.com>",
            "note": "<b>&</b>",
        },
        "previous": {"status": "Running"},
        "changed": ["status"],
    },
)


def write_templates(folder: Path, *, html: bool = True) -> Path:
    (folder / "t.subject.j2").write_text("Task {{ object.id }} {{ object.status }}\n")
    (folder / "t.txt.j2").write_text(
        "Task {{ object.id }} is {{ object.status }}: {{ object.note }}\n"
    )
    if html:
        (folder / "t.html.j2").write_text("<p>Task {{ object.id }}: {{ object.note }}</p>\n")
    return folder


def smtp_config(port: int, **overrides: Any) -> SmtpConfig:
    raw = {
        "host": "127.0.0.1",
        "port": port,
        "from": "Billing <billing@example.com>",
        "timeout": "2s",
    }
    return SmtpConfig.model_validate({**raw, **overrides})


def email_action(**overrides: Any) -> EmailAction:
    return EmailAction.model_validate(
        {"type": "email", "to": ["ops@example.com"], "template": "t", **overrides}
    )


@pytest.fixture
def make_executor(tmp_path: Path, closing: Any) -> Callable[..., EmailExecutor]:
    write_templates(tmp_path)

    def make(config: SmtpConfig | None, **kwargs: Any) -> EmailExecutor:
        return closing(
            EmailExecutor(
                config, TemplateRenderer(tmp_path), clock=lambda: 1_795_000_000.0, **kwargs
            )
        )

    return make


async def send(
    executor: EmailExecutor,
    action: EmailAction | None = None,
    *,
    delivery_id: str = "dlv_abc",
    event: CloudEvent = EVENT,
) -> Any:
    return await executor.execute(
        action or email_action(), event, RULE, delivery_id=delivery_id, attempt=1
    )


# -- content ------------------------------------------------------------------------------


async def test_a_multipart_email_reaches_the_server(sink: SmtpSink, make_executor: Any) -> None:
    action = email_action(
        to=["ops@example.com", "{{ object.contact }}"],
        cc=["Lead <lead@example.com>"],
        bcc=["audit@example.com"],
        reply_to="help@example.com",
    )
    result = await send(make_executor(smtp_config(sink.port)), action)

    assert result.outcome is Outcome.SUCCESS, result.error
    assert result.status_code == 250
    [received] = sink.messages
    assert received.mail_from == "billing@example.com"
    assert received.rcpt_tos == [
        "ops@example.com",
        "ann@example.com",
        "lead@example.com",
        "audit@example.com",
    ]
    message = received.message
    assert message["From"] == "Billing <billing@example.com>"
    assert message["To"] == "ops@example.com, Ann Ops <ann@example.com>"
    assert message["Cc"] == "Lead <lead@example.com>"
    assert message["Bcc"] is None
    assert message["Reply-To"] == "help@example.com"
    assert message["Subject"] == "Task 1234 Failed"
    assert message["Message-ID"] == "<dlv_abc@example.com>"
    assert message["X-Billnotify-Event"] == "evt_42"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content().rstrip() == "Task 1234 is Failed: <b>&</b>"
    assert html.get_content().rstrip() == "<p>Task 1234: &lt;b&gt;&amp;&lt;/b&gt;</p>"
    assert result.response["message_id"] == "<dlv_abc@example.com>"


async def test_text_only_without_an_html_template(sink: SmtpSink, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    folder = write_templates(tmp_path / "plain", html=False)
    executor = EmailExecutor(smtp_config(sink.port), TemplateRenderer(folder))
    try:
        result = await send(executor)
    finally:
        await executor.close()
    assert result.outcome is Outcome.SUCCESS
    assert sink.messages[0].message.get_content_type() == "text/plain"


async def test_the_message_id_is_the_same_on_every_attempt(
    sink: SmtpSink, make_executor: Any
) -> None:
    executor = make_executor(smtp_config(sink.port))
    await send(executor)
    await send(executor)
    first, second = (m.message["Message-ID"] for m in sink.messages)
    assert first == second == "<dlv_abc@example.com>"


async def test_the_connection_is_kept_and_reused(sink: SmtpSink, make_executor: Any) -> None:
    executor = make_executor(smtp_config(sink.port))
    for n in range(3):
        assert (await send(executor, delivery_id=f"dlv_{n}")).outcome is Outcome.SUCCESS
    assert len({m.peer for m in sink.messages}) == 1


async def test_a_dropped_connection_is_reopened(make_executor: Any) -> None:
    sink = SmtpSink().start()
    executor = make_executor(smtp_config(sink.port))
    try:
        assert (await send(executor, delivery_id="dlv_1")).outcome is Outcome.SUCCESS
        sink.stop()
        restarted = SmtpSink(port=sink.port).start()
        result = await send(executor, delivery_id="dlv_2")
        assert result.outcome is Outcome.SUCCESS, result.error
        assert len(restarted.messages) == 1
        restarted.stop()
    finally:
        sink.stop()


# -- validation: nothing unsafe is ever sent ----------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "record", "message"),
    [
        ({}, {"status": "Failed\nBcc: victim@example.com"}, "subject contains a line break"),
        # separators the email package refuses in a header: the same every time, so
        # permanent (a retry would fail again)
        ({}, {"status": "Failed\u2028Bcc: victim@example.com"}, "subject contains a line break"),
        ({}, {"status": "Failed\u2029again"}, "subject contains a line break"),
        ({}, {"status": "Failed\x85again"}, "subject contains a line break"),
        ({}, {"status": "Failed\x0bagain"}, "subject contains a line break"),
        (
            {"to": ["{{ object.contact }}"]},
            {"contact": "Ann\u2028Ops <ann@example.com>"},
            "to contains a line break",
        ),
        (
            {"to": ["{{ object.contact }}"]},
            {"contact": "a@example.com\r\nBcc: victim@example.com"},
            "to contains a line break",
        ),
        ({"to": ["not an address"]}, {}, "to: invalid email address"),
        ({"cc": ["a@"]}, {}, "cc: invalid email address"),
        ({"reply_to": "x@y.com, junk"}, {}, "reply_to: invalid email address"),
        ({"to": ["{{ object.empty }}"]}, {"empty": ""}, "no recipient"),
    ],
)
async def test_unsafe_or_invalid_headers_fail_permanently(
    sink: SmtpSink,
    make_executor: Any,
    overrides: dict[str, Any],
    record: dict[str, Any],
    message: str,
) -> None:
    event = EVENT.model_copy(
        update={"data": {**EVENT.data, "object": {**EVENT.data["object"], **record}}}
    )
    result = await send(
        make_executor(smtp_config(sink.port)), email_action(**overrides), event=event
    )
    assert result.outcome is Outcome.PERMANENT
    assert message in (result.error or "")
    assert sink.messages == []


async def test_a_template_error_names_the_template(
    sink: SmtpSink, make_executor: Any, tmp_path: Path
) -> None:
    (tmp_path / "t.txt.j2").write_text("line\n{{ object.missing }}\n")
    result = await send(make_executor(smtp_config(sink.port)))
    assert result.outcome is Outcome.PERMANENT
    assert (result.error or "").startswith("t.txt.j2, line 2: undefined")
    assert sink.messages == []


async def test_no_smtp_server_configured(make_executor: Any) -> None:
    result = await send(make_executor(None))
    assert result.outcome is Outcome.PERMANENT
    assert "no [smtp]" in (result.error or "")


# -- SMTP outcomes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        ("550 5.1.1 no such user", Outcome.PERMANENT),
        ("451 4.3.0 try again later", Outcome.RETRYABLE),
    ],
)
async def test_a_refused_recipient(
    sink: SmtpSink, make_executor: Any, reply: str, outcome: Outcome
) -> None:
    sink.handler.refuse["ops@example.com"] = reply
    result = await send(make_executor(smtp_config(sink.port)))
    assert result.outcome is outcome
    assert result.status_code == int(reply[:3])
    assert sink.messages == []


async def test_some_recipients_refused_is_a_success_that_says_so(
    sink: SmtpSink, make_executor: Any
) -> None:
    sink.handler.refuse["gone@example.com"] = "550 no such user"
    result = await send(
        make_executor(smtp_config(sink.port)),
        email_action(to=["ops@example.com", "gone@example.com"]),
    )
    assert result.outcome is Outcome.SUCCESS
    assert result.response["refused"] == {"gone@example.com": "550 no such user"}
    assert sink.messages[0].rcpt_tos == ["ops@example.com"]


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [("554 5.7.1 spam", Outcome.PERMANENT), ("452 4.3.1 full", Outcome.RETRYABLE)],
)
async def test_a_refused_message(
    sink: SmtpSink, make_executor: Any, reply: str, outcome: Outcome
) -> None:
    sink.handler.data_reply = reply
    executor = make_executor(smtp_config(sink.port))
    result = await send(executor)
    assert result.outcome is outcome
    assert result.status_code == int(reply[:3])
    # the connection was reset and stays usable
    sink.handler.data_reply = None
    assert (await send(executor)).outcome is Outcome.SUCCESS


async def test_no_server_is_retryable(make_executor: Any) -> None:
    result = await send(make_executor(smtp_config(free_port())))
    assert result.outcome is Outcome.RETRYABLE
    assert "cannot connect" in (result.error or "")


@pytest.mark.parametrize(
    ("at_least_once", "outcome"), [(False, Outcome.UNCERTAIN), (True, Outcome.RETRYABLE)]
)
async def test_no_reply_to_data_is_uncertain_for_customer_emails(
    sink: SmtpSink, make_executor: Any, at_least_once: bool, outcome: Outcome
) -> None:
    sink.handler.data_stall = 3.0
    executor = make_executor(smtp_config(sink.port, timeout="0.5s"))
    started = time.monotonic()
    result = await send(executor, email_action(at_least_once=at_least_once))
    assert result.outcome is outcome
    assert "no reply to DATA" in (result.error or "")
    assert time.monotonic() - started < 2.5
    assert len(sink.messages) == 1  # the server did take it: a retry would duplicate it


# -- render and flags ---------------------------------------------------------------------


async def test_render(make_executor: Any) -> None:
    executor = make_executor(smtp_config(25, username="u", password="pw-secret"))
    rendered = await executor.render(
        email_action(to=["{{ object.contact }}"], attach=["billing_documents"]), EVENT, RULE
    )
    assert rendered.action_type == "email"
    assert rendered.target == "Ann Ops <ann@example.com>"
    summary = rendered.summary
    assert summary["from"] == "Billing <billing@example.com>"
    assert summary["subject"] == "Task 1234 Failed"
    assert summary["text"].startswith("Task 1234 is Failed")
    assert summary["html"].startswith("<p>Task 1234")
    assert summary["attachments"] == ["(the documents of billing 1234)"]
    assert "pw-secret" not in json.dumps(summary)


def test_exactly_once_unless_flagged(make_executor: Any) -> None:
    executor = make_executor(None)
    assert executor.exactly_once(email_action()) is True
    assert executor.exactly_once(email_action(at_least_once=True)) is False
    assert (
        executor.target(email_action(to=["{{ object.contact }}"]), EVENT)
        == "Ann Ops <ann@example.com>"
    )


def test_document_ids_are_found_anywhere_but_in_previous() -> None:
    data = {
        "object": {
            "id": 1,
            "documents": [{"documentId": "BE00000001"}, {"x": ["BE00000002", "BE0000003"]}],
        },
        "billing": {"globalDocumentId": "BE00000001", "units": [{"documentId": "BE00000009"}]},
        "previous": {"documentId": "BE00000005"},
    }
    assert document_ids(data) == ["BE00000001", "BE00000002", "BE00000009"]


async def test_a_long_idle_connection_is_replaced_not_reused(sink: SmtpSink) -> None:
    now = [1000.0]
    pool = SmtpPool(smtp_config(sink.port), size=1, max_idle=60.0, clock=lambda: now[0])
    try:
        await pool.send("billing@example.com", ["a@example.com"], b"Subject: 1\r\n\r\none\r\n")
        now[0] += 30
        await pool.send("billing@example.com", ["a@example.com"], b"Subject: 2\r\n\r\ntwo\r\n")
        now[0] += 61
        await pool.send("billing@example.com", ["a@example.com"], b"Subject: 3\r\n\r\nthree\r\n")
    finally:
        await pool.close()
    first, second, third = (m.peer for m in sink.messages)
    assert first == second != third
