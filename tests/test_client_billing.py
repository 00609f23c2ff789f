"""BillingPlatformClient against the simulator over real HTTP: every endpoint of seeds 000-002."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from billnotify import errors
from billnotify.clients import BillingPlatformClient, BillingTask, Invoice
from billnotify.secrets import Secret
from billnotify.simulator import ManualClock, Simulator

START = datetime(2026, 11, 2, 9, 0, 0, tzinfo=UTC)  # where the `clock` fixture starts


@pytest.fixture
def sim_options(clock: ManualClock) -> dict[str, Any]:
    return {"page_max": 50, "clock": clock}


@pytest.fixture
def client_options() -> dict[str, Any]:
    return {"api_key": Secret("sim-key"), "rng": random.Random(7), "max_attempts": 3}


def add_tasks(sim: Simulator, count: int, **fields: Any) -> list[str]:
    return [sim.state.add_billing_task(**fields)["id"] for _ in range(count)]


# -- billing tasks ---------------------------------------------------------------------------


async def test_paging_until_empty_page_when_server_caps_below_limit(
    sim: Simulator, client: BillingPlatformClient
) -> None:
    ids = add_tasks(sim, 130)
    pages = [page async for page in client.iter_pages("billingTasks", page_size=100)]
    # page_max 50 < limit 100: the client must not stop at the first short page
    assert [len(p) for p in pages] == [50, 50, 30]
    assert [r["id"] for p in pages for r in p] == ids
    assert pages[0][0] == sim.state.billing_tasks[ids[0]]  # raw dicts, exactly as returned


async def test_list_and_iter_billing_tasks_typed(
    sim: Simulator, client: BillingPlatformClient
) -> None:
    ids = add_tasks(sim, 120, retryCount="2", status="Running")
    tasks = await client.list_billing_tasks()
    assert [t.id for t in tasks] == ids
    assert all(isinstance(t, BillingTask) and t.retry_count == 2 for t in tasks)
    assert tasks[0].raw == sim.state.billing_tasks[ids[0]]
    pages = [p async for p in client.iter_billing_tasks(page_size=40)]
    assert [len(p) for p in pages] == [40, 40, 40]


async def test_billing_task_filters(
    sim: Simulator, client: BillingPlatformClient, clock: ManualClock
) -> None:
    early = add_tasks(sim, 3)
    clock.advance(60)
    late = add_tasks(sim, 2)
    since = START + timedelta(seconds=60)
    assert [t.id for t in await client.list_billing_tasks(created_since=since)] == late
    assert [t.id for t in await client.list_billing_tasks(id_after=early[-1])] == late
    assert [t.id for t in await client.list_billing_tasks(limit=2)] == early[:2]
    assert [t.id for t in await client.list_billing_tasks(offset=1, limit=3)] == [
        *early[1:],
        late[0],
    ]
    clock.advance(60)
    sim.state.update_billing_task(early[0], status="Completed")
    updated = await client.list_billing_tasks(updated_since=START + timedelta(seconds=120))
    assert [(t.id, t.status) for t in updated] == [(early[0], "Completed")]
    with pytest.raises(ValueError, match="timezone-aware"):
        await client.list_billing_tasks(created_since=datetime(2026, 1, 1))


async def test_get_billing_task_and_not_found(
    sim: Simulator, client: BillingPlatformClient
) -> None:
    (task_id,) = add_tasks(sim, 1, status="Failed", retryCount="4")
    task = await client.get_billing_task(int(task_id))
    assert (task.id, task.status, task.retry_count) == (task_id, "Failed", 4)
    with pytest.raises(errors.NotFoundError) as info:
        await client.get_billing_task(999_999)
    assert info.value.status == 404
    assert "billingTasks/999999" in str(info.value)


async def test_invalid_parameter_is_api_error(client: BillingPlatformClient) -> None:
    with pytest.raises(errors.ApiError) as info:
        await client.list_billing_tasks(created_since="yesterday")
    assert info.value.status == 400


# -- billing runs ----------------------------------------------------------------------------


async def test_billing_runs_list_get_create_update(
    sim: Simulator, client: BillingPlatformClient
) -> None:
    existing = [sim.state.add_billing_run()["id"] for _ in range(60)]
    runs = await client.list_billing_runs()
    assert [r.id for r in runs] == existing
    assert [len(p) async for p in client.iter_billing_runs(page_size=25)] == [25, 25, 10]

    created = await client.create_billing_run(
        name="December", invoice_date=date(2026, 12, 1), cutoffDate="2026-12-01"
    )
    assert created.name == "December"
    assert created.invoice_date == date(2026, 12, 1)
    assert created.raw["cutoffDate"] == "2026-12-01"
    assert created.id in sim.state.billing_runs

    updated = await client.update_billing_run(created.id or "", due_date=date(2026, 12, 20))
    assert updated.due_date == date(2026, 12, 20)
    assert (await client.get_billing_run(created.id or "")).due_date == date(2026, 12, 20)

    sim.state.update_billing_run(created.id, status="Requested")
    with pytest.raises(errors.ApiError) as info:
        await client.update_billing_run(created.id or "", dueDate="2026-12-31")
    assert info.value.status == 400
    assert "locked" in str(info.value)


# -- invoices --------------------------------------------------------------------------------


async def test_invoice_lists_and_flags(sim: Simulator, client: BillingPlatformClient) -> None:
    raised = [sim.state.add_invoice(customerID="7")["id"] for _ in range(55)]
    unsent = sim.state.add_invoice(customerID="7", status=["Unsent"])["id"]
    emailed = sim.state.add_invoice(customerID="8", status=["Approved", "Emailed"])["id"]
    assert [i.id for i in await client.list_invoices()] == [*raised, emailed]
    assert [i.id for i in await client.list_invoices(unsent=True)] == [unsent]
    everything = await client.list_invoices(include_unsent=True)
    assert {i.id for i in everything} == {*raised, unsent, emailed}
    undelivered = await client.list_invoices(undelivered=True)
    assert emailed not in {i.id for i in undelivered}
    assert [len(p) async for p in client.iter_invoices(page_size=30)] == [30, 26]
    mine = await client.list_customer_invoices(8)
    assert [(i.id, i.status) for i in mine] == [(emailed, ["Approved", "Emailed"])]
    assert [len(p) async for p in client.iter_customer_invoices("7", page_size=50)] == [50, 5]


async def test_invoice_date_filters(sim: Simulator, client: BillingPlatformClient) -> None:
    old = sim.state.add_invoice(invoiceDate="2026-01-10", dueDate="2026-01-24")["id"]
    new = sim.state.add_invoice(invoiceDate="2026-03-10", dueDate="2026-03-24")["id"]
    ids = [i.id for i in await client.list_invoices(min_date=date(2026, 2, 1))]
    assert ids == [new]
    ids = [i.id for i in await client.list_invoices(max_date="2026-02-01")]
    assert ids == [old]
    due = await client.list_invoices(
        min_due_date=datetime(2026, 1, 1, tzinfo=UTC), max_due_date=date(2026, 2, 1)
    )
    assert [i.id for i in due] == [old]


async def test_get_find_update_delete_invoice(
    sim: Simulator, client: BillingPlatformClient
) -> None:
    record = sim.state.add_invoice(customerID="3", invoiceAmount="50.00")
    invoice = await client.get_invoice(record["id"])
    assert invoice.raw == record
    assert invoice.total == Decimal("60.00")
    assert invoice.invoice_number is not None

    found = await client.find_invoice_by_number(invoice.invoice_number)
    assert found is not None and found.id == invoice.id
    assert await client.find_invoice_by_number("NOPE/1") is None

    changed = await client.update_invoice(invoice.id or "", purchase_order_number="PO-9")
    assert changed.purchase_order_number == "PO-9"
    assert sim.state.invoices[invoice.id or ""]["purchaseOrderNumber"] == "PO-9"

    await client.delete_invoice(invoice.id or "")
    with pytest.raises(errors.NotFoundError):
        await client.get_invoice(invoice.id or "")


async def test_invoice_pdf(sim: Simulator, client: BillingPlatformClient) -> None:
    raised = sim.state.add_invoice()["id"]
    pdf = await client.get_invoice_pdf(raised)
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    unsent = sim.state.add_invoice(status=["Unsent"])["id"]
    with pytest.raises(errors.NotFoundError):
        await client.get_invoice_pdf(unsent)


async def test_create_customer_invoice(sim: Simulator, client: BillingPlatformClient) -> None:
    sim.state.add_customer(id="12")
    invoice = await client.create_customer_invoice(
        12,
        cutoff_date=date(2026, 10, 1),
        transaction_cutoff_date="2026-10-15",
        include_transaction_ids=[101, 102],
        customer_reference="REF-1",
    )
    assert isinstance(invoice, Invoice)
    assert invoice.customer_id == "12"
    assert invoice.cutoff_date == date(2026, 10, 1)
    assert invoice.transaction_cutoff_date == date(2026, 10, 15)
    assert invoice.customer_reference == "REF-1"
    assert invoice.invoice_amount == Decimal("50.00")  # simulator: 25.00 per included transaction
    default = await client.create_customer_invoice("12")
    assert default.cutoff_date == date(2026, 11, 1)  # the platform's default: start of month
    with pytest.raises(errors.NotFoundError):
        await client.create_customer_invoice("4040")
