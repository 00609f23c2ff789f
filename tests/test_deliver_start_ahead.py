"""DeliveryWorker: at-least-once deliveries are started ahead of the free slots, exactly-
once deliveries only for a free slot; whatever was started is attempted once, or left
``sending`` for recovery when a drain cuts it off."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from billnotify.actions.base import Rendered
from billnotify.components import delivery_settings, rule_settings
from billnotify.config.loader import parse_config
from billnotify.config.models import Action, Config, Rule
from billnotify.deliveries.base import AttemptResult, DeliveryStatus, Outcome
from billnotify.deliveries.worker import DeliveryWorker
from billnotify.events import CloudEvent, build_event
from billnotify.rules.engine import RuleHandler
from billnotify.store import SqliteStore
from billnotify.templating import TemplateRenderer

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
CONCURRENCY = 2


@dataclass
class GatedExecutor:
    """Holds every attempt until ``gate`` is set; records each one."""

    action_type: str
    once: bool
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[tuple[str, int]] = field(default_factory=list)
    running: int = 0

    def exactly_once(self, action: Action) -> bool:
        return self.once

    def target(self, action: Action, event: CloudEvent) -> str:
        return event.object_id

    async def render(self, action: Action, event: CloudEvent, rule: Rule) -> Rendered:
        return Rendered(self.action_type, event.object_id, {})

    async def execute(
        self, action: Action, event: CloudEvent, rule: Rule, *, delivery_id: str, attempt: int
    ) -> AttemptResult:
        self.calls.append((delivery_id, attempt))
        self.running += 1
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        return AttemptResult(Outcome.SUCCESS, 200)

    async def close(self) -> None:
        pass


def _config() -> Config:
    return parse_config(
        {
            "service": {"delivery_concurrency": CONCURRENCY},
            "sources": [
                {"name": "acme", "kind": "billing_platform", "base_url": "http://x", "api_key": "k"}
            ],
            "webhooks": [
                {
                    "name": "ops",
                    "url": "http://127.0.0.1:9/",
                    "secret": SECRET,
                    "allow_private": True,
                }
            ],
            "rules": [
                {
                    "name": "hook",
                    "on": ["billing_task.*"],
                    "actions": [{"type": "webhook", "endpoint": "ops"}],
                },
                {
                    "name": "mail",
                    "on": ["invoice.*"],
                    "actions": [{"type": "invoice_action", "action": "email"}],
                },
            ],
        },
        base_dir=Path("."),
    )


def _events(entity: str, count: int) -> list[CloudEvent]:
    return [
        build_event(
            source="acme",
            entity=entity,
            object_id=str(n),
            type_=f"{entity}.created",
            key=str(n),
            time=T0,
            data={"object": {"id": str(n)}},
        )
        for n in range(count)
    ]


@dataclass
class Rig:
    store: SqliteStore
    executors: dict[str, Any]
    worker: DeliveryWorker
    task: asyncio.Task[None] | None = None

    async def statuses(self) -> list[DeliveryStatus]:
        return sorted(d.status for d in await self.store.list_deliveries())

    async def until(self, executor: GatedExecutor, running: int) -> None:
        async with asyncio.timeout(5):
            while executor.running < running:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # time to start more than it may


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Any]:
    async with SqliteStore(tmp_path / "state.db") as store:
        config = _config()
        executors: dict[str, Any] = {
            "webhook": GatedExecutor("webhook", once=False),
            "invoice_action": GatedExecutor("invoice_action", once=True),
        }
        worker = DeliveryWorker(
            delivery_settings(config), store, executors, lambda: T0, poll_interval=0.05
        )
        made = Rig(store, executors, worker)

        async def start(*events: CloudEvent) -> Rig:
            await store.commit("acme", [], list(events))
            handler = RuleHandler(
                rule_settings(config), store, TemplateRenderer(tmp_path), executors, lambda: T0
            )
            await handler.catch_up()
            made.task = asyncio.create_task(worker.run())
            return made

        yield start
        if made.task is not None and not made.task.done():
            for executor in executors.values():
                executor.gate.set()
            await worker.drain(5)
            await asyncio.wait_for(made.task, 5)


async def test_at_least_once_deliveries_are_started_ahead_and_each_sent_once(rig: Any) -> None:
    r: Rig = await rig(*_events("billing_task", 10))
    hook: GatedExecutor = r.executors["webhook"]
    await r.until(hook, CONCURRENCY)
    statuses = await r.statuses()
    ahead = 2 * CONCURRENCY  # started, waiting for a slot
    assert statuses.count(DeliveryStatus.SENDING) == CONCURRENCY + ahead
    assert hook.running == CONCURRENCY and r.worker.in_flight == CONCURRENCY
    hook.gate.set()
    async with asyncio.timeout(5):
        while r.worker.settled["succeeded"] < 10:
            await asyncio.sleep(0.01)
    assert sorted(hook.calls) == sorted({(d, 1) for d, _ in hook.calls})  # once each
    assert len(hook.calls) == 10
    assert await r.statuses() == [DeliveryStatus.SUCCEEDED] * 10


async def test_exactly_once_deliveries_start_only_for_a_free_slot(rig: Any) -> None:
    r: Rig = await rig(*_events("invoice", 6))
    mail: GatedExecutor = r.executors["invoice_action"]
    await r.until(mail, CONCURRENCY)
    statuses = await r.statuses()
    assert statuses.count(DeliveryStatus.SENDING) == CONCURRENCY  # nothing started ahead
    assert statuses.count(DeliveryStatus.PENDING) == 6 - CONCURRENCY
    mail.gate.set()
    async with asyncio.timeout(5):
        while r.worker.settled["succeeded"] < 6:
            await asyncio.sleep(0.01)
    assert len(mail.calls) == len({d for d, _ in mail.calls}) == 6


async def test_a_drain_cut_leaves_running_and_started_deliveries_sending(rig: Any) -> None:
    r: Rig = await rig(*_events("billing_task", 10))
    hook: GatedExecutor = r.executors["webhook"]
    await r.until(hook, CONCURRENCY)
    cut = await r.worker.drain(0.05)
    assert r.task is not None
    await asyncio.wait_for(r.task, 5)
    statuses = await r.statuses()
    assert cut == statuses.count(DeliveryStatus.SENDING) == 3 * CONCURRENCY
    assert statuses.count(DeliveryStatus.PENDING) == 10 - 3 * CONCURRENCY
    assert await r.store.recover_in_flight(T0) == (0, 3 * CONCURRENCY)  # due again
