"""The list filters of billing runs (seed 001) and of a customer's invoices (seed 002),
sent by the client over HTTP to the simulator, each one shown to narrow the answer."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from billnotify.clients import BillingPlatformClient
from billnotify.simulator import ManualClock, Simulator

START = datetime(2026, 11, 2, 9, 0, 0, tzinfo=UTC)  # where the `clock` fixture starts


@pytest.fixture
def sim_options(clock: ManualClock) -> dict[str, Any]:
    return {"page_max": 5, "clock": clock}  # small pages: every filter survives paging


@pytest.fixture
def client_options() -> dict[str, Any]:
    return {"rng": random.Random(7), "max_attempts": 1}


async def test_billing_run_filters(
    sim: Simulator, client: BillingPlatformClient, clock: ManualClock
) -> None:
    early = [sim.state.add_billing_run(name=f"Run {n}")["id"] for n in range(7)]
    clock.advance(60)
    late = [sim.state.add_billing_run(name=f"Late {n}")["id"] for n in range(6)]
    clock.advance(60)
    sim.state.update_billing_run(early[2], status="Requested")

    assert [r.id for r in await client.list_billing_runs()] == early + late
    assert [r.id for r in await client.list_billing_runs(id_after=early[-1])] == late
    created = await client.list_billing_runs(created_since=START + timedelta(seconds=60))
    assert [r.id for r in created] == late
    updated = await client.list_billing_runs(updated_since=START + timedelta(seconds=120))
    assert [(r.id, r.status) for r in updated] == [(early[2], "Requested")]
    both = await client.list_billing_runs(
        id_after=early[0], updated_since=START + timedelta(seconds=120)
    )
    assert [r.id for r in both] == [early[2]]
    assert [r.id for r in await client.list_billing_runs(limit=3)] == early[:3]


async def test_customer_invoice_list_filters(sim: Simulator, client: BillingPlatformClient) -> None:
    st = sim.state

    def invoice(day: int, due: int, **fields: Any) -> str:
        return str(
            st.add_invoice(
                customerID="7",
                invoiceDate=date(2026, 10, day).isoformat(),
                dueDate=date(2026, 11, due).isoformat(),
                **fields,
            )["id"]
        )

    first = invoice(1, 1)
    second = invoice(10, 10, status=["Raised", "Approved", "Emailed"])
    third = invoice(20, 20)
    unsent = invoice(25, 25, status=["Unsent"])
    many = [invoice(15, 15) for _ in range(6)]  # more than one page of them
    other_customer = st.add_invoice(customerID="8", invoiceDate="2026-10-10")["id"]
    raised = sorted([first, second, third, *many], key=int)

    async def ids(**filters: Any) -> list[str]:
        return [str(i.id) for i in await client.list_customer_invoices("7", **filters)]

    assert await ids() == raised
    assert other_customer not in await ids(include_unsent=True)
    number = st.invoices[second]["invoiceNumber"]
    assert await ids(invoice_number=number) == [second]
    assert await ids(invoice_number="ACC1007/999") == []
    assert await ids(unsent=True) == [unsent]
    assert await ids(include_unsent=True) == sorted([*raised, unsent], key=int)
    assert second not in await ids(undelivered=True)
    assert await ids(undelivered=True) == [i for i in raised if i != second]
    assert await ids(min_date=date(2026, 10, 16)) == [third]
    assert await ids(max_date="2026-10-09") == [first]
    assert await ids(min_date="2026-10-10", max_date="2026-10-10") == [second]
    assert await ids(min_due_date=date(2026, 11, 20), include_unsent=True) == [third, unsent]
    assert await ids(max_due_date=date(2026, 11, 10)) == [first, second]
    assert await ids(min_date="2026-10-15", max_date="2026-10-15", limit=4) == many[:4]
