"""Fault injection and the /_sim/ control API of the simulator."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from billnotify.simulator import Faults, ManualClock, Simulator

START = datetime(2026, 3, 15, 12, 0, 0, tzinfo=UTC)  # where the `clock` fixture starts
TASKS = "/backend/api/v1/billingTasks"


@pytest.fixture
def sim_options(clock: ManualClock) -> dict[str, Any]:
    return {"clock": clock}


async def status_of(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as resp:
        await resp.read()
        return resp.status


@pytest.mark.parametrize("kind", ["500", "503"])
async def test_server_errors_then_recovery(sim: Simulator, http: Any, kind: str) -> None:
    sim.faults.add(TASKS, kind, count=2)
    url = f"{sim.billing_base_url}/billingTasks/"
    async with http.get(url) as resp:
        assert resp.status == int(kind)
        assert set(await resp.json()) == {"error", "error_code", "hint"}
    assert [await status_of(http, url) for _ in range(2)] == [int(kind), 200]


async def test_429_carries_retry_after(sim: Simulator, http: Any) -> None:
    sim.faults.add("", "429", retry_after=2)
    sim.faults.add("", "429", retry_after=0.25)
    sim.faults.add("", "429")
    values = []
    for _ in range(3):
        async with http.get(f"{sim.billing_base_url}/invoices/") as resp:
            assert resp.status == 429
            values.append(resp.headers["Retry-After"])
    assert values == ["2", "0.25", "1"]


async def test_prefix_and_method_matching(sim: Simulator, http: Any) -> None:
    sim.faults.add("/backend/api/v1/invoices", "500", count=-1, method="POST")
    assert await status_of(http, f"{sim.billing_base_url}/billingTasks/") == 200
    assert await status_of(http, f"{sim.billing_base_url}/invoices/") == 200
    invoice = sim.state.add_invoice()
    for _ in range(3):
        async with http.post(
            f"{sim.billing_base_url}/invoices/{invoice['id']}?action=recreate"
        ) as r:
            assert r.status == 500
    assert sim.state.action_log == []  # the request never reached the platform
    assert sim.faults.snapshot()[0]["fired"] == 3
    sim.faults.clear()
    assert sim.faults.snapshot() == []


async def test_malformed_json_is_a_truncated_200(sim: Simulator, http: Any) -> None:
    sim.state.add_billing_task()
    sim.faults.add(TASKS, "malformed")
    async with http.get(f"{sim.billing_base_url}/billingTasks/") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        text = await resp.text()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


async def test_slow_response(sim: Simulator, http: Any) -> None:
    sim.faults.add(TASKS, "slow", delay=0.3)
    started = time.monotonic()
    assert await status_of(http, f"{sim.billing_base_url}/billingTasks/") == 200
    assert time.monotonic() - started >= 0.3
    with pytest.raises(asyncio.TimeoutError):
        sim.faults.add(TASKS, "slow", delay=0.5)
        async with http.get(
            f"{sim.billing_base_url}/billingTasks/", timeout=aiohttp.ClientTimeout(total=0.1)
        ) as resp:
            await resp.read()


async def test_connection_reset(sim: Simulator, http: Any) -> None:
    # aiohttp retries an idempotent request once after a reset: two resets surface it.
    sim.faults.add(TASKS, "reset", count=2)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"{sim.billing_base_url}/billingTasks/") as resp:
            await resp.read()
    assert sim.faults.snapshot() == []
    assert await status_of(http, f"{sim.billing_base_url}/billingTasks/") == 200
    invoice = sim.state.add_invoice()
    sim.faults.add("/backend/api/v1/invoices", "reset", method="POST")
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.post(
            f"{sim.billing_base_url}/invoices/{invoice['id']}?action=recreate"
        ) as r:
            await r.read()
    assert sim.state.action_log == []


async def test_reset_after_performs_the_action(sim: Simulator, http: Any) -> None:
    invoice = sim.state.add_invoice(status=["Raised", "Approved"])
    sim.faults.add("/backend/api/v1/invoices", "reset_after", method="POST")
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.post(f"{sim.billing_base_url}/invoices/{invoice['id']}?action=email") as r:
            await r.read()
    assert sim.state.email_calls(invoice["id"]) == 1


def test_unknown_fault_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        Faults().add("", "teapot")  # type: ignore[arg-type]


async def test_control_api(sim: Simulator, http: Any) -> None:
    ctl = f"{sim.base_url}/_sim"
    async with aiohttp.ClientSession() as raw:  # no auth needed
        async with raw.post(
            f"{ctl}/faults", json={"path_prefix": TASKS, "kind": "503", "count": 1}
        ) as r:
            assert r.status == 201
        async with raw.get(f"{ctl}/faults") as r:
            assert (await r.json())[0]["kind"] == "503"
        assert await status_of(http, f"{sim.billing_base_url}/billingTasks/") == 503
        async with raw.post(f"{ctl}/faults", json={"kind": "500", "count": -1}) as r:
            assert r.status == 201
        async with raw.get(f"{ctl}/state") as r:  # control routes are never faulted
            assert r.status == 200
        async with raw.delete(f"{ctl}/faults") as r:
            assert r.status == 200
        assert await status_of(http, f"{sim.billing_base_url}/billingTasks/") == 200
        async with raw.post(f"{ctl}/faults", json={"kind": "nope"}) as r:
            assert r.status == 400

        async with raw.post(
            f"{ctl}/billing_tasks", json={"status": "Running", "customerID": "5"}
        ) as r:
            task = await r.json()
            assert r.status == 201 and task["status"] == "Running"
        async with raw.patch(f"{ctl}/billing_tasks/{task['id']}", json={"status": "Failed"}) as r:
            assert (await r.json())["status"] == "Failed"
        async with raw.post(f"{ctl}/billing_tasks", json={"colour": "red"}) as r:
            assert r.status == 400
        async with raw.put(f"{ctl}/billing_runs/999", json={}) as r:
            assert r.status == 404
        async with raw.post(f"{ctl}/invoices", json={"status": ["Raised", "Approved"]}) as r:
            invoice = await r.json()
        async with raw.post(f"{ctl}/billing_headers", json={"propertyUUId": "p1"}) as r:
            header = await r.json()
        async with raw.put(f"{ctl}/billing_headers/{header['id']}", json={}) as r:
            assert r.status == 200
        async with raw.post(f"{ctl}/clock", json={"advance": 90}) as r:
            assert (await r.json())["now"] == "2026-03-15T12:01:30+00:00"
        async with raw.post(
            f"{ctl}/action_failures", json={"action": "email", "error_code": 500601}
        ) as r:
            assert r.status == 201
        async with http.post(f"{sim.billing_base_url}/invoices/{invoice['id']}?action=email") as r:
            assert r.status == 500 and (await r.json())["error_code"] == 500601
        async with raw.get(f"{ctl}/actions") as r:
            log = await r.json()
        assert [(e["invoice_id"], e["action"], e["status_code"]) for e in log] == [
            (invoice["id"], "email", 500)
        ]
        async with raw.delete(f"{ctl}/actions") as r:
            assert r.status == 200 and sim.state.action_log == []
        async with raw.post(f"{ctl}/tick", json={"count": 3}) as r:
            assert (await r.json())["ticks"] == 3
        async with raw.delete(f"{ctl}/invoices/{invoice['id']}") as r:
            assert r.status == 200
        async with raw.get(f"{ctl}/state") as r:
            summary = await r.json()
        assert summary["ticks"] == 3 and summary["customers"] >= 4
        assert sum(summary["billing_tasks"].values()) >= 1


async def test_clock_control_needs_a_manual_clock() -> None:
    async with (
        Simulator() as sim,
        aiohttp.ClientSession() as raw,
        raw.post(f"{sim.base_url}/_sim/clock", json={"advance": 1}) as r,
    ):
        assert r.status == 409


async def test_late_error_and_runtime_config(sim: Simulator, http: Any) -> None:
    sim.faults.add(TASKS, "500", delay=0.2)
    started = time.monotonic()
    assert await status_of(http, f"{sim.billing_base_url}/billingTasks/") == 500
    assert time.monotonic() - started >= 0.2
    invoice = sim.state.add_invoice(status=["Raised", "Approved"])
    ctl = f"{sim.base_url}/_sim"
    async with aiohttp.ClientSession() as raw:
        async with raw.post(f"{ctl}/config", json={"page_max": 1, "expert_level": 2}) as r:
            assert (await r.json())["page_max"] == 1
        async with raw.post(f"{ctl}/config", json={"page_max": "many"}) as r:
            assert r.status == 400
        async with http.post(f"{sim.billing_base_url}/invoices/{invoice['id']}?action=email") as r:
            assert r.status == 200
        async with raw.get(f"{ctl}/email_calls/{invoice['id']}") as r:
            assert await r.json() == {"invoice_id": invoice["id"], "email_calls": 1}
    sim.state.add_invoice()
    async with http.get(f"{sim.billing_base_url}/invoices/") as r:
        assert len(await r.json()) == 1
    assert sim.state.expert_level == 2
