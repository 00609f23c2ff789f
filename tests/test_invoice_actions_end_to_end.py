"""Six invoice actions of seed 002 run through rules by the service, end to end.

``emailCdrs``, ``updateCallTransactions``, ``reapplyDiscountPlans``,
``generateDownloadLink``, ``linkToXero`` and ``unlinkFromXero``: one rule each, picked by
a ``when`` on the new invoice's customer. The service polls the simulator over HTTP, the
rule engine plans the deliveries, the worker calls ``POST invoices/ID?action=X``; the
simulator must have received exactly the right call with the right parameters, once, and
every delivery must have succeeded. ``updateCallTransactions`` changes the unsent invoice,
which the next poll reports as ``invoice.updated`` (event log and MQTT) without firing
any rule again. The config is the TOML an operator would write: ``billnotify check
--connect`` accepts it first, and ``billnotify deliveries --json`` lists the outcome.

Everything is real and on loopback: mosquitto, the billing simulator over HTTP, the
service in this event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from billnotify.deliveries.base import DeliveryStatus
from billnotify.simulator import Simulator
from conftest import Mosquitto, Subscriber
from servers import PYTHON, sim_source, toml_config
from service_harness import events_on, polls_after, running_service, until

XERO_ID = "550e8400-e29b-41d4-a716-446655440000"
OLD_XERO_ID = "6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b"

SubscriberFactory = Callable[..., contextlib.AbstractAsyncContextManager[Subscriber]]

# customer id -> (rule name, action, params as configured, params the platform must get)
RULES: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    "11": (
        "cdrs-to-accounts",
        "emailCdrs",
        {"email": ["cdrs+{{ object.customerID }}@example.com", "ops@example.com"]},
        {"email": ["cdrs+11@example.com", "ops@example.com"]},
    ),
    "12": ("refresh-calls", "updateCallTransactions", {}, {}),
    "13": ("reapply-discounts", "reapplyDiscountPlans", {}, {}),
    "14": (
        "download-link",
        "generateDownloadLink",
        {"expiryHours": 72, "maxUses": "{{ 1 + 1 }}"},
        {"expiryHours": 72, "maxUses": 2},
    ),
    "15": ("link-xero", "linkToXero", {"xeroID": XERO_ID}, {"xeroID": XERO_ID}),
    "16": ("unlink-xero", "unlinkFromXero", {}, {}),
}


def _config(sim: Simulator, broker: Mosquitto, prefix: str) -> dict[str, Any]:
    return {
        "service": {"name": "actions-e2e", "state": "state.db", "http": "", "shutdown_grace": "5s"},
        "mqtt": {"url": broker.url(), "client_id": f"bn-{prefix}", "prefix": prefix},
        "sources": [
            sim_source(
                sim,
                poll_interval="200ms",
                watch=["invoices"],
                include_unsent=True,  # updateCallTransactions acts on the unsent invoice only
                timeout="5s",
                max_attempts=1,
            )
        ],
        "rules": [
            {
                "name": name,
                "on": ["invoice.created"],
                "when": f"event.data.object.customerID == '{customer}'",
                "actions": [
                    {"type": "invoice_action", "action": action, "params": params}
                    if params
                    else {"type": "invoice_action", "action": action}
                ],
            }
            for customer, (name, action, params, _) in RULES.items()
        ],
    }


async def cli(*args: str, cwd: Path) -> tuple[int, str]:
    """``billnotify ARGS`` as a subprocess (this loop keeps serving the simulator)."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "billnotify",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_six_invoice_actions_run_through_rules_once_with_their_params(
    tmp_path: Path,
    sim: Simulator,
    mosquitto: Mosquitto,
    mqtt_prefix: str,
    mqtt_subscriber: SubscriberFactory,
) -> None:
    sim.state.xero_module_active = True
    sim.state.expert_level = 5  # unlinking needs expert level 5 (seed 002)
    raw = _config(sim, mosquitto, mqtt_prefix)
    (tmp_path / "config.toml").write_text(toml_config(raw))
    status, out = await cli("check", "--connect", "-c", "config.toml", cwd=tmp_path)
    assert status == 0, out
    async with (
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/events/#") as sub,
        running_service(raw, tmp_path) as service,
    ):
        approved = ["Raised", "Approved"]
        invoices = {
            "11": sim.state.add_invoice(customerID="11", status=approved, invoiceCallCount=7),
            "12": sim.state.add_invoice(customerID="12", status=["Unsent"], invoiceCallCount=2),
            "13": sim.state.add_invoice(customerID="13"),
            "14": sim.state.add_invoice(customerID="14", status=approved),
            "15": sim.state.add_invoice(customerID="15"),
            "16": sim.state.add_invoice(customerID="16"),
        }
        sim.state.xero_links[invoices["16"]["id"]] = OLD_XERO_ID
        called_at = sim.clock.now()

        async def all_succeeded() -> bool:
            rows = await service.store.list_deliveries()
            return len(rows) == len(RULES) and all(
                r.status is DeliveryStatus.SUCCEEDED for r in rows
            )

        await until(all_succeeded, "six succeeded deliveries")
        unsent_id = invoices["12"]["id"]

        async def updated_logged() -> list[Any]:
            return await service.store.list_events(type_glob="invoice.updated")

        [updated] = await until(updated_logged, "invoice.updated of the unsent invoice")
        head = f"{mqtt_prefix}/events/acme/invoice/{unsent_id}/"
        await sub.wait_for(lambda _: bool(events_on(sub, head + "updated")))
        await polls_after(service, 3)  # no rule fires again on the update
        deliveries = await service.store.list_deliveries()

    # exactly one call per action, on the right invoice, with the rendered params
    calls = sorted(
        (c["invoice_id"], c["action"], c["params"], c["status_code"]) for c in sim.state.action_log
    )
    expected = sorted(
        (invoices[customer]["id"], action, sent, 200)
        for customer, (_, action, _, sent) in RULES.items()
    )
    assert calls == expected

    by_rule = {d.rule: d for d in deliveries}
    assert set(by_rule) == {name for name, *_ in RULES.values()}
    for customer, (name, action, _, _) in RULES.items():
        row = by_rule[name]
        assert row.status is DeliveryStatus.SUCCEEDED and row.attempts == 1, row
        assert row.target == f"invoice {invoices[customer]['id']} {action}"
    assert by_rule["cdrs-to-accounts"].exactly_once  # it reaches customers

    # what the platform did
    [link] = sim.state.download_links.values()
    assert link["invoice_id"] == invoices["14"]["id"] and link["max_uses"] == 2
    expected_expiry = called_at + timedelta(hours=72)
    assert abs(link["expires_at"] - expected_expiry) < timedelta(seconds=30)
    assert sim.state.xero_links == {invoices["15"]["id"]: XERO_ID}
    assert sim.state.invoices[unsent_id]["invoiceCallCount"] == 5

    # the unsent invoice's new calls came back as invoice.updated, on the log and on MQTT
    data = updated.event.data
    assert updated.event.subject == f"invoices/{unsent_id}"
    assert {"invoiceCallCount", "invoiceCallMinutes"} <= set(data["changed"])
    assert data["previous"]["invoiceCallCount"] == 2
    assert data["object"]["invoiceCallCount"] == 5
    [(_, on_mqtt)] = events_on(sub, head + "updated")
    assert on_mqtt["id"] == updated.event.id
    assert on_mqtt["data"]["object"]["invoiceCallCount"] == 5

    # and the operator sees the same through the CLI
    status, out = await cli("deliveries", "--json", "-c", "config.toml", cwd=tmp_path)
    assert status == 0, out
    listed = {row["rule"]: row for row in map(json.loads, out.splitlines())}
    assert {rule: (row["status"], row["target"]) for rule, row in listed.items()} == {
        name: ("succeeded", f"invoice {invoices[customer]['id']} {action}")
        for customer, (name, action, _, _) in RULES.items()
    }
