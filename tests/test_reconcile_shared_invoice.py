"""Reconciliation never calls an email "sent" on evidence another delivery can explain.

Two rules email the same approved invoice (bill styles Full and Summary). When one
rule's call never reached the platform but the other's did, the invoice reads
delivered, yet that proves nothing for the first rule's delivery: it stays
``uncertain`` with a note naming the other delivery. The counts come from the
simulator's own action log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from billnotify.actions.invoice_action import InvoiceActionExecutor
from billnotify.clients.billing_platform import BillingPlatformClient
from billnotify.components import build_worker, rule_settings
from billnotify.config.loader import parse_config
from billnotify.deliveries.base import DeliveryStatus
from billnotify.deliveries.reconcile import NOTE_AMBIGUOUS, NOTE_NOT_DELIVERED
from billnotify.deliveries.worker import DeliveryWorker
from billnotify.events import build_event
from billnotify.rules.engine import RuleHandler
from billnotify.simulator import Simulator
from billnotify.store import Delivery, SqliteStore
from billnotify.templating import TemplateRenderer
from servers import Clock, sim_source

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
INVOICES = "/backend/api/v1/invoices/"


def email_rule(name: str, style: str) -> dict[str, Any]:
    return {
        "name": name,
        "on": ["invoice.status_changed"],
        "when": "'Approved' in event.data.added",
        "actions": [{"type": "invoice_action", "action": "email", "params": {"billStyle": style}}],
    }


@dataclass
class Rig:
    sim: Simulator
    store: SqliteStore
    clock: Clock
    handler: RuleHandler
    worker: DeliveryWorker

    async def approve(
        self, invoice: dict[str, Any] | None = None, key: str = "a"
    ) -> dict[str, Any]:
        invoice = invoice or self.sim.state.add_invoice(status=["Raised", "Approved"])
        event = build_event(
            source="acme",
            entity="invoice",
            object_id=invoice["id"],
            type_="invoice.status_changed",
            key=key,
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

    async def deliveries(self) -> dict[str, Delivery]:
        """Rule name -> its delivery (with history), for a single event."""
        rows = await self.store.list_deliveries()
        full = [await self.store.get_delivery(row.id) for row in rows]
        return {row.rule: row for row in full if row is not None}

    def emails(self, invoice: dict[str, Any]) -> list[str]:
        return [
            str(entry["params"].get("billStyle"))
            for entry in self.sim.state.action_log
            if entry["invoice_id"] == str(invoice["id"])
            and entry["action"] == "email"
            and entry["status_code"] == 200
        ]

    async def settle(self) -> int:
        self.clock.now += self.worker.reconciler.settle_after
        return await self.worker.reconcile()


async def make_rig(tmp_path: Path, sim: Simulator, rules: list[dict[str, Any]]) -> Any:
    config = parse_config(
        {"sources": [sim_source(sim, timeout="5s")], "rules": rules}, base_dir=tmp_path
    )
    client = BillingPlatformClient(sim.billing_base_url, sim.api_key, timeout=5)
    templates = TemplateRenderer(tmp_path)
    executors: dict[str, Any] = {
        "invoice_action": InvoiceActionExecutor({"acme": client}, templates)
    }
    clock = Clock(T0)
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    worker = build_worker(config, store, executors, clock, billing_clients={"acme": client})
    handler = RuleHandler(rule_settings(config), store, templates, executors, clock)
    return Rig(sim, store, clock, handler, worker), client


@pytest.fixture
async def two_rules(tmp_path: Path, sim: Simulator) -> AsyncIterator[Rig]:
    rig, client = await make_rig(
        tmp_path, sim, [email_rule("email-full", "Full"), email_rule("email-summary", "Summary")]
    )
    try:
        yield rig
    finally:
        await rig.store.close()
        await client.close()


@pytest.fixture
async def one_rule(tmp_path: Path, sim: Simulator) -> AsyncIterator[Rig]:
    rig, client = await make_rig(tmp_path, sim, [email_rule("email-full", "Full")])
    try:
        yield rig
    finally:
        await rig.store.close()
        await client.close()


async def test_delivered_by_the_other_rule_proves_nothing_for_this_one(two_rules: Rig) -> None:
    rig = two_rules
    invoice = await rig.approve()
    # the first call is cut before the platform handles it; the other rule's goes through
    rig.sim.faults.add(INVOICES, "reset", method="POST")
    await rig.worker.run_once()
    rows = await rig.deliveries()
    [lost] = [d for d in rows.values() if d.status is DeliveryStatus.UNCERTAIN]
    [sent] = [d for d in rows.values() if d.status is DeliveryStatus.SUCCEEDED]
    assert len(rig.emails(invoice)) == 1  # only the other rule's call reached the platform

    assert await rig.settle() == 0
    row = (await rig.deliveries())[lost.rule]
    assert row.status is DeliveryStatus.UNCERTAIN
    assert (row.note or "").startswith(NOTE_AMBIGUOUS)
    assert sent.id in (row.note or "") and "may have emailed it too" in (row.note or "")
    assert rig.worker.reconciler.delivered == 0 and rig.worker.reconciler.ambiguous == 1

    # the verdict is final: later passes leave it alone and nothing is sent
    assert await rig.settle() == 0
    assert rig.worker.reconciler.ambiguous == 1
    await rig.worker.run_once()
    assert len(rig.emails(invoice)) == 1


async def test_an_earlier_event_emailing_the_invoice_also_counts(one_rule: Rig) -> None:
    rig = one_rule
    invoice = await rig.approve(key="first")
    await rig.worker.run_once()
    assert rig.emails(invoice) == ["Full"]

    # approved again later (a new event, the same invoice): this call never arrives
    await rig.approve(invoice, key="second")
    rig.sim.faults.add(INVOICES, "reset", method="POST")
    await rig.worker.run_once()
    rows = await rig.store.list_deliveries([DeliveryStatus.UNCERTAIN])
    assert len(rows) == 1

    assert await rig.settle() == 0
    row = await rig.store.get_delivery(rows[0].id)
    assert row is not None and row.status is DeliveryStatus.UNCERTAIN
    assert (row.note or "").startswith(NOTE_AMBIGUOUS)
    assert rig.emails(invoice) == ["Full"]


async def test_not_delivered_still_settles_both_rules(two_rules: Rig) -> None:
    rig = two_rules
    invoice = await rig.approve()
    rig.sim.faults.add(INVOICES, "reset", count=2, method="POST")  # neither call arrives
    await rig.worker.run_once()
    assert {d.status for d in (await rig.deliveries()).values()} == {DeliveryStatus.UNCERTAIN}

    assert await rig.settle() == 2
    rows = await rig.deliveries()
    assert {(d.status, d.note) for d in rows.values()} == {
        (DeliveryStatus.PENDING, NOTE_NOT_DELIVERED)
    }
    await rig.worker.run_once()
    assert {d.status for d in (await rig.deliveries()).values()} == {DeliveryStatus.SUCCEEDED}
    assert sorted(rig.emails(invoice)) == ["Full", "Summary"]  # each rule's email, once


async def test_not_delivered_waits_while_another_email_of_the_invoice_is_in_flight(
    two_rules: Rig,
) -> None:
    rig = two_rules
    await rig.approve()
    rows = await rig.deliveries()
    lost, other = rows["email-full"], rows["email-summary"]
    rig.sim.faults.add(INVOICES, "reset", method="POST")
    # only the first rule's delivery runs; the other one is "sending" (in flight)
    await rig.store.start_attempts([lost.id], rig.clock.now)
    result = await rig.worker.executors["invoice_action"].execute(
        rig.handler.settings.rules[0].actions[0],
        (await rig.store.get_events([lost.event_id]))[0].event,
        rig.handler.settings.rules[0],
        delivery_id=lost.id,
        attempt=1,
    )
    await rig.store.set_delivery_status(lost.id, DeliveryStatus.UNCERTAIN, now=rig.clock.now)
    assert result.outcome.value == "uncertain"
    await rig.store.start_attempts([other.id], rig.clock.now)

    assert await rig.settle() == 0
    assert (await rig.deliveries())["email-full"].status is DeliveryStatus.UNCERTAIN

    # the other one settles without emailing: now "not delivered" is this one's answer
    await rig.store.set_delivery_status(
        other.id, DeliveryStatus.PENDING, now=rig.clock.now, next_attempt_at=rig.clock.now
    )
    assert await rig.settle() == 1
    assert (await rig.deliveries())["email-full"].status is DeliveryStatus.PENDING


async def test_a_single_rule_still_reconciles_as_delivered(one_rule: Rig) -> None:
    rig = one_rule
    invoice = await rig.approve()
    rig.sim.faults.add(INVOICES, "reset_after", method="POST")  # acted, answer lost
    await rig.worker.run_once()
    assert (await rig.deliveries())["email-full"].status is DeliveryStatus.UNCERTAIN

    assert await rig.settle() == 1
    row = (await rig.deliveries())["email-full"]
    assert (row.status, row.note) == (DeliveryStatus.SUCCEEDED, "reconciled: delivered")
    assert rig.emails(invoice) == ["Full"]
