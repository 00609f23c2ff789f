"""Invoice actions of the simulator (seed 002): preconditions, error codes, effects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from billnotify.simulator import ManualClock, Simulator

START = datetime(2026, 3, 15, 12, 0, 0, tzinfo=UTC)  # where the `clock` fixture starts
APPROVED = ["Raised", "Approved"]
XERO = "550e8400-e29b-41d4-a716-446655440000"


@pytest.fixture
def sim_options(clock: ManualClock) -> dict[str, Any]:
    return {"clock": clock}


async def act(
    sim: Simulator, http: aiohttp.ClientSession, invoice_id: str, action: str, body: Any = None
) -> tuple[int, Any]:
    url = f"{sim.billing_base_url}/invoices/{invoice_id}"
    async with http.post(url, params={"action": action}, json=body) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("fields", "action", "params", "status", "code"),
    [
        ({}, "fly", None, 400, 400501),
        ({}, "", None, 400, 400501),
        ({"status": ["Raised"]}, "email", None, 400, 400502),
        ({"status": ["Raised"]}, "emailCdrs", None, 400, 400502),
        ({"status": ["Raised"]}, "generateDownloadLink", None, 400, 400502),
        ({}, "email", {"email": ["not-an-address"]}, 400, 400702),
        ({}, "email", {"email": "a@example.com; b@"}, 400, 400702),
        ({}, "email", {"billStyle": "Fancy"}, 400, 400703),
        ({}, "email", {"message": "Nope"}, 400, 400704),
        ({}, "email", {"attachments": ["Virus.exe"]}, 400, 400705),
        ({}, "email", {"invoiceUsageReportCustomerProfileID": "Gold"}, 400, 400706),
        ({"invoiceCallCount": 0}, "emailCdrs", None, 400, 400707),
        ({"invoiceCallCount": 3}, "emailCdrs", {"email": "bad"}, 400, 400702),
        ({}, "generateDownloadLink", {"expiryHours": 2}, 400, 400502),
        ({}, "generateDownloadLink", {"maxUses": 3}, 400, 400502),
        ({}, "generateDownloadLink", {"maxUses": 0}, 400, 400502),
        ({}, "generateDownloadLink", {"expiryHours": "soon"}, 400, 400502),
        ({}, "updateCallTransactions", None, 400, 400502),
        ({}, "linkToXero", None, 400, 400503),
        ({}, "linkToXero", {"xeroID": "not-a-uuid"}, 400, 400502),
        ({}, "unlinkFromXero", None, 400, 400502),
        ({"status": ["Unsent"]}, "recreate", None, 400, 400701),
    ],
)
async def test_action_preconditions_and_error_codes(
    sim: Simulator,
    http: Any,
    fields: dict[str, Any],
    action: str,
    params: Any,
    status: int,
    code: int,
) -> None:
    invoice = sim.state.add_invoice(**{"status": APPROVED, **fields})
    got_status, body = await act(sim, http, invoice["id"], action, params)
    assert (got_status, body["error_code"]) == (status, code), body
    assert set(body) == {"error", "error_code", "hint"} and body["hint"]
    assert sim.state.action_log[-1]["status_code"] == status
    assert sim.state.action_log[-1]["action"] == action
    assert sim.state.invoices[invoice["id"]]["status"] == invoice["status"]


async def test_email_marks_delivered_and_is_logged(sim: Simulator, http: Any) -> None:
    invoice = sim.state.add_invoice(status=APPROVED)
    undelivered = f"{sim.billing_base_url}/invoices/?undelivered=1"
    async with http.get(undelivered) as resp:
        assert [r["id"] for r in await resp.json()] == [invoice["id"]]
    params = {
        "email": "a@example.com, b@example.com",
        "billStyle": "Summary",
        "message": "Reminder",
        "attachments": ["Terms and Conditions"],
        "invoiceUsageReportCustomerProfileID": "Detailed",
    }
    status, body = await act(sim, http, invoice["id"], "email", params)
    assert status == 200 and body["success"] is True and "a@example.com" in body["message"]
    assert set(body) == {"success", "message"}
    assert "Emailed" in sim.state.invoices[invoice["id"]]["status"]
    async with http.get(undelivered) as resp:
        assert await resp.json() == []
    assert sim.state.email_calls(invoice["id"]) == 1
    entry = sim.state.action_log[-1]
    assert entry == {
        "invoice_id": invoice["id"],
        "action": "email",
        "params": params,
        "time": START.isoformat(),
        "status_code": 200,
    }
    status, _ = await act(sim, http, invoice["id"], "email")  # to the customer's address
    assert status == 200 and sim.state.email_calls(invoice["id"]) == 2
    assert sim.state.invoices[invoice["id"]]["status"].count("Emailed") == 1


async def test_query_parameters_are_action_params_too(sim: Simulator, http: Any) -> None:
    invoice = sim.state.add_invoice(status=APPROVED)
    url = f"{sim.billing_base_url}/invoices/{invoice['id']}?action=email&billStyle=Weird"
    async with http.post(url) as resp:
        assert resp.status == 400 and (await resp.json())["error_code"] == 400703


async def test_email_cdrs(sim: Simulator, http: Any) -> None:
    invoice = sim.state.add_invoice(status=APPROVED, invoiceCallCount="12")
    status, body = await act(sim, http, invoice["id"], "emailCdrs", {"email": ["cdr@example.com"]})
    assert status == 200 and body["success"] is True and "cdr@example.com" in body["message"]
    assert sim.state.email_calls(invoice["id"]) == 0


async def test_download_link(sim: Simulator, http: Any) -> None:
    invoice = sim.state.add_invoice(status=APPROVED)
    status, body = await act(
        sim, http, invoice["id"], "generateDownloadLink", {"expiryHours": 72, "maxUses": 2}
    )
    assert status == 200
    assert set(body) == {"success", "download_url", "token", "expires_at", "max_uses"}
    assert body["max_uses"] == 2 and body["expires_at"] == "2026-03-18T12:00:00+00:00"
    assert body["download_url"].endswith(body["token"])
    for _ in range(2):
        async with http.get(body["download_url"]) as resp:
            assert resp.status == 200 and (await resp.read()).startswith(b"%PDF-")
    async with http.get(body["download_url"]) as resp:
        assert resp.status == 410
    assert "Downloaded" in sim.state.invoices[invoice["id"]]["status"]
    status, body = await act(
        sim, http, invoice["id"], "generateDownloadLink", {"expiryHours": "720"}
    )
    assert status == 200 and body["max_uses"] == 1
    status, body = await act(sim, http, invoice["id"], "generateDownloadLink")
    assert body["expires_at"] == "2026-03-22T12:00:00+00:00"  # 168 h by default


async def test_actions_returning_the_invoice(sim: Simulator, http: Any) -> None:
    raised = sim.state.add_invoice(status=["Raised"])
    unsent = sim.state.add_invoice(status=["Unsent"], invoiceCallCount=1)
    for action in ("recreate", "reapplyDiscountPlans"):
        status, body = await act(sim, http, raised["id"], action)
        assert status == 200 and body["id"] == raised["id"] and body["invoiceNumber"]
    status, body = await act(sim, http, unsent["id"], "updateCallTransactions")
    assert status == 200 and body["id"] == unsent["id"] and body["invoiceCallCount"] == 4
    status, body = await act(sim, http, raised["id"], "linkToXero", {"xeroID": XERO})
    assert status == 200 and body["id"] == raised["id"]
    assert sim.state.xero_links == {raised["id"]: XERO}
    status, body = await act(sim, http, raised["id"], "unlinkFromXero")
    assert status == 200 and sim.state.xero_links == {}


async def test_xero_permissions_and_module(sim: Simulator, http: Any) -> None:
    invoice = sim.state.add_invoice()
    assert (await act(sim, http, invoice["id"], "linkToXero", {"xeroID": XERO}))[0] == 200
    sim.state.expert_level = 3
    status, body = await act(sim, http, invoice["id"], "linkToXero", {"xeroID": XERO})
    assert status == 403 and body["error_code"] == 403501
    status, body = await act(sim, http, invoice["id"], "unlinkFromXero")
    assert status == 403 and body["error_code"] == 403501
    sim.state.xero_module_active = False
    status, body = await act(sim, http, invoice["id"], "unlinkFromXero")
    assert status == 400 and body["error_code"] == 400502


@pytest.mark.parametrize(
    ("action", "code", "status"),
    [
        ("email", 500601, 500),
        ("emailCdrs", 500602, 500),
        ("generateDownloadLink", 500701, 500),
        ("recreate", 400701, 400),
        ("email", 403001, 403),
    ],
)
async def test_forced_action_failures(
    sim: Simulator, http: Any, action: str, code: int, status: int
) -> None:
    invoice = sim.state.add_invoice(status=APPROVED, invoiceCallCount=5)
    sim.state.fail_next_action(action, code, invoice_id=invoice["id"])
    got, body = await act(sim, http, invoice["id"], action)
    assert (got, body["error_code"]) == (status, code)
    assert sim.state.email_calls(invoice["id"]) == 0
    got, _ = await act(sim, http, invoice["id"], action)
    assert got == 200


async def test_action_on_unknown_invoice_and_bad_body(sim: Simulator, http: Any) -> None:
    status, body = await act(sim, http, "424242", "email")
    assert status == 404 and body["error_code"] == 404000
    invoice = sim.state.add_invoice(status=APPROVED)
    async with http.post(
        f"{sim.billing_base_url}/invoices/{invoice['id']}?action=email", data=b"[1, 2"
    ) as resp:
        assert resp.status == 400 and (await resp.json())["error_code"] == 400503
    assert [e["status_code"] for e in sim.state.action_log] == [404, 400]
