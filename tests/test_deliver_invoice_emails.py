"""Invoice emails end to end: the real invoice-action executor against the simulator.

An email that may have gone out is never sent again: a connection lost after the
request (``reset_after``: the platform acted, the answer never came) leaves the
delivery ``uncertain``, and reconciliation against the platform's ``undelivered``
filter settles it as delivered; a connection lost before the platform acted
(``reset``) reconciles to pending and is sent once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from billnotify.actions.invoice_action import InvoiceActionExecutor
from billnotify.clients.billing_platform import BillingPlatformClient
from billnotify.components import build_reconciler, build_worker, delivery_settings, rule_settings
from billnotify.config.loader import parse_config
from billnotify.config.models import Config
from billnotify.deliveries.base import DeliveryStatus
from billnotify.deliveries.worker import DeliveryWorker
from billnotify.events import build_event
from billnotify.rules.engine import RuleHandler
from billnotify.simulator import Simulator
from billnotify.store import Delivery, SqliteStore
from billnotify.templating import TemplateRenderer
from servers import Clock, sim_source

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
INVOICES = "/backend/api/v1/invoices/"


@dataclass
class Rig:
    sim: Simulator
    store: SqliteStore
    client: BillingPlatformClient
    config: Config
    clock: Clock
    handler: RuleHandler
    worker: DeliveryWorker

    async def approve(self, **fields: Any) -> dict[str, Any]:
        invoice = self.sim.state.add_invoice(status=["Raised", "Approved"], **fields)
        event = build_event(
            source="acme",
            entity="invoice",
            object_id=invoice["id"],
            type_="invoice.status_changed",
            key="approved",
            time=T0,
            data={
                "object": invoice,
                "previous": {"status": ["Raised"]},
                "changed": ["status"],
                "added": ["Approved"],
                "removed": [],
            },
        )
        await self.store.commit("acme", [], [event])
        await self.handler.catch_up()
        return invoice

    async def approve_through(self, fault: str, **fields: Any) -> dict[str, Any]:
        """Approve an invoice and attempt its email once over a connection that ``fault``
        cuts (``reset_after``: after the platform acted; ``reset``: before)."""
        invoice = await self.approve(**fields)
        self.sim.faults.add(INVOICES, fault, method="POST")
        await self.worker.run_once()
        return invoice

    async def delivery(self) -> Delivery:
        (row,) = await self.store.list_deliveries()
        return row

    def emails(self, invoice: dict[str, Any]) -> int:
        return self.sim.state.email_calls(invoice["id"])


@pytest.fixture
async def rig(tmp_path: Path, sim: Simulator) -> AsyncIterator[Rig]:
    config = parse_config(
        {
            "sources": [sim_source(sim, timeout="5s")],
            "rules": [
                {
                    "name": "email-approved-invoices",
                    "on": ["invoice.status_changed"],
                    "when": "'Approved' in event.data.added",
                    "actions": [
                        {
                            "type": "invoice_action",
                            "action": "email",
                            "params": {"billStyle": "Full"},
                        }
                    ],
                }
            ],
        },
        base_dir=tmp_path,
    )
    client = BillingPlatformClient(sim.billing_base_url, sim.api_key, timeout=5)
    templates = TemplateRenderer(tmp_path)
    executors: dict[str, Any] = {
        "invoice_action": InvoiceActionExecutor({"acme": client}, templates)
    }
    clock = Clock(T0)
    async with SqliteStore(tmp_path / "state.db") as store:
        worker = build_worker(config, store, executors, clock, billing_clients={"acme": client})
        handler = RuleHandler(rule_settings(config), store, templates, executors, clock)
        try:
            yield Rig(sim, store, client, config, clock, handler, worker)
        finally:
            await client.close()


async def test_an_approved_invoice_is_emailed_once(rig: Rig) -> None:
    invoice = await rig.approve()
    await rig.worker.run_once()
    row = await rig.delivery()
    assert row.status is DeliveryStatus.SUCCEEDED and row.exactly_once
    assert row.target == f"invoice {invoice['id']} email"
    assert rig.emails(invoice) == 1
    assert rig.sim.state.action_log[-1]["params"] == {"billStyle": "Full"}
    await rig.worker.run_once()
    assert rig.emails(invoice) == 1


async def test_answer_lost_after_the_platform_acted_is_reconciled_as_delivered(rig: Rig) -> None:
    invoice = await rig.approve_through("reset_after")
    row = await rig.delivery()
    assert row.status is DeliveryStatus.UNCERTAIN
    assert rig.emails(invoice) == 1

    # too early: the platform might still be working on the request
    assert await rig.worker.reconcile() == 0
    rig.clock.now += rig.worker.reconciler.settle_after
    assert await rig.worker.reconcile() == 1
    row = await rig.delivery()
    assert row.status is DeliveryStatus.SUCCEEDED
    assert rig.worker.reconciler.delivered == 1
    await rig.worker.run_once()
    assert rig.emails(invoice) == 1


async def test_connection_lost_before_the_platform_acted_is_sent_once(rig: Rig) -> None:
    invoice = await rig.approve_through("reset")
    assert (await rig.delivery()).status is DeliveryStatus.UNCERTAIN
    assert rig.emails(invoice) == 0

    rig.clock.now += timedelta(minutes=5)
    assert await rig.worker.reconcile() == 1
    assert (await rig.delivery()).status is DeliveryStatus.PENDING
    await rig.worker.run_once()
    row = await rig.delivery()
    assert row.status is DeliveryStatus.SUCCEEDED and row.attempts == 2
    assert rig.emails(invoice) == 1


async def test_platform_errors_are_classified(rig: Rig) -> None:
    invoice = await rig.approve()
    rig.sim.state.fail_next_action("email", 500601, invoice_id=invoice["id"])
    await rig.worker.run_once()
    row = await rig.delivery()
    assert row.status is DeliveryStatus.RETRY_SCHEDULED  # 500601 is worth retrying
    assert row.next_attempt_at == T0 + timedelta(seconds=5)
    rig.clock.now += timedelta(seconds=5)
    await rig.worker.run_once()
    assert (await rig.delivery()).status is DeliveryStatus.SUCCEEDED
    assert rig.emails(invoice) == 1

    other = await rig.approve()
    rig.sim.state.fail_next_action("email", 400702, invoice_id=other["id"])
    await rig.worker.run_once()
    rows = {d.target: d for d in await rig.store.list_deliveries()}
    dead = rows[f"invoice {other['id']} email"]
    assert dead.status is DeliveryStatus.DEAD and dead.last_status_code == 400
    assert rig.emails(other) == 0


async def test_uncertain_without_an_invoice_number_waits_for_an_operator(rig: Rig) -> None:
    invoice = await rig.approve_through("reset_after", invoiceNumber="")
    rig.clock.now += timedelta(hours=1)
    assert await rig.worker.reconcile() == 0
    assert (await rig.delivery()).status is DeliveryStatus.UNCERTAIN
    assert rig.emails(invoice) == 1


async def test_the_running_worker_reconciles_in_the_background(rig: Rig) -> None:
    executors = rig.worker.executors
    worker = DeliveryWorker(
        delivery_settings(rig.config),
        rig.store,
        executors,
        rig.clock,
        reconciler=build_reconciler(
            rig.config, rig.store, {"acme": rig.client}, rig.clock, settle_after=timedelta(0)
        ),
        reconcile_interval=0.05,
    )
    delivered = await rig.approve()
    rig.sim.faults.add(INVOICES, "reset_after", method="POST")
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while worker.reconciler.delivered < 1:
                await asyncio.sleep(0.02)
        lost = await rig.approve()
        rig.sim.faults.add(INVOICES, "reset", method="POST")
        worker.wake()
        async with asyncio.timeout(10):
            while rig.emails(lost) < 1:
                await asyncio.sleep(0.02)
    finally:
        await worker.drain(5)
        await asyncio.wait_for(task, 5)
    assert worker.reconciler.not_delivered == 1
    assert {d.status for d in await rig.store.list_deliveries()} == {DeliveryStatus.SUCCEEDED}
    assert rig.emails(delivered) == 1 and rig.emails(lost) == 1
