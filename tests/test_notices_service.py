"""The service tells about its own failures (SPEC §7.6), end to end: a dead webhook
delivery, a 410 that disables an endpoint, a source that keeps failing and recovers, and
a customer mail left uncertain by a SIGKILL each become a ``billnotify.*`` CloudEvent in
the log, on MQTT under ``{prefix}/events/{service}/{entity}/{id}/{action}``, and a rule
routes them to a webhook like any other event, never into a loop.

Everything is real and on loopback: mosquitto, the billing simulator over HTTP, webhook
receivers (aiohttp), and ``billnotify run`` as a subprocess for the kill.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from billnotify.app import Service
from billnotify.deliveries.base import DeliveryStatus
from billnotify.notices import is_notice
from billnotify.simulator import Simulator
from conftest import Mosquitto, Subscriber
from processes import BillnotifyRun, query
from servers import WebhookReceiver, sim_source, toml_config
from service_harness import events_on, running_service, until

SERVICE = "bn-self"
TASKS_PATH = "/backend/api/v1/billingTasks"
INVOICES_PATH = "/backend/api/v1/invoices/"
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

SubscriberFactory = Callable[..., contextlib.AbstractAsyncContextManager[Subscriber]]


def _config(
    tmp_path: Path,
    sim: Simulator,
    broker: Mosquitto,
    prefix: str,
    *,
    webhooks: dict[str, str],
    rules: list[dict[str, Any]],
    **source: Any,
) -> dict[str, Any]:
    (tmp_path / "templates").mkdir(exist_ok=True)
    return {
        "service": {"name": SERVICE, "state": "state.db", "http": "", "shutdown_grace": "5s"},
        "mqtt": {
            "url": broker.url(),
            "client_id": f"bn-{prefix}",
            "prefix": prefix,
            "reconnect_max": "500ms",
        },
        "sources": [
            sim_source(
                sim,
                poll_interval="200ms",
                watch=["billing_tasks"],
                timeout="2s",
                max_attempts=1,
                **source,
            )
        ],
        "webhooks": [
            {
                "name": name,
                "url": url,
                "secret": SECRET,
                "allow_private": True,
                "timeout": "5s",
                "retry_schedule": ["0s"],
            }
            for name, url in webhooks.items()
        ],
        "rules": rules,
    }


def _rule(name: str, on: str, endpoint: str) -> dict[str, Any]:
    return {"name": name, "on": [on], "actions": [{"type": "webhook", "endpoint": endpoint}]}


def notices_on(sub: Subscriber, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """(topic, CloudEvent) of every notice received under ``{prefix}/events/{SERVICE}/``."""
    return events_on(sub, f"{prefix}/events/{SERVICE}/")


def bodies(receiver: WebhookReceiver, path: str) -> list[dict[str, Any]]:
    return [json.loads(hit.body) for hit in receiver.hits if hit.path == path]


async def logged_notices(service: Service) -> list[dict[str, Any]]:
    events = await service.store.list_events(type_glob="billnotify.*")
    return [json.loads(stored.event.to_json()) for stored in events]


# -- deliveries -------------------------------------------------------------------------


async def test_a_dead_webhook_delivery_is_published_and_routed_by_a_rule(
    tmp_path: Path,
    mosquitto: Mosquitto,
    mqtt_prefix: str,
    mqtt_subscriber: SubscriberFactory,
    receiver: WebhookReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        Simulator(page_max=50) as sim,
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/events/#") as sub,
    ):
        task = sim.state.add_billing_task(status="Running")
        raw = _config(
            tmp_path,
            sim,
            mosquitto,
            mqtt_prefix,
            webhooks={"bad": receiver.url("/status/400"), "ops": receiver.url("/ok")},
            rules=[
                _rule("alert", "billing_task.status_changed", "bad"),
                _rule("watch", "billnotify.delivery.*", "ops"),
            ],
        )
        with caplog.at_level(logging.INFO, logger="billnotify"):
            async with running_service(raw, tmp_path) as service:
                sim.state.update_billing_task(task["id"], status="Failed")
                changed = time.monotonic()
                await sub.wait_for(lambda _: bool(notices_on(sub, mqtt_prefix)))
                on_mqtt = time.monotonic() - changed

                async def routed() -> list[dict[str, Any]]:
                    return bodies(receiver, "/ok")

                (forwarded,) = await until(routed, "the rule's webhook with the notice")
                routed_after = time.monotonic() - changed
                deliveries = {d.rule: d for d in await service.store.list_deliveries(limit=10)}
                (logged,) = await logged_notices(service)

    alert = deliveries["alert"]
    assert alert.status is DeliveryStatus.DEAD
    assert deliveries["watch"].status is DeliveryStatus.SUCCEEDED
    ((topic, notice),) = notices_on(sub, mqtt_prefix)
    assert topic == f"{mqtt_prefix}/events/{SERVICE}/delivery/{alert.id}/dead"
    assert notice == logged == forwarded
    assert notice["type"] == "billnotify.delivery.dead"
    assert notice["source"] == f"billnotify://{SERVICE}"
    assert notice["subject"] == f"deliveries/{alert.id}"
    data = notice["data"]
    assert data["delivery"] == alert.id and data["rule"] == "alert"
    assert data["action"] == "webhook" and data["endpoint"] == "bad"
    assert data["event"]["id"] == alert.event_id
    assert data["event"]["type"] == "billing_task.status_changed"
    assert data["event"]["subject"] == f"billing_tasks/{task['id']}"
    assert data["attempts"] == 1 and data["status_code"] == 400
    assert "400" in data["error"]
    (line,) = [r for r in caplog.records if getattr(r, "event_type", None) == notice["type"]]
    assert line.levelno == logging.ERROR
    assert line.delivery_id == alert.id  # type: ignore[attr-defined]
    assert line.event_id == notice["id"]  # type: ignore[attr-defined]
    print(f"\ndead delivery: on MQTT {on_mqtt:.2f}s, routed {routed_after:.2f}s after the change")


async def test_a_rule_never_fires_on_what_its_own_deliveries_caused(
    tmp_path: Path,
    mosquitto: Mosquitto,
    mqtt_prefix: str,
    mqtt_subscriber: SubscriberFactory,
    receiver: WebhookReceiver,
) -> None:
    """``echo`` routes dead deliveries to an endpoint that refuses everything: its own
    delivery dies too, and that is logged, never another notice (no loop)."""
    async with (
        Simulator(page_max=50) as sim,
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/events/#") as sub,
    ):
        task = sim.state.add_billing_task(status="Running")
        raw = _config(
            tmp_path,
            sim,
            mosquitto,
            mqtt_prefix,
            webhooks={"bad": receiver.url("/status/400")},
            rules=[
                _rule("alert", "billing_task.status_changed", "bad"),
                _rule("echo", "billnotify.*", "bad"),
            ],
        )
        async with running_service(raw, tmp_path) as service:
            sim.state.update_billing_task(task["id"], status="Failed")

            async def both_dead() -> bool:
                rows = await service.store.list_deliveries([DeliveryStatus.DEAD])
                return {d.rule for d in rows} == {"alert", "echo"}

            await until(both_dead, "alert's delivery and echo's both dead")
            assert service.notices is not None
            await service.notices.flush()  # echo's outcome has been told, if at all
            logged = await logged_notices(service)
            last = await service.store.last_seq()

            async def published() -> bool:
                assert service.publisher is not None
                return service.publisher.last_published_seq >= last

            await until(published, "everything logged published")
            await sub.wait_for(lambda _: len(notices_on(sub, mqtt_prefix)) >= 1)

    assert [n["type"] for n in logged] == ["billnotify.delivery.dead"]
    assert logged[0]["data"]["rule"] == "alert"
    assert [n["id"] for _, n in notices_on(sub, mqtt_prefix)] == [logged[0]["id"]]
    assert len([h for h in receiver.hits if h.path == "/status/400"]) == 2


async def test_a_410_disables_the_endpoint_and_says_so(
    tmp_path: Path,
    mosquitto: Mosquitto,
    mqtt_prefix: str,
    mqtt_subscriber: SubscriberFactory,
    receiver: WebhookReceiver,
) -> None:
    """The 410 gives ``endpoint.disabled`` and the delivery's ``delivery.dead``; a later
    delivery to the disabled endpoint dies without a request, and says so too."""
    async with (
        Simulator(page_max=50) as sim,
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/events/#") as sub,
    ):
        task = sim.state.add_billing_task(status="Running")
        raw = _config(
            tmp_path,
            sim,
            mosquitto,
            mqtt_prefix,
            webhooks={"gone": receiver.url("/status/410")},
            rules=[_rule("alert", "billing_task.status_changed", "gone")],
        )
        async with running_service(raw, tmp_path) as service:
            sim.state.update_billing_task(task["id"], status="Failed")
            await sub.wait_for(lambda _: len(notices_on(sub, mqtt_prefix)) >= 2)
            sim.state.update_billing_task(task["id"], status="Running")
            await sub.wait_for(lambda _: len(notices_on(sub, mqtt_prefix)) >= 3)
            rows = await service.store.list_deliveries(limit=10)

    first, second = sorted(rows, key=lambda d: d.event_seq)
    assert first.status is second.status is DeliveryStatus.DEAD
    received = dict(notices_on(sub, mqtt_prefix))
    disabled = received[f"{mqtt_prefix}/events/{SERVICE}/endpoint/gone/disabled"]
    assert disabled["type"] == "billnotify.endpoint.disabled"
    assert disabled["data"] == {
        "endpoint": "gone",
        "reason": f"410 Gone on delivery {first.id}",
        "delivery": first.id,
    }
    dead = received[f"{mqtt_prefix}/events/{SERVICE}/delivery/{first.id}/dead"]
    assert dead["data"]["status_code"] == 410
    unsent = received[f"{mqtt_prefix}/events/{SERVICE}/delivery/{second.id}/dead"]
    assert unsent["data"]["attempts"] == 0
    assert "endpoint 'gone' disabled" in unsent["data"]["error"]
    assert len(receiver.hits) == 1  # the second delivery never went out
    assert len(notices_on(sub, mqtt_prefix)) == 3


async def test_a_delivery_dead_at_planning_is_reported_too(
    tmp_path: Path,
    mosquitto: Mosquitto,
    mqtt_prefix: str,
    mqtt_subscriber: SubscriberFactory,
    receiver: WebhookReceiver,
) -> None:
    """A ``when`` that cannot be evaluated records the delivery dead before any attempt:
    that is told as well."""
    async with (
        Simulator(page_max=50) as sim,
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/events/#") as sub,
    ):
        task = sim.state.add_billing_task(status="Running")
        broken = _rule("broken", "billing_task.status_changed", "ops")
        broken["when"] = "event.data.object.nosuch.deeper == 1"
        raw = _config(
            tmp_path,
            sim,
            mosquitto,
            mqtt_prefix,
            webhooks={"ops": receiver.url("/ok")},
            rules=[broken],
        )
        async with running_service(raw, tmp_path) as service:
            sim.state.update_billing_task(task["id"], status="Failed")
            await sub.wait_for(lambda _: bool(notices_on(sub, mqtt_prefix)))
            (row,) = await service.store.list_deliveries()

    ((topic, notice),) = notices_on(sub, mqtt_prefix)
    assert topic == f"{mqtt_prefix}/events/{SERVICE}/delivery/{row.id}/dead"
    assert notice["data"]["rule"] == "broken"
    assert notice["data"]["attempts"] == 0
    assert "when" in notice["data"]["error"]
    assert receiver.hits == []


# -- sources -----------------------------------------------------------------------------


@pytest.mark.fault
async def test_a_failing_source_is_reported_once_and_its_recovery_too(
    tmp_path: Path,
    mosquitto: Mosquitto,
    mqtt_prefix: str,
    mqtt_subscriber: SubscriberFactory,
    receiver: WebhookReceiver,
) -> None:
    """The platform answers 503 for longer than three polls: one ``source.failing``
    however long it lasts, then one ``source.recovered``; a rule routes both."""
    async with (
        Simulator(page_max=50) as sim,
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/events/#") as sub,
    ):
        sim.state.add_billing_task(status="Running")
        raw = _config(
            tmp_path,
            sim,
            mosquitto,
            mqtt_prefix,
            webhooks={"ops": receiver.url("/ok")},
            rules=[_rule("sources", "billnotify.source.*", "ops")],
            failing_after_polls=3,
            failing_after="1h",
        )
        topic = f"{mqtt_prefix}/events/{SERVICE}/source/acme"
        async with running_service(raw, tmp_path) as service:
            (poller,) = service.pollers
            sim.faults.add(TASKS_PATH, kind="503", count=-1)
            outage = time.monotonic()
            await sub.wait_for(lambda _: bool(sub.on(f"{topic}/failing")))
            failing_after = time.monotonic() - outage

            async def failed_twice_as_long() -> bool:
                return poller.episode.failures >= 6

            await until(failed_twice_as_long, "six failed polls")
            assert len(sub.on(f"{topic}/failing")) == 1
            sim.faults.clear()
            back = time.monotonic()
            await sub.wait_for(lambda _: bool(sub.on(f"{topic}/recovered")))
            recovered_after = time.monotonic() - back

            async def routed() -> list[dict[str, Any]]:
                found = bodies(receiver, "/ok")
                return found if len(found) == 2 else []

            forwarded = await until(routed, "both notices routed to the webhook")

    (failing,) = [json.loads(m.payload) for m in sub.on(f"{topic}/failing")]  # type: ignore[arg-type]
    (recovered,) = [json.loads(m.payload) for m in sub.on(f"{topic}/recovered")]  # type: ignore[arg-type]
    assert [b["type"] for b in forwarded] == [
        "billnotify.source.failing",
        "billnotify.source.recovered",
    ]
    assert failing["subject"] == recovered["subject"] == "sources/acme"
    assert failing["data"]["resource"] == "billing_tasks"
    assert failing["data"]["failures"] == 3
    assert "503" in failing["data"]["error"]
    assert recovered["data"]["since"] == failing["data"]["since"]
    assert recovered["data"]["failures"] >= 6
    assert sim.api_key not in json.dumps([failing, recovered])
    print(f"\nsource failing reported {failing_after:.2f}s into the outage (3 polls of 0.2s),")
    print(f"recovered {recovered_after:.2f}s after the platform came back")


# -- a kill ------------------------------------------------------------------------------


@pytest.mark.fault
@pytest.mark.timeout(60)
async def test_a_customer_mail_interrupted_by_sigkill_is_uncertain_and_said_so(
    tmp_path: Path, mosquitto: Mosquitto, mqtt_prefix: str, mqtt_subscriber: SubscriberFactory
) -> None:
    """``billnotify run`` is SIGKILLed while an invoice email is in flight: the next start
    makes it ``uncertain`` and publishes ``billnotify.delivery.uncertain`` for it."""
    async with (
        Simulator(page_max=50) as sim,
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/events/#") as sub,
    ):
        invoice = sim.state.add_invoice(status=["Raised"])
        raw = _config(tmp_path, sim, mosquitto, mqtt_prefix, webhooks={}, rules=[])
        raw["sources"][0]["watch"] = ["invoices"]
        raw["rules"] = [
            {
                "name": "email-approved",
                "on": ["invoice.status_changed"],
                "when": "'Approved' in event.data.added",
                "actions": [{"type": "invoice_action", "action": "email"}],
            }
        ]
        del raw["webhooks"]
        config = tmp_path / "config.toml"
        config.write_text(toml_config(raw))
        db = tmp_path / "state.db"

        def ledger(status: str) -> list[str]:
            return [r[0] for r in query(db, f"SELECT id FROM deliveries WHERE status = '{status}'")]

        async with BillnotifyRun(config) as service:
            await service.start()
            await service.until(
                lambda: query(db, "SELECT count(*) FROM snapshots") == [(1,)], "the baseline", 20
            )
            sim.faults.add(INVOICES_PATH, "slow", count=-1, delay=5, method="POST")
            sim.state.update_invoice(invoice["id"], status=["Raised", "Approved"])
            (sending,) = await service.until(lambda: ledger("sending"), "the email in flight", 20)
            await service.kill()
            sim.faults.clear()
            restarted = time.monotonic()
            await service.start()
            topic = f"{mqtt_prefix}/events/{SERVICE}/delivery/{sending}/uncertain"
            await sub.wait_for(lambda _: bool(sub.on(topic)), timeout=20)
            told_after = time.monotonic() - restarted
            uncertain = ledger("uncertain")
            assert await service.stop() == 0

    (message,) = sub.on(topic)
    assert isinstance(message.payload, bytes | bytearray)
    notice = json.loads(message.payload)
    assert notice["type"] == "billnotify.delivery.uncertain"
    assert notice["data"]["exactly_once"] is True
    assert notice["data"]["action"] == "invoice_action"
    assert "interrupted" in notice["data"]["error"]
    assert uncertain == [sending]
    notices = [n for n in query(db, "SELECT type FROM events") if is_notice(n[0])]
    assert notices == [("billnotify.delivery.uncertain",)]
    emails = [e for e in sim.state.action_log if e["action"] == "email"]
    print(
        f"\nkills 1 | uncertain {len(uncertain)} | notices {len(notices)} | emails sent "
        f"{len(emails)} | notice on MQTT {told_after:.2f}s after the restart"
    )
