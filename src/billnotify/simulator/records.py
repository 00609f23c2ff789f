"""Default field values for simulated records, shaped like the seed documentation.

Types follow the documented *display* types: ids, ``retryCount`` and other "Text"
fields are strings, "Currency" fields are strings with two decimals, "Number" fields
are integers, dates are ``YYYY-MM-DD`` and date-times ``YYYY-MM-DD HH:MM:SS``. Unset
dates are ``null`` and unset texts ``""``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

BILLING_TASK_FIELDS = (
    "billingTaskType",
    "status",
    "customerID",
    "attached",
    "parameters",
    "priority",
    "retryCount",
    "addedTime",
    "delayTime",
    "startedTime",
    "endedTime",
    "testMode",
    "activityLog",
    "id",
)

BILLING_RUN_FIELDS = (
    "name",
    "status",
    "subrun",
    "invoiceMessage",
    "invoiceAmount",
    "invoiceDate",
    "cutoffDate",
    "transactionCutoffDate",
    "dueDate",
    "id",
    "commencedDate",
    "completedDate",
)

BILLING_RUN_DATE_FIELDS = ("invoiceDate", "cutoffDate", "transactionCutoffDate", "dueDate")

INVOICE_CHARGE_FIELDS = (
    "invoiceChargesOneOff",
    "invoiceChargesRecurring",
    "invoiceChargesCalls",
    "invoiceChargesRefunds",
    "invoiceChargesLate",
    "invoiceChargesInterest",
    "invoiceChargesCarrierProvided",
    "invoiceChargesManualBilling",
    "invoiceChargesLowUsage",
    "invoiceChargesManual",
    "invoiceChargesNonCall",
)

INVOICE_FIELDS = (
    "invoiceNumber",
    "billingRun",
    "invoiceDate",
    "cutoffDate",
    "transactionCutoffDate",
    "dueDate",
    "paidDate",
    "paymentMethod",
    "invoiceAmount",
    "invoiceVAT",
    "invoiceReverseVAT",
    "total",
    "paidAmount",
    "outstanding",
    "invoiceCallCount",
    "invoiceCallMinutes",
    *INVOICE_CHARGE_FIELDS,
    "status",
    "billStyle",
    "invoiceMessage",
    "invoiceUsageReportCustomerProfile",
    "customerReference",
    "purchaseOrderNumber",
    "onlineBillType",
    "emailBillType",
    "postBillType",
    "faxBillType",
    "id",
    "customerID",
    "billTypes",
)

#: Status flags that mean an invoice has been delivered (the ``undelivered`` filter).
DELIVERED_FLAGS = frozenset({"Emailed", "Sent", "Downloaded", "Printed", "Delivered"})

VAT_RATE = Decimal("0.20")
_CENT = Decimal("0.01")


def money(value: Any) -> Decimal:
    """Parse a currency value sent as a string or a number (``None``/``""`` is 0)."""
    if value is None or value == "":
        return Decimal("0")
    return Decimal(str(value)).quantize(_CENT, rounding=ROUND_HALF_UP)


def fmt_money(value: Decimal) -> str:
    """Format a currency amount the way the platform displays it (``"12.50"``)."""
    return str(value.quantize(_CENT, rounding=ROUND_HALF_UP))


def fmt_datetime(when: datetime) -> str:
    """Format a date-time as the platform shows it (``YYYY-MM-DD HH:MM:SS``)."""
    return when.strftime("%Y-%m-%d %H:%M:%S")


def fmt_date(when: date) -> str:
    """Format a date as ``YYYY-MM-DD``."""
    return when.strftime("%Y-%m-%d")


def default_billing_task(now: datetime) -> dict[str, Any]:
    """Return a fresh pending billing task (without ``id``)."""
    return {
        "billingTaskType": "Generate Invoice",
        "status": "Pending",
        "customerID": "",
        "attached": "",
        "parameters": "{}",
        "priority": "5",
        "retryCount": "0",
        "addedTime": fmt_datetime(now),
        "delayTime": None,
        "startedTime": None,
        "endedTime": None,
        "testMode": "0",
        "activityLog": "",
    }


def default_billing_run(now: datetime) -> dict[str, Any]:
    """Return a fresh pending billing run (without ``id``)."""
    today = now.date()
    return {
        "name": f"Billing run {fmt_date(today)}",
        "status": "Pending",
        "subrun": "",
        "invoiceMessage": "Default",
        "invoiceAmount": "0.00",
        "invoiceDate": fmt_date(today),
        "cutoffDate": fmt_date(today.replace(day=1)),
        "transactionCutoffDate": None,
        "dueDate": fmt_date(date.fromordinal(today.toordinal() + 14)),
        "commencedDate": None,
        "completedDate": None,
    }


def default_invoice(now: datetime) -> dict[str, Any]:
    """Return a fresh raised invoice (without ``id``, number and customer)."""
    today = now.date()
    record: dict[str, Any] = {
        "invoiceNumber": "",
        "billingRun": "",
        "invoiceDate": fmt_date(today),
        "cutoffDate": fmt_date(today.replace(day=1)),
        "transactionCutoffDate": None,
        "dueDate": fmt_date(date.fromordinal(today.toordinal() + 14)),
        "paidDate": None,
        "paymentMethod": "Invoice",
        "invoiceAmount": "100.00",
        "invoiceVAT": "20.00",
        "invoiceReverseVAT": "0.00",
        "total": "120.00",
        "paidAmount": "0.00",
        "outstanding": "120.00",
        "invoiceCallCount": 0,
        "invoiceCallMinutes": 0,
    }
    for field in INVOICE_CHARGE_FIELDS:
        record[field] = "0.00"
    record["invoiceChargesRecurring"] = "100.00"
    record["invoiceChargesNonCall"] = "100.00"
    record.update(
        {
            "status": ["Raised"],
            "billStyle": "Full",
            "invoiceMessage": "Default",
            "invoiceUsageReportCustomerProfile": "Standard",
            "customerReference": "",
            "purchaseOrderNumber": "",
            "onlineBillType": "Full",
            "emailBillType": "Full",
            "postBillType": "",
            "faxBillType": "",
            "customerID": "",
            "billTypes": ["Online", "Email"],
        }
    )
    return record


def complete_amounts(record: dict[str, Any], given: set[str]) -> None:
    """Derive VAT, total and outstanding from ``invoiceAmount`` unless they were given.

    Keeps the representation (string or number) of the given net amount.
    """
    as_number = isinstance(record.get("invoiceAmount"), int | float)
    net = money(record.get("invoiceAmount"))

    def out(value: Decimal) -> Any:
        return float(value) if as_number else fmt_money(value)

    if "invoiceVAT" not in given and "invoiceAmount" in given:
        record["invoiceVAT"] = out(net * VAT_RATE)
    if "total" not in given:
        record["total"] = out(net + money(record.get("invoiceVAT")))
    if "outstanding" not in given:
        record["outstanding"] = out(money(record.get("total")) - money(record.get("paidAmount")))


def is_delivered(invoice: Mapping[str, Any]) -> bool:
    """Tell whether an invoice has been emailed, downloaded, printed or marked delivered."""
    return any(flag in DELIVERED_FLAGS for flag in invoice.get("status") or [])


def is_unsent(invoice: Mapping[str, Any]) -> bool:
    """Tell whether an invoice is the customer's unsent one (no invoice number)."""
    return not invoice.get("invoiceNumber") or "Unsent" in (invoice.get("status") or [])
