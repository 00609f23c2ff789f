"""Unit tests of the tolerant API record models and the wire helpers (no server)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from billnotify import errors
from billnotify.clients.billing_models import (
    ActionResult,
    BillingRun,
    BillingTask,
    DownloadLink,
    Invoice,
)
from billnotify.clients.billing_platform import request_body
from billnotify.clients.codec import error_for, format_datetime, format_param, parse_retry_after
from billnotify.clients.http import HttpResponse
from billnotify.clients.property_billing import (
    BillingHeader,
    find_document_ids,
    jwt_claims,
    token_lifetime,
)


def test_billing_task_every_field_and_tolerance() -> None:
    raw: dict[str, Any] = {
        "billingTaskType": "Generate Invoice",
        "status": "Quarantined",  # unknown status: kept as an opaque string
        "customerID": 42,
        "attached": "<a href='/invoices/5'>Invoice 5</a>",
        "parameters": '{"x": 1}',
        "priority": 5,
        "retryCount": "3",
        "addedTime": "2024-01-31 10:00:00",
        "delayTime": None,
        "startedTime": "2024-01-31T10:05:00Z",
        "endedTime": "",
        "testMode": "0",
        "activityLog": "line 1\nline 2",
        "id": 1234,
        "brandNewField": {"a": 1},
    }
    task = BillingTask.from_raw(raw)
    assert task.id == "1234"
    assert task.customer_id == "42"
    assert task.priority == "5"
    assert task.retry_count == 3
    assert task.status == "Quarantined"
    assert task.added_time == datetime(2024, 1, 31, 10, 0, 0)
    assert task.started_time == datetime(2024, 1, 31, 10, 5, tzinfo=UTC)
    assert task.ended_time is None
    assert task.delay_time is None
    assert task.test_mode is False
    assert task.parameters == '{"x": 1}'
    assert task.activity_log == "line 1\nline 2"
    assert task.billing_task_type == "Generate Invoice"
    assert task.attached is not None
    assert task.raw is raw  # the untouched original is what detection uses
    assert task.model_extra == {"brandNewField": {"a": 1}}
    assert task.model_dump(by_alias=True)["retryCount"] == 3


def test_billing_task_numbers_sent_as_numbers_and_garbage() -> None:
    task = BillingTask.from_raw({"id": "7", "retryCount": 2.0, "testMode": True})
    assert task.retry_count == 2
    assert task.test_mode is True
    odd = BillingTask.from_raw({"id": "8", "retryCount": "n/a", "addedTime": "soon"})
    assert odd.retry_count is None  # unparseable: None, the raw dict keeps the text
    assert odd.added_time is None
    assert odd.raw["retryCount"] == "n/a"


def test_billing_run_fields() -> None:
    run = BillingRun.from_raw(
        {
            "id": 101,
            "name": "March",
            "status": "Requested",
            "subrun": 2,
            "invoiceMessage": "Default",
            "invoiceAmount": "1,234.56",
            "invoiceDate": "2024-03-01",
            "cutoffDate": "2024-03-01",
            "transactionCutoffDate": None,
            "dueDate": "2024-03-15 00:00:00",
            "commencedDate": "2024-03-01 09:00:00",
            "completedDate": None,
        }
    )
    assert run.id == "101"
    assert run.subrun == "2"
    assert run.invoice_amount == Decimal("1234.56")
    assert run.invoice_date == date(2024, 3, 1)
    assert run.due_date == date(2024, 3, 15)
    assert run.transaction_cutoff_date is None
    assert run.commenced_date == datetime(2024, 3, 1, 9, 0)
    assert run.completed_date is None


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (["Raised", "Approved"], ["Raised", "Approved"]),
        ("Approved", ["Approved"]),
        ("Raised, Approved,Emailed", ["Raised", "Approved", "Emailed"]),
        ('["Raised"]', ["Raised"]),
        (None, []),
        ("", []),
    ],
)
def test_invoice_status_shapes(status: Any, expected: list[str]) -> None:
    assert Invoice.from_raw({"id": "1", "status": status}).status == expected


def test_invoice_amounts_and_numbers() -> None:
    raw: dict[str, Any] = {
        "id": 5001,
        "invoiceNumber": "ACC1001/7",
        "billingRun": 101,
        "invoiceDate": "2024-03-01",
        "cutoffDate": "2024-03-01",
        "transactionCutoffDate": None,
        "dueDate": "2024-03-15",
        "paidDate": None,
        "paymentMethod": "Direct Debit",
        "invoiceAmount": 100,
        "invoiceVAT": 20.1,
        "invoiceReverseVAT": "0.00",
        "total": "120.10",
        "paidAmount": "",
        "outstanding": "$120.10",
        "invoiceCallCount": "12",
        "invoiceCallMinutes": 34,
        "status": ["Raised"],
        "billTypes": "Online,Email",
        "customerID": "42",
    }
    for name in [
        "OneOff",
        "Recurring",
        "Calls",
        "Refunds",
        "Late",
        "Interest",
        "CarrierProvided",
        "ManualBilling",
        "LowUsage",
        "Manual",
        "NonCall",
    ]:
        raw[f"invoiceCharges{name}"] = "1.50"
    for name in [
        "billStyle",
        "invoiceMessage",
        "invoiceUsageReportCustomerProfile",
        "customerReference",
        "purchaseOrderNumber",
        "onlineBillType",
        "emailBillType",
        "postBillType",
        "faxBillType",
    ]:
        raw[name] = "x"
    invoice = Invoice.from_raw(raw)
    assert invoice.id == "5001"
    assert invoice.billing_run == "101"
    assert invoice.invoice_amount == Decimal(100)
    assert invoice.invoice_vat == Decimal("20.1")
    assert invoice.total == Decimal("120.10")
    assert invoice.paid_amount is None
    assert invoice.outstanding == Decimal("120.10")
    assert invoice.invoice_call_count == 12
    assert invoice.invoice_call_minutes == 34
    assert invoice.bill_types == ["Online", "Email"]
    assert invoice.invoice_charges_non_call == Decimal("1.50")
    assert invoice.invoice_charges_carrier_provided == Decimal("1.50")
    assert invoice.fax_bill_type == "x"
    assert invoice.due_date == date(2024, 3, 15)
    # every documented field maps to a declared field, none lands in the extras
    assert invoice.model_extra == {}


def test_models_populate_by_name_and_alias() -> None:
    assert Invoice(customer_id="9").customer_id == "9"
    assert Invoice.model_validate({"customerID": 9}).customer_id == "9"
    assert Invoice().raw == {}


def test_action_result_and_download_link() -> None:
    result = ActionResult.from_raw({"success": True, "message": "sent"})
    assert result.success is True
    assert result.message == "sent"
    link = DownloadLink.from_raw(
        {
            "success": "true",
            "download_url": "https://example.com/download/invoice/abc123",
            "token": "abc123",
            "expires_at": "2025-01-27T14:30:00+00:00",
            "max_uses": "2",
        }
    )
    assert link.success is True
    assert link.max_uses == 2
    assert link.expires_at == datetime(2025, 1, 27, 14, 30, tzinfo=UTC)


def test_billing_header_model() -> None:
    header = BillingHeader.from_raw(
        {
            "id": 385619,
            "propertyUUId": "2eff1042c50c1eda889e61573e3c194c",
            "startDate": "2018-10-01T00:00:00",
            "endDate": "2019-09-30T00:00:00",
            "updateTimeStamp": "2023-07-03T22:00:26.16",
        }
    )
    assert header.id == "385619"
    assert header.start_date == date(2018, 10, 1)
    assert header.end_date == date(2019, 9, 30)
    assert header.update_time_stamp == "2023-07-03T22:00:26.16"


def test_request_body_maps_snake_case_to_api_names() -> None:
    body = request_body(BillingRun, {"invoice_date": "2024-01-01", "dueDate": "x", "other": 1})
    assert body == {"invoiceDate": "2024-01-01", "dueDate": "x", "other": 1}


def test_format_param() -> None:
    aware = datetime(2024, 1, 31, 23, 59, 59, 999, tzinfo=timezone(timedelta(hours=2)))
    assert format_param(aware) == "2024-01-31T21:59:59Z"
    assert format_datetime(aware) == "2024-01-31T21:59:59Z"
    assert format_param(date(2024, 2, 1)) == "2024-02-01"
    assert format_param(True) == "1"
    assert format_param(17) == "17"
    with pytest.raises(ValueError, match="timezone-aware"):
        format_param(datetime(2024, 1, 1))


def test_parse_retry_after() -> None:
    now = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("0.25", now) == 0.25
    assert parse_retry_after("Mon, 01 Jan 2024 00:00:30 GMT", now) == 30.0
    assert parse_retry_after("Sun, 31 Dec 2023 00:00:00 GMT", now) == 0.0
    assert parse_retry_after("whenever", now) is None
    assert parse_retry_after(None, now) is None


def _resp(status: int, body: Any, ctype: str = "application/json") -> HttpResponse:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": ctype}))
    return HttpResponse(status, "http://x/backend/api/v1/invoices/1", headers, data)


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, 400501, errors.ActionNotRecognisedError),
        (400, 400502, errors.ActionFailedError),
        (400, 400503, errors.MissingParametersError),
        (400, 400701, errors.RecreateFailedError),
        (400, 400702, errors.InvalidEmailError),
        (400, 400703, errors.UnknownBillStyleError),
        (400, 400704, errors.UnknownMessageTemplateError),
        (400, 400705, errors.UnknownAttachmentError),
        (400, 400706, errors.UnknownUsageReportError),
        (400, 400707, errors.NoCdrsError),
        (403, 403001, errors.PermissionDeniedError),
        (403, 403999, errors.PermissionDeniedError),
        (500, 500601, errors.EmailSendingFailedError),
        (500, 500602, errors.CdrEmailSendingFailedError),
        (500, 500701, errors.DownloadLinkFailedError),
        (500, 500000, errors.ServerError),
        (503, None, errors.ServerError),
        (404, 404000, errors.NotFoundError),
        (400, 400000, errors.ApiError),
        (400, "400702", errors.InvalidEmailError),
    ],
)
def test_error_mapping(status: int, code: Any, cls: type[errors.ApiError]) -> None:
    body = {"error": "Invalid Action", "error_code": code, "hint": "The action was not performed"}
    exc = error_for(_resp(status, body))
    assert type(exc) is cls
    assert exc.status == status
    assert exc.error_code == (None if code is None else int(code))
    assert exc.hint == "The action was not performed"
    assert "Invalid Action" in str(exc)


def test_error_mapping_auth_rate_limit_and_non_json() -> None:
    assert type(error_for(_resp(401, {"error": "Unauthorized"}))) is errors.AuthError
    assert type(error_for(_resp(403, {"error": "Forbidden"}))) is errors.AuthError
    limited = error_for(_resp(429, {"error": "slow down"}), retry_after=3.0)
    assert isinstance(limited, errors.RateLimitedError)
    assert limited.retry_after == 3.0
    html = error_for(_resp(502, b"<html>Bad gateway</html>", "text/html"))
    assert type(html) is errors.ServerError
    assert "Bad gateway" in str(html)


def test_http_response_json_error_names_url_and_body() -> None:
    resp = _resp(200, b"<html>" + b"x" * 1000, "text/html")
    with pytest.raises(errors.MalformedResponseError) as info:
        resp.json()
    text = str(info.value)
    assert "text/html" in text
    assert "http://x/backend/api/v1/invoices/1" in text
    assert len(text) < 400  # the body is truncated


def _jwt(claims: dict[str, Any]) -> str:
    def enc(part: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()

    return f"{enc({'alg': 'HS256'})}.{enc(claims)}.c2ln"


def test_token_lifetime() -> None:
    now = 1_700_000_000.0
    assert jwt_claims(_jwt({"exp": 1})) == {"exp": 1}
    assert jwt_claims("opaque-token") == {}
    assert token_lifetime(_jwt({"iat": 100, "exp": 400}), now) == 300.0  # clock-skew proof
    assert token_lifetime(_jwt({"exp": now + 120}), now) == 120.0
    assert token_lifetime(_jwt({"exp": now - 5}), now) == 300.0
    assert token_lifetime("opaque-token", now) == 300.0
    assert token_lifetime(_jwt({"sub": "x"}), now, default=60.0) == 60.0


def test_find_document_ids() -> None:
    billing = {
        "globalDocumentId": "BE00000001",
        "documents": [{"documentId": "BE00000002"}, {"documentId": "BE00000001"}],
        "other": "BE123",
    }
    assert find_document_ids(billing) == ["BE00000001", "BE00000002"]


def test_values_pydantic_refuses_take_the_lenient_path() -> None:
    task = BillingTask.from_raw(
        {
            "id": "9",
            "attached": {"type": "invoice", "id": 5},  # a structure where text was documented
            "priority": True,
            "testMode": "",
            "retryCount": "2.0",
            "addedTime": "0000-00-00 00:00:00",
            "startedTime": "2024-01-31",
        }
    )
    assert task.attached == '{"type": "invoice", "id": 5}'
    assert task.priority == "1"
    assert task.test_mode is False
    assert task.retry_count == 2
    assert task.added_time is None
    assert task.started_time == datetime(2024, 1, 31)
    run = BillingRun.from_raw(
        {"id": "1", "invoiceDate": "2024-03-15 10:30:00", "dueDate": "", "cutoffDate": 86400}
    )
    assert run.invoice_date == date(2024, 3, 15)
    assert run.due_date is None
    assert run.cutoff_date == date(1970, 1, 2)  # numbers are Unix timestamps (pydantic's rule)
    assert run.raw["invoiceDate"] == "2024-03-15 10:30:00"
