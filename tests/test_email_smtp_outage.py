"""Operator alerts across an SMTP outage (issue 10, item 6): a real aiosmtpd server that
answers ``421`` for a minute, the worker driven by an injected clock.

With the old fixed 0 s / 5 s / 5 min schedule every alert arrived about four minutes
after the server recovered; ``[smtp] retry_schedule`` (default: at least once a minute
for the first quarter hour) brings each within a minute of recovery, and loses none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from billnotify.actions.email import EmailExecutor
from billnotify.components import delivery_settings, rule_settings
from billnotify.config.loader import parse_config
from billnotify.config.models import DEFAULT_SMTP_RETRY_SCHEDULE, Config
from billnotify.deliveries.base import DeliveryStatus
from billnotify.deliveries.worker import DeliveryWorker
from billnotify.events import build_event
from billnotify.rules.engine import RuleHandler
from billnotify.store import Delivery, SqliteStore
from billnotify.templating import TemplateRenderer
from servers import Clock, SmtpSink, _Handler

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
ALERTS = 100
OUTAGE = timedelta(seconds=60)
STEP = timedelta(seconds=5)


@dataclass
class _Outage(_Handler):
    """The sink's handler, answering ``421`` to MAIL until ``until`` (by the test's clock)
    and noting when (by that clock) each message was accepted."""

    clock: Clock | None = None
    until: datetime = T0
    refused: int = 0
    accepted_at: list[datetime] = field(default_factory=list)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        assert self.clock is not None
        if self.clock() < self.until:
            self.refused += 1
            return "421 4.3.2 System not accepting network messages"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert self.clock is not None
        self.accepted_at.append(self.clock())
        return await super().handle_DATA(server, session, envelope)


@dataclass
class Rig:
    sink: SmtpSink
    handler: _Outage
    store: SqliteStore
    clock: Clock
    rules: RuleHandler
    worker: DeliveryWorker

    async def emit(self, count: int) -> None:
        events = [
            build_event(
                source="acme",
                entity="billing_task",
                object_id=str(n),
                type_="billing_task.status_changed",
                key=str(n),
                time=T0,
                data={"object": {"id": str(n), "status": "Failed"}, "changed": ["status"]},
            )
            for n in range(count)
        ]
        await self.store.commit("acme", [], events)
        await self.rules.catch_up()

    async def emails(self) -> list[Delivery]:
        return [d for d in await self.store.list_deliveries() if d.action_type == "email"]


def _config(port: int, base_dir: Path, **smtp: Any) -> Config:
    return parse_config(
        {
            "sources": [
                {"name": "acme", "kind": "billing_platform", "base_url": "http://x", "api_key": "k"}
            ],
            "smtp": {"host": "127.0.0.1", "port": port, "from": "ops@example.com", **smtp},
            "rules": [
                {
                    "name": "alert",
                    "on": ["billing_task.status_changed"],
                    "actions": [
                        {
                            "type": "email",
                            "to": ["ops@example.com"],
                            "template": "alert",
                            "at_least_once": True,
                        }
                    ],
                }
            ],
        },
        base_dir=base_dir,
    )


@pytest.fixture
def make_rig(tmp_path: Path) -> Any:
    (tmp_path / "alert.subject.j2").write_text("Task {{ object.id }} failed")
    (tmp_path / "alert.txt.j2").write_text("Task {{ object.id }} failed.\n")

    async def make(**smtp: Any) -> AsyncIterator[Rig]:
        clock = Clock(T0)
        sink = SmtpSink()
        handler = _Outage(clock=clock, until=T0 + OUTAGE)
        sink.handler = sink.controller.handler = handler
        sink.start()
        config = _config(sink.port, tmp_path, **smtp)
        templates = TemplateRenderer(tmp_path)
        executor = EmailExecutor(config.smtp, templates)
        try:
            async with SqliteStore(tmp_path / "state.db") as store:
                executors: dict[str, Any] = {"email": executor}
                worker = DeliveryWorker(delivery_settings(config), store, executors, clock)
                rules = RuleHandler(rule_settings(config), store, templates, executors, clock)
                yield Rig(sink, handler, store, clock, rules, worker)
        finally:
            await executor.close()
            sink.stop()

    return make


async def _run_until_settled(rig: Rig, horizon: timedelta) -> None:
    """Attempt what is due, then move the clock a step, until nothing is left to do."""
    while rig.clock() - T0 <= horizon:
        while await rig.worker.run_once():
            pass  # all that is due now, however many rounds of slots it takes
        rows = await rig.emails()
        if all(d.status is not DeliveryStatus.RETRY_SCHEDULED for d in rows):
            return
        rig.clock.now += STEP


async def test_alerts_arrive_within_a_minute_of_an_smtp_outage_ending(make_rig: Any) -> None:
    async for rig in make_rig():
        await rig.emit(ALERTS)
        await _run_until_settled(rig, timedelta(hours=1))
        rows = await rig.emails()
        recovered = T0 + OUTAGE
        late = [(at - recovered).total_seconds() for at in rig.handler.accepted_at]
        print(
            f"\n{ALERTS} alerts, SMTP 421 for {OUTAGE.total_seconds():.0f}s: "
            f"{rig.handler.refused} refusals, {len(late)} delivered, "
            f"latest {max(late):.0f}s after recovery"
        )
        assert {d.status for d in rows} == {DeliveryStatus.SUCCEEDED}
        assert len(rows) == ALERTS
        assert len(rig.sink.messages) == ALERTS  # none lost (and, here, none twice)
        assert rig.handler.refused >= ALERTS  # every one met the outage at least once
        assert max(late) <= 60


async def test_the_smtp_retry_schedule_is_configurable(make_rig: Any) -> None:
    async for rig in make_rig(retry_schedule=["0s", "10s"]):
        await rig.emit(1)
        await _run_until_settled(rig, timedelta(minutes=10))
        (row,) = await rig.emails()
        assert row.status is DeliveryStatus.DEAD and row.attempts == 2
        assert "421" in (row.last_error or "") and "gave up after 2" in (row.last_error or "")
        assert rig.sink.messages == []


def test_the_default_schedule_keeps_trying_for_more_than_a_day() -> None:
    schedule = DEFAULT_SMTP_RETRY_SCHEDULE
    total = sum(schedule, timedelta())
    assert total >= timedelta(hours=24)
    # every wait up to a quarter of an hour into an outage is a minute at most
    elapsed = timedelta()
    for delay in schedule:
        if elapsed > timedelta(minutes=15):
            break
        assert delay <= timedelta(minutes=1)
        elapsed += delay
