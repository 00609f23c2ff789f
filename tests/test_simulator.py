"""The billing-platform simulator over real HTTP: lists, filters, paging, auth, CRUD, PDF."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from billnotify.simulator import ManualClock, Simulator

START = datetime(2026, 3, 15, 12, 0, 0, tzinfo=UTC)  # where the `clock` fixture starts


@pytest.fixture
def sim_options(clock: ManualClock) -> dict[str, Any]:
    return {"clock": clock, "page_max": 5}


async def get(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.get(url, **kw) as resp:
        return resp.status, await resp.json()


async def send(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, url, **kw) as resp:
        return resp.status, await resp.json()


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["id"] for row in rows]


async def test_lists_are_bare_arrays_sorted_by_numeric_id(sim: Simulator, http: Any) -> None:
    for task_id in (100, 9, 10):
        sim.state.add_billing_task(id=task_id)
    status, rows = await get(http, f"{sim.billing_base_url}/billingTasks/")
    assert status == 200
    assert ids(rows) == ["9", "10", "100"]
    assert set(rows[0]) == {
        "billingTaskType", "status", "customerID", "attached", "parameters", "priority",
        "retryCount", "addedTime", "delayTime", "startedTime", "endedTime", "testMode",
        "activityLog", "id",
    }  # fmt: skip
    assert rows[0]["retryCount"] == "0"
    status, rows = await get(http, f"{sim.billing_base_url}/billingTasks")  # no trailing slash
    assert status == 200 and len(rows) == 3


async def test_page_max_caps_limit_and_id_after_pages_until_empty(
    sim: Simulator, http: Any
) -> None:
    for _ in range(12):
        sim.state.add_billing_run()
    status, rows = await get(http, f"{sim.billing_base_url}/billingRuns/?limit=100")
    assert status == 200 and len(rows) == 5
    _, rows = await get(http, f"{sim.billing_base_url}/billingRuns/?limit=2&offset=1")
    assert ids(rows) == ["102", "103"]
    seen: list[str] = []
    last = 0
    while True:
        _, page = await get(http, f"{sim.billing_base_url}/billingRuns/?idAfter={last}&limit=50")
        if not page:
            break
        seen += ids(page)
        last = int(page[-1]["id"])
    assert seen == [str(i) for i in range(101, 113)]


async def test_since_filters_use_system_times_inclusively(
    sim: Simulator, http: Any, clock: ManualClock
) -> None:
    first = sim.state.add_invoice(invoiceNumber="X/1")
    clock.advance(10.4)
    second = sim.state.add_invoice(invoiceNumber="X/2")
    clock.advance(10)
    sim.state.update_invoice(first["id"], customerReference="changed")
    url = f"{sim.billing_base_url}/invoices/"
    # second was created at 12:00:10.4 -> inclusive at second resolution from 12:00:10
    _, rows = await get(http, url, params={"createdSince": "2026-03-15T12:00:10Z"})
    assert ids(rows) == [second["id"]]
    _, rows = await get(http, url, params={"createdSince": "2026-03-15T12:00:11Z"})
    assert rows == []
    _, rows = await get(http, url, params={"updatedSince": "2026-03-15T12:00:20Z"})
    assert ids(rows) == [first["id"]]
    _, rows = await get(http, url, params={"updatedSince": "2026-03-15T12:00:00Z"})
    assert ids(rows) == [first["id"], second["id"]]
    assert sim.state.times("invoices", first["id"]).created_at == START


@pytest.mark.parametrize(
    "query",
    [
        "createdSince=2024-01-01",
        "updatedSince=2024-01-01T00:00:00",
        "updatedSince=2024-01-01T00:00:00%2B00:00",
        "createdSince=2024-02-30T00:00:00Z",
        "limit=abc",
        "limit=0",
        "offset=-1",
        "idAfter=x",
        "bogus=1",
        "unsent=maybe",
        "minDate=2024-13-01",
        "maxDueDate=01/02/2024",
    ],
)
async def test_invalid_list_parameters_get_400(sim: Simulator, http: Any, query: str) -> None:
    status, body = await get(http, f"{sim.billing_base_url}/invoices/?{query}")
    assert status == 400
    assert set(body) == {"error", "error_code", "hint"}


async def test_invoice_only_parameters_are_unknown_elsewhere(sim: Simulator, http: Any) -> None:
    status, _ = await get(http, f"{sim.billing_base_url}/billingTasks/?unsent=1")
    assert status == 400


async def test_get_one_and_404(sim: Simulator, http: Any) -> None:
    task = sim.state.add_billing_task(status="Running")
    status, body = await get(http, f"{sim.billing_base_url}/billingTasks/{task['id']}")
    assert status == 200 and body == task and body["id"] == task["id"]
    for path in ("billingTasks/999999", "billingRuns/1", "invoices/abc", "nope"):
        status, body = await get(http, f"{sim.billing_base_url}/{path}")
        assert status == 404 and body["error_code"] == 404000


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic sim-key"},
        {"Authorization": ""},
    ],
)
async def test_billing_auth_failures_are_401_json(sim: Simulator, headers: dict[str, str]) -> None:
    invoice = sim.state.add_invoice(status=["Raised", "Approved"])
    async with aiohttp.ClientSession(headers=headers) as session:
        for method, path in (
            ("GET", "billingTasks/"),
            ("GET", f"invoices/{invoice['id']}"),
            ("POST", f"invoices/{invoice['id']}?action=email"),
        ):
            status, body = await send(session, method, f"{sim.billing_base_url}/{path}")
            assert status == 401 and body["error"] == "Unauthorized"
    assert sim.state.action_log == []


async def test_invoice_list_filters(sim: Simulator, http: Any) -> None:
    st = sim.state
    unsent = st.add_invoice(customerID="7", status=["Unsent"])
    raised = st.add_invoice(customerID="7", invoiceDate="2026-01-10", dueDate="2026-01-24")
    emailed = st.add_invoice(
        customerID="8", status=["Raised", "Approved", "Emailed"],
        invoiceDate="2026-02-10", dueDate="2026-02-24",
    )  # fmt: skip
    assert unsent["invoiceNumber"] == "" and raised["invoiceNumber"] == "ACC1007/1"
    url = f"{sim.billing_base_url}/invoices/"
    cases = {
        "": [raised, emailed],
        "?unsent": [unsent],
        "?unsent=1": [unsent],
        "?includeUnsent=true": [unsent, raised, emailed],
        "?includeUnsent=0": [raised, emailed],
        "?undelivered=1": [raised],
        "?undelivered=1&includeUnsent=1": [unsent, raised],
        "?invoiceNumber=ACC1007/1": [raised],
        "?invoiceNumber=ACC1007/9": [],
        "?minDate=2026-02-10": [emailed],
        "?maxDate=2026-02-09": [raised],
        "?minDueDate=2026-01-25": [emailed],
        "?maxDueDate=2026-01-24": [raised],
        "?minDate=2026-01-01&maxDate=2026-12-31&maxDueDate=2026-02-24": [raised, emailed],
    }
    for query, expected in cases.items():
        status, rows = await get(http, url + query)
        assert status == 200, query
        assert ids(rows) == ids(expected), query


async def test_customer_invoices_list_and_create(sim: Simulator, http: Any) -> None:
    st = sim.state
    st.add_invoice(customerID="7", status=["Unsent"])
    mine = st.add_invoice(customerID="7")
    st.add_invoice(customerID="8")
    url = f"{sim.billing_base_url}/customers/7/invoices/"
    _, rows = await get(http, url)
    assert ids(rows) == [mine["id"]]
    _, rows = await get(http, url + "?includeUnsent=1&limit=1")
    assert len(rows) == 1 and rows[0]["invoiceNumber"] == ""

    status, created = await send(http, "POST", url, json={})
    assert status == 200
    assert created["cutoffDate"] == "2026-03-01" and created["customerID"] == "7"
    assert created["invoiceNumber"] == "ACC1007/2" and created["status"] == ["Raised"]
    status, created = await send(
        http, "POST", url.rstrip("/"),
        json={"transactionCutoffDate": "2026-02-28", "cutoffDate": "2026-02-01",
              "_includeTransactionIDs": [11, "12"], "customerReference": "PO-1"},
    )  # fmt: skip
    assert status == 200
    assert created["transactionCutoffDate"] == "2026-02-28"
    assert created["cutoffDate"] == "2026-02-01" and created["invoiceAmount"] == "50.00"
    for body in ({"cutoffDate": "March"}, {"nonsense": 1}, {"_includeTransactionIDs": "a,b"}):
        status, err = await send(http, "POST", url, json=body)
        assert status == 400 and "error_code" in err
    status, _ = await get(http, f"{sim.billing_base_url}/customers/404/invoices/")
    assert status == 404


async def test_invoice_pdf(sim: Simulator, http: Any) -> None:
    raised = sim.state.add_invoice()
    unsent = sim.state.add_invoice(status=["Unsent"])
    url = f"{sim.billing_base_url}/invoices/"
    async with http.get(url + raised["id"], headers={"Accept": "application/pdf"}) as resp:
        assert resp.status == 200 and resp.content_type == "application/pdf"
        pdf = await resp.read()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert raised["invoiceNumber"].encode() in pdf
    status, body = await get(http, url + unsent["id"], headers={"Accept": "application/pdf"})
    assert status == 404 and body["error"] == "No PDF"
    status, body = await get(http, url + raised["id"], headers={"Accept": "application/json"})
    assert status == 200 and body == raised


async def test_invoice_update_and_delete(sim: Simulator, http: Any, clock: ManualClock) -> None:
    invoice = sim.state.add_invoice(invoiceAmount="100.00")
    url = f"{sim.billing_base_url}/invoices/{invoice['id']}"
    clock.advance(5)
    status, body = await send(
        http, "PUT", url, json={"purchaseOrderNumber": "PO-9", "paidAmount": "20.00"}
    )
    assert status == 200 and body["purchaseOrderNumber"] == "PO-9"
    assert body["outstanding"] == "100.00" and body["total"] == "120.00"
    assert sim.state.times("invoices", invoice["id"]).updated_at == clock.now()
    status, body = await send(http, "PATCH", url, json={"status": ["Raised", "Approved"]})
    assert status == 200 and body["status"] == ["Raised", "Approved"]
    for bad in ({"invoiceNumber": "X/1"}, {"dueDate": "tomorrow"}, {"status": 3}, {"foo": 1}):
        status, err = await send(http, "PUT", url, json=bad)
        assert status == 400 and set(err) == {"error", "error_code", "hint"}
    status, _ = await send(http, "PUT", url, data=b"{not json")
    assert status == 400
    status, body = await send(http, "DELETE", url)
    assert status == 200 and body["success"] is True
    status, _ = await get(http, url)
    assert status == 404
    assert invoice["id"] not in sim.state.invoices


async def test_billing_run_create_update_and_date_lock(sim: Simulator, http: Any) -> None:
    url = f"{sim.billing_base_url}/billingRuns/"
    status, run = await send(
        http,
        "POST",
        url,
        json={"name": "March", "invoiceDate": "2026-03-31", "dueDate": "2026-04-14"},
    )
    assert status == 200 and run["status"] == "Pending" and run["commencedDate"] is None
    assert run["invoiceDate"] == "2026-03-31" and run["id"] in sim.state.billing_runs
    one = url + run["id"]
    status, run = await send(http, "PUT", one, json={"cutoffDate": "2026-03-15"})
    assert status == 200 and run["cutoffDate"] == "2026-03-15"
    status, run = await send(http, "PATCH", one, json={"status": "Requested"})
    assert status == 200 and run["status"] == "Requested"
    status, err = await send(http, "PUT", one, json={"dueDate": "2026-05-01"})
    assert status == 400 and err["error"] == "Billing run dates are locked"
    status, err = await send(http, "POST", one, json={"transactionCutoffDate": "2026-03-01"})
    assert status == 400
    status, run = await send(http, "POST", one, json={**run, "name": "March (final)"})
    assert status == 200 and run["name"] == "March (final)"
    for bad in ({"invoiceDate": "31/03/2026"}, {"commencedDate": "2026-01-01"}, {"x": 1}):
        status, _ = await send(http, "POST", url, json=bad)
        assert status == 400
    status, _ = await send(http, "PUT", url + "999", json={})
    assert status == 404


async def test_billing_tasks_are_read_only(sim: Simulator, http: Any) -> None:
    status, body = await send(http, "POST", f"{sim.billing_base_url}/billingTasks/", json={})
    assert status == 405 and body["error_code"] == 405000
