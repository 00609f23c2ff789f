"""An invoice PDF answered as ``application/pdf`` is attached even when its first bytes are
not ``%PDF-`` (a blank line or a BOM before the header is common), with a warning that
names the invoice; a body of another type, or an empty one, still fails and sends nothing.

The platform is a small aiohttp app on loopback serving ``GET invoices/ID`` the way a
real one might; the email goes to the aiosmtpd sink.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from billnotify.actions.email import EmailExecutor
from billnotify.clients import BillingPlatformClient
from billnotify.config.models import EmailAction, Rule, SmtpConfig
from billnotify.deliveries.base import Outcome
from billnotify.events import CloudEvent
from billnotify.templating import TemplateRenderer
from servers import SmtpSink, serving

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
# invoice id -> (content type, body) the platform answers
ANSWERS = {
    "5001": ("application/pdf", b"\r\n" + PDF),
    "5002": ("application/pdf; charset=binary", b"\xef\xbb\xbf" + PDF),
    "5003": ("text/html", b"<html>Please log in</html>"),
    "5004": ("application/pdf", b""),
    "5005": ("application/pdf", PDF),
}
RULE = Rule.model_validate(
    {
        "name": "send-invoice",
        "on": ["invoice.*"],
        "actions": [{"type": "email", "to": ["a@x.org"], "template": "doc"}],
    }
)
ACTION = EmailAction.model_validate(
    {"type": "email", "to": ["customer@example.com"], "template": "doc", "attach": ["invoice_pdf"]}
)


@contextlib.asynccontextmanager
async def platform() -> AsyncIterator[str]:
    async def invoice(request: web.Request) -> web.Response:
        ctype, body = ANSWERS[request.match_info["id"]]
        return web.Response(body=body, headers={"Content-Type": ctype})

    app = web.Application()
    app.router.add_get("/backend/api/v1/invoices/{id}", invoice)
    async with serving(app) as base:
        yield f"{base}/backend/api/v1"


@pytest.fixture
async def executor(tmp_path: Path, sink: SmtpSink) -> AsyncIterator[EmailExecutor]:
    (tmp_path / "doc.subject.j2").write_text("Invoice {{ object.invoiceNumber }}")
    (tmp_path / "doc.txt.j2").write_text("Attached.\n")
    (tmp_path / "doc.html.j2").write_text("<p>Attached.</p>\n")
    smtp = SmtpConfig.model_validate(
        {"host": "127.0.0.1", "port": sink.port, "from": "billing@example.com"}
    )
    async with platform() as base:
        client = BillingPlatformClient(base, "platform-key", max_attempts=1)
        executor = EmailExecutor(smtp, TemplateRenderer(tmp_path), billing_clients={"acme": client})
        yield executor
        await executor.close()
        await client.close()


def invoice_event(invoice_id: str) -> CloudEvent:
    invoice: dict[str, Any] = {"id": invoice_id, "invoiceNumber": f"ACC1001/{invoice_id}"}
    return CloudEvent(
        id=f"evt_{invoice_id}",
        source="billnotify://acme",
        type="invoice.status_changed",
        subject=f"invoices/{invoice_id}",
        time="2026-11-21T10:15:02Z",
        data={"object": invoice},
    )


async def send(executor: EmailExecutor, invoice_id: str) -> Any:
    return await executor.execute(
        ACTION, invoice_event(invoice_id), RULE, delivery_id=f"dlv_{invoice_id}", attempt=1
    )


@pytest.mark.parametrize("invoice_id", ["5001", "5002"])
async def test_a_pdf_typed_body_without_the_magic_is_attached_with_a_warning(
    executor: EmailExecutor, sink: SmtpSink, caplog: pytest.LogCaptureFixture, invoice_id: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="billnotify.clients"):
        result = await send(executor, invoice_id)

    assert result.outcome is Outcome.SUCCESS, result.error
    [pdf] = list(sink.messages[0].message.iter_attachments())
    assert pdf.get_filename() == f"invoice-ACC1001-{invoice_id}.pdf"
    assert pdf.get_content_type() == "application/pdf"
    assert pdf.get_content() == ANSWERS[invoice_id][1]  # as the platform sent it
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"invoice {invoice_id}" in warning.getMessage()
    assert "not %PDF-" in warning.getMessage()


async def test_a_pdf_with_the_magic_is_attached_without_a_warning(
    executor: EmailExecutor, sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="billnotify.clients"):
        result = await send(executor, "5005")
    assert result.outcome is Outcome.SUCCESS, result.error
    assert len(list(sink.messages[0].message.iter_attachments())) == 1
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize(
    ("invoice_id", "error"),
    [("5003", "expected a PDF, got text/html"), ("5004", "expected a PDF, got application/pdf")],
)
async def test_another_type_or_an_empty_body_fails_and_sends_nothing(
    executor: EmailExecutor, sink: SmtpSink, invoice_id: str, error: str
) -> None:
    result = await send(executor, invoice_id)
    assert result.outcome is not Outcome.SUCCESS
    assert error in (result.error or ""), result.error
    assert sink.messages == []
