"""Email attachments fetched from the simulated platforms: invoice PDFs, billing documents."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from billnotify.actions.email import EmailExecutor
from billnotify.clients import BillingPlatformClient, PropertyBillingClient
from billnotify.config.models import EmailAction, Rule, SmtpConfig
from billnotify.deliveries.base import Outcome
from billnotify.events import CloudEvent
from billnotify.simulator import Simulator
from billnotify.templating import TemplateRenderer
from servers import SmtpSink

RULE = Rule.model_validate(
    {
        "name": "send-docs",
        "on": ["*"],
        "actions": [{"type": "email", "to": ["a@x.org"], "template": "doc"}],
    }
)
PROPERTY = "2eff1042c50c1eda889e61573e3c194c"


@pytest.fixture
async def executor(tmp_path: Path, sink: SmtpSink, sim: Simulator) -> AsyncIterator[EmailExecutor]:
    (tmp_path / "doc.subject.j2").write_text("Documents for {{ event.subject }}")
    (tmp_path / "doc.txt.j2").write_text("Attached.\n")
    (tmp_path / "doc.html.j2").write_text("<p>Attached.</p>\n")
    billing = BillingPlatformClient(sim.billing_base_url, sim.api_key, max_attempts=1)
    prop = PropertyBillingClient(
        sim.property_base_url,
        sim.auth_url,
        sim.username,
        sim.password,
        sim.administrator_ids,
        max_attempts=1,
    )
    smtp = SmtpConfig.model_validate(
        {"host": "127.0.0.1", "port": sink.port, "from": "billing@example.com"}
    )
    executor = EmailExecutor(
        smtp,
        TemplateRenderer(tmp_path),
        billing_clients={"acme": billing},
        property_clients={"metering": prop},
    )
    yield executor
    await executor.close()
    await billing.close()
    await prop.close()


def action(attach: str) -> EmailAction:
    return EmailAction.model_validate(
        {"type": "email", "to": ["customer@example.com"], "template": "doc", "attach": [attach]}
    )


def event(source: str, type_: str, subject: str, data: dict[str, Any]) -> CloudEvent:
    return CloudEvent(
        id="evt_1",
        source=f"billnotify://{source}",
        type=type_,
        subject=subject,
        time="2026-11-21T10:15:02Z",
        data=data,
    )


async def run(executor: EmailExecutor, act: EmailAction, ev: CloudEvent) -> Any:
    return await executor.execute(act, ev, RULE, delivery_id="dlv_att", attempt=1)


async def test_the_invoice_pdf_is_attached(
    executor: EmailExecutor, sim: Simulator, sink: SmtpSink
) -> None:
    invoice = sim.state.add_invoice(invoiceAmount="100.00")
    ev = event("acme", "invoice.status_changed", f"invoices/{invoice['id']}", {"object": invoice})
    result = await run(executor, action("invoice_pdf"), ev)

    assert result.outcome is Outcome.SUCCESS, result.error
    message = sink.messages[0].message
    assert message.get_content_type() == "multipart/mixed"
    body = message.get_body(("html", "plain"))
    assert body is not None and body.get_content_type() == "text/html"
    [pdf] = list(message.iter_attachments())
    expected_name = "invoice-" + str(invoice["invoiceNumber"]).replace("/", "-") + ".pdf"
    assert pdf.get_filename() == expected_name
    assert pdf.get_content_type() == "application/pdf"
    assert pdf.get_content().startswith(b"%PDF-")


async def test_billing_documents_are_attached(
    executor: EmailExecutor, sim: Simulator, sink: SmtpSink
) -> None:
    header = sim.state.add_billing_header(PROPERTY)
    ev = event(
        "metering",
        "billing_header.published",
        f"billing_headers/{header['id']}",
        {"object": header},
    )
    result = await run(executor, action("billing_documents"), ev)

    assert result.outcome is Outcome.SUCCESS, result.error
    names = [part.get_filename() for part in sink.messages[0].message.iter_attachments()]
    assert len(names) == 3
    assert all(name and name.startswith("BE") and name.endswith(".pdf") for name in names)
    assert sorted(n.removesuffix(".pdf") for n in names if n) == sorted(sim.state.documents)


async def test_documents_named_in_the_event_are_used_as_they_are(
    executor: EmailExecutor, sim: Simulator, sink: SmtpSink
) -> None:
    header = sim.state.add_billing_header(PROPERTY)
    [first, *_] = sorted(sim.state.documents)
    data = {"object": header, "billing": {"documents": [{"documentId": first}]}}
    ev = event("metering", "billing_header.updated", f"billing_headers/{header['id']}", data)
    result = await run(executor, action("billing_documents"), ev)

    assert result.outcome is Outcome.SUCCESS, result.error
    assert [p.get_filename() for p in sink.messages[0].message.iter_attachments()] == [
        f"{first}.pdf"
    ]


async def test_an_invoice_pdf_needs_an_invoice_event(
    executor: EmailExecutor, sink: SmtpSink
) -> None:
    ev = event("acme", "billing_task.status_changed", "billing_tasks/1", {"object": {"id": "1"}})
    result = await run(executor, action("invoice_pdf"), ev)
    assert result.outcome is Outcome.PERMANENT
    assert "needs an invoice event" in (result.error or "")
    assert sink.messages == []


async def test_an_unsent_invoice_has_no_pdf(
    executor: EmailExecutor, sim: Simulator, sink: SmtpSink
) -> None:
    invoice = sim.state.add_invoice(status=["Unsent"])
    ev = event("acme", "invoice.updated", f"invoices/{invoice['id']}", {"object": invoice})
    result = await run(executor, action("invoice_pdf"), ev)
    assert result.outcome is Outcome.PERMANENT
    assert result.status_code == 404
    assert sink.messages == []


async def test_a_failing_download_is_retryable_and_sends_nothing(
    executor: EmailExecutor, sim: Simulator, sink: SmtpSink
) -> None:
    invoice = sim.state.add_invoice()
    sim.faults.add("/backend/api/v1/invoices", kind="503", count=1)
    ev = event("acme", "invoice.status_changed", f"invoices/{invoice['id']}", {"object": invoice})
    result = await run(executor, action("invoice_pdf"), ev)
    assert result.outcome is Outcome.RETRYABLE
    assert result.status_code == 503
    assert sink.messages == []
    # and the next attempt goes through
    assert (await run(executor, action("invoice_pdf"), ev)).outcome is Outcome.SUCCESS
    assert len(sink.messages) == 1


async def test_an_unknown_source(executor: EmailExecutor, sink: SmtpSink) -> None:
    ev = event("elsewhere", "invoice.status_changed", "invoices/1", {"object": {"id": 1}})
    result = await run(executor, action("invoice_pdf"), ev)
    assert result.outcome is Outcome.PERMANENT
    assert "no billing_platform source 'elsewhere'" in (result.error or "")
