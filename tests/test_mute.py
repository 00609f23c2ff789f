"""Mute windows end to end (SPEC §7.2): a rule's deliveries that fall due inside one of
its ``[[mute_windows]]`` wait until it ends — webhook, email and the customer-facing
invoice email alike — and with ``mute_action = "drop"`` are recorded ``muted``.

The config is parsed as a file would be; the real executors send to an HTTP receiver, an
SMTP sink and the billing simulator; the worker runs on an injected clock, across the
Europe/London clock changes of 2026 (29 March, 25 October).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from billnotify.cli.commands import format_deliveries, list_deliveries, status_lines
from billnotify.components import Actions, build_actions, build_worker, rule_settings
from billnotify.config.loader import load_config
from billnotify.deliveries.base import DeliveryStatus
from billnotify.deliveries.worker import DeliveryWorker
from billnotify.events import build_event
from billnotify.metrics import Metrics
from billnotify.rules.engine import RuleHandler
from billnotify.simulator import Simulator
from billnotify.store import Delivery, SqliteStore
from servers import PYTHON, Clock, SmtpSink, WebhookReceiver, sim_source, toml_config

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SATURDAY_BEFORE_SPRING = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
MONDAY_0000_BST = datetime(2026, 3, 29, 23, 0, tzinfo=UTC)
"""The British weekend of 28-29 March 2026 ends here: the clocks went forward on Sunday."""


@dataclass
class Rig:
    sim: Simulator
    store: SqliteStore
    clock: Clock
    handler: RuleHandler
    worker: DeliveryWorker
    receiver: WebhookReceiver
    sink: SmtpSink
    path: Path

    async def approve(self) -> dict[str, Any]:
        invoice = self.sim.state.add_invoice(status=["Raised", "Approved"])
        await self._emit(
            "invoice.status_changed",
            invoice,
            {"previous": {"status": ["Raised"]}, "added": ["Approved"], "removed": []},
        )
        return invoice

    async def fail_task(self, n: int, rule_hook: str = "ops") -> None:
        task = {"id": str(n), "status": "Failed", "billingTaskType": rule_hook}
        await self._emit("billing_task.status_changed", task, {"previous": {"status": "Running"}})

    async def _emit(self, type_: str, record: dict[str, Any], extra: dict[str, Any]) -> None:
        event = build_event(
            source="acme",
            entity=type_.partition(".")[0],
            object_id=str(record["id"]),
            type_=type_,
            key=f"{record['id']}@{self.clock.now.isoformat()}",
            time=self.clock.now,
            data={"object": record, "changed": ["status"], **extra},
        )
        await self.store.commit("acme", [], [event])
        await self.handler.catch_up()

    async def rows(self, rule: str) -> list[Delivery]:
        rows = [d for d in await self.store.list_deliveries() if d.rule == rule]
        return sorted(rows, key=lambda d: (d.event_seq, d.action_index))


@pytest.fixture
async def rig(
    tmp_path: Path, sim: Simulator, receiver: WebhookReceiver, sink: SmtpSink
) -> AsyncIterator[Rig]:
    (tmp_path / "note.subject.j2").write_text("Invoice {{ object.id }}")
    (tmp_path / "note.txt.j2").write_text("Invoice {{ object.id }} approved.\n")
    hook = {"name": "ops", "url": receiver.url("/ok"), "secret": SECRET, "allow_private": True}
    raw = {
        "service": {"templates": str(tmp_path)},
        "sources": [sim_source(sim, timeout="5s")],
        "smtp": {"host": "127.0.0.1", "port": sink.port, "from": "b@example.com"},
        "webhooks": [
            hook,
            {
                **hook,
                "name": "flaky",
                "url": receiver.url("/flaky"),
                "retry_schedule": ["0s", "5s"],
            },
        ],
        "mute_windows": [
            {
                "name": "weekend",
                "timezone": "Europe/London",
                "weekdays": ["saturday", "sunday"],
                "times": ["00:00-24:00"],
            }
        ],
        "rules": [
            {
                "name": "approved",
                "on": ["invoice.status_changed"],
                "when": "'Approved' in event.data.added",
                "mute": ["weekend"],
                "actions": [
                    {"type": "webhook", "endpoint": "ops"},
                    {"type": "email", "to": ["ops@example.com"], "template": "note"},
                    {"type": "invoice_action", "action": "email"},
                ],
            },
            {
                "name": "flaky-task",
                "on": ["billing_task.status_changed"],
                "when": "event.data.object.billingTaskType == 'flaky'",
                "mute": ["weekend"],
                "actions": [{"type": "webhook", "endpoint": "flaky"}],
            },
            {
                "name": "failed-task",
                "on": ["billing_task.status_changed"],
                "when": "event.data.object.billingTaskType == 'ops'",
                "mute": ["weekend"],
                "mute_action": "drop",
                "actions": [{"type": "webhook", "endpoint": "ops"}],
            },
        ],
    }
    path = tmp_path / "config.toml"  # read as the service reads it
    path.write_text(toml_config(raw))
    config = load_config(path)
    actions: Actions = build_actions(config)
    clock = Clock(SATURDAY_BEFORE_SPRING)
    try:
        async with SqliteStore(tmp_path / "state.db") as store:
            worker = build_worker(
                config, store, actions.executors, clock, billing_clients=actions.billing_clients
            )
            handler = RuleHandler(
                rule_settings(config), store, actions.renderer, actions.executors, clock
            )
            yield Rig(sim, store, clock, handler, worker, receiver, sink, path)
    finally:
        await actions.close()


async def test_a_weekend_delivery_waits_until_monday_0000_british_summer_time(rig: Rig) -> None:
    invoice = await rig.approve()
    await rig.worker.run_once()
    rows = await rig.rows("approved")
    assert [r.action_type for r in rows] == ["webhook", "email", "invoice_action"]
    for row in rows:  # deferred, not dropped, and no attempt counted
        assert row.status is DeliveryStatus.PENDING and row.attempts == 0
        assert row.next_attempt_at == MONDAY_0000_BST  # 23:00 UTC: the clocks went forward
        assert row.note is not None and "weekend" in row.note
    assert not rig.receiver.hits and not rig.sink.messages
    assert rig.sim.state.email_calls(invoice["id"]) == 0  # the customer's email waits too
    # `billnotify deliveries` shows when each is due
    assert format_deliveries(rows).count("2026-03-29T23:00:00Z") == 3

    rig.clock.now = MONDAY_0000_BST - timedelta(seconds=1)  # Sunday 23:59:59 BST
    await rig.worker.run_once()
    assert not rig.receiver.hits and rig.sim.state.email_calls(invoice["id"]) == 0

    rig.clock.now = MONDAY_0000_BST
    await rig.worker.run_once()
    rows = await rig.rows("approved")
    assert [(r.status, r.attempts) for r in rows] == [(DeliveryStatus.SUCCEEDED, 1)] * 3
    assert len(rig.receiver.hits) == 1 and len(rig.sink.messages) == 1
    assert rig.sim.state.email_calls(invoice["id"]) == 1
    assert rig.worker.held["mute"] == 3


async def test_the_october_weekend_begins_at_2300_utc_on_friday(rig: Rig) -> None:
    rig.clock.now = datetime(2026, 10, 23, 22, 59, tzinfo=UTC)  # Friday 23:59 BST
    await rig.approve()
    await rig.worker.run_once()
    assert all(r.status is DeliveryStatus.SUCCEEDED for r in await rig.rows("approved"))

    rig.clock.now = datetime(2026, 10, 23, 23, 0, tzinfo=UTC)  # Saturday 00:00 BST
    await rig.approve()
    await rig.worker.run_once()
    later = (await rig.rows("approved"))[3:]
    # the weekend spans 49 hours of real time: the clocks go back on Sunday
    assert {r.next_attempt_at for r in later} == {datetime(2026, 10, 26, 0, 0, tzinfo=UTC)}
    assert all(r.status is DeliveryStatus.PENDING for r in later)


async def test_a_retry_that_falls_due_in_the_window_waits_as_well(rig: Rig) -> None:
    rig.clock.now = datetime(2026, 3, 27, 23, 59, 58, tzinfo=UTC)  # Friday 23:59:58 GMT
    await rig.fail_task(1, rule_hook="flaky")
    await rig.worker.run_once()
    (row,) = await rig.rows("flaky-task")
    assert row.status is DeliveryStatus.RETRY_SCHEDULED and row.attempts == 1
    assert row.next_attempt_at == rig.clock.now + timedelta(seconds=5)
    rig.clock.now += timedelta(seconds=5)  # the retry falls due on Saturday
    await rig.worker.run_once()
    (row,) = await rig.rows("flaky-task")
    assert row.status is DeliveryStatus.RETRY_SCHEDULED and row.attempts == 1
    assert row.next_attempt_at == MONDAY_0000_BST
    rig.clock.now = MONDAY_0000_BST
    await rig.worker.run_once()
    (row,) = await rig.rows("flaky-task")
    assert row.status is DeliveryStatus.SUCCEEDED and row.attempts == 2


async def test_drop_records_the_delivery_muted_and_sends_nothing(rig: Rig) -> None:
    await rig.fail_task(1)
    await rig.worker.run_once()
    (row,) = await rig.rows("failed-task")
    assert row.status is DeliveryStatus.MUTED and row.attempts == 0
    assert row.last_error is not None and "weekend" in row.last_error
    assert not rig.receiver.hits
    assert [d.id for d in await list_deliveries(rig.store, "muted")] == [row.id]
    cli = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "billnotify",
        "deliveries",
        "--status",
        "muted",
        "--json",
        "-c",
        str(rig.path),
        stdout=asyncio.subprocess.PIPE,
    )
    out = (await asyncio.wait_for(cli.communicate(), 60))[0].decode()
    assert cli.returncode == 0 and [json.loads(line)["id"] for line in out.splitlines()] == [row.id]
    assert any("muted 1" in line for line in await status_lines(rig.store, "state.db"))
    assert rig.worker.settled["muted"] == 1

    rig.clock.now = MONDAY_0000_BST  # after the window a new event goes out
    await rig.fail_task(2)
    await rig.worker.run_once()
    first, second = await rig.rows("failed-task")
    assert first.status is DeliveryStatus.MUTED
    assert second.status is DeliveryStatus.SUCCEEDED and len(rig.receiver.hits) == 1


async def test_an_operator_retry_sends_a_muted_delivery_now(rig: Rig) -> None:
    await rig.fail_task(1)
    await rig.worker.run_once()
    (row,) = await rig.rows("failed-task")
    assert row.status is DeliveryStatus.MUTED
    cli = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "billnotify",
        "deliveries",
        "retry",
        row.id,
        "--reason",
        "the customer asked",
        "-c",
        str(rig.path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = (s.decode() for s in await asyncio.wait_for(cli.communicate(), 60))
    assert cli.returncode == 0, err
    assert f"{row.id}: muted -> pending (sent now, whatever mute window covers it)" in out
    (row,) = await rig.rows("failed-task")
    assert row.status is DeliveryStatus.PENDING
    assert row.note == "operator retry (was muted): the customer asked"
    (action,) = await rig.store.operator_actions(row.id)
    assert action.action == "retry" and action.who.startswith("cli:")
    # the CLI set it due at the wall clock's now: the worker's clock moves to the next
    # Saturday noon after that, inside the window, where an explicit retry still sends
    wall = datetime.now(UTC)
    saturday = wall.date() + timedelta(days=(5 - wall.weekday()) % 7 or 7)
    rig.clock.now = datetime.combine(saturday, datetime.min.time(), UTC) + timedelta(hours=12)
    await rig.worker.run_once()
    (row,) = await rig.rows("failed-task")
    assert row.status is DeliveryStatus.SUCCEEDED and row.attempts == 1
    assert len(rig.receiver.hits) == 1
    # the window holds every other delivery of the rule as before
    await rig.fail_task(2)
    await rig.worker.run_once()
    assert [r.status for r in await rig.rows("failed-task")] == [
        DeliveryStatus.SUCCEEDED,
        DeliveryStatus.MUTED,
    ]
    assert len(rig.receiver.hits) == 1


async def test_held_deliveries_are_counted_in_metrics(rig: Rig) -> None:
    await rig.approve()
    await rig.worker.run_once()
    metrics = Metrics()
    metrics.count_holds(rig.worker.held)
    metrics.count_holds(rig.worker.held)  # a scrape again adds nothing new
    text = metrics.render().decode()
    assert 'billnotify_delivery_holds_total{reason="mute"} 3.0' in text
    assert 'billnotify_delivery_holds_total{reason="rate_limit"} 0.0' in text
