"""The eight invoice actions of seed 002 (``POST invoices/ID?action=X``), as pure state changes."""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from datetime import timedelta
from typing import Any

from billnotify.config.types import INVOICE_ACTIONS
from billnotify.simulator import records as rec
from billnotify.simulator.errors import ApiError
from billnotify.simulator.state import SimState

logger = logging.getLogger(__name__)

ACTIONS = INVOICE_ACTIONS
BILL_STYLES = frozenset({"Full", "Summary"})
MESSAGE_TEMPLATES = frozenset({"Default", "Invoice", "Reminder", "Final Notice"})
ATTACHMENTS = frozenset({"Terms and Conditions", "Direct Debit Form", "Price List"})
USAGE_REPORT_PROFILES = frozenset({"Standard", "Detailed"})
EXPIRY_HOURS = (1, 6, 24, 72, 168, 336, 720)
_NEEDS_APPROVAL = frozenset({"email", "emailCdrs", "generateDownloadLink"})
_EMAIL_RE = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[A-Za-z]{2,}$")
_ERRORS = {
    400501: (400, "Action not recognised"),
    400502: (400, "Action failed"),
    400503: (400, "Missing required parameters"),
    400701: (400, "Recreate failed"),
    400702: (400, "Invalid email address"),
    400703: (400, "Unknown bill style"),
    400704: (400, "Unknown message template"),
    400705: (400, "Unknown attachment"),
    400706: (400, "Unknown usage report profile"),
    400707: (400, "No CDRs available for this invoice"),
    500601: (500, "Email sending failed"),
    500602: (500, "CDR email sending failed"),
    500701: (500, "Download link generation failed"),
}


def action_error(code: int, hint: str) -> ApiError:
    """Build the error for a documented action error code (403xxx is permission denied)."""
    status, title = _ERRORS.get(
        code,
        (403, "Permission denied") if 403000 <= code < 404000 else (code // 1000, "Action failed"),
    )
    return ApiError(status, title, code=code, hint=hint)


def _addresses(value: Any) -> list[str]:
    if value is None or value == "" or value == []:
        return []
    items = value if isinstance(value, list) else re.split(r"[,;]", str(value))
    addresses = [str(item).strip() for item in items if str(item).strip()]
    for address in addresses:
        if not _EMAIL_RE.match(address):
            raise action_error(400702, f"{address!r} is not a valid email address")
    return addresses


def _names(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    items = value if isinstance(value, list) else re.split(r"[,;]", str(value))
    return [str(item).strip() for item in items if str(item).strip()]


def _int_param(params: dict[str, Any], name: str, default: int) -> int:
    value = params.get(name, default)
    if value is None or value == "":
        return default
    try:
        return int(str(value))
    except ValueError as exc:
        raise action_error(400502, f"{name} must be an integer") from exc


def _forced_error(state: SimState, action: str, invoice_id: str) -> None:
    for forced in state.forced_action_errors:
        if forced["action"] != action or forced["count"] == 0:
            continue
        if forced["invoice_id"] not in (None, invoice_id):
            continue
        forced["count"] -= 1
        raise action_error(forced["error_code"], "Failure injected by the simulator")


def perform_action(
    state: SimState, invoice_id: str, action: str, params: dict[str, Any], *, base_url: str
) -> tuple[int, Any]:
    """Run one invoice action, log it in ``state.action_log`` and return (status, body).

    Args:
        state: The simulator state.
        invoice_id: The invoice from the URL.
        action: The ``action`` query parameter.
        params: JSON body merged over the other query parameters.
        base_url: ``scheme://host`` of the request, for download links.
    """
    try:
        if invoice_id not in state.invoices:
            raise ApiError(404, "Not Found", hint=f"No invoice with id {invoice_id!r}")
        if action not in ACTIONS:
            raise action_error(400501, f"Unknown action {action!r}; expected one of {ACTIONS}")
        body = _run(state, state.invoices[invoice_id], action, params, base_url)
    except ApiError as exc:
        state.log_action(invoice_id, action, params, exc.status)
        return exc.status, {
            "error": exc.error,
            "error_code": exc.code if exc.code is not None else exc.status * 1000,
            "hint": exc.hint,
        }
    state.log_action(invoice_id, action, params, 200)
    logger.info("invoice %s: action %s done", invoice_id, action)
    return 200, body


def _run(
    state: SimState, invoice: dict[str, Any], action: str, params: dict[str, Any], base_url: str
) -> Any:
    invoice_id = invoice["id"]
    flags: list[str] = list(invoice.get("status") or [])
    if action in _NEEDS_APPROVAL and "Approved" not in flags:
        raise action_error(400502, "The invoice must be approved first")
    if action == "email":
        return _email(state, invoice, flags, params)
    if action == "emailCdrs":
        addresses = _addresses(params.get("email"))
        if int(rec.money(invoice.get("invoiceCallCount"))) <= 0:
            raise action_error(400707, "The invoice has no call detail records")
        _forced_error(state, action, invoice_id)
        customer = state.ensure_customer(invoice["customerID"])
        to = ", ".join(addresses or [customer["cdrEmail"]])
        return {"success": True, "message": f"CDRs for invoice {invoice_id} emailed to {to}"}
    if action == "generateDownloadLink":
        return _download_link(state, invoice, params, base_url)
    if action == "recreate":
        if rec.is_unsent(invoice):
            raise action_error(400701, "Unsent invoices have no outputs to recreate")
        _forced_error(state, action, invoice_id)
        state.touch("invoices", invoice_id)
        return state.invoices[invoice_id]
    if action == "updateCallTransactions":
        if not rec.is_unsent(invoice):
            raise action_error(400502, "Only unsent invoices (no invoice number) can be updated")
        _forced_error(state, action, invoice_id)
        calls = int(rec.money(invoice.get("invoiceCallCount"))) + 3
        return state.update_invoice(
            invoice_id, invoiceCallCount=calls, invoiceCallMinutes=calls * 4
        )
    if action == "reapplyDiscountPlans":
        _forced_error(state, action, invoice_id)
        state.touch("invoices", invoice_id)
        return state.invoices[invoice_id]
    return _xero(state, invoice, action, params)


def _email(
    state: SimState, invoice: dict[str, Any], flags: list[str], params: dict[str, Any]
) -> dict[str, Any]:
    addresses = _addresses(params.get("email"))
    bill_style = params.get("billStyle")
    if bill_style not in (None, "") and bill_style not in BILL_STYLES:
        raise action_error(400703, f"Unknown bill style {bill_style!r}")
    message = params.get("message")
    if message not in (None, "") and message not in MESSAGE_TEMPLATES:
        raise action_error(400704, f"Unknown message template {message!r}")
    for name in _names(params.get("attachments")):
        if name not in ATTACHMENTS:
            raise action_error(400705, f"Unknown attachment {name!r}")
    profile = params.get("invoiceUsageReportCustomerProfileID")
    if profile not in (None, "") and str(profile) not in USAGE_REPORT_PROFILES:
        raise action_error(400706, f"Unknown usage report profile {profile!r}")
    _forced_error(state, "email", invoice["id"])
    customer = state.ensure_customer(invoice["customerID"])
    to = addresses or [customer["email"]]
    if "Emailed" not in flags:
        flags.append("Emailed")
    state.update_invoice(invoice["id"], status=flags)
    return {
        "success": True,
        "message": f"Invoice {invoice['invoiceNumber']} emailed to {', '.join(to)}",
    }


def _download_link(
    state: SimState, invoice: dict[str, Any], params: dict[str, Any], base_url: str
) -> dict[str, Any]:
    hours = _int_param(params, "expiryHours", 168)
    if hours not in EXPIRY_HOURS:
        raise action_error(400502, f"expiryHours must be one of {EXPIRY_HOURS}")
    max_uses = _int_param(params, "maxUses", 1)
    if not 1 <= max_uses <= 2:
        raise action_error(400502, "maxUses must be 1 or 2")
    _forced_error(state, "generateDownloadLink", invoice["id"])
    now = state.clock.now()
    seed = f"{invoice['id']}:{len(state.download_links)}:{now.isoformat()}"
    token = hashlib.sha256(seed.encode()).hexdigest()[:32]
    expires = (now + timedelta(hours=hours)).replace(microsecond=0)
    state.download_links[token] = {
        "invoice_id": invoice["id"],
        "expires_at": expires,
        "max_uses": max_uses,
        "uses": 0,
    }
    return {
        "success": True,
        "download_url": f"{base_url}/download/invoice/{token}",
        "token": token,
        "expires_at": expires.isoformat(),
        "max_uses": max_uses,
    }


def _xero(state: SimState, invoice: dict[str, Any], action: str, params: dict[str, Any]) -> Any:
    invoice_id = invoice["id"]
    if not state.xero_module_active:
        raise action_error(400502, "The Xero module is not active")
    if action == "linkToXero":
        xero_id = params.get("xeroID")
        if xero_id in (None, ""):
            raise action_error(400503, "xeroID is required")
        try:
            uuid.UUID(str(xero_id))
        except ValueError as exc:
            raise action_error(400502, f"xeroID {xero_id!r} is not a UUID") from exc
        if invoice_id in state.xero_links and state.expert_level < 5:
            raise action_error(403501, "Updating an existing Xero link requires expert level 5")
        _forced_error(state, action, invoice_id)
        state.xero_links[invoice_id] = str(xero_id)
    else:
        if state.expert_level < 5:
            raise action_error(403501, "Unlinking from Xero requires expert level 5")
        if invoice_id not in state.xero_links:
            raise action_error(400502, "The invoice is not linked to Xero")
        _forced_error(state, action, invoice_id)
        del state.xero_links[invoice_id]
    state.touch("invoices", invoice_id)
    return state.invoices[invoice_id]
