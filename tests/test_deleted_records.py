"""Deleted and restored records end to end (SPEC §7.5): the config, a running service,
the billing simulator over HTTP (records deleted and restored through its control API)
and mosquitto.

A record the platform stops listing gives one ``{entity}.deleted`` with the last known
record, on MQTT and to a rule, and clears its retained state; when it comes back,
``{entity}.restored`` and the state again. A listing that fails half way marks nothing,
and ``reconcile_interval = "0s"`` lists nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from billnotify.app import Service
from billnotify.simulator import Simulator
from conftest import Mosquitto, Subscriber
from servers import WebhookReceiver, sim_source
from service_harness import running_service, until

SubscriberFactory = Callable[..., contextlib.AbstractAsyncContextManager[Subscriber]]
TASKS = "/backend/api/v1/billingTasks"


@pytest.fixture
def sim_options() -> dict[str, Any]:
    return {"page_max": 3}  # a listing of a few records is several pages


def _config(
    tmp_path: Path,
    sim: Simulator,
    broker: Mosquitto | None,
    prefix: str,
    *,
    receiver: WebhookReceiver | None = None,
    **source: Any,
) -> dict[str, Any]:
    (tmp_path / "templates").mkdir(exist_ok=True)
    raw: dict[str, Any] = {
        "service": {"name": "deltest", "state": "state.db", "http": "", "shutdown_grace": "5s"},
        "mqtt": {"enabled": False},
        "sources": [
            sim_source(
                sim,
                **{
                    "watch": ["billing_tasks", "invoices"],
                    "timeout": "2s",
                    "max_attempts": 1,
                    "poll_interval": "300ms",
                    "reconcile_interval": "1s",
                    **source,
                },
            )
        ],
    }
    if broker is not None:
        raw["mqtt"] = {
            "url": broker.url(),
            "client_id": f"bn-{prefix}",
            "prefix": prefix,
            "retain_state": ["billing_task", "invoice"],
        }
    if receiver is not None:
        raw["webhooks"] = [
            {
                "name": "ops",
                "url": receiver.url("/ok"),
                "secret": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "allow_private": True,
                "retry_schedule": ["0s"],
            }
        ]
        raw["rules"] = [
            {
                "name": "gone",
                "on": ["*.deleted", "*.restored"],
                "actions": [{"type": "webhook", "endpoint": "ops"}],
            }
        ]
    return raw


@contextlib.asynccontextmanager
async def control(sim: Simulator) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await call(method, "/_sim/...", body)``: the simulator's control API over HTTP."""
    async with aiohttp.ClientSession(base_url=sim.base_url) as http:

        async def call(method: str, path: str, body: Any = None) -> Any:
            async with http.request(method, path, json=body) as response:
                assert response.status < 300, await response.text()
                return await response.json()

        yield call


async def _events(service: Service, glob: str) -> list[dict[str, Any]]:
    return [json.loads(s.event.to_json()) for s in await service.store.list_events(type_glob=glob)]


def _reconciler(service: Service, resource: str) -> Any:
    (poller,) = [p for p in service.pollers if p.sync.resource == resource]
    return poller.reconciler


async def test_a_deleted_task_and_invoice_are_said_once_and_come_back_restored(
    tmp_path: Path,
    sim: Simulator,
    mosquitto: Mosquitto,
    mqtt_prefix: str,
    mqtt_subscriber: SubscriberFactory,
    receiver: WebhookReceiver,
) -> None:
    tasks = [sim.state.add_billing_task(status="Pending") for _ in range(7)]
    invoice = sim.state.add_invoice(customerID="1")
    raw = _config(tmp_path, sim, mosquitto, mqtt_prefix, receiver=receiver)
    doomed = tasks[4]["id"]
    state = f"{mqtt_prefix}/state/acme/billing_task/{doomed}"
    deleted_topic = f"{mqtt_prefix}/events/acme/billing_task/{doomed}/deleted"
    restored_topic = f"{mqtt_prefix}/events/acme/billing_task/{doomed}/restored"
    async with (
        mqtt_subscriber(mosquitto, f"{mqtt_prefix}/#") as sub,
        running_service(raw, tmp_path) as service,
        control(sim) as call,
    ):
        await sub.wait_for(lambda _: bool(sub.payloads(state)))
        last = await call("PATCH", f"/_sim/billing_tasks/{doomed}", {"status": "Running"})
        await sub.wait_for(lambda _: json.loads(sub.payloads(state)[-1]) == last)

        await call("DELETE", f"/_sim/billing_tasks/{doomed}")
        await call("DELETE", f"/_sim/invoices/{invoice['id']}")
        await sub.wait_for(lambda _: bool(sub.on(deleted_topic)))
        (message,) = sub.on(deleted_topic)
        event = json.loads(sub.payloads(deleted_topic)[0])
        assert event["type"] == "billing_task.deleted"
        assert event["subject"] == f"billing_tasks/{doomed}"
        assert event["data"]["object"] == last  # the last known record
        assert message.properties is not None
        assert getattr(message.properties, "ContentType", None) == "application/cloudevents+json"
        await sub.wait_for(lambda _: sub.payloads(state)[-1] == b"")  # retained state cleared
        invoices = await until(
            lambda: _events(service, "invoice.deleted"), "the invoice's deletion"
        )
        assert invoices[0]["data"]["object"]["id"] == invoice["id"]

        # later rounds find the same ids missing: nothing new
        rounds = _reconciler(service, "billing_tasks").rounds
        await until(
            lambda: _reconciler(service, "billing_tasks").rounds >= rounds + 2,
            "two more reconcile rounds",
        )
        assert len(await _events(service, "*.deleted")) == 2
        assert len(sub.on(deleted_topic)) == 1

        await call("POST", f"/_sim/billing_tasks/{doomed}/restore", {})
        await sub.wait_for(lambda _: bool(sub.on(restored_topic)))
        restored = json.loads(sub.payloads(restored_topic)[0])
        assert restored["data"]["object"] == last
        await sub.wait_for(lambda _: sub.payloads(state)[-1] != b"")
        assert json.loads(sub.payloads(state)[-1]) == last  # the retained state is back

        # a rule matches them: one webhook per event
        await until(lambda: len(receiver.hits) >= 3, "three webhooks")
        types = sorted(json.loads(hit.body)["type"] for hit in receiver.hits)
        assert types == ["billing_task.deleted", "billing_task.restored", "invoice.deleted"]

    # after a restart, the retained state of the restored task is still set, and a
    # record deleted while it was down is found
    async with (
        running_service(raw, tmp_path) as service,
        control(sim) as call,
        mqtt_subscriber(mosquitto, state) as retained,
    ):
        await retained.wait_for(lambda _: bool(retained.payloads(state)))
        assert json.loads(retained.payloads(state)[0]) == last
        await call("DELETE", f"/_sim/billing_tasks/{tasks[0]['id']}")

        async def two_deletions() -> list[dict[str, Any]]:
            found = await _events(service, "billing_task.deleted")
            return found if len(found) == 2 else []

        found = await until(two_deletions, "the second deletion")
        assert found[-1]["subject"] == f"billing_tasks/{tasks[0]['id']}"


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "malformed", "count": 1, "after": 1},
        {"kind": "503", "count": 1, "after": 2},
    ],
    ids=["malformed-page", "503-page"],
)
async def test_a_listing_that_fails_half_way_deletes_nothing(
    tmp_path: Path, sim: Simulator, fault: dict[str, Any]
) -> None:
    """Polls once an hour, so every list request after the baseline is the reconcile's:
    the fault lands on its second or third page."""
    for _ in range(8):
        sim.state.add_billing_task(status="Pending")
    raw = _config(tmp_path, sim, None, "", poll_interval="1h", watch=["billing_tasks"])
    async with running_service(raw, tmp_path) as service, control(sim) as call:
        reconciler = _reconciler(service, "billing_tasks")
        await until(lambda: reconciler.rounds >= 1, "a first reconcile")
        await call("DELETE", "/_sim/billing_tasks/1003")
        await call("POST", "/_sim/faults", {"path_prefix": TASKS, **fault})
        await until(lambda: reconciler.last_error, "a failed reconcile")
        assert sim.faults.snapshot() == []
        assert await _events(service, "*.deleted") == []
        # the next round (1 s later, the interval being shorter than 5 min) is complete
        found = await until(lambda: _events(service, "*.deleted"), "the deletion")
        assert [e["subject"] for e in found] == ["billing_tasks/1003"]
        assert reconciler.last_error is None


async def test_reconcile_interval_0s_lists_nothing(tmp_path: Path, sim: Simulator) -> None:
    for _ in range(4):
        sim.state.add_billing_task(status="Pending")
    raw = _config(tmp_path, sim, None, "", reconcile_interval="0s", watch=["billing_tasks"])
    async with running_service(raw, tmp_path) as service, control(sim) as call:
        assert all(p.reconciler is None for p in service.pollers)
        await call("DELETE", "/_sim/billing_tasks/1002")
        sim.requests.clear()
        await asyncio.sleep(2.5)  # longer than a reconcile interval would be
        full_listings = [
            r for r in sim.requests if r.startswith(f"GET {TASKS}") and "Since" not in r
        ]
        assert full_listings == []
        assert await _events(service, "*.deleted") == []
        assert service.pollers[0].polls > 3  # the polls went on
