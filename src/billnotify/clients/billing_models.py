"""Typed, tolerant views of the billing platform's records (seeds 000-002).

The docs give display types ("Text", "Currency", "Number", "Date"), not wire types, so every
field is optional and lenient: ids become strings, numbers sent as strings are parsed,
unparseable numbers and dates become ``None`` rather than failing the whole page, statuses
and preset values stay opaque strings. Each record keeps the dict it was built from in
:attr:`Record.raw`; change detection works on those raw dicts, the typed fields are for
code that wants to read a value.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
)

logger = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "y", "on", "t"}
_FALSE = {"0", "false", "no", "n", "off", "f", ""}


def _text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float | Decimal):
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    # a structure where text was documented: keep it readable rather than fail the page
    return json.dumps(value, default=str)


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    # repr of a float is its shortest round-tripping text: 12.1 stays 12.1
    text = repr(value) if isinstance(value, float) else str(value)
    text = text.strip().replace(",", "").replace(" ", "").lstrip("$£€")
    if not text:
        return None
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _int(value: Any) -> int | None:
    number = _decimal(value)
    if number is None or number != number.to_integral_value():
        return None
    return int(number)


def _bool(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def _date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date) or value is None:
        return value
    text = str(value).strip()
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def _datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime) or value is None:
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    text = str(value).strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _str_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return _str_list(json.loads(text))
            except ValueError:
                pass
        return [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, list | tuple | set):
        return [str(_text(item)) for item in value if item is not None]
    return [str(_text(value))]


class Lenient:
    """Field metadata: the lenient parser used when pydantic's own (lax) parsing fails.

    Pydantic parses the common shapes natively (fast); only a value it refuses goes through
    this Python parser, which never fails (it returns None for what it cannot read).
    """

    __slots__ = ("parse",)

    def __init__(self, parse: Callable[[Any], Any]) -> None:
        self.parse = parse


Text = Annotated[str | None, Lenient(_text)]
"""Text, ids and preset values: numbers become strings."""
Money = Annotated[Decimal | None, Lenient(_decimal)]
"""Currency amounts: Decimal; strings like ``"1,234.50"`` accepted."""
Count = Annotated[int | None, Lenient(_int)]
"""Whole numbers sent as numbers or strings."""
Flag = Annotated[bool | None, Lenient(_bool)]
"""Yes/no values sent as booleans, numbers or words."""
Day = Annotated[date | None, Lenient(_date)]
"""A calendar date; a datetime keeps its date part; a number is a Unix timestamp."""
Timestamp = Annotated[datetime | None, Lenient(_datetime)]
"""A datetime; naive when the platform gives no zone (never guessed); a number is a
Unix timestamp."""
Labels = Annotated[list[str], BeforeValidator(_str_list)]
"""Preset Value(s): a list, or one string, or a comma-separated string."""

_PARSERS: dict[type[BaseModel], dict[str, Callable[[Any], Any]]] = {}


def _parsers(model: type[BaseModel]) -> dict[str, Callable[[Any], Any]]:
    """Lenient parser per input key (field name and alias) of ``model``."""
    found = _PARSERS.get(model)
    if found is None:
        found = {}
        for name, info in model.model_fields.items():
            for meta in info.metadata:
                if isinstance(meta, Lenient):
                    found[name] = meta.parse
                    if info.alias:
                        found[info.alias] = meta.parse
        _PARSERS[model] = found
    return found


class Record(BaseModel):
    """Base of every API record: tolerant, extra fields kept, raw dict preserved."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, coerce_numbers_to_str=True)

    id: Text = None
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> Self:
        """Build the typed view of ``raw`` (never failing on a field's value); keep ``raw``."""
        data = raw
        for _ in range(3):
            try:
                record = cls.model_validate(data)
                break
            except ValidationError as exc:
                data = cls._relax(data, exc)
        else:  # pragma: no cover - the lenient parsers return valid values
            record = cls.model_validate({k: v for k, v in raw.items() if k not in _parsers(cls)})
        record._raw = raw
        return record

    @classmethod
    def _relax(cls, data: dict[str, Any], exc: ValidationError) -> dict[str, Any]:
        parsers = _parsers(cls)
        fixed = dict(data)
        for error in exc.errors():
            key = error["loc"][0] if error["loc"] else None
            if isinstance(key, str) and key in fixed:
                parse = parsers.get(key)
                fixed[key] = parse(fixed[key]) if parse is not None else None
                logger.debug("%s.%s: lenient parse of %r", cls.__name__, key, data[key])
        return fixed

    @property
    def raw(self) -> dict[str, Any]:
        """The record exactly as the API returned it."""
        return self._raw


class BillingTask(Record):
    """A background job of the platform (seed 000); read-only through the API."""

    billing_task_type: Text = Field(None, alias="billingTaskType")
    status: Text = None
    customer_id: Text = Field(None, alias="customerID")
    attached: Text = None
    parameters: Any = None
    priority: Text = None
    retry_count: Count = Field(None, alias="retryCount")
    added_time: Timestamp = Field(None, alias="addedTime")
    delay_time: Timestamp = Field(None, alias="delayTime")
    started_time: Timestamp = Field(None, alias="startedTime")
    ended_time: Timestamp = Field(None, alias="endedTime")
    test_mode: Flag = Field(None, alias="testMode")
    activity_log: Text = Field(None, alias="activityLog")


class BillingRun(Record):
    """A run that produces invoices on a chosen date (seed 001)."""

    name: Text = None
    status: Text = None
    subrun: Text = None
    invoice_message: Text = Field(None, alias="invoiceMessage")
    invoice_amount: Money = Field(None, alias="invoiceAmount")
    invoice_date: Day = Field(None, alias="invoiceDate")
    cutoff_date: Day = Field(None, alias="cutoffDate")
    transaction_cutoff_date: Day = Field(None, alias="transactionCutoffDate")
    due_date: Day = Field(None, alias="dueDate")
    commenced_date: Timestamp = Field(None, alias="commencedDate")
    completed_date: Timestamp = Field(None, alias="completedDate")


class Invoice(Record):
    """An invoice (seed 002); an "Unsent" invoice has no number yet."""

    invoice_number: Text = Field(None, alias="invoiceNumber")
    billing_run: Text = Field(None, alias="billingRun")
    invoice_date: Day = Field(None, alias="invoiceDate")
    cutoff_date: Day = Field(None, alias="cutoffDate")
    transaction_cutoff_date: Day = Field(None, alias="transactionCutoffDate")
    due_date: Day = Field(None, alias="dueDate")
    paid_date: Day = Field(None, alias="paidDate")
    payment_method: Text = Field(None, alias="paymentMethod")
    invoice_amount: Money = Field(None, alias="invoiceAmount")
    invoice_vat: Money = Field(None, alias="invoiceVAT")
    invoice_reverse_vat: Money = Field(None, alias="invoiceReverseVAT")
    total: Money = None
    paid_amount: Money = Field(None, alias="paidAmount")
    outstanding: Money = None
    invoice_call_count: Count = Field(None, alias="invoiceCallCount")
    invoice_call_minutes: Count = Field(None, alias="invoiceCallMinutes")
    invoice_charges_one_off: Money = Field(None, alias="invoiceChargesOneOff")
    invoice_charges_recurring: Money = Field(None, alias="invoiceChargesRecurring")
    invoice_charges_calls: Money = Field(None, alias="invoiceChargesCalls")
    invoice_charges_refunds: Money = Field(None, alias="invoiceChargesRefunds")
    invoice_charges_late: Money = Field(None, alias="invoiceChargesLate")
    invoice_charges_interest: Money = Field(None, alias="invoiceChargesInterest")
    invoice_charges_carrier_provided: Money = Field(None, alias="invoiceChargesCarrierProvided")
    invoice_charges_manual_billing: Money = Field(None, alias="invoiceChargesManualBilling")
    invoice_charges_low_usage: Money = Field(None, alias="invoiceChargesLowUsage")
    invoice_charges_manual: Money = Field(None, alias="invoiceChargesManual")
    invoice_charges_non_call: Money = Field(None, alias="invoiceChargesNonCall")
    status: Labels = Field(default_factory=list)
    bill_style: Text = Field(None, alias="billStyle")
    invoice_message: Text = Field(None, alias="invoiceMessage")
    invoice_usage_report_customer_profile: Text = Field(
        None, alias="invoiceUsageReportCustomerProfile"
    )
    customer_reference: Text = Field(None, alias="customerReference")
    purchase_order_number: Text = Field(None, alias="purchaseOrderNumber")
    online_bill_type: Text = Field(None, alias="onlineBillType")
    email_bill_type: Text = Field(None, alias="emailBillType")
    post_bill_type: Text = Field(None, alias="postBillType")
    fax_bill_type: Text = Field(None, alias="faxBillType")
    customer_id: Text = Field(None, alias="customerID")
    bill_types: Labels = Field(default_factory=list, alias="billTypes")


class ActionResult(Record):
    """What ``email`` and ``emailCdrs`` return: ``{"success": true, "message": "..."}``."""

    success: Flag = None
    message: Text = None


class DownloadLink(Record):
    """What ``generateDownloadLink`` returns."""

    success: Flag = None
    download_url: Text = None
    token: Text = None
    expires_at: Timestamp = None
    max_uses: Count = None
