"""Invoice actions (seed 002) against the simulator: all eight, every error code, no retries."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest

from billnotify import errors
from billnotify.clients import ActionResult, BillingPlatformClient, DownloadLink, Invoice
from billnotify.simulator import Simulator
from servers import Sleeps


@pytest.fixture
def client_options() -> dict[str, Any]:
    return {"rng": random.Random(3)}


@pytest.fixture
def approved(sim: Simulator) -> str:
    record = sim.state.add_invoice(
        customerID="5", status=["Raised", "Approved"], invoiceCallCount=3
    )
    return str(record["id"])


def last_action(sim: Simulator) -> dict[str, Any]:
    return sim.state.action_log[-1]


async def test_email_invoice_sends_documented_params(
    sim: Simulator, client: BillingPlatformClient, approved: str
) -> None:
    result = await client.email_invoice(
        approved,
        email=["accounts@example.com", "billing@example.com"],
        bill_style="Full",
        message="Invoice",
        attachments=["Price List"],
        invoice_usage_report_customer_profile_id="Detailed",
    )
    assert isinstance(result, ActionResult)
    assert result.success is True
    assert "accounts@example.com" in (result.message or "")
    entry = last_action(sim)
    assert entry["action"] == "email"
    assert entry["params"] == {
        "email": ["accounts@example.com", "billing@example.com"],
        "billStyle": "Full",
        "message": "Invoice",
        "attachments": ["Price List"],
        "invoiceUsageReportCustomerProfileID": "Detailed",
    }
    assert sim.state.email_calls(approved) == 1
    assert "Emailed" in sim.state.invoices[approved]["status"]


async def test_email_without_params_sends_no_body(
    sim: Simulator, client: BillingPlatformClient, approved: str
) -> None:
    await client.email_invoice(approved, email="a@example.com; b@example.com")
    assert last_action(sim)["params"] == {"email": "a@example.com; b@example.com"}
    await client.email_invoice(approved)
    assert last_action(sim)["params"] == {}


async def test_email_cdrs(sim: Simulator, client: BillingPlatformClient, approved: str) -> None:
    result = await client.email_cdrs(approved, email=["cdrs@example.com"])
    assert result.success is True
    assert last_action(sim)["action"] == "emailCdrs"
    assert last_action(sim)["params"] == {"email": ["cdrs@example.com"]}


async def test_actions_returning_the_invoice(
    sim: Simulator, client: BillingPlatformClient, approved: str
) -> None:
    recreated = await client.recreate_invoice(approved)
    assert isinstance(recreated, Invoice) and recreated.id == approved
    reapplied = await client.reapply_discount_plans(approved)
    assert reapplied.id == approved
    unsent = sim.state.add_invoice(customerID="5", status=["Unsent"])["id"]
    updated = await client.update_call_transactions(unsent)
    assert updated.id == unsent
    assert updated.invoice_call_count == 3
    xero = uuid.UUID("550e8400-e29b-41d4-a716-446655440000")
    linked = await client.link_to_xero(approved, xero)
    assert linked.id == approved
    assert sim.state.xero_links[approved] == str(xero)
    assert last_action(sim)["params"] == {"xeroID": str(xero)}
    unlinked = await client.unlink_from_xero(approved)
    assert unlinked.id == approved
    assert approved not in sim.state.xero_links
    actions = [e["action"] for e in sim.state.action_log]
    assert actions == [
        "recreate",
        "reapplyDiscountPlans",
        "updateCallTransactions",
        "linkToXero",
        "unlinkFromXero",
    ]


async def test_generate_download_link(
    sim: Simulator, client: BillingPlatformClient, approved: str
) -> None:
    link = await client.generate_download_link(approved, expiry_hours=72, max_uses=2)
    assert isinstance(link, DownloadLink)
    assert link.success is True
    assert link.max_uses == 2
    assert link.token and link.download_url and link.download_url.endswith(link.token)
    assert link.expires_at is not None and link.expires_at.tzinfo is not None
    assert last_action(sim)["params"] == {"expiryHours": 72, "maxUses": 2}


@pytest.mark.parametrize("kwargs", [{"expiry_hours": 2}, {"max_uses": 3}, {"max_uses": 0}])
async def test_download_link_validated_client_side(
    sim: Simulator, client: BillingPlatformClient, approved: str, kwargs: dict[str, int]
) -> None:
    with pytest.raises(ValueError):
        await client.generate_download_link(approved, **kwargs)
    assert sim.state.action_log == []  # nothing was sent


async def test_link_to_xero_validates_uuid(
    sim: Simulator, client: BillingPlatformClient, approved: str
) -> None:
    with pytest.raises(ValueError, match="UUID"):
        await client.link_to_xero(approved, "not-a-uuid")
    assert sim.state.action_log == []


async def test_generic_invoice_action(
    sim: Simulator, client: BillingPlatformClient, approved: str
) -> None:
    raw = await client.invoice_action(approved, "email", {"billStyle": "Summary"})
    assert raw["success"] is True
    assert last_action(sim)["params"] == {"billStyle": "Summary"}


ERROR_CASES: list[tuple[int, type[errors.ActionError]]] = [
    (400501, errors.ActionNotRecognisedError),
    (400502, errors.ActionFailedError),
    (400503, errors.MissingParametersError),
    (400701, errors.RecreateFailedError),
    (400702, errors.InvalidEmailError),
    (400703, errors.UnknownBillStyleError),
    (400704, errors.UnknownMessageTemplateError),
    (400705, errors.UnknownAttachmentError),
    (400706, errors.UnknownUsageReportError),
    (400707, errors.NoCdrsError),
    (403501, errors.PermissionDeniedError),
    (500601, errors.EmailSendingFailedError),
    (500602, errors.CdrEmailSendingFailedError),
    (500701, errors.DownloadLinkFailedError),
]


async def _provoke(code: int, sim: Simulator, client: BillingPlatformClient, inv: str) -> None:
    """Trigger ``code`` the way a real platform would (or by forcing it where only a
    server-side failure can cause it)."""
    if code == 400501:
        await client.invoice_action(inv, "frobnicate")
    elif code == 400502:
        draft = sim.state.add_invoice(status=["Raised"])["id"]  # not approved
        await client.email_invoice(draft)
    elif code == 400503:
        await client.invoice_action(inv, "linkToXero")
    elif code == 400701:
        await client.recreate_invoice(sim.state.add_invoice(status=["Unsent"])["id"])
    elif code == 400702:
        await client.email_invoice(inv, email=["not an address"])
    elif code == 400703:
        await client.email_invoice(inv, bill_style="Gothic")
    elif code == 400704:
        await client.email_invoice(inv, message="Nope")
    elif code == 400705:
        await client.email_invoice(inv, attachments=["Cat picture"])
    elif code == 400706:
        await client.email_invoice(inv, invoice_usage_report_customer_profile_id="Nope")
    elif code == 400707:
        no_calls = sim.state.add_invoice(status=["Approved"], invoiceCallCount=0)["id"]
        await client.email_cdrs(no_calls)
    elif code == 403501:
        sim.state.expert_level = 1
        await client.unlink_from_xero(inv)
    elif code == 500601:
        sim.state.fail_next_action("email", code)
        await client.email_invoice(inv)
    elif code == 500602:
        sim.state.fail_next_action("emailCdrs", code)
        await client.email_cdrs(inv)
    elif code == 500701:
        sim.state.fail_next_action("generateDownloadLink", code)
        await client.generate_download_link(inv)


@pytest.mark.parametrize(("code", "cls"), ERROR_CASES, ids=[str(c) for c, _ in ERROR_CASES])
async def test_every_error_code_maps_to_its_exception(
    sim: Simulator,
    client: BillingPlatformClient,
    approved: str,
    sleeps: Sleeps,
    code: int,
    cls: type[errors.ActionError],
) -> None:
    with pytest.raises(cls) as info:
        await _provoke(code, sim, client, approved)
    assert type(info.value) is cls
    assert info.value.error_code == code
    assert info.value.status == code // 1000
    assert info.value.hint
    # actions are never retried automatically, not even on 5xx
    assert sleeps == []
    assert len(sim.state.action_log) == 1


async def test_action_on_missing_invoice_is_not_found(client: BillingPlatformClient) -> None:
    with pytest.raises(errors.NotFoundError):
        await client.recreate_invoice("424242")


async def test_action_not_retried_on_5xx(
    sim: Simulator, client: BillingPlatformClient, approved: str, sleeps: Sleeps
) -> None:
    sim.faults.add("/backend/api/v1/invoices", "503", count=1)
    with pytest.raises(errors.ServerError):
        await client.email_invoice(approved)
    assert sleeps == []
    assert sim.state.email_calls(approved) == 0


async def test_action_uncertain_outcome_is_not_retried(
    sim: Simulator, client: BillingPlatformClient, approved: str, sleeps: Sleeps
) -> None:
    # the platform performs the action, then the connection drops before the answer
    sim.faults.add("/backend/api/v1/invoices", "reset_after", count=1, method="POST")
    with pytest.raises(errors.TransportError) as info:
        await client.email_invoice(approved)
    assert not isinstance(info.value, errors.RateLimitedError)
    assert sleeps == []
    assert sim.state.email_calls(approved) == 1  # sent once, and only once


async def test_action_retried_on_429(
    sim: Simulator, client: BillingPlatformClient, approved: str, sleeps: Sleeps
) -> None:
    # a 429 means the request was refused, so repeating it cannot duplicate the email
    sim.faults.add("/backend/api/v1/invoices", "429", count=1, retry_after=2)
    result = await client.email_invoice(approved)
    assert result.success is True
    assert sleeps == [2.0]
    assert sim.state.email_calls(approved) == 1
