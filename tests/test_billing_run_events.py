"""Billing runs and invoices seen by the service, end to end: ``billing_run.created`` and
``billing_run.updated`` on MQTT and in the event log, ``invoice.updated`` likewise, and
rules whose ``when`` (and ``sources``) pick some billing runs and some customers' invoices
and not others.

Everything is real and on loopback: mosquitto, the billing simulator over HTTP, a webhook
receiver, the service in this event loop.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from billnotify.deliveries.base import DeliveryStatus
from billnotify.simulator import Simulator
from conftest import Mosquitto, Subscriber
from servers import WebhookReceiver, sim_source
from service_harness import events_on, polls_after, running_service, until

SubscriberFactory = Callable[..., contextlib.AbstractAsyncContextManager[Subscriber]]
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _config(
    sim: Simulator, broker: Mosquitto, prefix: str, receiver: WebhookReceiver
) -> dict[str, Any]:
    def rule(name: str, on: str, when: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "on": [on],
            "when": when,
            "actions": [{"type": "webhook", "endpoint": "ops"}],
            **extra,
        }

    return {
        "service": {"name": "runs-e2e", "state": "state.db", "http": "", "shutdown_grace": "5s"},
        "mqtt": {"url": broker.url(), "client_id": f"bn-{prefix}", "prefix": prefix},
        "sources": [
            sim_source(
                sim,
                poll_interval="200ms",
                watch=["billing_runs", "invoices"],
                timeout="5s",
                max_attempts=1,
            ),
            # the same platform under another name, invoices only: rules tell them apart
            sim_source(
                sim,
                name="elsewhere",
                poll_interval="200ms",
                watch=["invoices"],
                timeout="5s",
                max_attempts=1,
            ),
        ],
        "webhooks": [
            {
                "name": "ops",
                "url": receiver.url("/ok"),
                "secret": SECRET,
                "allow_private": True,
                "timeout": "5s",
            }
        ],
        "rules": [
            rule("monthly-runs", "billing_run.created", "object.name.startswith('Monthly')"),
            rule("renamed-runs", "billing_run.updated", "'name' in event.data.changed"),
            rule(
                "big-customer-invoices",
                "invoice.*",
                "object.customerID == '42' and event.type in ['invoice.created', "
                "'invoice.updated']",
                sources=["acme"],
            ),
            rule(
                "elsewhere-small-customer",
                "invoice.created",
                "object.customerID == '43'",
                sources=["elsewhere"],
            ),
        ],
    }


async def test_billing_run_and_invoice_events_and_rule_filters(
    tmp_path: Path,
    sim: Simulator,
    mosquitto: Mosquitto,
    mqtt_prefix: str,
    mqtt_subscriber: SubscriberFactory,
    receiver: WebhookReceiver,
) -> None:
    head = f"{mqtt_prefix}/events/acme/"
    old_run = sim.state.add_billing_run(name="Monthly October")  # in the baseline: no event
    async with (
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/events/#") as sub,
        running_service(_config(sim, mosquitto, mqtt_prefix, receiver), tmp_path) as service,
    ):
        monthly = sim.state.add_billing_run(name="Monthly November", invoiceAmount="1200.00")
        adhoc = sim.state.add_billing_run(name="Ad hoc credit notes")
        big = sim.state.add_invoice(customerID="42")
        small = sim.state.add_invoice(customerID="43")
        await sub.wait_for(
            lambda _: all(
                events_on(sub, f"{head}{entity}/{record['id']}/created")
                for entity, record in (
                    ("billing_run", monthly),
                    ("billing_run", adhoc),
                    ("invoice", big),
                    ("invoice", small),
                )
            )
        )

        sim.state.update_billing_run(monthly["id"], name="Monthly November (rerun)")
        sim.state.update_billing_run(adhoc["id"], invoiceMessage="Reminder")
        sim.state.update_invoice(big["id"], customerReference="PO-7781")
        sim.state.update_invoice(small["id"], customerReference="PO-1")
        await sub.wait_for(
            lambda _: all(
                events_on(sub, f"{head}{entity}/{record['id']}/updated")
                for entity, record in (
                    ("billing_run", monthly),
                    ("billing_run", adhoc),
                    ("invoice", big),
                    ("invoice", small),
                )
            )
        )

        async def delivered() -> bool:
            rows = await service.store.list_deliveries()
            return len(rows) == 5 and all(r.status is DeliveryStatus.SUCCEEDED for r in rows)

        await until(delivered, "five webhook deliveries")
        await polls_after(service, 2)
        everything = await service.store.list_events(type_glob="*")
        logged = {
            (s.event.type, s.event.subject): s.event
            for s in everything
            if s.event.source == "billnotify://acme"
        }
        [elsewhere_small] = [
            s.event
            for s in everything
            if s.event.source == "billnotify://elsewhere"
            and s.event.type == "invoice.created"
            and s.event.subject == f"invoices/{small['id']}"
        ]
        deliveries = await service.store.list_deliveries()

    # on MQTT exactly what is in the log, once each, and nothing about the baseline run
    published = [event for _, event in events_on(sub, head)]
    assert sorted((e["type"], e["subject"]) for e in published) == sorted(logged)
    assert not events_on(sub, f"{head}billing_run/{old_run['id']}/")
    for entity, record in (("billing_run", monthly), ("billing_run", adhoc)):
        subject = f"billing_runs/{record['id']}"
        [(_, created)] = events_on(sub, f"{head}{entity}/{record['id']}/created")
        assert created["id"] == logged[("billing_run.created", subject)].id
        assert created["source"] == "billnotify://acme" and created["subject"] == subject
        assert created["data"]["object"]["name"] == record["name"]
        assert "previous" not in created["data"]
        [(_, updated)] = events_on(sub, f"{head}{entity}/{record['id']}/updated")
        assert updated["id"] == logged[("billing_run.updated", subject)].id
    [(_, renamed)] = events_on(sub, f"{head}billing_run/{monthly['id']}/updated")
    assert renamed["data"]["changed"] == ["name"]
    assert renamed["data"]["previous"] == {"name": "Monthly November"}
    assert renamed["data"]["object"]["name"] == "Monthly November (rerun)"
    [(_, invoice_updated)] = events_on(sub, f"{head}invoice/{big['id']}/updated")
    assert invoice_updated["data"]["changed"] == ["customerReference"]
    assert invoice_updated["data"]["previous"] == {"customerReference": ""}
    assert invoice_updated["data"]["object"]["customerReference"] == "PO-7781"

    # the rules' filters: Monthly runs created, renamed runs, customer 42's invoices (from
    # acme only), customer 43's new invoice from the other source only
    expected = {
        ("monthly-runs", logged[("billing_run.created", f"billing_runs/{monthly['id']}")].id),
        ("renamed-runs", logged[("billing_run.updated", f"billing_runs/{monthly['id']}")].id),
        ("big-customer-invoices", logged[("invoice.created", f"invoices/{big['id']}")].id),
        ("big-customer-invoices", logged[("invoice.updated", f"invoices/{big['id']}")].id),
        ("elsewhere-small-customer", elsewhere_small.id),
    }
    assert {(d.rule, d.event_id) for d in deliveries} == expected
    received = [json.loads(hit.body) for hit in receiver.hits if hit.path == "/ok"]
    assert sorted(body["id"] for body in received) == sorted(event_id for _, event_id in expected)
