"""Webhooks and emails end to end: real executors, an aiohttp receiver and an aiosmtpd
server on loopback, the worker driven by an injected clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook

from billnotify.actions.email import EmailExecutor
from billnotify.actions.webhook import WebhookExecutor
from billnotify.components import delivery_settings, rule_settings
from billnotify.config.loader import parse_config
from billnotify.config.models import Config
from billnotify.deliveries.base import DeliveryStatus
from billnotify.deliveries.worker import DeliveryWorker
from billnotify.events import build_event
from billnotify.rules.engine import RuleHandler
from billnotify.store import Delivery, SqliteStore
from billnotify.templating import TemplateRenderer
from servers import Clock, SmtpSink, serving

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Receiver:
    """A webhook endpoint answering from a script (the last answer repeats)."""

    script: list[tuple[int, dict[str, str]]] = field(default_factory=lambda: [(200, {})])
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        status, headers = self.script[min(len(self.requests), len(self.script)) - 1]
        return web.Response(status=status, headers=headers, text="ok")


@dataclass
class Rig:
    receiver: Receiver
    sink: SmtpSink
    store: SqliteStore
    clock: Clock
    handler: RuleHandler
    worker: DeliveryWorker

    async def emit(self, n: int, type_: str = "billing_task.status_changed") -> None:
        event = build_event(
            source="acme",
            entity=type_.partition(".")[0],
            object_id=str(n),
            type_=type_,
            key=str(n),
            time=T0,
            data={
                "object": {"id": str(n), "status": "Failed", "billingTaskType": "Invoice run"},
                "previous": {"status": "Running"},
                "changed": ["status"],
            },
        )
        await self.store.commit("acme", [], [event])
        await self.handler.catch_up()

    async def rows(self, action_type: str) -> list[Delivery]:
        rows = [d for d in await self.store.list_deliveries() if d.action_type == action_type]
        return sorted(rows, key=lambda d: d.event_seq)


def _config(hook_url: str, smtp_port: int, base_dir: Path) -> Config:
    return parse_config(
        {
            "sources": [
                {"name": "acme", "kind": "billing_platform", "base_url": "http://x", "api_key": "k"}
            ],
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "from": "Billing <b@example.com>"},
            "webhooks": [
                {
                    "name": "ops",
                    "url": hook_url,
                    "secret": SECRET,
                    "allow_private": True,
                    "retry_schedule": ["0s", "5s", "5m"],
                }
            ],
            "rules": [
                {
                    "name": "alert-failed-task",
                    "on": ["billing_task.status_changed"],
                    "when": "event.data.object.status in ['Failed', 'Error']",
                    "actions": [
                        {"type": "webhook", "endpoint": "ops"},
                        {"type": "email", "to": ["ops@example.com"], "template": "task_failed"},
                    ],
                }
            ],
        },
        base_dir=base_dir,
    )


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    (tmp_path / "task_failed.subject.j2").write_text("Task {{ object.id }} {{ object.status }}")
    (tmp_path / "task_failed.txt.j2").write_text("Task {{ object.id }} failed.\n")
    (tmp_path / "task_failed.html.j2").write_text("<p>Task {{ object.id }} failed.</p>\n")
    receiver, sink = Receiver(), SmtpSink().start()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    try:
        async with serving(app) as base:
            config = _config(f"{base}/hook", sink.port, tmp_path)
            templates = TemplateRenderer(tmp_path)
            executors: dict[str, Any] = {
                "webhook": WebhookExecutor(config.webhooks, templates),
                "email": EmailExecutor(config.smtp, templates),
            }
            clock = Clock(T0)
            try:
                async with SqliteStore(tmp_path / "state.db") as store:
                    worker = DeliveryWorker(delivery_settings(config), store, executors, clock)
                    handler = RuleHandler(rule_settings(config), store, templates, executors, clock)
                    yield Rig(receiver, sink, store, clock, handler, worker)
            finally:
                for executor in executors.values():
                    await executor.close()
    finally:
        sink.stop()


async def test_a_rule_sends_a_signed_webhook_and_an_email(rig: Rig) -> None:
    await rig.emit(1)
    await rig.worker.run_once()
    (hook,) = await rig.rows("webhook")
    (mail,) = await rig.rows("email")
    assert hook.status is DeliveryStatus.SUCCEEDED and not hook.exactly_once
    assert mail.status is DeliveryStatus.SUCCEEDED and mail.exactly_once
    headers, body = rig.receiver.requests[0]
    assert headers["webhook-id"] == hook.id
    payload = Webhook(SECRET).verify(body, headers)  # raises unless the signature is right
    assert payload["type"] == "billing_task.status_changed"
    (received,) = rig.sink.messages
    message = received.message
    assert message["Subject"] == "Task 1 Failed" and message["To"] == "ops@example.com"


async def test_webhook_retries_follow_the_schedule_and_retry_after(rig: Rig) -> None:
    rig.receiver.script = [(503, {"Retry-After": "60"}), (502, {}), (200, {})]
    await rig.emit(1)
    await rig.worker.run_once()
    (hook,) = await rig.rows("webhook")
    assert hook.status is DeliveryStatus.RETRY_SCHEDULED and hook.last_status_code == 503
    assert hook.next_attempt_at == T0 + timedelta(seconds=60)  # Retry-After beat the 5 s slot
    rig.clock.now += timedelta(seconds=59)
    await rig.worker.run_once()
    assert len(rig.receiver.requests) == 1
    rig.clock.now += timedelta(seconds=1)
    await rig.worker.run_once()
    (hook,) = await rig.rows("webhook")
    assert hook.next_attempt_at == rig.clock.now + timedelta(minutes=5)
    rig.clock.now += timedelta(minutes=5)
    await rig.worker.run_once()
    (hook,) = await rig.rows("webhook")
    assert hook.status is DeliveryStatus.SUCCEEDED and hook.attempts == 3
    ids = {headers["webhook-id"] for headers, _ in rig.receiver.requests}
    assert ids == {hook.id}  # the same id on every retry: receivers de-duplicate on it
    assert len(rig.sink.messages) == 1  # the email went once, on the first pass


async def test_exhausted_webhooks_are_dead(rig: Rig) -> None:
    rig.receiver.script = [(500, {})]
    await rig.emit(1)
    for _ in range(3):
        await rig.worker.run_once()
        rig.clock.now += timedelta(minutes=5)
    (hook,) = await rig.rows("webhook")
    assert hook.status is DeliveryStatus.DEAD and hook.attempts == 3
    assert len(rig.receiver.requests) == 3


async def test_410_disables_the_endpoint(rig: Rig) -> None:
    rig.receiver.script = [(410, {})]
    await rig.emit(1)
    await rig.worker.run_once()
    assert "ops" in await rig.store.disabled_endpoints()
    await rig.emit(2)
    await rig.worker.run_once()
    first, second = await rig.rows("webhook")
    assert first.status is DeliveryStatus.DEAD and first.last_status_code == 410
    assert second.status is DeliveryStatus.DEAD and second.attempts == 0
    assert len(rig.receiver.requests) == 1


async def test_3xx_is_a_failure_and_not_followed(rig: Rig) -> None:
    rig.receiver.script = [(302, {"Location": "http://127.0.0.1:9/elsewhere"})]
    await rig.emit(1)
    await rig.worker.run_once()
    (hook,) = await rig.rows("webhook")
    assert hook.status is DeliveryStatus.DEAD and hook.last_status_code == 302


async def test_the_worker_loop_delivers_a_burst(rig: Rig) -> None:
    for n in range(20):
        await rig.emit(n)
    task = asyncio.create_task(rig.worker.run())
    try:
        async with asyncio.timeout(20):
            while len(await rig.store.list_deliveries([DeliveryStatus.SUCCEEDED])) < 40:
                await asyncio.sleep(0.02)
    finally:
        await rig.worker.drain(5)
        await asyncio.wait_for(task, 5)
    assert len(rig.receiver.requests) == 20 and len(rig.sink.messages) == 20
    bodies = [json.loads(body) for _, body in rig.receiver.requests]
    assert len({b["id"] for b in bodies}) == 20
