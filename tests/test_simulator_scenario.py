"""The simulator's scenario engine and ``run_simulate``."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import aiohttp
import pytest

from billnotify.simulator import ManualClock, Scenario, SimState, Simulator, run_simulate
from billnotify.simulator.records import money

START = datetime(2026, 3, 15, 12, 0, 0, tzinfo=UTC)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.01)


def story(seed: int, ticks: int) -> SimState:
    clock = ManualClock(START)
    state = SimState(clock)
    scenario = Scenario(state, rng_seed=seed)
    for _ in range(ticks):
        scenario.tick()
        clock.advance(60)
    return state


def test_scenario_is_deterministic_with_its_seed() -> None:
    first, again, other = story(3, 40), story(3, 40), story(4, 40)
    for name in ("billing_tasks", "billing_runs", "invoices"):
        assert first.table(name) == again.table(name)
    assert first.billing_headers == again.billing_headers
    assert first.billing_tasks != other.billing_tasks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scenario_reaches_every_state(seed: int) -> None:
    clock = ManualClock(START)
    state = SimState(clock)
    scenario = Scenario(state, rng_seed=seed)
    task_states: set[str] = set()
    run_states: set[str] = set()
    flags: set[str] = set()
    events: set[str] = set()
    stamps: dict[int, str] = {}
    for _ in range(60):
        before = {
            (k, id_): state.times(k, id_).updated_at
            for k in ("billing_tasks", "invoices")
            for id_ in state.table(k)
        }
        scenario.tick()
        changed = sum(
            1
            for k in ("billing_tasks", "billing_runs", "invoices")
            for id_ in state.table(k)
            if state.times(k, id_).updated_at == clock.now() and (k, id_) in before
        )
        assert changed <= 12, "a tick should make only a handful of changes"
        for task in state.billing_tasks.values():
            task_states.add(task["status"])
            if int(task["retryCount"]) > 0:
                events.add("retried")
        for run in state.billing_runs.values():
            run_states.add(run["status"])
            if run["status"] == "Running":
                assert run["commencedDate"]
            if run["status"] == "Complete":
                assert run["completedDate"]
        for invoice in state.invoices.values():
            flags.update(invoice["status"])
            outstanding = money(invoice["outstanding"])
            if invoice["paidDate"] and outstanding == 0:
                events.add("paid")
            due = date.fromisoformat(invoice["dueDate"])
            if invoice["invoiceNumber"] and due < clock.now().date() and outstanding > 0:
                events.add("overdue")
        for header in state.billing_headers.values():
            if stamps.get(header["id"], header["updateTimeStamp"]) != header["updateTimeStamp"]:
                events.add("header_updated")
            stamps[header["id"]] = header["updateTimeStamp"]
        clock.advance(60)
    assert task_states == {"Pending", "Running", "Completed", "Error", "Failed", "Skipped"}
    assert run_states == {"Pending", "Requested", "Running", "Complete"}
    assert {"Unsent", "Raised", "Approved", "Emailed", "Paid"} <= flags
    assert events == {"retried", "paid", "overdue", "header_updated"}
    assert len(state.billing_headers) > 4  # new headers were published
    assert sum(1 for i in state.invoices.values() if i["invoiceNumber"] == "") == 4
    numbers = [i["invoiceNumber"] for i in state.invoices.values() if i["invoiceNumber"]]
    assert len(numbers) == len(set(numbers))
    assert all(re.fullmatch(r"ACC\d+/\d+", n) for n in numbers)
    assert any(isinstance(i["total"], float) for i in state.invoices.values())
    assert any(isinstance(i["total"], str) for i in state.invoices.values())


async def test_scenario_runs_behind_the_http_api() -> None:
    sim = Simulator(seed=5)
    await sim.start()
    runner = asyncio.create_task(sim.run_scenario(0.01))
    try:
        await wait_until(lambda: sim.scenario.ticks >= 5)
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer sim-key"}) as http:
            async with http.get(f"{sim.billing_base_url}/invoices/?includeUnsent=1") as resp:
                rows: list[dict[str, Any]] = await resp.json()
            assert len(rows) >= 8 and all(isinstance(r["id"], str) for r in rows)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await sim.stop()


async def test_run_simulate_prints_urls_and_serves(capsys: pytest.CaptureFixture[str]) -> None:
    task = asyncio.create_task(run_simulate("127.0.0.1", 0, 0.05, 7, "demo-key"))
    printed = ""

    def has_output() -> bool:
        nonlocal printed
        printed += capsys.readouterr().out
        return "curl" in printed

    try:
        await wait_until(has_output)
        match = re.search(
            r"billing platform: (http://127\.0\.0\.1:\d+/backend/api/v1) \(api key demo-key\)",
            printed,
        )
        assert match, printed
        assert f"curl -H 'Authorization: Bearer demo-key' {match.group(1)}/billingTasks/" in printed
        assert "property billing: http://127.0.0.1:" in printed and "sim-password" in printed
        async with (
            aiohttp.ClientSession(headers={"Authorization": "Bearer demo-key"}) as http,
            http.get(f"{match.group(1)}/billingRuns/") as resp,
        ):
            assert resp.status == 200 and await resp.json()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
