"""Durable delivery throughput: the whole ledger path against raw client loops.

One round appends ``N`` events to a fresh :class:`SqliteStore` (in pages of
``EVENTS_PER_COMMIT``, as a poll would), while a :class:`RuleHandler` records one
delivery per event (a single webhook rule, or a single ``at_least_once`` email rule) and
a :class:`DeliveryWorker` attempts them with the real executors against a local aiohttp
receiver or aiosmtpd server. The clock stops when every delivery is committed
``succeeded``; the ledger is then checked row by row.

The baseline is the same traffic without any ledger, at the same concurrency and body
size: a raw aiohttp POST loop with ``delivery_concurrency`` requests in flight, and a raw
aiosmtplib loop over as many kept-open connections as the executor's pool (which is also
the worker's ``delivery_concurrency`` for the email case). Rounds alternate between the
two sides; the best round of each is reported.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from bench import BenchResult
from billnotify.actions import build_executors
from billnotify.actions.base import ActionExecutor
from billnotify.actions.email import EmailExecutor
from billnotify.config.loader import parse_config
from billnotify.config.models import Config, EmailAction
from billnotify.events import CloudEvent, build_event
from billnotify.rules.engine import RuleHandler
from billnotify.rules.worker import DeliveryWorker
from billnotify.store import DeliveryStatus, SqliteStore
from billnotify.templating import TemplateRenderer

WEBHOOKS = 3000
WEBHOOK_CONCURRENCY = 50
EMAILS = 600
EMAIL_CONCURRENCY = 4
EVENTS_PER_COMMIT = 100
ROUNDS = 3
DEADLINE = 120.0
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SECRET = "whsec_" + base64.b64encode(b"bench-secret-bench-secret-bench!").decode()
T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
TYPE = "billing_task.status_changed"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _events(count: int) -> list[CloudEvent]:
    return [
        build_event(
            source="acme",
            entity="billing_task",
            object_id=str(n),
            type_=TYPE,
            key=str(n),
            time=T0,
            data={
                "object": {
                    "id": str(n),
                    "billingTaskType": "Generate Invoice",
                    "status": "Failed",
                    "customerID": "77",
                    "retryCount": "2",
                    "startedTime": "2026-11-21 10:01:00",
                    "endedTime": "2026-11-21 10:15:00",
                    "activityLog": "Step 3 failed",
                },
                "previous": {"status": "Running"},
                "changed": ["status", "endedTime"],
            },
        )
        for n in range(count)
    ]


def _config(action: dict[str, Any], concurrency: int, hook_url: str, smtp_port: int) -> Config:
    return parse_config(
        {
            "service": {"delivery_concurrency": concurrency, "http": ""},
            "sources": [
                {"name": "acme", "kind": "billing_platform", "base_url": "http://x", "api_key": "k"}
            ],
            "smtp": {
                "host": "127.0.0.1",
                "port": smtp_port,
                "from": "Billing <billing@example.com>",
                "timeout": "10s",
            },
            "webhooks": [
                {
                    "name": "sink",
                    "url": hook_url,
                    "secret": SECRET,
                    "allow_private": True,
                    "timeout": "10s",
                }
            ],
            "rules": [{"name": "bench", "on": [TYPE], "actions": [action]}],
        },
        base_dir=TEMPLATES.parent,
    )


# -- servers -----------------------------------------------------------------------------


async def _receiver() -> tuple[web.AppRunner, str]:
    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text='{"ok":true}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/hook"


class _Sink:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.count += 1
        return "250 OK"


# -- the durable path --------------------------------------------------------------------


async def _ledger_rate(
    config: Config,
    executors: dict[str, ActionExecutor],
    templates: TemplateRenderer,
    events: list[CloudEvent],
    action_type: str,
) -> float:
    """Deliveries/s from the first append to the last ``succeeded`` commit."""
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as folder:
        async with SqliteStore(Path(folder) / "state.db") as store:
            worker = DeliveryWorker(config, store, executors, _utcnow, poll_interval=0.5)
            handler = RuleHandler(
                config, store, templates, executors, _utcnow, on_recorded=worker.wake
            )
            succeeded = worker.settled
            started = time.perf_counter()
            tasks = [
                asyncio.create_task(worker.run(), name="bench-worker"),
                asyncio.create_task(handler.run(), name="bench-rules"),
            ]
            try:
                for start in range(0, len(events), EVENTS_PER_COMMIT):
                    await store.commit("acme", [], events[start : start + EVENTS_PER_COMMIT])
                deadline = time.monotonic() + DEADLINE
                while succeeded[DeliveryStatus.SUCCEEDED.value] < len(events):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"ledger bench stuck: {dict(worker.settled)}")
                    if any(v for k, v in succeeded.items() if k != DeliveryStatus.SUCCEEDED):
                        raise RuntimeError(f"deliveries did not succeed: {succeeded}")
                    await asyncio.sleep(0.002)
                elapsed = time.perf_counter() - started
                await worker.drain(5.0)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            counts = await store.count_deliveries()
            if counts != {(action_type, DeliveryStatus.SUCCEEDED.value): len(events)}:
                raise RuntimeError(f"ledger not settled as expected: {counts}")
    return len(events) / elapsed


# -- raw baselines -----------------------------------------------------------------------


async def _timed(count: int, workers: int, send: Callable[[int], Awaitable[None]]) -> float:
    queue = iter(range(count))

    async def worker() -> None:
        for n in queue:
            await send(n)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return count / (time.perf_counter() - started)


async def _raw_post_rate(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    headers = {"content-type": "application/json"}

    async def send(n: int) -> None:
        async with session.post(url, data=body, headers=headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")

    return await _timed(WEBHOOKS, WEBHOOK_CONCURRENCY, send)


async def _raw_smtp_rate(port: int, subject: str, text: str, html: str) -> float:
    clients = [
        aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        for _ in range(EMAIL_CONCURRENCY)
    ]
    for client in clients:
        await client.connect()
    free: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
    for client in clients:
        free.put_nowait(client)

    async def send(n: int) -> None:
        message = EmailMessage()
        message["From"] = "Billing <billing@example.com>"
        message["To"] = "ops@example.com"
        message["Subject"] = subject
        message["Message-ID"] = f"<dlv_{n}@example.com>"
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        client = await free.get()
        try:
            await client.send_message(message)
        finally:
            free.put_nowait(client)

    try:
        return await _timed(EMAILS, EMAIL_CONCURRENCY, send)
    finally:
        for client in clients:
            await client.quit()


# -- the cases ---------------------------------------------------------------------------


async def _webhooks(templates: TemplateRenderer) -> BenchResult:
    runner, url = await _receiver()
    config = _config({"type": "webhook", "endpoint": "sink"}, WEBHOOK_CONCURRENCY, url, 25)
    executors = build_executors(
        config, billing_clients={}, property_clients={}, mqtt=None, templates=templates
    )
    events = _events(WEBHOOKS)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    body = events[0].to_json().encode()
    best = {"raw": 0.0, "ledger": 0.0}
    try:
        await _raw_post_rate(session, url, body)  # warm up both pools
        await _ledger_rate(config, executors, templates, events[:500], "webhook")
        for _ in range(ROUNDS):
            best["raw"] = max(best["raw"], await _raw_post_rate(session, url, body))
            rate = await _ledger_rate(config, executors, templates, events, "webhook")
            best["ledger"] = max(best["ledger"], rate)
    finally:
        for executor in executors.values():
            await executor.close()
        await session.close()
        await runner.cleanup()
    notes = (
        f"{WEBHOOKS} events -> rules -> worker -> local receiver, delivery_concurrency "
        f"{WEBHOOK_CONCURRENCY}, vs raw aiohttp POSTs, best of {ROUNDS}"
    )
    return BenchResult.versus("ledger.webhook", best["ledger"], "deliveries/s", best["raw"], notes)


async def _emails(templates: TemplateRenderer) -> BenchResult:
    sink = _Sink()
    port = _free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, ready_timeout=5.0)
    controller.start()
    email = {
        "type": "email",
        "to": ["ops@example.com"],
        "template": "task_failed",
        "at_least_once": True,
    }
    config = _config(email, EMAIL_CONCURRENCY, "http://127.0.0.1:9/hook", port)
    executors = build_executors(
        config,
        billing_clients={},
        property_clients={},
        mqtt=None,
        templates=templates,
        smtp_pool_size=EMAIL_CONCURRENCY,
    )
    events = _events(EMAILS)
    executor = executors["email"]
    assert isinstance(executor, EmailExecutor)
    composed = executor.compose(EmailAction.model_validate(email), events[0], config.rules[0])
    texts = (composed.subject, composed.text, composed.html or "")
    best = {"raw": 0.0, "ledger": 0.0}
    try:
        await _raw_smtp_rate(port, *texts)  # warm up
        await _ledger_rate(config, executors, templates, events[:100], "email")
        for _ in range(ROUNDS):
            best["raw"] = max(best["raw"], await _raw_smtp_rate(port, *texts))
            rate = await _ledger_rate(config, executors, templates, events, "email")
            best["ledger"] = max(best["ledger"], rate)
    finally:
        for each in executors.values():
            await each.close()
        controller.stop()
    notes = (
        f"{EMAILS} events -> rules -> worker -> local aiosmtpd (task_failed, at_least_once), "
        f"{EMAIL_CONCURRENCY} connections = delivery_concurrency, vs raw aiosmtplib, "
        f"best of {ROUNDS}"
    )
    return BenchResult.versus("ledger.email", best["ledger"], "emails/s", best["raw"], notes)


async def run() -> list[BenchResult]:
    """Measure durably recorded deliveries/s against raw client loops."""
    templates = TemplateRenderer(TEMPLATES)
    return [await _webhooks(templates), await _emails(templates)]
