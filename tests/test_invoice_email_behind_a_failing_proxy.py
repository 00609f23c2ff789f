"""An invoice email through a reverse proxy that forwards the request, so the platform
emails the invoice, and then loses the answer: a ``502`` or ``504`` HTML page with none
of the platform's error codes, or a dropped connection (SPEC §4.1).

The outcome is unknown, so the delivery is ``uncertain`` and never retried blindly: the
simulator's own action log shows exactly one email. Reconciliation then settles it as
delivered (the only email of that invoice is this delivery's). A documented failure
(``500601``, the platform says the email was not sent) stays retryable through the same
proxy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from billnotify.actions.invoice_action import InvoiceActionExecutor
from billnotify.clients.billing_platform import BillingPlatformClient
from billnotify.components import build_worker, rule_settings
from billnotify.config.loader import parse_config
from billnotify.deliveries.base import DeliveryStatus
from billnotify.deliveries.worker import DeliveryWorker
from billnotify.events import build_event
from billnotify.rules.engine import RuleHandler
from billnotify.simulator import Simulator
from billnotify.store import Delivery, SqliteStore
from billnotify.templating import TemplateRenderer
from servers import Clock, serving, sim_source

pytestmark = [pytest.mark.fault, pytest.mark.timeout(60)]

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
GATEWAY_PAGE = "<html><body><h1>{status}</h1>nginx</body></html>"


@dataclass
class Proxy:
    """Forwards every request to the simulator; a POST's answer is replaced per ``mode``.

    ``mode``: ``None`` passes answers through; ``"502"`` / ``"504"`` answer an HTML
    gateway page after the platform answered; ``"drop"`` aborts the connection instead.
    """

    upstream: str
    mode: str | None = None
    forwarded: list[int] = field(default_factory=list)
    """The platform's statuses of the POSTs forwarded."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        return app

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                self.upstream + request.path_qs,
                data=body or None,
                headers=headers,
            ) as upstream,
        ):
            payload = await upstream.read()
            status, ctype = upstream.status, upstream.content_type
        if request.method != "POST" or self.mode is None:
            return web.Response(body=payload, status=status, content_type=ctype)
        self.forwarded.append(status)
        if self.mode == "drop":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=200)  # never written: the connection is gone
        page = GATEWAY_PAGE.format(status=self.mode)
        return web.Response(text=page, status=int(self.mode), content_type="text/html")


@dataclass
class Rig:
    sim: Simulator
    proxy: Proxy
    store: SqliteStore
    clock: Clock
    handler: RuleHandler
    worker: DeliveryWorker

    async def approve(self) -> dict[str, Any]:
        invoice = self.sim.state.add_invoice(status=["Raised", "Approved"])
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

    async def delivery(self) -> Delivery:
        (row,) = await self.store.list_deliveries()
        full = await self.store.get_delivery(row.id)
        assert full is not None
        return full

    def emails(self, invoice: dict[str, Any]) -> int:
        return self.sim.state.email_calls(invoice["id"])


@pytest.fixture
async def rig(tmp_path: Path, sim: Simulator) -> AsyncIterator[Rig]:
    proxy = Proxy(sim.billing_base_url.split("/backend/")[0])
    async with serving(proxy.app()) as proxy_url:
        base_url = proxy_url + "/backend/api/v1"
        config = parse_config(
            {
                "sources": [{**sim_source(sim, timeout="5s"), "base_url": base_url}],
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
        client = BillingPlatformClient(base_url, sim.api_key, timeout=5)
        templates = TemplateRenderer(tmp_path)
        executors: dict[str, Any] = {
            "invoice_action": InvoiceActionExecutor({"acme": client}, templates)
        }
        clock = Clock(T0)
        try:
            async with SqliteStore(tmp_path / "state.db") as store:
                worker = build_worker(
                    config, store, executors, clock, billing_clients={"acme": client}
                )
                handler = RuleHandler(rule_settings(config), store, templates, executors, clock)
                yield Rig(sim, proxy, store, clock, handler, worker)
        finally:
            await client.close()


@pytest.mark.parametrize("mode", ["502", "504", "drop"])
async def test_an_answer_lost_at_the_proxy_after_the_platform_emailed_is_uncertain(
    rig: Rig, mode: str
) -> None:
    rig.proxy.mode = mode
    invoice = await rig.approve()
    await rig.worker.run_once()

    row = await rig.delivery()
    assert rig.proxy.forwarded == [200]  # the platform did email the invoice
    assert row.status is DeliveryStatus.UNCERTAIN, row.last_error
    assert row.next_attempt_at is None
    if mode != "drop":
        assert row.last_status_code == int(mode)
        assert f"HTTP {mode}" in (row.last_error or "")

    # time passes: nothing retries an uncertain delivery by itself
    rig.proxy.mode = None
    rig.clock.now += timedelta(hours=1)
    await rig.worker.run_once()
    assert rig.emails(invoice) == 1

    # the platform's records settle it: this delivery is the invoice's only email
    assert await rig.worker.reconcile() == 1
    row = await rig.delivery()
    assert (row.status, row.note) == (DeliveryStatus.SUCCEEDED, "reconciled: delivered")
    await rig.worker.run_once()
    assert rig.emails(invoice) == 1


async def test_a_documented_email_failure_through_the_proxy_is_retried(rig: Rig) -> None:
    invoice = await rig.approve()
    rig.sim.state.fail_next_action("email", 500601, invoice_id=invoice["id"])
    await rig.worker.run_once()

    row = await rig.delivery()
    assert row.status is DeliveryStatus.RETRY_SCHEDULED, row.last_error
    assert "500601" in (row.last_error or "")
    rig.clock.now += timedelta(seconds=5)
    await rig.worker.run_once()
    assert (await rig.delivery()).status is DeliveryStatus.SUCCEEDED
    assert rig.emails(invoice) == 1
