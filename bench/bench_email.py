"""Email throughput: :class:`EmailExecutor` against a raw aiosmtplib send loop.

Both sides send multipart/alternative (text + HTML) messages to the same aiosmtpd server
over the same number of kept-open connections (the executor's pool size), one message
per connection at a time. The raw side builds its message directly with the stdlib;
the executor renders subject, text and HTML from templates, renders and validates the
addresses, derives the Message-ID and drives MAIL/RCPT/DATA itself. Rounds alternate;
the best round of each is reported.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from bench import BenchResult
from billnotify.actions.email import EmailExecutor
from billnotify.config.models import EmailAction, Rule, SmtpConfig
from billnotify.events import CloudEvent
from billnotify.store.base import Outcome
from billnotify.templating import TemplateRenderer

EMAILS = 600
CONNECTIONS = 4
ROUNDS = 3
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
RULE = Rule.model_validate(
    {
        "name": "bench",
        "on": ["*"],
        "actions": [{"type": "email", "to": ["a@x.org"], "template": "t"}],
    }
)
EVENT = CloudEvent(
    id="evt_bench",
    source="billnotify://acme",
    type="billing_task.status_changed",
    subject="billing_tasks/1234",
    time="2026-11-21T10:15:02Z",
    data={
        "object": {
            "id": "1234",
            "billingTaskType": "Generate Invoice",
            "status": "Failed",
            "customerID": "77",
            "retryCount": "2",
            "startedTime": "2026-11-21 10:01:00",
            "endedTime": "2026-11-21 10:15:00",
            "activityLog": "Step 3 failed",
            "contact": "Ann Ops <ann@example.com>",
        },
        "previous": {"status": "Running"},
        "changed": ["status", "endedTime"],
    },
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Sink:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.count += 1
        return "250 OK"


async def _timed(count: int, workers: int, send: Callable[[int], Awaitable[None]]) -> float:
    queue = iter(range(count))

    async def worker(index: int) -> None:
        for n in queue:
            await send(n)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(workers)))
    return count / (time.perf_counter() - started)


async def _executor_rate(executor: EmailExecutor, action: EmailAction) -> float:
    async def send(n: int) -> None:
        result = await executor.execute(action, EVENT, RULE, delivery_id=f"dlv_{n}", attempt=1)
        if result.outcome is not Outcome.SUCCESS:
            raise RuntimeError(f"email failed: {result.error}")

    return await _timed(EMAILS, CONNECTIONS, send)


async def _raw_rate(port: int, text: str, html: str) -> float:
    clients = [
        aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        for _ in range(CONNECTIONS)
    ]
    for client in clients:
        await client.connect()
    free: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
    for client in clients:
        free.put_nowait(client)

    async def send(n: int) -> None:
        message = EmailMessage()
        message["From"] = "Billing <billing@example.com>"
        message["To"] = "ops@example.com, Ann Ops <ann@example.com>"
        message["Subject"] = "[acme] Billing task 1234 failed: Generate Invoice"
        message["Message-ID"] = f"<dlv_{n}@example.com>"
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        client = await free.get()
        try:
            await client.send_message(message)
        finally:
            free.put_nowait(client)

    try:
        return await _timed(EMAILS, CONNECTIONS, send)
    finally:
        for client in clients:
            await client.quit()


async def run() -> list[BenchResult]:
    """Measure emails/s of the executor and of a raw aiosmtplib loop."""
    sink = _Sink()
    port = _free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, ready_timeout=5.0)
    controller.start()
    smtp = SmtpConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "from": "Billing <billing@example.com>",
            "timeout": "10s",
        }
    )
    executor = EmailExecutor(smtp, TemplateRenderer(TEMPLATES), pool_size=CONNECTIONS)
    action = EmailAction(
        type="email", to=["ops@example.com", "{{ object.contact }}"], template="task_failed"
    )
    composed = executor.compose(action, EVENT, RULE)
    text, html = composed.text, composed.html or ""
    best = {"raw": 0.0, "executor": 0.0}
    try:
        await _raw_rate(port, text, html)  # warm up
        await _executor_rate(executor, action)
        for _ in range(ROUNDS):
            best["raw"] = max(best["raw"], await _raw_rate(port, text, html))
            best["executor"] = max(best["executor"], await _executor_rate(executor, action))
    finally:
        await executor.close()
        controller.stop()
    notes = (
        f"{EMAILS} text+HTML emails, {CONNECTIONS} kept-open connections, best of {ROUNDS}, "
        "local aiosmtpd (task_failed templates)"
    )
    return [BenchResult.versus("email.send", best["executor"], "emails/s", best["raw"], notes)]
